"""``core/layout.py``: the files tensorflow_hub itself reads and writes, byte for byte its format."""

from __future__ import annotations

import os

from tfhub_cache.cache.layout import descriptor_text, lock_content, parse_lock_content


def test_descriptor_has_tensorflow_hub_lines() -> None:
    lines = descriptor_text("https://tfhub.dev/a/b/1").split("\n")
    assert lines[0] == "Module: https://tfhub.dev/a/b/1"
    assert lines[1].startswith("Download Time: ")
    assert lines[2].startswith("Downloader Hostname: ") and f"(PID:{os.getpid()})" in lines[2]


def test_lock_content_round_trip() -> None:
    owner = parse_lock_content(lock_content("abc123"))
    assert owner is not None and owner.pid == os.getpid() and owner.uid == "abc123"
    dotted = parse_lock_content("node-1.example.com.4242.ffee")
    assert dotted is not None and (dotted.host, dotted.pid, dotted.uid) == ("node-1.example.com", 4242, "ffee")
    assert parse_lock_content("garbage") is None

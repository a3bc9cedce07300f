"""The HTTP rules the hub answers by: byte ranges, validators, dates, content types, the model page."""

from __future__ import annotations

import email.utils


def content_type(name: str) -> str:
    """Content-Type for an archive: what storage.googleapis.com sends for tfhub archives."""
    return "application/x-tar" if name.endswith(".tar") else "application/x-gzip"


def model_page(path: str) -> bytes:
    """A small HTML page, like the tfhub.dev/Kaggle page a browser (or a confused client) would get."""
    return (
        f"<!DOCTYPE html>\n<html><head><title>Model {path}</title></head>\n"
        f"<body><h1>{path}</h1><p>This is a model page, not a model archive. "
        "Append <code>?tf-hub-format=compressed</code> to download it.</p></body></html>\n"
    ).encode()


class Unsatisfiable(Exception):
    """The Range header is valid but cannot be satisfied (answer 416)."""


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Parse a single ``bytes=`` range into inclusive ``(start, end)``; ``None`` means "ignore, send 200".

    Multi-range and malformed headers are ignored, as RFC 9110 allows, because no client of ours sends them.
    """
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    if not sep:
        return None
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0 or size == 0:
                raise Unsatisfiable
            return max(0, size - suffix), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start < 0 or (last and end < start):
        return None
    if start >= size:
        raise Unsatisfiable
    return start, min(end, size - 1)


def etag_list(header: str) -> list[str]:
    return [tag.strip() for tag in header.split(",") if tag.strip()]


def weak_equal(a: str, b: str) -> bool:
    return a.removeprefix("W/") == b.removeprefix("W/")


def http_date(ts: int) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def parse_http_date(value: str) -> int | None:
    try:
        return int(email.utils.parsedate_to_datetime(value).timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None

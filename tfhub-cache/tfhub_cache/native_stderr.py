"""TensorFlow's C++ notices routed through ``logging`` instead of raw stderr.

TensorFlow's native runtime writes straight to file descriptor 2 while it starts (oneDNN notices,
``cudart_stub`` and ``E0000 ... failed call to cuInit`` on a machine without a GPU). Airflow's task
runner reads a task's stderr and shows every such line as a red ``ERROR``, so a successful load task
looks failed. :func:`import_tensorflow` imports TensorFlow with fd 2 pointed at a temporary file and
re-emits what was written there as INFO records of this module's logger; Python exceptions are raised,
not written to fd 2, so none is lost. ``TF_CPP_MIN_LOG_LEVEL`` defaults to ``1`` when the environment
does not set it: TensorFlow then drops its INFO notices at the source, except those written before its
logging is initialised (oneDNN's, ``cudart_stub``'s).

One ``import tensorflow`` (TensorFlow 2.21) prints each start-up notice twice, once as each of two of its
native libraries loads, with the preamble ``WARNING: All log messages before absl::InitializeLog() is
called are written to STDERR`` before each copy; read as-is, that looks like TensorFlow starting twice.
Each notice is therefore logged once per capture, without the glog prefix (severity, time, thread id) and
with its source file at the end, and the preamble is dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["import_tensorflow", "native_stderr_to_log"]

log = logging.getLogger(__name__)

#: fd 2 is process-wide: two threads must not swap it at once.
_SWAP_LOCK = threading.Lock()

#: A glog line: ``I0000 00:00:1796537324.623661   28735 port.cc:153] message`` (severity, date, time, thread, source).
_GLOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ (?P<source>[^\]\s]+)\] (?P<message>.*)$")
#: absl's note that it has not been configured yet: about logging itself, not about the model.
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def _readable_notices(text: str) -> list[str]:
    """Captured native stderr -> one line per distinct notice, in first-seen order.

    A glog line becomes ``message [source.cc:line]``; other lines are kept as written. Blank lines,
    absl's preamble and repeats are dropped.
    """
    notices: list[str] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip() or line.strip() == _ABSL_PREAMBLE:
            continue
        match = _GLOG_LINE.match(line)
        notice = f"{match['message']} [{match['source']}]" if match else line
        if notice not in notices:
            notices.append(notice)
    return notices


@contextlib.contextmanager
def native_stderr_to_log(logger: logging.Logger = log, level: int = logging.INFO) -> Iterator[None]:
    """While the block runs, whatever native code writes to fd 2 is collected, then logged line by line.

    Python's own ``sys.stderr`` is flushed before and after so nothing already buffered is lost or
    reordered into the capture.
    """
    with _SWAP_LOCK, tempfile.TemporaryFile(mode="w+b") as capture:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for notice in _readable_notices(capture.read().decode("utf-8", errors="replace")):
                logger.log(level, "TensorFlow: %s", notice)


def import_tensorflow() -> Any:
    """``import tensorflow`` with its start-up notices logged at INFO, not written to stderr.

    Raises whatever the import raises (ImportError when TensorFlow is not installed).
    """
    loaded = sys.modules.get("tensorflow")
    if loaded is not None:  # None there means "import fails": let the import statement raise it
        return loaded
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    with native_stderr_to_log():
        import tensorflow as tf
    return tf

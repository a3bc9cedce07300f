"""One stager per cache entry, across processes and machines, with leases instead of faith.

The lock is tensorflow_hub's ``<key>.lock`` (content ``host.pid.uid``), created only if absent
(``O_EXCL`` locally, ``if_generation_match=0`` on GCS) so that exactly one creator wins, which
tensorflow_hub's check-then-rename cannot promise. The holder renews it as a lease from a
heartbeat thread. A waiter takes a lock over when

* its holder ran on this host and that process is gone (stale at once: nothing can renew it;
  a process that merely reuses the PID is recognised by having started after the lock was last
  written), or
* the lock is empty for more than :data:`EMPTY_LOCK_GRACE` seconds (a writer killed between
  creating and filling it; ours create it complete, by a hard link), or
* the lease made no progress (lock token and the holder's tmp tree unchanged) for ``timeout``
  seconds, by the waiter's own clock or by the lock's age; that covers dead remote holders and
  tensorflow_hub holders, which never renew but whose tmp dir grows while they work.

Correctness never rests on the lock alone: publishing is atomic (or ordered) on its own, so a
wrongly broken lock costs a second download, never a mixed model.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tfhub_cache.cache.layout import LockOwner, lock_content, parse_lock_content
from tfhub_cache.errors import LockTimeoutError, TFHubError
from tfhub_cache.settings import DEFAULT_LOCK_TIMEOUT
from tfhub_cache.storage.base import Storage

log = logging.getLogger(__name__)

#: An empty lock older than this was left by a writer killed mid-create: no live writer takes that long.
EMPTY_LOCK_GRACE = 5.0


class CacheLock:
    """The lock of one cache entry; use :meth:`acquire` then :meth:`release` (or ``with``)."""

    def __init__(
        self,
        storage: Storage,
        name: str,
        uid: str,
        *,
        timeout: float = DEFAULT_LOCK_TIMEOUT,
        poll_interval: float = 0.25,
        wait_timeout: float | None = None,
        tmp_name: Callable[[str], str] | None = None,
    ) -> None:
        self.storage = storage
        self.name = name
        self.uid = uid
        self.timeout = float(timeout)
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.tmp_name = tmp_name
        self.content = lock_content(uid).encode()
        self.heartbeat_interval = min(max(self.timeout / 4.0, 0.05), 30.0)
        self._token: str | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._observed: tuple[object, ...] | None = None
        self._observed_at = 0.0

    @property
    def held(self) -> bool:
        return self._token is not None

    def acquire(self, done: Callable[[], bool] | None = None) -> bool:
        """Take the lock; return False without it if ``done()`` becomes true while waiting.

        ``done`` is how a waiter notices that the holder published the model meanwhile, so it
        returns the cache hit instead of taking the lock after the holder released it.
        """
        started = time.monotonic()
        waited_logged = 0.0
        while True:
            token = self.storage.create_exclusive(self.name, self.content)
            if token is not None:
                self._token = token
                self._start_heartbeat()
                return True
            if done is not None and done():
                return False
            if self._holder_is_stale():
                continue
            now = time.monotonic()
            if self.wait_timeout is not None and now - started > self.wait_timeout:
                raise LockTimeoutError(
                    f"Gave up after {self.wait_timeout:.0f}s waiting for {self.storage.location(self.name)!r} "
                    f"held by {self._holder_text()}; raise lock_timeout or remove the lock if its holder is gone."
                )
            if now - waited_logged > 30:
                waited_logged = now
                log.info(
                    "%s is being staged by %s; waiting.",
                    self.storage.location(self.name),
                    self._holder_text(),
                )
            time.sleep(self.poll_interval * random.uniform(0.8, 1.2))

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if self._token is not None:
            token, self._token = self._token, None
            try:
                # Delete only our own generation: a lock taken over meanwhile belongs to its new holder.
                if not self.storage.delete(self.name, token=token):
                    current = self.storage.stat(self.name)
                    if current is not None and self.storage.read_bytes(self.name) == self.content:
                        self.storage.delete(self.name, token=current.token)  # our lease write whose answer was lost
            except TFHubError as exc:
                # Best effort: the lease is no longer renewed, so the lock expires for waiters anyway; the
                # error that ended the staging (often the same unreachable storage) must not be masked.
                log.warning(
                    "Could not release %s (%s); it expires with its lease.", self.storage.location(self.name), exc
                )

    def __enter__(self) -> CacheLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- holder side ----------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="tfhub-lock-lease", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            token = self._token
            if token is None:
                return
            try:
                new = self.storage.refresh_lease(self.name, token, self.content)
            except Exception as exc:  # a transient storage error must not kill the holder
                log.warning("Could not renew the lease on %s (%s)", self.storage.location(self.name), exc)
                continue
            if new is None:
                log.warning("Lost lock %s to another stager.", self.storage.location(self.name))
                return
            self._token = new

    # -- waiter side ----------------------------------------------------------------------------
    def _holder_text(self) -> str:
        data = self.storage.read_bytes(self.name)
        return repr(data.decode("utf8", "replace")) if data else "another stager"

    def _holder_is_stale(self) -> bool:
        """Decide whether the current holder is gone; if so delete its lock and return True."""
        state = judge_lock(self.storage, self.name, self.timeout, tmp_name=self.tmp_name, idle_of=self._idle)
        if state is None:
            return False  # released meanwhile: try to create again
        if not state.stale:
            return False
        if self.storage.delete(self.name, token=state.token):
            log.warning(
                "Took over stale lock %s held by %r: %s.", self.storage.location(self.name), state.content, state.reason
            )
        self._observed = None
        return True

    def _idle(self, token: str, content: str) -> float:
        """Seconds this waiter has seen the lock unchanged (its own clock: immune to clock skew)."""
        now = time.monotonic()
        if self._observed != (token, content):
            self._observed, self._observed_at = (token, content), now
        return now - self._observed_at


@dataclass(frozen=True)
class LockState:
    """A lock as found and the verdict on its holder; ``reason`` says why it is stale or alive."""

    content: str
    owner: LockOwner | None
    token: str
    stale: bool
    reason: str


def judge_lock(
    storage: Storage,
    name: str,
    timeout: float,
    *,
    tmp_name: Callable[[str], str] | None = None,
    idle_of: Callable[[str, str], float] | None = None,
    now: float | None = None,
) -> LockState | None:
    """Read lock ``name`` and judge its holder by the rules in this module's docstring (read-only).

    ``idle_of(token, content)`` gives how long a waiter has observed the lock unchanged; without
    it only the lock's age counts (``tfhub-cache ls``/``prune``). None when there is no lock.
    """
    stat = storage.stat(name)
    data = storage.read_bytes(name)
    if stat is None or data is None:
        return None
    content = data.decode("utf8", "replace").strip()
    owner = parse_lock_content(content)
    now = time.time() if now is None else now

    def state(stale: bool, reason: str) -> LockState:
        return LockState(content, owner, stat.token, stale, reason)

    if owner is not None and owner.host == socket.gethostname() and not _pid_alive(owner.pid, since=stat.mtime):
        return state(True, f"its process {owner.pid} on this host is gone")
    if not content:
        if now - stat.mtime >= EMPTY_LOCK_GRACE:
            return state(True, "it is empty (its writer died while creating it)")
        return state(False, "it is being created")
    age = now - stat.mtime
    idle = idle_of(stat.token, content) if idle_of is not None else 0.0
    if max(idle, age) < timeout:
        return state(False, f"renewed {age:.0f}s ago")
    if owner is not None and tmp_name is not None:
        progress = newest_mtime(storage, tmp_name(owner.uid))
        if progress is not None and now - progress < timeout:
            return state(False, "its tmp dir is still growing")  # a non-renewing tensorflow_hub holder
    return state(True, f"its lease made no progress for {max(idle, min(age, 1e9)):.0f}s")


def newest_mtime(storage: Storage, tree: str) -> float | None:
    """Newest mtime of ``tree`` and everything below it (how a holder's tmp dir shows progress)."""
    newest: float | None = None
    stat = storage.stat(tree)
    if stat is not None:
        newest = stat.mtime
    for rel, _size in storage.list_tree(tree):
        st = storage.stat(f"{tree}/{rel}")
        if st is not None and (newest is None or st.mtime > newest):
            newest = st.mtime
    return newest


def _pid_alive(pid: int, since: float | None = None) -> bool:
    """True while process ``pid`` of this host can still be a lock's holder.

    ``since`` is the lock's last write (epoch seconds): a process that started after it cannot
    have written it, so it is a later process that reuses the PID, not the holder.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    try:  # a killed child that nobody reaped yet is a zombie: it exists but will never renew
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[-1].split()
    except OSError:
        return True
    if fields and fields[0] == b"Z":
        return False
    started = _start_time(fields)
    return not (since is not None and started is not None and started > since + 1.0)


def _start_time(stat_fields: list[bytes]) -> float | None:
    """Epoch start time of a process from the fields of ``/proc/<pid>/stat`` after the command name."""
    try:
        ticks = int(stat_fields[19])  # field 22 of the whole line: starttime, in clock ticks since boot
        with open("/proc/stat", "rb") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None

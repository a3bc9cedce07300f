"""Export a staged model for TensorFlow Serving: ``<base_path>/<model_name>/<version>/``.

TF Serving's file-system poller watches ``<base_path>/<model_name>/`` and serves the highest
integer-named directory (loading each version it finds). So a numeric directory must never be seen
half written, and re-exporting the same model must not add a version (every new version is a
model reload in every serving replica).

* **Versions.** ``version=None`` adds the next integer (1 when there is none), unless the highest
  version already holds the model with the same sha256: then nothing is written. An explicit
  version is written when absent, kept when it holds the same sha256, and an error when it holds
  another model (unless ``overwrite``). ``keep_versions=K`` then removes the oldest versions beyond
  the K highest (never the one just exported).
* **Appearing complete.** Local: the version is built under a hidden temporary name
  (``.<version>.<uid>.tmp``, which TF Serving ignores: it is not an integer) and renamed into place
  in one step; an overwrite swaps the two trees atomically, after the new tree is complete, and
  keeps the replaced tree (hidden, ``.<version>.<uid>.replaced``) for ``replaced_max_age`` so a
  server still reading it is not cut off; a later export removes it once that age is reached.
  Files are hard links into the cache when both are on one filesystem (no copy, no extra space;
  staged revisions are never modified in place),
  copies otherwise. ``gs://`` has no rename: every other file is copied first (server side when the
  cache is on GCS too) and ``saved_model.pb`` last, so a poller that lists the prefix early finds no
  ``saved_model.pb`` and fails that load attempt rather than loading a partial model.
* **Bookkeeping.** The exported sha256 is recorded beside the version, in ``.<version>.tfhub-export.json``
  (hidden, so the version directory holds only the model). Exports into one model directory are
  serialised by ``.tfhub-export.lock`` (the cache's lease lock), so concurrent exports never pick the
  same version or duplicate one another.

The model is read from ``staged["path"]`` (the staged-model dict's path, whatever the cache layout),
never recomputed from the handle. Framework-free: no Airflow, no TensorFlow.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tfhub_cache import settings
from tfhub_cache.cache.layout import find_marker, new_uid, utc_now
from tfhub_cache.cache.locks import CacheLock
from tfhub_cache.errors import CacheError, ConfigurationError, TFHubError
from tfhub_cache.storage import Storage, open_storage
from tfhub_cache.storage.base import MODEL_MARKERS
from tfhub_cache.units import format_age, parse_age

log = logging.getLogger(__name__)

#: Keys of the export result (the XCom of the export operator, ``tfhub-cache export --json``).
EXPORT_KEYS = ("export_path", "version", "model_name", "base_path", "sha256", "exported")
LOCK_NAME = ".tfhub-export.lock"
SIDECAR_RE = re.compile(r"^\.(?P<version>[0-9]+)\.tfhub-export\.json$")
_VERSION_RE = re.compile(r"^[0-9]+$")
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: A tree an overwrite replaced, kept for readers until ``replaced_max_age`` (its mtime is the replacement time).
_REPLACED_RE = re.compile(r"^\.[0-9]+\.[0-9a-f]+\.replaced$")
#: How long a replaced version tree stays on disk by default.
DEFAULT_REPLACED_MAX_AGE = "1d"
_DEAD_RE = re.compile(r"^\.(export\.[0-9a-f]+\.tmp(\.old)?|[0-9]+\.[0-9a-f]+\.removing)$")
_LINK_ERRNOS = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EACCES)


class ExportError(TFHubError):
    """The export cannot be done as asked (a version holds another model, the staged model is missing...)."""


def sidecar_name(version: int) -> str:
    return f".{version}.tfhub-export.json"


def export_for_serving(
    staged: Mapping[str, Any],
    base_path: str,
    model_name: str,
    *,
    version: int | str | None = None,
    keep_versions: int | str | None = None,
    overwrite: bool = False,
    lock_timeout: float | None = None,
    storage_options: Mapping[str, Any] | None = None,
    replaced_max_age: float | str | None = DEFAULT_REPLACED_MAX_AGE,
) -> dict[str, Any]:
    """Export the model at ``staged["path"]`` to ``<base_path>/<model_name>/<version>/``.

    Returns :data:`EXPORT_KEYS` (``exported`` is False when nothing was written) plus
    ``removed_versions`` (what ``keep_versions`` removed) and ``handle`` (the staged model's).
    ``storage_options`` go to the GCS backend of a ``gs://`` source or target (credentials).
    ``replaced_max_age``: how long the tree an ``overwrite`` replaced stays (hidden) on a local
    target for readers that still use it (``"0s"``: removed by the next export; ``None``: never).
    """
    path = staged.get("path") if isinstance(staged, Mapping) else None
    if not isinstance(path, str) or not path:
        raise ExportError(
            f"The staged model {staged!r} has no 'path'; pass the staged-model dict of the stage operator "
            "(its XCom) or a handle to stage first."
        )
    name = check_model_name(model_name)
    explicit = check_positive_int(version, "version")
    keep = check_positive_int(keep_versions, "keep_versions")
    base = check_base_path(base_path)
    options = dict(storage_options or {})
    source = open_storage(path, **(options if path.startswith("gs://") else {}))
    files = sorted(source.list_tree(""))
    if not any(rel in MODEL_MARKERS for rel, _ in files):
        raise ExportError(
            f"{path!r} holds no SavedModel (no saved_model.pb); stage the model again (refresh='always') "
            "before exporting it."
        )
    digest = staged.get("sha256") or tree_digest(source, [rel for rel, _ in files])
    model_dir = base.rstrip("/") + "/" + name if base.startswith("gs://") else os.path.join(base, name)
    target = open_storage(model_dir, **(options if model_dir.startswith("gs://") else {}))
    target.ensure_root()
    grace = parse_age(replaced_max_age) if replaced_max_age is not None else None
    exporter = _Exporter(source, files, target, str(digest), handle=staged.get("handle"), replaced_max_age=grace)
    lock = CacheLock(
        target,
        LOCK_NAME,
        exporter.uid,
        timeout=settings.resolve_lock_timeout(lock_timeout),
        tmp_name=_tmp_name,
    )
    with lock:
        chosen, exported = exporter.place(explicit, overwrite=overwrite)
        removed = exporter.prune(keep, protect=chosen) if keep else []
    export_path = target.location(str(chosen))
    log.info(
        "%s %s (sha256 %s) as version %d of %r at %s%s.",
        "Exported" if exported else "Kept",
        staged.get("handle") or path,
        str(digest)[:12],
        chosen,
        name,
        export_path,
        f"; removed versions {removed}" if removed else "",
    )
    return {
        "export_path": export_path,
        "version": chosen,
        "model_name": name,
        "base_path": base,
        "sha256": digest,
        "exported": exported,
        "removed_versions": removed,
        "handle": staged.get("handle"),
    }


class _Exporter:
    """One export into one model directory, run under its lock."""

    def __init__(
        self,
        source: Storage,
        files: list[tuple[str, int]],
        target: Storage,
        sha256: str,
        handle: Any,
        replaced_max_age: float | None = None,
    ) -> None:
        self.replaced_max_age = replaced_max_age
        self.source = source
        self.files = files
        self.target = target
        self.sha256 = sha256
        self.handle = handle
        self.uid = new_uid()
        self.gcs_target = target.location().startswith("gs://")

    # -- what is there ------------------------------------------------------------------------------
    def numeric(self) -> set[int]:
        return {int(n) for n in self.target.list_root() if _VERSION_RE.match(n)}

    def complete(self, version: int) -> bool:
        return find_marker(self.target, str(version), None) is not None

    def recorded_sha256(self, version: int) -> str | None:
        data = self.target.read_bytes(sidecar_name(version))
        try:
            value = json.loads(data).get("sha256") if data else None
        except (ValueError, AttributeError):
            return None
        return value if isinstance(value, str) else None

    # -- decide and write ---------------------------------------------------------------------------
    def place(self, version: int | None, *, overwrite: bool) -> tuple[int, bool]:
        self._remove_dead_tmp()
        numeric = self.numeric()
        if version is None:
            complete = sorted(v for v in numeric if self.complete(v))
            if complete and self.recorded_sha256(complete[-1]) == self.sha256:
                return complete[-1], False
            version = max(numeric, default=0) + 1  # numbers of incomplete dirs are skipped, never reused
            self.publish(version, replace=False)
            return version, True
        if version in numeric:
            if self.complete(version) and self.recorded_sha256(version) == self.sha256:
                return version, False
            if not overwrite:
                held = self.recorded_sha256(version)
                what = f"another model (sha256 {held})" if held else "a model this provider did not export"
                if not self.complete(version):
                    what = "an incomplete model"
                raise ExportError(
                    f"Version {version} at {self.target.location(str(version))!r} holds {what}, not sha256 "
                    f"{self.sha256}; choose another version, omit it (next version), or overwrite it "
                    "(overwrite=True / --overwrite)."
                )
        self.publish(version, replace=version in numeric)
        return version, True

    def publish(self, version: int, *, replace: bool) -> None:
        if self.gcs_target:
            self._publish_gcs(version)
        else:
            self._publish_local(version, replace=replace)
        record = {
            "format_version": 1,
            "sha256": self.sha256,
            "handle": self.handle,
            "version": version,
            "source_path": self.source.location(),
            "exported_at": utc_now(),
        }
        self.target.write_bytes(sidecar_name(version), json.dumps(record, indent=1, sort_keys=True).encode())

    def _publish_local(self, version: int, *, replace: bool) -> None:
        final = self.target.location(str(version))
        tmp = self.target.location(_tmp_name(self.uid))
        try:
            self._fill_local(tmp)
            if replace and os.path.isdir(final):
                from tfhub_cache.storage.local import _exchange

                if not _exchange(tmp, final):  # no renameat2: a short moment without the version
                    old = f"{tmp}.old"
                    os.rename(final, old)
                    os.rename(tmp, final)
                    tmp = old
                # ``tmp`` now holds the replaced tree: kept for its readers, removed by a later export.
                replaced = self.target.location(f".{version}.{self.uid}.replaced")
                os.rename(tmp, replaced)
                os.utime(replaced)
            else:
                os.rename(tmp, final)
        except OSError as exc:
            raise CacheError(
                f"Cannot export to {final!r}: {exc.strerror or exc}; check that base_path is writable and has space."
            ) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _fill_local(self, dest: str) -> None:
        os.makedirs(dest)
        local_source = not self.source.location().startswith("gs://")
        if local_source:  # keep empty directories (assets/) as they are in the cache
            top = self.source.location()
            for dirpath, dirnames, _files in os.walk(top):
                for d in dirnames:
                    os.makedirs(os.path.join(dest, os.path.relpath(os.path.join(dirpath, d), top)), exist_ok=True)
        link = local_source
        for rel, _size in self.files:
            dst = os.path.join(dest, *rel.split("/"))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if not local_source:
                self._download(rel, dst)
                continue
            src = self.source.location(rel)
            if link:
                try:
                    os.link(src, dst)
                    continue
                except OSError as exc:
                    if exc.errno not in _LINK_ERRNOS:
                        raise
                    link = False  # another filesystem (or no hard links): copy this and every other file
            shutil.copyfile(src, dst)

    def _download(self, rel: str, dst: str) -> None:
        src = self.source.open_read(rel)
        try:
            with open(dst, "wb") as out:
                shutil.copyfileobj(src, out, 8 << 20)
        finally:
            src.close()

    def _publish_gcs(self, version: int) -> None:
        """Copy every file but the markers (in parallel), drop objects of an older tree, markers last."""
        target: Any = self.target
        prefix = f"{version}/"
        new = {rel for rel, _ in self.files}
        present = {rel for rel, _ in target.list_tree(str(version))}
        try:
            # A replaced model must never pair its old marker with new files: markers go first.
            target.delete_keys([target.key(prefix + m) for m in MODEL_MARKERS if m in present])
            others = [rel for rel in sorted(new) if rel not in MODEL_MARKERS]
            self._parallel(others, prefix)
            target.delete_keys([target.key(prefix + rel) for rel in sorted(present - new)])
            for marker in [m for m in MODEL_MARKERS if m in new]:
                self._copy_to_gcs(marker, prefix + marker)
        except TFHubError:
            raise
        except Exception as exc:
            target.fail_with(exc, f"exporting version {version}", object_level=True)

    def _parallel(self, rels: Iterable[str], prefix: str) -> None:
        rels = list(rels)
        if not rels:
            return
        workers = min(int(getattr(self.target, "max_workers", 8)), len(rels))
        with ThreadPoolExecutor(workers, thread_name_prefix="tfhub-export") as pool:
            for future in [pool.submit(self._copy_to_gcs, rel, prefix + rel) for rel in rels]:
                future.result()

    def _copy_to_gcs(self, rel: str, dest: str) -> None:
        from google.cloud.storage.retry import DEFAULT_RETRY

        target: Any = self.target
        blob = target.bucket.blob(target.key(dest))
        if self.source.location().startswith("gs://"):
            source: Any = self.source
            src_blob = source.bucket.blob(source.key(rel))
            token = None
            while True:  # server side: the bytes never pass through this worker
                token, _done, _total = blob.rewrite(src_blob, token=token, retry=DEFAULT_RETRY)
                if token is None:
                    return
        blob.upload_from_filename(self.source.location(rel), retry=DEFAULT_RETRY)

    def _remove_dead_tmp(self) -> None:
        """Temporary trees of exporters that died: we hold the lock, so no other exporter is working."""
        if self.gcs_target:
            return
        now = time.time()
        for name in self.target.list_root(prefix="."):
            if _DEAD_RE.match(name):
                self.target.delete_tree(name)
                log.info("Removed %s left by an interrupted export.", self.target.location(name))
            elif _REPLACED_RE.match(name) and self.replaced_max_age is not None:
                st = self.target.stat(name)
                if st is not None and now - st.mtime >= self.replaced_max_age:
                    self.target.delete_tree(name)
                    log.info("Removed %s, replaced %s ago.", self.target.location(name), format_age(now - st.mtime))

    # -- keep_versions ------------------------------------------------------------------------------
    def prune(self, keep: int, *, protect: int) -> list[int]:
        """Remove complete versions beyond the ``keep`` highest (never ``protect``); oldest first."""
        complete = sorted((v for v in self.numeric() if self.complete(v)), reverse=True)
        victims = sorted(v for v in complete[keep:] if v != protect)
        for version in victims:
            self._remove(version)
        return victims

    def _remove(self, version: int) -> None:
        if self.gcs_target:
            target: Any = self.target
            # The marker goes first: a poller must not load a version whose files are vanishing.
            target.delete_keys([target.key(f"{version}/{m}") for m in MODEL_MARKERS])
            self.target.delete_tree(str(version))
        else:
            final = self.target.location(str(version))
            doomed = self.target.location(f".{version}.{self.uid}.removing")
            os.rename(final, doomed)  # the version disappears in one step
            shutil.rmtree(doomed, ignore_errors=True)
        self.target.delete(sidecar_name(version))


def _tmp_name(uid: str) -> str:
    return f".export.{uid}.tmp"


def tree_digest(source: Storage, rels: list[str]) -> str:
    """sha256 of a model tree (for staged models without an archive sha256, e.g. adopted ones).

    Over the sorted relative paths and each file's own sha256, so it is stable for the same files.
    """
    outer = hashlib.sha256()
    for rel in sorted(rels):
        inner = hashlib.sha256()
        with source.open_read(rel) as f:
            while chunk := f.read(8 << 20):
                inner.update(chunk)
        outer.update(f"{rel}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


def check_model_name(value: object) -> str:
    if not isinstance(value, str) or not _MODEL_NAME_RE.match(value.strip()):
        raise ConfigurationError(
            f"model_name={value!r} is not a TF Serving model name; use letters, digits, '.', '_' or '-' "
            "(no '/'), e.g. 'nnlm'."
        )
    return value.strip()


def check_positive_int(value: object, what: str) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise ConfigurationError(f"{what}={value!r} must be a positive integer (TF Serving versions are 1, 2, ...).")
    return int(text)


def check_base_path(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"base_path={value!r} is empty; give a local directory or gs://bucket[/prefix].")
    text = value.strip()
    if text.startswith("gs://"):
        if len(text.rstrip("/")) <= len("gs://"):
            raise ConfigurationError(f"base_path={value!r} names no bucket; use gs://<bucket>[/prefix].")
        return text.rstrip("/")
    if "://" in text:
        raise ConfigurationError(
            f"base_path={value!r} has an unsupported scheme; use a local directory or gs://<bucket>[/prefix]."
        )
    return os.path.abspath(os.path.expanduser(text))

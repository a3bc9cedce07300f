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
* **Appearing complete.** The target's :meth:`~tfhub_cache.storage.base.Storage.publish_tree` writes a
  version. Local: it is built under a hidden temporary name
  (``.export.<uid>.tmp``, which TF Serving ignores: it is not an integer) and renamed into place
  in one step; an overwrite swaps the two trees atomically, after the new tree is complete, and
  keeps the replaced tree (hidden, ``.<version>.<uid>.replaced``) for ``replaced_max_age`` so a
  server still reading it is not cut off; a later export removes it once that age is reached.
  Files are hard links into the cache when both are on one filesystem (no copy, no extra space;
  staged revisions are never modified in place),
  copies otherwise. ``gs://`` has no rename: every other file is copied first (server side when the
  cache is on GCS too) and ``saved_model.pb`` last, so a poller that lists the prefix early finds no
  ``saved_model.pb`` and fails that load attempt rather than loading a partial model. An overwrite
  on ``gs://`` rewrites the version's objects in place (old ``saved_model.pb`` deleted first), keeps
  nothing of the old tree and logs a warning: a load of that version already under way is not
  protected, which only a new version number is.
* **Bookkeeping.** The exported sha256 is recorded beside the version, in ``.<version>.tfhub-export.json``
  (hidden, so the version directory holds only the model). Exports into one model directory are
  serialised by ``.tfhub-export.lock`` (the cache's lease lock), so concurrent exports never pick the
  same version or duplicate one another.

The model is read from ``staged["path"]`` (the staged-model dict's path, whatever the cache layout),
never recomputed from the handle. Framework-free: no Airflow, no TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from typing import Any

from tfhub_cache import settings
from tfhub_cache.cache.layout import find_marker, new_uid
from tfhub_cache.cache.locks import CacheLock
from tfhub_cache.errors import ConfigurationError, ExportError
from tfhub_cache.locations import check_location, is_gs_url
from tfhub_cache.storage import Storage, open_storage
from tfhub_cache.storage.base import MODEL_MARKERS
from tfhub_cache.timestamps import utc_now
from tfhub_cache.units import format_age, parse_age

log = logging.getLogger(__name__)

#: Keys of the export result (the XCom of the export operator, ``tfhub-cache export --json``).
EXPORT_KEYS = ("export_path", "version", "model_name", "base_path", "sha256", "exported")
LOCK_NAME = ".tfhub-export.lock"
_VERSION_RE = re.compile(r"^[0-9]+$")
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: A tree an overwrite replaced, kept for readers until ``replaced_max_age`` (its mtime is the replacement time).
_REPLACED_RE = re.compile(r"^\.[0-9]+\.[0-9a-f]+\.replaced$")
#: How long a replaced version tree stays on disk by default.
DEFAULT_REPLACED_MAX_AGE = "1d"
#: ``replaced_max_age`` / ``--replaced-max-age`` value that keeps replaced trees forever (as ``None`` does).
NEVER = "never"
_DEAD_RE = re.compile(r"^\.(export\.[0-9a-f]+\.tmp(\.old)?|[0-9]+\.[0-9a-f]+\.removing)$")


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
    target for readers that still use it (``"0s"``: removed by the next export; ``None`` or
    ``"never"``: kept until removed by hand).
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
    source = open_storage(path, **options)
    files = sorted(source.list_tree(""))
    if not any(rel in MODEL_MARKERS for rel, _ in files):
        raise ExportError(
            f"{path!r} holds no SavedModel (no saved_model.pb); stage the model again (refresh='always') "
            "before exporting it."
        )
    digest = staged.get("sha256") or tree_digest(source, [rel for rel, _ in files])
    target = open_storage(f"{base.rstrip('/')}/{name}", **options)
    target.ensure_root()
    grace = check_replaced_max_age(replaced_max_age)
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
        "%s %s (sha256 %s) as version %d of %r%s at %s",  # the path last: no punctuation glued to a URL
        "Exported" if exported else "Kept",
        staged.get("handle") or path,
        str(digest)[:12],
        chosen,
        name,
        f" (removed versions {', '.join(str(v) for v in removed)})" if removed else "",
        export_path,
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
            self.publish(version)
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
            if is_gs_url(self.target.location()):
                log.warning(
                    "Overwriting version %d in place (GCS has no atomic rename; the replaced objects are not kept): "
                    "a server loading this version meanwhile can read old and new files together, and servers "
                    "that loaded it already keep serving the old model. Export a new version (version=None) to "
                    "switch servers safely. Target: %s",
                    version,
                    self.target.location(str(version)),
                )
        self.publish(version)
        return version, True

    def publish(self, version: int) -> None:
        rels = [rel for rel, _size in self.files]
        # an overwrite keeps the replaced tree (hidden) for its readers; _remove_dead_tmp removes it later
        replaced = f".{version}.{self.uid}.replaced"
        self.target.publish_tree(str(version), _tmp_name(self.uid), self.source, rels, replaced=replaced)
        record = {
            "format_version": 1,
            "sha256": self.sha256,
            "handle": self.handle,
            "version": version,
            "source_path": self.source.location(),
            "exported_at": utc_now(),
        }
        self.target.write_bytes(sidecar_name(version), json.dumps(record, indent=1, sort_keys=True).encode())

    def _remove_dead_tmp(self) -> None:
        """Temporary trees of exporters that died (we hold the lock, so no other exporter is working),
        and replaced trees older than ``replaced_max_age``."""
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
        # The version leaves its name before its files go: a poller never loads a vanishing version.
        self.target.delete_tree(str(version), tmp=f".{version}.{self.uid}.removing")
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


def check_replaced_max_age(value: object, what: str = "replaced_max_age") -> float | None:
    """Seconds a replaced version tree is kept, or None (``None`` / ``"never"``) to keep it forever."""
    if value is None or (isinstance(value, str) and value.strip().lower() == NEVER):
        return None
    try:
        return parse_age(value)
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"{what}: {exc} Or {NEVER!r} to keep replaced versions until removed by hand."
        ) from None


def check_base_path(value: object) -> str:
    location = check_location(value, "base_path")
    return location if is_gs_url(location) else os.path.abspath(os.path.expanduser(location))

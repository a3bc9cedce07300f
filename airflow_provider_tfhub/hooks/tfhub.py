"""The one place where Airflow's connection and ``[tfhub]`` config meet the framework-free core.

Works with no connection defined at all (``tfhub_default`` is optional): the core's environment
variables and defaults then apply. Operators, sensors and triggers all get their settings here, so
precedence (argument > connection extra > environment > ``[tfhub]`` config > default) lives once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow.sdk import BaseHook

from tfhub_cache import settings
from tfhub_cache.cache.staging import is_cached as core_is_cached
from tfhub_cache.cache.staging import stage as core_stage
from tfhub_cache.fetch import mirrors as mirrors_mod
from tfhub_cache.storage import Storage, open_storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubSettings:
    """What a ``tfhub`` connection (and the ``[tfhub]`` section) contribute; all optional."""

    cache_dir: str | None = None
    token: str | None = None
    load_format: str | None = None
    gcp_conn_id: str | None = None
    config_cache_dir: str | None = None
    config_load_format: str | None = None
    config_lock_timeout: str | None = None
    mirrors: str | None = None
    config_mirrors: str | None = None

    def mirror_map(self, explicit: Mapping[str, str] | str | None = None) -> dict[str, str]:
        """argument > connection extra ``mirrors`` > ``TFHUB_MIRRORS`` > ``[tfhub] mirrors``."""
        return mirrors_mod.resolve_mirrors(explicit, self.mirrors, self.config_mirrors)


def _extra(extra: dict[str, Any], key: str) -> str | None:
    value = extra.get(key) or extra.get(f"extra__tfhub__{key}")
    if isinstance(value, Mapping):  # a JSON object in the extra (``mirrors``)
        return json.dumps(dict(value))
    return str(value) if value not in (None, "") else None


def _settings_from(conn: Any | None) -> HubSettings:
    from airflow.sdk import conf

    extra = (conn.extra_dejson if conn is not None else {}) or {}
    token = (conn.password if conn is not None else None) or _extra(extra, "token")
    return HubSettings(
        cache_dir=_extra(extra, "cache_dir"),
        token=token or None,
        load_format=_extra(extra, "load_format"),
        gcp_conn_id=_extra(extra, "gcp_conn_id"),
        config_cache_dir=conf.get("tfhub", "cache_dir", fallback=None) or None,
        config_load_format=conf.get("tfhub", "load_format", fallback=None) or None,
        config_lock_timeout=conf.get("tfhub", "lock_timeout", fallback=None) or None,
        mirrors=_extra(extra, "mirrors"),
        config_mirrors=conf.get("tfhub", "mirrors", fallback=None) or None,
    )


class TFHubHook(BaseHook):
    """Stage and look up TF Hub models with the settings of a ``tfhub`` connection.

    :param tfhub_conn_id: connection with optional extras ``cache_dir``, ``load_format``,
        ``gcp_conn_id``, ``mirrors`` (a JSON object, or its text as the form saves it) and the token as
        password (an extra ``token``, the form's older field, is
        still read when the password is empty). A missing connection is not an error; extras that
        Airflow's form saved as ``null`` or ``""`` count as not set.
    """

    conn_name_attr = "tfhub_conn_id"
    default_conn_name = "tfhub_default"
    conn_type = "tfhub"
    hook_name = "TensorFlow Hub"

    def __init__(self, tfhub_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tfhub_conn_id = tfhub_conn_id
        self._settings: HubSettings | None = None

    # -- settings ---------------------------------------------------------------------------------
    @property
    def settings(self) -> HubSettings:
        if self._settings is None:
            self._settings = _settings_from(self._connection())
        return self._settings

    async def aget_settings(self) -> HubSettings:
        """Settings for triggers: the connection is read with ``aget_connection`` (never sync in a loop)."""
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            conn = await self.aget_connection(self.tfhub_conn_id)
        except AirflowNotFoundException:
            conn = None
        import asyncio

        return await asyncio.to_thread(_settings_from, conn)  # reads [tfhub] config: may touch airflow.cfg

    def _connection(self) -> Any | None:
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            return self.get_connection(self.tfhub_conn_id)
        except AirflowNotFoundException:
            if self.tfhub_conn_id != self.default_conn_name:
                raise
            return None

    def resolve_cache_dir(self, explicit: str | None = None) -> str:
        s = self.settings
        return settings.resolve_cache_dir(explicit, s.cache_dir, s.config_cache_dir)

    def resolve_load_format(self, explicit: str | None = None) -> str:
        s = self.settings
        return settings.resolve_load_format(explicit, s.load_format, s.config_load_format)

    def resolve_mirrors(self, explicit: Mapping[str, str] | str | None = None) -> dict[str, str]:
        """The mirror mapping: argument > connection extra ``mirrors`` > ``TFHUB_MIRRORS`` > ``[tfhub] mirrors``."""
        return self.settings.mirror_map(explicit)

    def get_token(self) -> str | None:
        return self.settings.token

    def storage_options(self, cache_dir: str) -> dict[str, Any]:
        """GCS credentials for a gs:// cache: the connection's ``gcp_conn_id`` (Google provider), else ADC."""
        if not cache_dir.startswith("gs://"):
            return {}
        gcp_conn_id = self.settings.gcp_conn_id
        if not gcp_conn_id:
            return {}
        try:
            from airflow.providers.google.common.hooks.base_google import GoogleBaseHook
        except ImportError:
            log.warning(
                "Connection %r names gcp_conn_id=%r but apache-airflow-providers-google is not installed; "
                "using Application Default Credentials.",
                self.tfhub_conn_id,
                gcp_conn_id,
            )
            return {}
        credentials, project = GoogleBaseHook(gcp_conn_id=gcp_conn_id).get_credentials_and_project_id()
        return {"credentials": credentials, "project": project}

    def open_storage(self, cache_dir: str | None = None) -> Storage:
        resolved = self.resolve_cache_dir(cache_dir)
        return open_storage(resolved, **self.storage_options(resolved))

    # -- actions ----------------------------------------------------------------------------------
    def stage(
        self,
        handle: str,
        cache_dir: str | None = None,
        sha256: str | None = None,
        *,
        load_format: str | None = None,
        refresh: str | None = "never",
        offline: bool | None = None,
        lock_timeout: float | None = None,
        mirrors: Mapping[str, str] | str | None = None,
        download_connections: int | None = None,
        max_extracted_files: int | None = None,
    ) -> dict[str, Any]:
        """Stage ``handle`` and return the staged-model dict (see ``core.staging.RESULT_KEYS``).

        ``download_connections``: parallel ranged connections for big archives (default
        ``TFHUB_DOWNLOAD_CONNECTIONS`` or 8; 1 downloads with one stream).

        ``max_extracted_files`` caps the files and directories the archive may create (default
        ``TFHUB_MAX_EXTRACTED_FILES``, else 100000).
        """
        resolved = self.resolve_cache_dir(cache_dir)
        result = core_stage(
            handle,
            resolved,
            sha256=sha256,
            token=self.get_token(),
            load_format=self.resolve_load_format(load_format),
            refresh=refresh,
            offline=offline,
            lock_timeout=settings.resolve_lock_timeout(lock_timeout, self.settings.config_lock_timeout),
            storage_options=self.storage_options(resolved),
            mirrors=self.resolve_mirrors(mirrors),
            download_connections=download_connections,
            max_extracted_files=max_extracted_files,
        )
        return dict(result)

    def is_cached(self, handle: str, cache_dir: str | None = None) -> bool:
        resolved = self.resolve_cache_dir(cache_dir)
        return core_is_cached(handle, resolved, storage_options=self.storage_options(resolved))

    def test_connection(self) -> tuple[bool, str]:
        try:
            storage = self.open_storage()
            storage.ensure_root()
        except Exception as exc:
            return False, str(exc)
        return True, f"Cache {storage.location()} is usable."

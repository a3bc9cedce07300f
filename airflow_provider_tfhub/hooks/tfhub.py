"""The one place where Airflow's connection and ``[tfhub]`` config meet the tfhub_cache library.

Works with no connection defined at all (``tfhub_default`` is optional): the library's environment
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
from tfhub_cache.cache.entries import is_cached as core_is_cached
from tfhub_cache.cache.options import StageOptions
from tfhub_cache.cache.tiers import stage_tiered
from tfhub_cache.fetch import mirrors as mirrors_mod
from tfhub_cache.settings import AIRFLOW, Origins
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
    upstream_cache: str | None = None
    config_upstream_cache: str | None = None

    def mirror_map(
        self, explicit: Mapping[str, str] | str | None = None, *, origins: Origins = AIRFLOW
    ) -> dict[str, str]:
        """argument > connection extra ``mirrors`` > ``TFHUB_MIRRORS`` > ``[tfhub] mirrors``."""
        return mirrors_mod.resolve_mirrors(explicit, self.mirrors, self.config_mirrors, origins=origins)


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
        upstream_cache=_extra(extra, "upstream_cache"),
        config_upstream_cache=conf.get("tfhub", "upstream_cache", fallback=None) or None,
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

    @property
    def origins(self) -> Origins:
        """How a bad setting's source is named: this hook's connection id, airflow.cfg."""
        return Origins(conn_id=self.tfhub_conn_id)

    def resolve_cache_dir(self, explicit: str | None = None) -> str:
        s = self.settings
        return settings.resolve_cache_dir(explicit, s.cache_dir, s.config_cache_dir, origins=self.origins)

    def resolve_upstream_cache(self, explicit: str | None = None) -> str | None:
        """The shared cache in front of which the cache dir is a local tier (None: no tier): argument >
        connection extra ``upstream_cache`` > ``TFHUB_UPSTREAM_CACHE`` > ``[tfhub] upstream_cache``."""
        s = self.settings
        return settings.resolve_upstream_cache(
            explicit, s.upstream_cache, s.config_upstream_cache, origins=self.origins
        )

    def resolve_load_format(self, explicit: str | None = None) -> str:
        s = self.settings
        return settings.resolve_load_format(explicit, s.load_format, s.config_load_format, origins=self.origins)

    def resolve_mirrors(self, explicit: Mapping[str, str] | str | None = None) -> dict[str, str]:
        """The mirror mapping: argument > connection extra ``mirrors`` > ``TFHUB_MIRRORS`` > ``[tfhub] mirrors``."""
        return self.settings.mirror_map(explicit, origins=self.origins)

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
        options: StageOptions | None = None,
        **choices: Any,
    ) -> dict[str, Any]:
        """Stage ``handle`` and return the staged-model dict (see ``tfhub_cache.cache.records.RESULT_KEYS``).

        The choices are one :class:`~tfhub_cache.cache.options.StageOptions` (``options=``, as the
        operators build it) or its fields as keyword arguments (``load_format=``, ``refresh=``,
        ``download_connections=`` ...); what they leave unset comes from the connection, then the
        environment, then ``[tfhub]`` config, then the defaults. With an ``upstream_cache`` (argument,
        connection extra, ``TFHUB_UPSTREAM_CACHE``, ``[tfhub] upstream_cache``) the cache dir is a local
        tier of that shared cache (:mod:`tfhub_cache.cache.tiers`).
        """
        if options is not None and (choices or sha256 is not None):
            raise TypeError("TFHubHook.stage() takes options= or sha256/keyword choices, not both.")
        requested = options if options is not None else StageOptions(sha256=sha256, **choices)
        resolved = self.resolve_cache_dir(cache_dir)
        return dict(stage_tiered(handle, resolved, options=self.stage_options(requested, resolved)))

    def stage_options(self, options: StageOptions, cache_dir: str) -> StageOptions:
        """``options`` with what the connection and ``[tfhub]`` config say where the caller said nothing."""
        s, origins = self.settings, self.origins
        upstream = self.resolve_upstream_cache(options.upstream_cache)
        return options.filled(
            upstream_cache=upstream,
            upstream_storage_options=self.storage_options(upstream) if upstream else {},
            token=options.token or self.get_token(),
            load_format=settings.resolve_load_format(
                options.load_format, s.load_format, s.config_load_format, origins=origins
            ),
            lock_timeout=settings.resolve_lock_timeout(options.lock_timeout, s.config_lock_timeout, origins=origins),
            mirrors=self.resolve_mirrors(options.mirrors),
            storage_options=self.storage_options(cache_dir),
        )

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

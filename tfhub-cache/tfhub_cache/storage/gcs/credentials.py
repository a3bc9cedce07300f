"""Building the google-cloud-storage client of a ``gs://`` cache: explicit credentials, ADC, or the emulator.

Kept apart from the storage backend so that the hook (which turns an Airflow ``gcp_conn_id`` into
credentials) and tests share one definition of "which client do we talk to". Nothing here imports
Airflow, and google-cloud-storage is imported only when a client is actually built.
"""

from __future__ import annotations

import os
from typing import Any

from tfhub_cache.errors import CacheError

#: The project the emulator client claims; fake-gcs-server accepts any.
EMULATOR_PROJECT = "test"


def emulator_host() -> str | None:
    """``STORAGE_EMULATOR_HOST`` when set: google-cloud-storage then talks to that endpoint, unauthenticated."""
    value = os.environ.get("STORAGE_EMULATOR_HOST", "").strip()
    return value or None


def make_client(credentials: Any = None, project: str | None = None, *, pool_size: int = 16) -> Any:
    """A ``google.cloud.storage.Client`` for the cache.

    With ``STORAGE_EMULATOR_HOST`` set, anonymous credentials and project ``test`` (whatever was
    passed: an emulator needs no identity, and real credentials must never be sent to it). Otherwise
    the given credentials, or Application Default Credentials when None. ``pool_size`` widens the
    HTTP connection pool so that parallel uploads do not open and drop a connection each.
    """
    from google.cloud import storage

    if emulator_host():
        from google.auth.credentials import AnonymousCredentials

        client = storage.Client(project=project or EMULATOR_PROJECT, credentials=AnonymousCredentials())
    else:
        import google.auth.exceptions

        try:
            client = storage.Client(project=project, credentials=credentials)
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise CacheError(
                "No Google Cloud credentials for the gs:// cache: set gcp_conn_id in the tfhub connection "
                "(needs apache-airflow-providers-google), or configure Application Default Credentials "
                "(GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth application-default login`, or a workload "
                f"identity); STORAGE_EMULATOR_HOST selects an emulator. ({exc})"
            ) from exc
    widen_connection_pool(client, pool_size)
    return client


def widen_connection_pool(client: Any, pool_size: int) -> None:
    """Give the client's requests session a pool of ``pool_size`` connections per host (default 10)."""
    try:
        import requests.adapters

        from tfhub_cache.storage.gcs.client_adapter import http_session

        session = http_session(client)
        if not isinstance(session, requests.Session):
            return
        for scheme in ("https://", "http://"):
            session.mount(scheme, requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size))
    except Exception:  # a client of an unexpected shape still works, only with the default pool
        return


def principal(credentials: Any) -> str | None:
    """The identity behind ``credentials`` when it can be told without a request (for error messages)."""
    if credentials is None:
        return None
    for attr in ("service_account_email", "signer_email", "account"):
        value = getattr(credentials, attr, None)
        if isinstance(value, str) and value and value != "default":
            return value
    name = type(credentials).__name__
    if name == "AnonymousCredentials":
        return "anonymous (no credentials)"
    return f"the {name} credentials"


__all__ = ["EMULATOR_PROJECT", "emulator_host", "make_client", "principal", "widen_connection_pool"]

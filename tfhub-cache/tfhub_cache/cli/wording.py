"""Error messages in the words of a ``tfhub-cache`` user: flags, not Airflow connection fields.

The core's errors serve both front ends and name how the Airflow provider configures things
(``gcp_conn_id`` in the tfhub connection, ``offline=True``, the connection extra ``cache_dir``).
The CLI reads no connection, so :func:`for_cli` swaps each of those phrases for the CLI's own way
(``--cache-dir``, ``--offline``, Application Default Credentials). A phrase that no longer occurs
changes nothing, so the tests run the CLI into each of these errors and read what it prints.
"""

from __future__ import annotations

#: a phrase of a core error -> what a CLI user should read instead
CLI_PHRASES: dict[str, str] = {
    "set gcp_conn_id in the tfhub connection (needs apache-airflow-providers-google), or configure": "configure",
    "fix the tfhub connection's gcp_conn_id or the Application Default Credentials": (
        "fix the Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS or "
        "`gcloud auth application-default login`)"
    ),
    "or use another cache_dir or gcp_conn_id": "or use another --cache-dir or other credentials",
    "or set gcp_conn_id in the tfhub connection": "or use credentials that may read it",
    "or fix cache_dir.": "or fix --cache-dir.",
    "unset TFHUB_OFFLINE / offline=True": "drop --offline (and unset TFHUB_OFFLINE)",
    "check the cache_dir for a typo (argument, connection extra, TFHUB_CACHE_DIR or [tfhub] cache_dir)": (
        "check --cache-dir (or TFHUB_CACHE_DIR) for a typo"
    ),
    "choose a writable cache_dir (argument, connection extra, TFHUB_CACHE_DIR or [tfhub] cache_dir)": (
        "choose a writable --cache-dir (or TFHUB_CACHE_DIR)"
    ),
    "choose another cache_dir (argument, connection extra, TFHUB_CACHE_DIR or [tfhub] cache_dir)": (
        "choose another --cache-dir (or TFHUB_CACHE_DIR)"
    ),
}


def for_cli(message: str) -> str:
    """``message`` with the Airflow-side advice replaced by the CLI's (see :data:`CLI_PHRASES`)."""
    for phrase, replacement in CLI_PHRASES.items():
        message = message.replace(phrase, replacement)
    return message

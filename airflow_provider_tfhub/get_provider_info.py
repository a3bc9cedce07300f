"""Provider metadata read by every Airflow component: keep it a literal, import nothing heavy.

The version comes from the package's ``__version__``, the one place it is written (pyproject.toml
reads it too); ``version_added`` values are history, not the current version.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_tfhub import __version__
from tfhub_cache.cache.locks import DEFAULT_LOCK_TIMEOUT

#: The documented default of ``[tfhub] lock_timeout``: the lock's own default, as config text.
_LOCK_TIMEOUT = f"{DEFAULT_LOCK_TIMEOUT:g}"


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-tfhub",
        "name": "TensorFlow Hub",
        "description": "Stage TensorFlow Hub models into a local or gs:// cache that tensorflow_hub itself can use, "
        "keep it fresh and small, and load staged models on TPUs.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "TensorFlow Hub",
                "external-doc-url": "https://www.tensorflow.org/hub",
                "tags": ["software"],
            }
        ],
        "connection-types": [
            {
                "connection-type": "tfhub",
                "hook-class-name": "airflow_provider_tfhub.hooks.tfhub.TFHubHook",
                "hook-name": "TensorFlow Hub",
                # What Airflow 3.3's form does with this (see the README, "The tfhub connection"):
                # - conn-fields become the "Extra Fields"; an `enum` holding None would be offered as a
                #   literal "null" choice, and a `default` is pre-filled, so neither is given here;
                # - ui-field-behaviour `placeholders` reach only the standard fields (host, password...);
                #   a conn-field shows a placeholder only from `schema.examples` (with a suggestion list);
                # - the token is the standard Password field (masked, encrypted, `tfhub://:TOKEN@` in a
                #   URI); an extra `token` (the older field) is still read when Password is empty.
                "conn-fields": {
                    "cache_dir": {
                        "label": "Cache dir",
                        "description": "Local directory or gs://bucket/prefix for staged models. Empty: "
                        "TFHUB_CACHE_DIR, then [tfhub] cache_dir.",
                        "schema": {
                            "type": ["string", "null"],
                            "examples": ["gs://my-bucket/tfhub-modules", "/data/tfhub-modules"],
                        },
                    },
                    "load_format": {
                        "label": "Load format",
                        "description": "COMPRESSED stages archives into the cache; UNCOMPRESSED reads the hub's "
                        "gs:// copy in place; AUTO is COMPRESSED. Empty: TFHUB_MODEL_LOAD_FORMAT, then "
                        "[tfhub] load_format.",
                        "schema": {"type": ["string", "null"], "enum": ["AUTO", "COMPRESSED", "UNCOMPRESSED"]},
                    },
                    "gcp_conn_id": {
                        "label": "GCP connection id",
                        "description": "Google Cloud connection whose credentials reach a gs:// cache. Empty: "
                        "Application Default Credentials.",
                        "schema": {"type": ["string", "null"], "examples": ["google_cloud_default"]},
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login", "extra"],
                    "relabeling": {"password": "Token", "host": "Hub host (optional)"},
                    "placeholders": {
                        "host": "tfhub.dev",
                        "password": "Bearer token (if empty, an extra 'token' is used)",
                        # Shown by Airflow UIs that read conn-field placeholders (3.3 uses schema.examples).
                        "cache_dir": "gs://my-bucket/tfhub-modules",
                    },
                },
            }
        ],
        "hooks": [{"integration-name": "TensorFlow Hub", "python-modules": ["airflow_provider_tfhub.hooks.tfhub"]}],
        "operators": [
            {
                "integration-name": "TensorFlow Hub",
                "python-modules": [
                    "airflow_provider_tfhub.operators.stage",
                    "airflow_provider_tfhub.operators.load",
                    "airflow_provider_tfhub.operators.prune",
                    "airflow_provider_tfhub.operators.export",
                    "airflow_provider_tfhub.operators.release",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": "TensorFlow Hub",
                "python-modules": ["airflow_provider_tfhub.sensors.cached", "airflow_provider_tfhub.sensors.updated"],
            }
        ],
        "triggers": [
            {
                "integration-name": "TensorFlow Hub",
                "python-modules": ["airflow_provider_tfhub.triggers.tfhub", "airflow_provider_tfhub.triggers.events"],
            }
        ],
        "extra-links": [
            "airflow_provider_tfhub.links.TFHubModelPageLink",
            "airflow_provider_tfhub.links.TFHubStagedModelLink",
        ],
        "asset-uris": [
            {
                "schemes": ["tfhub"],
                "handler": "airflow_provider_tfhub.assets.sanitize_uri",
                "factory": "airflow_provider_tfhub.assets.create_asset",
            }
        ],
        "config": {
            "tfhub": {
                "description": "Defaults of the TensorFlow Hub provider (a connection's extras take precedence).",
                "options": {
                    "cache_dir": {
                        "description": "Cache for staged models: a local directory or gs://bucket/prefix. Empty "
                        "means TFHUB_CACHE_DIR, then <tempdir>/tfhub_modules.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "gs://my-bucket/tfhub-modules",
                        "default": "",
                    },
                    "load_format": {
                        "description": "AUTO (= COMPRESSED), COMPRESSED or UNCOMPRESSED.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "UNCOMPRESSED",
                        "default": "AUTO",
                    },
                    "lock_timeout": {
                        "description": "Seconds without progress after which a stager's lock is taken over.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": _LOCK_TIMEOUT,
                        "default": _LOCK_TIMEOUT,
                    },
                    "mirrors": {
                        "description": "JSON object of URL prefix -> mirror prefix: models are fetched from the "
                        "mirror (longest prefix wins) but cached under the handle as written. Empty means "
                        "TFHUB_MIRRORS, else none.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": '{"https://tfhub.dev": "https://mirror.corp/tfhub"}',
                        "default": "",
                    },
                },
            }
        },
    }

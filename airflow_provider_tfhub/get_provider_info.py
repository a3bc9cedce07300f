"""Provider metadata read by every Airflow component: keep it a literal, import nothing heavy.

The version comes from the package's ``__version__``, the one place it is written (pyproject.toml
reads it too); ``version_added`` values are history, not the current version.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_tfhub import __version__
from tfhub_cache.settings import DEFAULT_LOCK_TIMEOUT

#: The documented default of ``[tfhub] lock_timeout``: the lock's own default, as config text.
_LOCK_TIMEOUT = f"{DEFAULT_LOCK_TIMEOUT:g}"


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-tfhub",
        "name": "TensorFlow Hub",
        # Shown by `airflow providers list`, which strips "_", "`", "<", ">" and a final "." as reStructuredText:
        # written without them, it reads as written (tests/test_packaging.py checks it in an installed wheel).
        "description": "Stage TensorFlow Hub models into a local or gs:// cache that the tensorflow-hub library "
        "itself can use, keep it fresh and small, and load staged models on TPUs",
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
                # What Airflow 3.3's form does with this (see docs/configuration.md, "The tfhub connection"):
                # - conn-fields become the "Extra Fields"; an `enum` holding None would be offered as a
                #   literal "null" choice, and a `default` is pre-filled, so neither is given here;
                # - ui-field-behaviour `placeholders` reach only the standard fields (host, password...);
                #   a conn-field shows a placeholder only from `schema.examples` (with a suggestion list);
                # - the token is the standard Password field (masked, encrypted, `tfhub://:TOKEN@` in a
                #   URI); an extra `token` (the older field) is still read when Password is empty.
                "conn-fields": {
                    "cache_dir": {
                        "label": "Cache dir",
                        "description": "Local directory or gs://bucket/prefix for staged models, e.g. "
                        "gs://my-bucket/tfhub-modules or /data/tfhub-modules. Empty: TFHUB_CACHE_DIR, then "
                        "[tfhub] cache_dir.",
                        "schema": {"type": ["string", "null"]},
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
                    "mirrors": {
                        "label": "Mirrors",
                        "description": 'JSON object of URL prefix -> mirror prefix, e.g. {"https://tfhub.dev": '
                        '"https://mirror.corp/tfhub"}: models are fetched from the mirror (the token goes to the '
                        "mirror's host) and cached under the handle as written. Empty: TFHUB_MIRRORS, then "
                        "[tfhub] mirrors.",
                        "schema": {"type": ["string", "null"]},
                    },
                },
                # - a conn-field with `schema.examples` gets the placeholder "Start typing to see
                #   options" and a suggestion list: only gcp_conn_id, whose example is a real default;
                #   the other fields give their examples in the description instead;
                # - there is no host field: handles name their host, and a different endpoint for
                #   tfhub.dev is a mirror (the Mirrors field), so a host would only be a field that does nothing.
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login", "extra", "host"],
                    "relabeling": {"password": "Token"},
                    "placeholders": {"password": "optional: sent only to the model's hub (or its mirror)"},
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
                    "upstream_cache": {
                        "description": "A shared cache (gs://bucket/prefix) in front of which cache_dir is a local "
                        "tier: one hub download per fleet, then pulls. Empty means TFHUB_UPSTREAM_CACHE, else none.",
                        "version_added": "0.2.0",
                        "type": "string",
                        "example": "gs://my-bucket/tfhub-modules",
                        "default": "",
                    },
                },
            }
        },
    }

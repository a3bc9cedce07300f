"""Extra links of the stage and export tasks: "Model page" and, for ``gs://`` paths, "Staged model".

Airflow 3 evaluates operator links on the worker when the task finishes (``get_link`` gets the
finished task instance as ``ti_key``) and stores each URL as an XCom; the UI's API server then only
reads that XCom. So ``get_link`` reads the task's own return value (the staged-model dict or the
export result) and turns it into a URL; a task without one (failed, or a local path) gets no link.
A task that did not succeed pushed no return value: asking for it anyway would only add an
"XCom not found" error line to its log after the real error, so its XCom is not read at all.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

from airflow.sdk import BaseOperatorLink

from tfhub_cache.errors import ConfigurationError
from tfhub_cache.locations import is_gs_url, parse_gs_url

CONSOLE_BROWSER = "https://console.cloud.google.com/storage/browser/"


def model_page_url(handle: object) -> str:
    """The web page of a model handle: the tfhub.dev / Kaggle / http(s) URL itself (without our query),
    the Cloud Console page of a ``gs://`` archive; "" for local handles."""
    if not isinstance(handle, str):
        return ""
    parts = urllib.parse.urlsplit(handle)
    if parts.scheme in ("http", "https"):
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    if parts.scheme == "gs":
        return console_url(handle.rsplit("/", 1)[0])
    return ""


def console_url(path: object) -> str:
    """``gs://bucket/a/b`` -> ``https://console.cloud.google.com/storage/browser/bucket/a/b``; "" otherwise."""
    if not isinstance(path, str) or not is_gs_url(path):
        return ""
    try:
        bucket, prefix = parse_gs_url(path)
    except ConfigurationError:  # no bucket
        return ""
    quoted = urllib.parse.quote(prefix, safe="/")
    return f"{CONSOLE_BROWSER}{bucket}/{quoted}".rstrip("/")


def _return_value(ti_key: Any) -> Mapping[str, Any]:
    from airflow.sdk.execution_time.xcom import XCom

    state = getattr(ti_key, "state", None)  # the finished task instance on the worker; a plain key has none
    if state is not None and state != "success":
        return {}
    try:
        value = XCom.get_value(ti_key=ti_key, key="return_value")
    except Exception:  # no XCom (failed task, do_xcom_push=False): no link, never an error
        return {}
    return value if isinstance(value, Mapping) else {}


class TFHubModelPageLink(BaseOperatorLink):
    """The model's web page (tfhub.dev, Kaggle, or the http(s) URL given as handle)."""

    name = "Model page"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return model_page_url(_return_value(ti_key).get("handle"))


class TFHubStagedModelLink(BaseOperatorLink):
    """The Cloud Console page of the staged (or exported) model's ``gs://`` prefix."""

    name = "Staged model"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        value = _return_value(ti_key)
        return console_url(value.get("export_path") or value.get("path"))

"""OpenLineage for the stage and export operators, used only when the OpenLineage provider is installed.

The operators call :func:`stage_lineage` / :func:`export_lineage` from inside their
``get_openlineage_facets_on_complete`` (which only the OpenLineage provider calls), and this module
imports the provider and the OpenLineage client inside its functions: without
``apache-airflow-providers-openlineage`` nothing of it is ever imported.

Datasets follow OpenLineage's naming: the model handle ``https://tfhub.dev/google/x/1`` is namespace
``https://tfhub.dev``, name ``/google/x/1``; ``gs://bucket/a/b`` is ``gs://bucket`` + ``a/b``; a local
path is ``file`` + the absolute path. The ``tfhubModel`` run facet carries what identifies the bytes:
handle, sha256, etag, revision (and, for exports, the TF Serving version).
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from typing import Any

FACET_NAME = "tfhubModel"


def dataset_name(location: str) -> tuple[str, str]:
    """``(namespace, name)`` of a handle, ``gs://`` path or local path."""
    parts = urllib.parse.urlsplit(location)
    if parts.scheme in ("http", "https"):
        return f"{parts.scheme}://{parts.netloc}", parts.path or "/"
    if parts.scheme == "gs":
        return f"gs://{parts.netloc}", parts.path.lstrip("/")
    return "file", os.path.abspath(location)


def _model_facet(staged: Mapping[str, Any], **extra: Any) -> Any:
    from attrs import define
    from openlineage.client.facet_v2 import RunFacet

    global _TFHubModelRunFacet
    if _TFHubModelRunFacet is None:

        @define
        class TFHubModelRunFacet(RunFacet):
            """The staged model's identity: the handle and what pins its bytes."""

            handle: str | None = None
            sha256: str | None = None
            etag: str | None = None
            revision: str | None = None
            path: str | None = None
            sourceUrl: str | None = None
            version: int | None = None
            exported: bool | None = None

        _TFHubModelRunFacet = TFHubModelRunFacet
    return _TFHubModelRunFacet(
        handle=staged.get("handle"),
        sha256=staged.get("sha256"),
        etag=staged.get("etag"),
        revision=staged.get("revision"),
        path=staged.get("path"),
        sourceUrl=staged.get("source_url"),
        **extra,
    )


_TFHubModelRunFacet: Any = None


def _lineage(inputs: list[str], outputs: list[str], facet: Any) -> Any:
    from airflow.providers.common.compat.openlineage.facet import Dataset
    from airflow.providers.openlineage.extractors import OperatorLineage

    def datasets(locations: list[str]) -> list[Any]:
        return [Dataset(namespace=ns, name=name) for ns, name in map(dataset_name, locations)]

    return OperatorLineage(
        inputs=datasets(inputs), outputs=datasets(outputs), run_facets={FACET_NAME: facet}, job_facets={}
    )


def stage_lineage(staged: Mapping[str, Any] | None) -> Any:
    """Input: the model handle; output: the staged (revision) path; run facet: sha256, etag, revision."""
    if not staged:
        return _empty()
    return _lineage([str(staged["handle"])], [str(staged["path"])], _model_facet(staged))


def export_lineage(staged: Mapping[str, Any] | None, result: Mapping[str, Any] | None) -> Any:
    """Input: the model handle; output: the export path; run facet: the staged model + the version."""
    if not staged or not result:
        return _empty()
    facet = _model_facet(staged, version=result.get("version"), exported=result.get("exported"))
    return _lineage([str(staged["handle"])], [str(result["export_path"])], facet)


def _empty() -> Any:
    from airflow.providers.openlineage.extractors import OperatorLineage

    return OperatorLineage()

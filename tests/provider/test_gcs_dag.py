"""Issue 3 acceptance: the example DAG stages into an emulator-backed ``gs://`` cache through ``dag.test()``.

``dag.test()`` runs the tasks in this process, so ``STORAGE_EMULATOR_HOST`` (set by the ``gcs_env``
fixture) reaches the operator's hook and the GCS client exactly as a worker's environment would.
"""

from __future__ import annotations

from typing import Any

from airflow_utils import get_dag, xcom
from gcs_helpers import assert_complete, leftovers

from tfhub_cache.handles import cache_key
from tfhub_cache.storage.gcs import GCSStorage


def test_prestage_dag_stages_into_a_gcs_cache(hub: Any, handle_of: Any, gcs_cache: str) -> None:
    dag = get_dag("tfhub_prestage")
    handles = [handle_of("small_a"), handle_of("small_b"), handle_of("small_a")]
    dr = dag.test(run_conf={"handles": handles, "cache_dir": gcs_cache})
    assert dr.state == "success"

    staged = xcom(dr, "stage")
    assert sorted(staged) == [0, 1, 2]
    assert [staged[i]["path"] for i in range(3)] == [
        f"{gcs_cache}/{cache_key(h)}.revisions/{staged[i]['revision']}" for i, h in enumerate(handles)
    ]
    assert staged[0]["path"] == staged[2]["path"]
    assert all(s["cache_dir"] == gcs_cache for s in staged.values())
    paths = xcom(dr, "consume", map_index=-1)
    assert paths == {handles[0]: staged[0]["path"], handles[1]: staged[1]["path"]}

    storage = GCSStorage(gcs_cache)
    for handle in set(handles):
        assert_complete(storage, handle)
    assert leftovers(storage) == []
    # Two mapped tasks staged small_a into the shared cache: one download, one hit.
    assert hub.stats()["models"]["/google/small_a/1"]["archive_full"] == 1
    assert sorted(s["downloaded"] for s in (staged[0], staged[2])) == [False, True]

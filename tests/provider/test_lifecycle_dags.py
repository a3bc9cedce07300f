"""The refresh pipeline end to end: ``tfhub_cache_refresh`` and ``tfhub_asset_consumer`` through ``dag.test()``.

The example DAGs' handles are pointed at the loopback hub through the run conf; their Assets stay
the models' public identities (``tfhub://tfhub.dev/...``), which is what consumers schedule on.
The second refresh run exercises the deferrable update sensor: its first poke sees no change and
defers, upstream then re-publishes, and the trigger (run inline by ``dag.test()``) fires.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from airflow.sdk import Asset
from airflow_utils import get_dag, xcom

from airflow_provider_tfhub.assets import asset_uri_for, create_asset, sanitize_uri
from tfhub_cache.cache.inventory import list_entries
from tfhub_cache.storage.local import LocalStorage

#: example model name -> (hub model, the model it is re-published as in the second run)
MODELS = {"nnlm_en_dim50": ("demo_v1", "demo_v2"), "mobilenet_v2": ("small_a", "small_b")}


def republish_after_first_check(hub: Any, path: str, archive: Any) -> threading.Thread:
    """Swap the served archive once the sensor's poke got its 304, i.e. once the sensor is about to defer."""

    def run() -> None:
        for _ in range(6000):
            if hub.stats()["models"][path]["not_modified"] >= 1:
                hub.add_model(path, archive)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_refresh_dag_stages_refreshes_and_feeds_the_asset_consumer(
    hub: Any, handle_of: Any, cache_dir: str, model_archives: dict[str, Any]
) -> None:
    refresh, consumer = get_dag("tfhub_cache_refresh"), get_dag("tfhub_asset_consumer")
    handles = {name: handle_of(first) for name, (first, _) in MODELS.items()}
    conf = {"handles": handles, "cache_dir": cache_dir, "poll_seconds": 0.1}
    uris = {name: refresh.get_task(f"{name}.stage").outlets[0].uri for name in MODELS}

    # Run 1, empty cache: the checks fire at once, both models are staged, nothing is pruned.
    dr = refresh.test(run_conf=conf)
    assert dr.state == "success"
    first = {name: xcom(dr, f"{name}.stage", -1) for name in MODELS}
    for name in MODELS:
        assert xcom(dr, f"{name}.check", -1)["reason"] == "not cached"
        assert first[name]["handle"] == handles[name] and first[name]["downloaded"] is True
    pruned = xcom(dr, "prune", -1)
    assert pruned["removed"] == [] and {k["handle"] for k in pruned["kept"]} == set(handles.values())

    run = consumer.test()
    assert run.state == "success"
    seen = xcom(run, "latest_models", -1)
    assert seen == {uris[name]: first[name] for name in MODELS}

    # Run 2: upstream re-publishes both models while the sensors wait (deferred).
    hub.reset_stats()
    swaps = [
        republish_after_first_check(hub, urlsplit(handles[name]).path, model_archives[second])
        for name, (_, second) in MODELS.items()
    ]
    dr = refresh.test(run_conf=conf)
    for swap in swaps:
        swap.join(timeout=30)
    assert dr.state == "success"
    for name, (hub_model, _) in MODELS.items():
        check, staged = xcom(dr, f"{name}.check", -1), xcom(dr, f"{name}.stage", -1)
        assert check["changed"] is True and check["reason"].startswith("ETag changed")
        assert staged["refreshed"] is True and staged["revision"] != first[name]["revision"]
        assert staged["path"] != first[name]["path"] and Path(first[name]["path"]).is_dir()  # the old path stays
        assert staged["sha256"] != first[name]["sha256"] and staged["etag"] == check["etag"]
        c = hub.stats()["models"][f"/google/{hub_model}/1"]
        assert c["archive_full"] == 1  # the stage task's download; the sensor never fetched the archive
        assert c["not_modified"] >= 1  # the poke that led to the deferral
    second = {name: xcom(dr, f"{name}.stage", -1) for name in MODELS}

    run = consumer.test()
    assert run.state == "success"
    assert xcom(run, "latest_models", -1) == {uris[name]: second[name] for name in MODELS}
    assert {e["handle"] for e in list_entries(LocalStorage(cache_dir))} == set(handles.values())


def test_producer_and_consumer_agree_on_the_assets() -> None:
    refresh, consumer = get_dag("tfhub_cache_refresh"), get_dag("tfhub_asset_consumer")
    produced = {name: refresh.get_task(f"{name}.stage").outlets for name in MODELS}
    assert produced == {
        "nnlm_en_dim50": [create_asset(handle="https://tfhub.dev/google/nnlm-en-dim50/2")],
        "mobilenet_v2": [
            create_asset(handle="https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5")
        ],
    }
    assert set(consumer.timetable.asset_condition.objects) == {a for (a,) in produced.values()}
    assert [a.uri for a in consumer.get_task("latest_models").inlets] == [a.uri for (a,) in produced.values()]


# -- tfhub:// URIs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("handle", "uri"),
    [
        ("https://tfhub.dev/google/nnlm-en-dim50/2", "tfhub://tfhub.dev/google/nnlm-en-dim50/2"),
        ("tfhub.dev/google/nnlm-en-dim50/2", "tfhub://tfhub.dev/google/nnlm-en-dim50/2"),
        ("https://www.tfhub.dev/google/nnlm-en-dim50/2", "tfhub://tfhub.dev/google/nnlm-en-dim50/2"),
        (
            "https://www.kaggle.com/models/google/mobilenet-v2/tensorFlow2/100-224-feature-vector/2",
            "tfhub://kaggle.com/models/google/mobilenet-v2/tensorFlow2/100-224-feature-vector/2",
        ),
        ("http://127.0.0.1:8080/google/demo/1", "tfhub://127.0.0.1:8080/google/demo/1"),
    ],
)
def test_asset_uri_for_handles(handle: str, uri: str) -> None:
    assert asset_uri_for(handle) == uri
    asset = create_asset(handle=handle)
    assert (asset.uri, asset.name) == (uri, uri)


def test_asset_uri_for_rejects_non_http_handles() -> None:
    with pytest.raises(ValueError, match="file:// or gs://"):
        asset_uri_for("gs://bucket/models/m.tar.gz")


def test_airflow_normalises_tfhub_uris_with_the_registered_handler() -> None:
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    runtime = ProvidersManagerTaskRuntime()
    assert runtime.asset_uri_handlers["tfhub"] is sanitize_uri
    assert runtime.asset_factories["tfhub"] is create_asset
    assert (
        Asset("tfhub://WWW.TFHub.dev//google/nnlm-en-dim50/2/?x=1#f").uri == "tfhub://tfhub.dev/google/nnlm-en-dim50/2"
    )
    with pytest.raises(ValueError, match="names no model"):
        Asset("tfhub://tfhub.dev/")


def test_triggers_are_registered_in_provider_info() -> None:
    from airflow_provider_tfhub.get_provider_info import get_provider_info

    modules = [m for t in get_provider_info()["triggers"] for m in t["python-modules"]]
    assert "airflow_provider_tfhub.triggers.tfhub" in modules

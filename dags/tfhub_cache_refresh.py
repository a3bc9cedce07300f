"""Keep a persistent model cache fresh and bounded, and announce refreshed models as Assets.

Started by upstream changes: each model has an ``Asset`` watched by
:class:`~airflow_provider_tfhub.triggers.TFHubUpstreamChangedTrigger` (one conditional request per
poll, in the triggerer), which starts this DAG once per new upstream version the cache lacks. Set
:data:`SCHEDULE_ON_UPSTREAM_CHANGES` to False to run daily on cron instead. Each run, for every
model in :data:`MODELS`:

1. ``check``: a deferrable sensor waits (in the triggerer, one conditional request per poll, hourly) until
   the model changed upstream, or fires at once when it is not cached yet. No change within the
   day: it is skipped (``soft_fail``), and so is the stage task.
2. ``stage``: stages with ``refresh="if_changed"`` (a change is published as a new immutable
   revision; tasks that were given the old ``path`` keep reading the old files) and emits the
   model's ``tfhub://`` Asset with the staged-model dict (its ``path`` and ``revision``) as ``extra``.

Then ``prune_superseded`` removes revisions superseded more than :data:`SUPERSEDED_GRACE` ago (of
every model, these included), and ``prune`` shrinks the cache to :data:`CACHE_BUDGET`, never
touching the models of this DAG.

The Asset is the model's identity (what consumers schedule on, see ``tfhub_asset_consumer``);
the handle is where to fetch it from, which a run can point elsewhere (a mirror) with its conf::

    {"handles": {"nnlm_en_dim50": "https://mirror.example/google/nnlm-en-dim50/2"},
     "cache_dir": "gs://my-bucket/tfhub-modules"}
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Asset, AssetWatcher, Param, TaskGroup

from airflow_provider_tfhub.assets import create_asset
from airflow_provider_tfhub.operators.prune import TFHubPruneCacheOperator
from airflow_provider_tfhub.operators.stage import TFHubStageModelOperator
from airflow_provider_tfhub.sensors.updated import TFHubModelUpdatedSensor
from airflow_provider_tfhub.triggers import TFHubUpstreamChangedTrigger

#: Models kept fresh: name (task group) -> default handle. Their Assets are derived from these handles.
MODELS = {
    "nnlm_en_dim50": "https://tfhub.dev/google/nnlm-en-dim50/2",
    "mobilenet_v2": "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5",
}
MODEL_ASSETS = {name: create_asset(handle=handle) for name, handle in MODELS.items()}
CACHE_BUDGET = "10G"
SUPERSEDED_GRACE = "1d"  # how long a task that was given an older path may still read it
#: True: start on upstream changes (AssetWatcher, see UPSTREAM); False: daily cron.
SCHEDULE_ON_UPSTREAM_CHANGES = True
UPSTREAM_POLL_SECONDS = 3600
#: One watched Asset per model: "a new version of it is upstream" (distinct from the model Assets this
#: DAG emits, which consumers schedule on).
UPSTREAM = {
    name: Asset(
        name=f"tfhub_upstream_{name}",
        watchers=[
            AssetWatcher(
                name=f"tfhub_upstream_{name}",
                trigger=TFHubUpstreamChangedTrigger(handle, poll_interval=UPSTREAM_POLL_SECONDS),
            )
        ],
    )
    for name, handle in MODELS.items()
}
CACHE_DIR = "{{ params.cache_dir or '' }}"  # empty: the connection's cache_dir, TFHUB_CACHE_DIR, [tfhub] cache_dir


def handle_of(name: str) -> str:
    """The run's handle for model ``name`` (conf ``handles`` overrides the default)."""
    return "{{ params.handles.get('%s') or '%s' }}" % (name, MODELS[name])  # noqa: UP031 - Jinja braces


with DAG(
    dag_id="tfhub_cache_refresh",
    description="Refresh cached TF Hub models when they change upstream, emit Assets, prune the cache.",
    schedule=list(UPSTREAM.values()) if SCHEDULE_ON_UPSTREAM_CHANGES else "@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["tfhub", "example"],
    params={
        "handles": Param({}, type="object", description="Model name -> handle, to override the defaults."),
        "cache_dir": Param(None, type=["null", "string"], description="Local dir or gs://bucket/prefix."),
        "poll_seconds": Param(3600, type="number", exclusiveMinimum=0, description="Seconds between update checks."),
    },
) as dag:
    prune_superseded = TFHubPruneCacheOperator(
        task_id="prune_superseded",
        cache_dir=CACHE_DIR,
        superseded_max_age=SUPERSEDED_GRACE,
        trigger_rule="none_failed",
    )
    prune = TFHubPruneCacheOperator(
        task_id="prune",
        cache_dir=CACHE_DIR,
        max_total_bytes=CACHE_BUDGET,
        keep=[handle_of(name) for name in MODELS],
        trigger_rule="none_failed",  # also after days without updates (skipped stage tasks)
    )
    for name in MODELS:
        with TaskGroup(group_id=name):
            check = TFHubModelUpdatedSensor(
                task_id="check",
                handle=handle_of(name),
                cache_dir=CACHE_DIR,
                deferrable=True,
                poll_interval="{{ params.poll_seconds }}",
                timeout=timedelta(hours=20),
                soft_fail=True,  # no update today: skip, don't fail
            )
            stage = TFHubStageModelOperator(
                task_id="stage",
                handle=handle_of(name),
                cache_dir=CACHE_DIR,
                refresh="if_changed",
                retries=2,
                outlets=[MODEL_ASSETS[name]],
            )
            check >> stage >> prune_superseded
    prune_superseded >> prune

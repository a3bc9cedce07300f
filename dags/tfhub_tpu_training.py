"""Train where training runs: stage into the shared gs:// cache, plan for the TPU, train on the TPU host.

On Google Cloud the training does not run in the Airflow worker. This DAG is shaped like production:

1. ``stage`` puts the model into the shared ``gs://`` cache (one hub download, whatever the fleet size);
2. ``plan`` builds the load plan for the declared target (``tpu=True``: the TPU host, not this worker)
   and proves the model loads with it (smoke test); the plan is plain JSON;
3. the training runs where the TPU is, with only ``tfhub-cache[tensorflow]`` installed (no Airflow):

   * ``train_on_gke_tpu``: a ``KubernetesPodOperator`` on a GKE TPU node pool (node selector,
     ``google.com/tpu`` resource), the plan in the ``TFHUB_LOAD_PLAN`` environment variable;
   * ``train_in_venv``: ``@task.external_python`` in a venv with ``tfhub-cache[tensorflow]`` and
     ``pendulum`` (a TPU VM that runs an Airflow worker, or any host; this is the variant that runs
     anywhere). Airflow's operator runs ``python -c "import pendulum"`` in the venv on every run; without
     pendulum that probe's traceback lands in the task log as red ERROR lines of a successful task.

   Both call :func:`train_head`: it pulls the planned revision onto the host's disk
   (``loading.load(plan, local_cache=..., tpu="auto")``: no hub request, no inflate), which on a TPU
   is read through the coordinator (``/job:localhost``), and trains a small linear head on the
   model's features. ``runner`` picks the variant.

Trigger with a conf, e.g.::

    {"handle": "https://tfhub.dev/google/nnlm-en-dim50/2", "cache_dir": "gs://my-bucket/tfhub-modules",
     "runner": "gke"}

Settings from the environment (read at parse time): ``TFHUB_TRAINING_IMAGE`` (an image with
``tfhub-cache[tensorflow]``), ``TFHUB_TRAINING_PYTHON`` (the venv's python), ``TFHUB_TPU_ACCELERATOR``,
``TFHUB_TPU_TOPOLOGY`` and ``TFHUB_TPU_CHIPS`` (the GKE TPU slice; default a v5e 2x4 host, 8 chips).
"""

from __future__ import annotations

import inspect
import os
from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_tfhub.operators.load import TFHubLoadModelOperator
from airflow_provider_tfhub.operators.stage import TFHubStageModelOperator

DEFAULT_HANDLE = "https://tfhub.dev/google/nnlm-en-dim50/2"
TRAINING_IMAGE = os.environ.get("TFHUB_TRAINING_IMAGE", "us-docker.pkg.dev/my-project/training/tfhub-cache-tf:0.2.0")
TRAINING_PYTHON = os.environ.get("TFHUB_TRAINING_PYTHON", "/opt/tfhub-training/bin/python")
TPU_ACCELERATOR = os.environ.get("TFHUB_TPU_ACCELERATOR", "tpu-v5-lite-podslice")
TPU_TOPOLOGY = os.environ.get("TFHUB_TPU_TOPOLOGY", "2x4")
TPU_CHIPS = os.environ.get("TFHUB_TPU_CHIPS", "8")
#: Where the training host keeps its own cache (a local SSD / emptyDir on GKE).
LOCAL_CACHE = "/tmp/tfhub-local-cache"


def train_head(
    plan: dict | str, local_cache: str, tpu: bool | str = "auto", signature: str = "serving_default"
) -> dict:
    """Pull the planned model onto this host, load it as this host needs, train a linear head for 2 steps.

    Self-contained (``@task.external_python`` and the pod run its source, without this module): only
    ``tfhub-cache`` and TensorFlow are imported. ``plan`` is the plan dict or its JSON; ``tpu`` is
    ``"auto"`` (detect on this host) or a declared ``True``/``False`` (also as the strings a template
    renders). Returns what was done, JSON-friendly.
    """
    import importlib.util
    import logging
    import os
    import sys
    from typing import Any  # noqa: F401 - the nested functions' annotations, when run as source

    from tfhub_cache import loading
    from tfhub_cache.native_stderr import import_tensorflow

    # The library's lines (the pull, the load) and TensorFlow's start-up notices, once each (TensorFlow
    # prints them twice per import), go to stderr: the pod's log, or the venv task's log.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tf = import_tensorflow()

    tpu = {"true": True, "false": False}.get(str(tpu).strip().lower(), tpu)

    steps, batch, learning_rate = 2, 8, 0.05
    settled = loading.resolve_plan(plan, local_cache=local_cache, tpu=tpu)
    if settled["tpu"] and loading.detect_tpu():
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    else:
        strategy = tf.distribute.get_strategy()
    print(f"Strategy {type(strategy).__name__}; {settled['reason']}")

    def features(outputs: Any) -> Any:
        if isinstance(outputs, dict):
            outputs = next(outputs[k] for k in sorted(outputs) if outputs[k].dtype.is_floating)
        return tf.reshape(tf.cast(outputs, tf.float32), [tf.shape(outputs)[0], -1])

    def feed(spec: Any) -> Any:
        if spec.dtype == tf.string:
            return tf.constant([f"synthetic example number {i}" for i in range(batch)])
        shape = [batch, *spec.shape.as_list()[1:]]
        return tf.random.normal(shape, seed=1, dtype=spec.dtype)

    with strategy.scope():
        model = loading.load(settled, tpu=settled["tpu"])
        if signature in getattr(model, "signatures", {}):
            fn = model.signatures[signature]
            specs = fn.structured_input_signature[1]
            inputs = {name: feed(spec) for name, spec in specs.items()}

            def forward(batch_inputs: Any) -> Any:
                return features(fn(**batch_inputs))
        else:  # the Reusable SavedModel API: model(inputs)
            spec = model.__call__.concrete_functions[0].structured_input_signature[0][0]
            inputs = {"inputs": feed(spec)}

            def forward(batch_inputs: Any) -> Any:
                return features(model(batch_inputs["inputs"]))

        weights = tf.Variable(tf.zeros([int(forward(inputs).shape[-1]), 1]), aggregation=tf.VariableAggregation.MEAN)
        bias = tf.Variable(0.0, aggregation=tf.VariableAggregation.MEAN)
    labels = tf.random.normal([batch, 1], seed=7)

    def replica_step(batch_inputs: Any, batch_labels: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(tf.matmul(forward(batch_inputs), weights) + bias - batch_labels))
        for variable, grad in zip((weights, bias), tape.gradient(loss, [weights, bias]), strict=True):
            variable.assign_sub(learning_rate * grad)
        return loss

    @tf.function
    def train_step(batch_inputs: Any, batch_labels: Any) -> Any:
        per_replica = strategy.run(replica_step, args=(batch_inputs, batch_labels))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

    losses = [float(train_step(inputs, labels)) for _ in range(steps)]
    print(f"losses {losses}")
    return {
        "losses": losses,
        "path": settled["path"],
        "revision": settled["revision"],
        "tpu": settled["tpu"],
        "load_options": settled["load_options"],
        "strategy": type(strategy).__name__,
        "airflow_importable": importlib.util.find_spec("airflow") is not None,
        "python": os.path.realpath(sys.executable),
    }


#: What the training pod runs: :func:`train_head`'s source, then a call with the plan from the environment.
POD_SCRIPT = inspect.getsource(train_head) + (
    "\nimport json, os\nprint(json.dumps(train_head(os.environ['TFHUB_LOAD_PLAN'], os.environ['TFHUB_LOCAL_CACHE'])))\n"
)


def _pod_operator(plan_json: Any) -> Any:
    """The GKE TPU pod: node selector of the TPU slice, ``google.com/tpu`` chips, the plan in the environment.

    Without the cncf.kubernetes provider the DAG still parses; this task then fails saying what to install.
    """
    try:
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
        from kubernetes.client import models as k8s
    except ImportError as exc:
        missing = str(exc)

        @task(task_id="train_on_gke_tpu")
        def needs_kubernetes_provider(plan: str) -> None:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(
                f"The GKE runner needs the cncf.kubernetes provider ({missing}): "
                "pip install 'airflow-provider-tfhub[kubernetes]', or trigger with runner='venv'."
            )

        return needs_kubernetes_provider(plan_json)

    chips = {"google.com/tpu": TPU_CHIPS}
    return KubernetesPodOperator(
        task_id="train_on_gke_tpu",
        name="tfhub-train",
        image=TRAINING_IMAGE,
        cmds=["python", "-c"],
        arguments=[POD_SCRIPT],
        env_vars={"TFHUB_LOAD_PLAN": plan_json, "TFHUB_LOCAL_CACHE": LOCAL_CACHE},
        node_selector={
            "cloud.google.com/gke-tpu-accelerator": TPU_ACCELERATOR,
            "cloud.google.com/gke-tpu-topology": TPU_TOPOLOGY,
        },
        container_resources=k8s.V1ResourceRequirements(requests=chips, limits=chips),
        get_logs=True,
        on_finish_action="delete_pod",
    )


with DAG(
    dag_id="tfhub_tpu_training",
    description="Stage into the shared gs:// cache, plan for the TPU, train on the TPU host (GKE pod or venv).",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["tfhub", "example", "tpu"],
    params={
        "handle": Param(DEFAULT_HANDLE, type="string", description="TF Hub model handle."),
        "cache_dir": Param(None, type=["null", "string"], description="The shared cache: gs://bucket/prefix."),
        "runner": Param("gke", enum=["gke", "venv"], description="Train in a GKE TPU pod or in a local venv."),
        "local_cache": Param(LOCAL_CACHE, type="string", description="The training host's own cache dir."),
        "training_tpu": Param(
            "auto", enum=["auto", "true", "false"], description="TPU on the training host: detect, or declare."
        ),
    },
) as dag:
    stage = TFHubStageModelOperator(
        task_id="stage", handle="{{ params.handle }}", cache_dir="{{ params.cache_dir or '' }}"
    )

    plan = TFHubLoadModelOperator(task_id="plan", staged=stage.output, tpu=True)

    @task
    def plan_json(plan: dict[str, Any]) -> str:
        """The plan as one line of JSON: what the pod's environment carries."""
        from tfhub_cache import loading

        return loading.plan_to_json(plan)

    @task.branch
    def choose_runner(params: dict[str, Any] | None = None) -> str:
        return "train_on_gke_tpu" if (params or {}).get("runner") == "gke" else "train_in_venv"

    train_in_venv = task.external_python(task_id="train_in_venv", python=TRAINING_PYTHON, expect_airflow=False)(
        train_head
    )

    json_plan = plan_json(plan.output)
    branch = choose_runner()
    json_plan >> branch
    branch >> _pod_operator(json_plan)
    branch >> train_in_venv(plan.output, "{{ params.local_cache }}", "{{ params.training_tpu }}")

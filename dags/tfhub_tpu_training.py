"""Stage a TF Hub model, prove it loads the way a TPU job must load it, then fine-tune a head on it.

``stage`` puts the model into the cache (or, with ``load_format=UNCOMPRESSED``, only resolves the
hub's ``gs://`` location); ``load`` builds the load plan for the target (on a TPU, a local cache is
read through the coordinator: ``experimental_io_device="/job:localhost"``; a ``gs://`` path needs
nothing special), loads the SavedModel with it once and smoke-tests a signature; ``train`` takes that
plan from XCom, builds ``TPUStrategy`` when the plan says TPU (else the default strategy), loads the
model with the same plan inside ``strategy.scope()`` and trains a small linear head on its outputs for
a couple of steps of synthetic data. On a machine without TPU all of this runs on CPU.

Trigger with a conf to pick the model and cache::

    {"handle": "https://tfhub.dev/google/nnlm-en-dim50/2", "cache_dir": "gs://my-bucket/tfhub-modules",
     "load_format": "COMPRESSED"}

TensorFlow is imported inside the ``train`` task only, so parsing this file stays cheap.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_tfhub.operators.load import TFHubLoadModelOperator
from airflow_provider_tfhub.operators.stage import TFHubStageModelOperator

DEFAULT_HANDLE = "https://tfhub.dev/google/nnlm-en-dim50/2"
TRAIN_STEPS = 2
BATCH_SIZE = 8
LEARNING_RATE = 0.05


def _synthetic_inputs(tf: Any, specs: dict[str, dict[str, Any]], batch: int) -> dict[str, Any]:
    """A batch for each input spec ({"dtype", "shape"} as in the load operator's XCom)."""
    feeds = {}
    for name, spec in specs.items():
        dims = spec["shape"]
        if dims is None or any(d is None for d in dims[1:]):
            raise ValueError(f"Input {name!r} has shape {dims}; this example only feeds inputs whose shape is known.")
        shape = [batch, *dims[1:]]
        if spec["dtype"] == "string":
            words = [f"synthetic example number {i}" for i in range(batch)]
            feeds[name] = tf.reshape(tf.constant(words), [batch] + [1] * (len(shape) - 1))
        elif spec["dtype"].startswith(("float", "bfloat")):
            feeds[name] = tf.random.normal(shape, seed=len(feeds), dtype=spec["dtype"])
        else:
            feeds[name] = tf.zeros(shape, dtype=spec["dtype"])
    return feeds


def _forward(model: Any, plan: dict[str, Any], signature: str) -> tuple[Any, dict[str, Any]]:
    """``(fn(feeds) -> [batch, features] float32, input specs)`` for the signature or, when the model
    has none by that name, the Reusable SavedModel API (``model(inputs)``, what most tfhub.dev TF2
    models offer)."""
    import tensorflow as tf

    def features(outputs: Any) -> Any:
        if isinstance(outputs, dict):
            floats = [outputs[k] for k in sorted(outputs) if outputs[k].dtype.is_floating]
            if not floats:
                raise ValueError(f"Signature {signature!r} has no float output to train a head on.")
            outputs = floats[0]
        return tf.reshape(tf.cast(outputs, tf.float32), [tf.shape(outputs)[0], -1])

    described = plan.get("signatures") or {}
    if signature in described:
        fn = model.signatures[signature]
        return (lambda feeds: features(fn(**feeds))), described[signature]["inputs"]
    concrete = model.__call__.concrete_functions[0]
    args = concrete.structured_input_signature[0]
    if len(args) != 1:
        raise ValueError(f"The model has no signature {signature!r} and its __call__ takes {len(args)} inputs.")
    spec = {"inputs": {"dtype": args[0].dtype.name, "shape": args[0].shape.as_list()}}
    return (lambda feeds: features(model(feeds["inputs"]))), spec


with DAG(
    dag_id="tfhub_tpu_training",
    description="Stage a TF Hub model, verify the TPU-aware load plan, train a small head on it.",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["tfhub", "example", "tpu"],
    params={
        "handle": Param(DEFAULT_HANDLE, type="string", description="TF Hub model handle."),
        "cache_dir": Param(None, type=["null", "string"], description="Local dir or gs://bucket/prefix."),
        "load_format": Param(
            "COMPRESSED",
            enum=["AUTO", "COMPRESSED", "UNCOMPRESSED"],
            description="UNCOMPRESSED reads the model from the hub's gs:// location (no local copy).",
        ),
        "signature": Param("serving_default", type="string", description="Signature to smoke-test and train on."),
    },
) as dag:
    stage = TFHubStageModelOperator(
        task_id="stage",
        handle="{{ params.handle }}",
        cache_dir="{{ params.cache_dir or '' }}",
        load_format="{{ params.load_format }}",
        retries=2,
    )

    load = TFHubLoadModelOperator(
        task_id="load",
        staged=stage.output,
        tpu="auto",
        signature="serving_default",
    )

    @task
    def train(plan: dict[str, Any], params: dict[str, Any] | None = None) -> float:
        """Train a linear head on the model's features under the strategy the plan calls for."""
        import tensorflow as tf

        from tfhub_cache import loading

        if plan["tpu"]:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            strategy = tf.distribute.TPUStrategy(resolver)
        else:
            strategy = tf.distribute.get_strategy()
        print(f"Strategy {type(strategy).__name__}; {plan['reason']}")

        signature = (params or {}).get("signature") or "serving_default"
        with strategy.scope():
            model = loading.load(plan)
            forward, input_specs = _forward(model, plan, signature)
            inputs = _synthetic_inputs(tf, input_specs, BATCH_SIZE)
            feature_dim = int(forward(inputs).shape[-1])
            # MEAN aggregation: each replica's update is averaged, i.e. SGD on the global batch.
            weights = tf.Variable(tf.zeros([feature_dim, 1]), aggregation=tf.VariableAggregation.MEAN)
            bias = tf.Variable(0.0, aggregation=tf.VariableAggregation.MEAN)
        labels = tf.random.normal([BATCH_SIZE, 1], seed=7)
        dataset = tf.data.Dataset.from_tensors((inputs, labels)).repeat(TRAIN_STEPS)

        def replica_step(batch_inputs: Any, batch_labels: Any) -> Any:
            with tf.GradientTape() as tape:
                predictions = tf.matmul(forward(batch_inputs), weights) + bias
                loss = tf.reduce_mean(tf.square(predictions - batch_labels))
            for variable, grad in zip((weights, bias), tape.gradient(loss, [weights, bias]), strict=True):
                variable.assign_sub(LEARNING_RATE * grad)
            return loss

        @tf.function
        def train_step(batch: Any) -> Any:
            per_replica = strategy.run(replica_step, args=batch)
            return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

        loss = float("nan")
        for step, batch in enumerate(strategy.experimental_distribute_dataset(dataset), start=1):
            loss = float(train_step(batch))
            print(f"step {step}: loss {loss:.6f}")
        return loss

    train(load.output)

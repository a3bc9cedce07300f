"""How to load a staged model, decided once and handed to training code: the load plan.

On a TPU the path alone is not enough. A SavedModel in a *local* cache is invisible to the TPU workers,
so its variables must be read on the coordinator (``experimental_io_device="/job:localhost"``); a
``gs://`` path (a GCS cache or UNCOMPRESSED mode) is read by the workers themselves and needs nothing
special; off TPU nothing special applies either. :func:`build_plan` turns a staged-model dict (the stage
operator's XCom) into a small JSON-serializable record of that decision, and :func:`load` applies it.
The load operator and user training code call the very same :func:`load`, so what the operator proved
loadable is what training loads.

Only the stdlib is imported at module level: DAG files and the Airflow scheduler import this module,
and TensorFlow costs seconds and gigabytes. TensorFlow is imported inside :func:`load` (and, only when
the environment says nothing, inside :func:`detect_tpu`).
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any, Literal, TypedDict

from tfhub_cache.errors import ConfigurationError
from tfhub_cache.handles import url_scheme

__all__ = [
    "IO_DEVICE",
    "TENSORFLOW_INSTALL_HINT",
    "TPU_ENV_VARS",
    "LoadPlan",
    "build_plan",
    "describe_signatures",
    "detect_tpu",
    "is_plan",
    "load",
    "smoke_call",
    "validate_tpu",
]

#: Where a TPU job reads a local SavedModel's variables: the coordinator, which can see the local disk.
IO_DEVICE = "/job:localhost"

#: Environment variables set by TPU runtimes (Cloud TPU nodes/VMs, GKE, Colab, TPU pods).
TPU_ENV_VARS = ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_WORKER_HOSTNAMES")

TENSORFLOW_INSTALL_HINT = "pip install 'airflow-provider-tfhub[tensorflow]'"


class LoadPlan(TypedDict):
    """How to load one staged model; the load operator's XCom (plus ``signatures``), a plain JSON dict.

    Built only by :func:`build_plan`. ``load_options`` holds ``tf.saved_model.LoadOptions`` keyword
    arguments; ``reason`` says in words why the plan is what it is.
    """

    path: str
    handle: str | None
    revision: str | None
    load_format: str
    tpu: bool
    load_options: dict[str, str]
    reason: str


#: Keys a plan must have to be applied as one (``revision`` came later: plans from older XComs lack it).
PLAN_KEYS = ("path", "handle", "load_format", "tpu", "load_options", "reason")

#: How long the TPU cluster resolver may take before "no TPU" is assumed (it may ask GCE metadata).
RESOLVER_TIMEOUT_S = 5.0

#: Outputs with more elements than this are not copied into the smoke-test result (XCom stays small).
MAX_OUTPUT_ELEMENTS = 1024

TpuSetting = bool | Literal["auto"]

#: Variables TensorFlow's TPU resolver reads a TPU name from whenever they are present, even if blank.
_RESOLVER_NAME_VARS = ("TPU_NAME", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS")

# -- the decision ------------------------------------------------------------------------------------


def validate_tpu(value: object) -> TpuSetting:
    """``True``/``False`` force the target, ``"auto"`` detects it; anything else is a clear error.

    Strings other than ``"auto"`` are refused on purpose: ``"false"`` would be truthy somewhere else.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    raise ConfigurationError(f"tpu={value!r} is not valid; use tpu=True, tpu=False or tpu='auto' (detect a TPU).")


def detect_tpu() -> bool:
    """True when this process runs where a TPU is attached (see :func:`_detect` for the signals)."""
    return _detect()[0]


def _detect() -> tuple[bool, str]:
    """``(on_tpu, why)``. The environment first (free); the TPU cluster resolver only if it says nothing.

    A blank ``TPU_NAME`` means "no TPU". The resolver needs TensorFlow; without TPU hints it fails in
    microseconds, but with ``TPU_CONFIG`` or GKE endpoints it may query the GCE metadata server, so it
    runs in a daemon thread with a deadline. Any failure, including TensorFlow not being installed,
    means "no TPU".
    """
    for name in TPU_ENV_VARS:
        if os.environ.get(name, "").strip():
            return True, f"{name} is set"
    for name in _RESOLVER_NAME_VARS:
        if name in os.environ:
            # Set but blank: an explicit "no TPU". The resolver would take "" for a TPU name and ask
            # the GCE metadata server for a project: off GCP, a DNS lookup that may hang.
            return False, f"{name} is set but empty"
    checked = ", ".join(TPU_ENV_VARS)
    try:
        import tensorflow as tf
    except Exception:
        return False, f"none of {checked} is set and TensorFlow is not installed"
    outcome: list[bool] = []

    def probe() -> None:
        try:
            tf.distribute.cluster_resolver.TPUClusterResolver()
            outcome.append(True)
        except BaseException:
            outcome.append(False)

    thread = threading.Thread(target=probe, name="tfhub-tpu-probe", daemon=True)
    thread.start()
    thread.join(RESOLVER_TIMEOUT_S)
    if outcome and outcome[0]:
        return True, "a TPU cluster resolver was found"
    if not outcome:
        return False, f"none of {checked} is set and the TPU cluster resolver did not answer in {RESOLVER_TIMEOUT_S:g}s"
    return False, f"none of {checked} is set and no TPU cluster resolver is available"


def is_plan(value: object) -> bool:
    """True for a load plan (as opposed to a staged-model dict): it has every plan key."""
    return isinstance(value, Mapping) and all(key in value for key in PLAN_KEYS)


def _scheme(path: str) -> str | None:
    """The URL scheme of ``path`` (lower case), None for a plain path; ``file://`` counts as a plain path."""
    scheme = url_scheme(path)
    return None if scheme in ("", "file") else scheme


def build_plan(staged: Mapping[str, Any], *, tpu: object = "auto") -> LoadPlan:
    """The load plan for a staged-model dict (``path`` required; ``handle``, ``load_format`` copied).

    Rules: on TPU with a local path, read variables on the coordinator (``experimental_io_device``);
    on TPU with a ``gs://`` path, the workers read it themselves (no options); off TPU, no options.
    ``tpu="auto"`` detects the runtime, ``True``/``False`` force it. The result is JSON-serializable.
    """
    setting = validate_tpu(tpu)
    if not isinstance(staged, Mapping):
        raise ConfigurationError(
            f"Expected a staged-model dict (the stage operator's XCom, with a 'path'), got {type(staged).__name__}."
        )
    path = staged.get("path")
    if not isinstance(path, str) or not path.strip():
        raise ConfigurationError(
            f"The staged-model dict has no usable 'path' (got {path!r}); pass the stage operator's XCom "
            f"(keys like 'handle', 'path', 'load_format'), not {sorted(staged)!r}."
        )
    if setting == "auto":
        on_tpu, why = _detect()
        target = f"auto-detected {'a TPU' if on_tpu else 'no TPU'} ({why})"
    else:
        on_tpu, target = setting, f"tpu={setting} forced"
    scheme = _scheme(path)
    local = scheme is None
    where = "on the local filesystem" if local else f"on {scheme}://"
    if on_tpu and local:
        options = {"experimental_io_device": IO_DEVICE}
        reason = (
            f"TPU: {target}; the model is {where}, which TPU workers cannot see, so variables are read on the "
            f"coordinator (experimental_io_device={IO_DEVICE!r})."
        )
    elif on_tpu:
        options = {}
        reason = f"TPU: {target}; the model is {where}, which TPU workers read directly: no special load options."
    else:
        options = {}
        reason = f"No TPU: {target}; the model is {where}: default load options."
    return LoadPlan(
        path=path,
        handle=staged.get("handle"),
        revision=staged.get("revision"),
        load_format=staged.get("load_format") or "COMPRESSED",
        tpu=on_tpu,
        load_options=options,
        reason=reason,
    )


# -- applying it -----------------------------------------------------------------------------------------


def _tensorflow() -> Any:
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise ImportError(
            f"TensorFlow is required to load TF Hub models but could not be imported ({exc}); install it with "
            f"{TENSORFLOW_INSTALL_HINT}."
        ) from exc
    return tf


def load(plan_or_staged: Mapping[str, Any], *, tpu: object = "auto", tags: str | list[str] | None = None) -> Any:
    """Load the SavedModel the way the plan says and return the loaded object.

    Given a staged-model dict, the plan is built first with ``tpu``; given a plan (e.g. from the load
    operator's XCom), it is applied as is and ``tpu`` is not consulted. ``tags`` go to
    ``tf.saved_model.load`` (needed only for TF1-style models with several MetaGraphs).
    """
    validate_tpu(tpu)
    plan = dict(plan_or_staged) if is_plan(plan_or_staged) else build_plan(plan_or_staged, tpu=tpu)
    options = plan["load_options"]
    if not isinstance(options, Mapping):
        raise ConfigurationError(f"The plan's load_options must be a dict, got {options!r}.")
    path = plan["path"]
    if _scheme(path) is None:
        local = urllib.parse.unquote(urllib.parse.urlsplit(path).path) if path.startswith("file:") else path
        if not os.path.isdir(local):
            raise FileNotFoundError(
                f"The staged model {path!r} does not exist on this machine ({socket.gethostname()}). A local cache "
                "is per machine: stage and load on the same worker (e.g. one queue), use a shared volume, or a "
                "gs:// cache."
            )
    tf = _tensorflow()
    try:
        load_options = tf.saved_model.LoadOptions(**options)
    except TypeError as exc:
        raise ConfigurationError(
            f"The plan's load_options {dict(options)!r} are not tf.saved_model.LoadOptions arguments: {exc}"
        ) from exc
    return tf.saved_model.load(path, tags=tags, options=load_options)


# -- what the loaded model offers --------------------------------------------------------------------------


def _spec_dict(spec: Any) -> dict[str, Any]:
    """``{"dtype": "float32", "shape": [None, 3]}``; ``shape`` is None for an unknown rank."""
    shape = getattr(spec, "shape", None)
    dims = None if shape is None or shape.rank is None else shape.as_list()
    dtype = getattr(spec, "dtype", None)
    result: dict[str, Any] = {"dtype": getattr(dtype, "name", str(dtype)), "shape": dims}
    kind = type(spec).__name__
    if kind != "TensorSpec":
        result["kind"] = kind
    return result


def _signature_inputs(fn: Any) -> dict[str, Any]:
    args, kwargs = fn.structured_input_signature
    inputs = {f"arg{i}": spec for i, spec in enumerate(args)}
    inputs.update(kwargs)
    return inputs


def _signature_outputs(fn: Any) -> dict[str, Any]:
    outputs = fn.structured_outputs
    if isinstance(outputs, Mapping):
        return dict(outputs)
    if isinstance(outputs, (list, tuple)):
        return {f"output_{i}": spec for i, spec in enumerate(outputs)}
    return {"output_0": outputs}


def _signatures(obj: Any) -> Mapping[str, Any]:
    signatures = getattr(obj, "signatures", None)
    return signatures if isinstance(signatures, Mapping) else {}


def describe_signatures(obj: Any) -> dict[str, Any]:
    """``{name: {"inputs": {arg: spec}, "outputs": {key: spec}}}`` with JSON-friendly specs (see ``_spec_dict``)."""
    return {
        name: {
            "inputs": {key: _spec_dict(spec) for key, spec in sorted(_signature_inputs(fn).items())},
            "outputs": {key: _spec_dict(spec) for key, spec in sorted(_signature_outputs(fn).items())},
        }
        for name, fn in sorted(_signatures(obj).items())
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def smoke_call(obj: Any, signature: str = "serving_default") -> dict[str, Any]:
    """Call ``signature`` once on zeros of its input spec and return the outputs as lists.

    Inputs must be fully defined, or unknown only in the first (batch) dimension, which becomes 1;
    otherwise the call is skipped with a reason (no input can be invented for, e.g., an image of any
    size). A model without that signature is skipped too, naming the ones it has: many tfhub.dev models
    offer only the Reusable SavedModel API (``obj(inputs)``), and they load fine. Outputs above
    ``MAX_OUTPUT_ELEMENTS`` elements are listed in ``omitted`` (value None).
    """
    signatures = _signatures(obj)
    result: dict[str, Any] = {
        "signature": signature,
        "called": False,
        "reason": None,
        "inputs": {},
        "outputs": {},
        "output_shapes": {},
        "omitted": [],
    }
    if not signatures:
        return {**result, "reason": "the model exports no signatures (call the loaded object directly)"}
    if signature not in signatures:
        return {**result, "reason": f"the model has no signature {signature!r}; it has {sorted(signatures)!r}"}
    fn = signatures[signature]
    args, kwargs = fn.structured_input_signature
    if args:
        return {**result, "reason": "the signature takes positional inputs; signatures normally take keywords"}
    tf = _tensorflow()
    feeds: dict[str, Any] = {}
    for name, spec in sorted(kwargs.items()):
        described = _spec_dict(spec)
        dims = described["shape"]
        if "kind" in described or dims is None:
            return {**result, "reason": f"input {name!r} is a {described.get('kind', 'tensor of unknown rank')}"}
        if any(d is None for d in dims[1:]):
            return {**result, "reason": f"input {name!r} has shape {dims}: only the batch dimension may be unknown"}
        feeds[name] = tf.zeros([1 if d is None else d for d in dims], dtype=spec.dtype)
    raw = fn(**feeds)
    outputs = raw if isinstance(raw, Mapping) else {"output_0": raw}
    values: dict[str, Any] = {}
    shapes: dict[str, Any] = {}
    omitted: list[str] = []
    for key, tensor in sorted(outputs.items()):
        array = tensor.numpy()
        shapes[key] = list(array.shape)
        if array.size > MAX_OUTPUT_ELEMENTS:
            values[key] = None
            omitted.append(key)
        else:
            values[key] = _jsonable(array.tolist())
    return {
        **result,
        "called": True,
        "inputs": {name: {"dtype": t.dtype.name, "shape": t.shape.as_list()} for name, t in feeds.items()},
        "outputs": values,
        "output_shapes": shapes,
        "omitted": omitted,
    }

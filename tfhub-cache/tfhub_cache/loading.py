"""How to load a staged model, decided once and handed to training code: the load plan.

On a TPU the path alone is not enough. A SavedModel in a *local* cache is invisible to the TPU workers,
so its variables must be read on the coordinator (``experimental_io_device="/job:localhost"``); a
``gs://`` path (a GCS cache or UNCOMPRESSED mode) is read by the workers themselves and needs nothing
special; off TPU nothing special applies either. :func:`build_plan` turns a staged-model dict (the stage
operator's XCom) into a small JSON-serializable record of that decision, and :func:`load` applies it.
The load operator and user training code call the very same :func:`load`, so what the operator proved
loadable is what training loads.

Training rarely runs in the Airflow worker: the plan is plain JSON (:func:`plan_to_json`,
:func:`plan_from_json`) that travels in an XCom, an environment variable (:data:`PLAN_ENV_VAR`) or a pod
argument, and :func:`load` settles what only the loading host can know: whether a TPU is attached
there (``tpu="auto"``), and, given ``local_cache``, where the model sits after it was pulled from the
shared ``gs://`` cache onto that host's disk (then read through the coordinator on a TPU).

Only the stdlib is imported at module level: DAG files and the Airflow scheduler import this module,
and TensorFlow costs seconds and gigabytes. TensorFlow is imported inside :func:`load` (and, only when
the environment says nothing, inside :func:`detect_tpu`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any, Literal, TypedDict

from tfhub_cache.errors import ConfigurationError
from tfhub_cache.handles import url_scheme
from tfhub_cache.native_stderr import import_tensorflow, native_stderr_to_log

__all__ = [
    "IO_DEVICE",
    "PLAN_ENV_VAR",
    "TENSORFLOW_INSTALL_HINT",
    "TPU_ENV_VARS",
    "LoadPlan",
    "build_plan",
    "describe_signatures",
    "detect_tpu",
    "is_plan",
    "load",
    "plan_from_json",
    "plan_to_json",
    "resolve_plan",
    "smoke_call",
    "validate_tpu",
]

#: Where a TPU job reads a local SavedModel's variables: the coordinator, which can see the local disk.
IO_DEVICE = "/job:localhost"

#: Environment variables set by TPU runtimes (Cloud TPU nodes/VMs, GKE, Colab, TPU pods).
TPU_ENV_VARS = ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_WORKER_HOSTNAMES")

#: How to get TensorFlow: the library's extra, or the provider's on an Airflow worker.
TENSORFLOW_INSTALL_HINT = (
    'pip install "tfhub-cache[tensorflow]" (on an Airflow worker: pip install "airflow-provider-tfhub[tensorflow]")'
)

#: The environment variable a plan travels in to a training process (pod, TPU VM, external venv).
PLAN_ENV_VAR = "TFHUB_LOAD_PLAN"

log = logging.getLogger(__name__)


class LoadPlan(TypedDict):
    """How to load one staged model; the load operator's XCom (plus ``signatures``), a plain JSON dict.

    Built only by :func:`build_plan`. ``load_options`` holds ``tf.saved_model.LoadOptions`` keyword
    arguments; ``reason`` says in words why the plan is what it is.
    """

    path: str
    handle: str | None
    revision: str | None
    #: The cache ``path`` belongs to (a pull's source on the loading host); None outside a cache.
    cache_dir: str | None
    load_format: str
    tpu: bool
    load_options: dict[str, str]
    reason: str


#: Keys a plan must have to be applied as one (``revision`` and ``cache_dir`` came later: older plans lack them).
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
        tf = import_tensorflow()
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
    path = _staged_path(staged)
    on_tpu, target = _target(setting)
    return _plan_for(staged, path, on_tpu, target)


def _staged_path(staged: object) -> str:
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
    return path


def _target(setting: TpuSetting) -> tuple[bool, str]:
    """``(on_tpu, words)`` for a ``tpu`` setting: detected on this host for ``"auto"``, else as declared."""
    if setting == "auto":
        on_tpu, why = _detect()
        return on_tpu, f"auto-detected {'a TPU' if on_tpu else 'no TPU'} ({why})"
    return setting, f"tpu={setting} forced"


def _plan_for(staged: Mapping[str, Any], path: str, on_tpu: bool, target: str) -> LoadPlan:
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
        cache_dir=staged.get("cache_dir") or _cache_of(path),
        load_format=staged.get("load_format") or "COMPRESSED",
        tpu=on_tpu,
        load_options=options,
        reason=reason,
    )


# -- applying it -----------------------------------------------------------------------------------------


def _tensorflow() -> Any:
    try:
        tf = import_tensorflow()
    except ImportError as exc:
        raise ImportError(
            f"TensorFlow is required to load TF Hub models but could not be imported ({exc}); install it with "
            f"{TENSORFLOW_INSTALL_HINT}."
        ) from exc
    return tf


def plan_to_json(plan: Mapping[str, Any]) -> str:
    """The plan as one line of JSON: what an environment variable or a pod argument carries."""
    if not is_plan(plan):
        raise ConfigurationError(f"Not a load plan (keys {sorted(plan)!r}); build one with loading.build_plan.")
    return json.dumps({key: plan[key] for key in LoadPlan.__annotations__ if key in plan}, sort_keys=True)


def plan_from_json(text: str) -> LoadPlan:
    """Parse a plan that travelled as JSON (an XCom, :data:`PLAN_ENV_VAR`, a pod argument); clear errors."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"The load plan is not JSON ({exc}); pass loading.plan_to_json(plan), e.g. in {PLAN_ENV_VAR}."
        ) from exc
    if not is_plan(value):
        missing = [k for k in PLAN_KEYS if not isinstance(value, Mapping) or k not in value]
        raise ConfigurationError(
            f"The JSON is no load plan: it lacks {', '.join(missing)}; pass the load operator's XCom or "
            "loading.plan_to_json(loading.build_plan(staged))."
        )
    plan: dict[str, Any] = {"revision": None, "cache_dir": None, **value}
    return LoadPlan(**{key: plan[key] for key in LoadPlan.__annotations__})  # type: ignore[typeddict-item]


#: ``<cache>/<sha1>.revisions/<rev>``: where a staged revision lives, so older plans still name their cache.
_REVISION_PATH_RE = re.compile(r"^(?P<cache>.+)/[0-9a-f]{40}\.revisions/[0-9a-f]{12}/?$")


def _cache_of(path: str) -> str | None:
    match = _REVISION_PATH_RE.match(path)
    return match.group("cache") if match else None


def resolve_plan(
    plan_or_staged: Mapping[str, Any] | str,
    local_cache: str | None = None,
    tpu: object = "auto",
    *,
    source_options: dict[str, Any] | None = None,
) -> LoadPlan:
    """The plan as it applies on this host, pulling the model into ``local_cache`` first when asked.

    A plan (a dict or its JSON) was decided where it was built, maybe for a declared target; here
    ``tpu="auto"`` detects whether this host has a TPU (``True``/``False`` declare it). With
    ``local_cache`` a revision of a ``gs://`` cache is pulled into it (:func:`tfhub_cache.pull`: no hub
    request) and loaded from the local disk, through the coordinator on a TPU; without it the ``gs://``
    path is read directly. When nothing differs from the recorded decision the plan is returned as is.
    """
    setting = validate_tpu(tpu)
    record: Mapping[str, Any] = plan_from_json(plan_or_staged) if isinstance(plan_or_staged, str) else plan_or_staged
    on_tpu, target = _target(setting)  # once: detection may take seconds
    if is_plan(record):
        plan = plan_from_json(plan_to_json(record))
    else:
        plan = _plan_for(record, _staged_path(record), on_tpu, target)
    path = plan["path"]
    if local_cache is not None and _scheme(path) == "gs":
        path = _pull_into(plan, local_cache, source_options)
    if path == plan["path"] and on_tpu == plan["tpu"]:
        return plan
    return _plan_for(plan, path, on_tpu, target)


def _pull_into(plan: LoadPlan, local_cache: str, source_options: dict[str, Any] | None) -> str:
    source = plan.get("cache_dir") or _cache_of(plan["path"])
    if not plan.get("handle") or not plan.get("revision") or not source:
        log.info("%s is not a revision of a cache (no handle/revision): reading it where it is.", plan["path"])
        return plan["path"]
    from tfhub_cache.cache.pull import pull

    pulled = pull(
        str(plan["handle"]),
        source=source,
        cache_dir=local_cache,
        revision=str(plan["revision"]),
        source_options=source_options,
    )
    return pulled["path"]


def load(
    plan_or_staged: Mapping[str, Any] | str,
    local_cache: str | None = None,
    tpu: object = "auto",
    *,
    tags: str | list[str] | None = None,
    source_options: dict[str, Any] | None = None,
) -> Any:
    """Load the SavedModel the way the plan says, as it applies on this host, and return the loaded object.

    ``plan_or_staged``: a plan (the load operator's XCom, or its JSON, e.g. ``os.environ[PLAN_ENV_VAR]``)
    or a staged-model dict (the plan is then built here). ``tpu="auto"`` detects a TPU on this host,
    ``True``/``False`` declare it; ``local_cache`` pulls a ``gs://`` revision onto this host first (see
    :func:`resolve_plan`). ``tags`` go to ``tf.saved_model.load`` (TF1-style models with several MetaGraphs).
    """
    plan = resolve_plan(plan_or_staged, local_cache, tpu, source_options=source_options)
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
                "gs:// cache (and local_cache= to pull it onto this machine)."
            )
    log.info("Loading %s from %s (%s)", plan["handle"], path, plan["reason"])
    tf = _tensorflow()
    try:
        load_options = tf.saved_model.LoadOptions(**options)
    except TypeError as exc:
        raise ConfigurationError(
            f"The plan's load_options {dict(options)!r} are not tf.saved_model.LoadOptions arguments: {exc}"
        ) from exc
    with native_stderr_to_log():  # the first op initialises devices: cuInit's notice on a GPU-less host
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

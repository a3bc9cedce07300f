"""``TFHubLoadModelOperator``: prove a staged model loads the way training will load it, and say how.

It takes the stage operator's XCom (or stages ``handle`` itself), builds the load plan for the target
(TPU or not, see :mod:`tfhub_cache.loading`), loads the SavedModel with exactly that plan,
optionally calls a signature once on zeros, and returns the plan plus the model's signatures as XCom.
Training tasks then call ``loading.load(plan)`` and get the same, already verified, behaviour.

The operator is thin: staging is the hook's job, the decision and the loading are ``loading``'s.
TensorFlow is imported only when ``execute`` loads the model, never when the DAG is parsed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from airflow.sdk import BaseOperator

from airflow_provider_tfhub.arguments import (
    ArgumentChecks,
    MappedArgumentChecks,
    check_arguments,
    checked_arguments,
    raise_argument_error,
)
from airflow_provider_tfhub.run_holds import HoldFor, check_hold_for, hold_staged
from airflow_provider_tfhub.task_helpers import run_core
from tfhub_cache import loading, settings
from tfhub_cache.errors import ConfigurationError
from tfhub_cache.handles import parse_handle


class TFHubLoadModelOperator(MappedArgumentChecks, BaseOperator):
    """Load a staged TF Hub model with the right options for the target and return the load plan.

    :param handle: model handle to stage first (templated). Exactly one of ``handle`` and ``staged``.
    :param staged: the staged-model dict, usually ``stage_task.output`` (templated / XComArg).
    :param tpu: ``"auto"`` (detect a TPU runtime on this worker), ``True`` or ``False``: the declared
        target, e.g. ``tpu=True`` when training runs on a TPU VM or GKE TPU pod and not here. The
        smoke test loads with the plan for that target; the training host re-checks with
        ``loading.load(plan, local_cache=..., tpu="auto")``.
    :param load_format: ``AUTO``/``COMPRESSED``/``UNCOMPRESSED`` for staging ``handle``; only with ``handle``.
    :param signature: the signature to smoke-test and describe first.
    :param smoke_test: call ``signature`` once on zeros of its input spec (see ``loading.smoke_call``).
    :param cache_dir: cache for staging ``handle`` (templated); only with ``handle``.
    :param tfhub_conn_id: ``tfhub`` connection used for staging (optional).
    :param hold_for: hold the loaded revision for this DAG run during this long (``"12h"``, ``"7d"``,
        seconds or a ``timedelta``) so ``prune`` keeps it while training may reload it; ``None``
        (default) holds nothing. Release it with ``TFHubReleaseOperator`` as a teardown.

    XCom: the plan (``path``, ``handle``, ``revision``, ``cache_dir``, ``load_format``, ``tpu``,
    ``load_options``, ``reason``) plus ``signatures`` and, with ``smoke_test`` (on by default),
    ``smoke_test``: the call's input specs, its small outputs and ``output_shapes`` (the shape of every
    output, also of those too large to copy).
    """

    template_fields: Sequence[str] = ("handle", "staged", "cache_dir", "hold_for")
    ui_color = "#e0f0ff"
    argument_checks: ClassVar[ArgumentChecks] = {
        "handle": parse_handle,
        "load_format": settings.resolve_load_format,
        "tpu": loading.validate_tpu,
    }

    def __init__(
        self,
        *,
        handle: str | None = None,
        staged: Any = None,
        tpu: bool | str = "auto",
        load_format: str | None = None,
        signature: str = "serving_default",
        smoke_test: bool = True,
        cache_dir: str | None = None,
        tfhub_conn_id: str = "tfhub_default",
        hold_for: HoldFor = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.tpu = tpu
        self.hold_for = hold_for
        self.handle = handle
        self.staged = staged
        self.load_format = load_format
        self.signature = signature
        self.smoke_test = smoke_test
        self.cache_dir = cache_dir
        self.tfhub_conn_id = tfhub_conn_id
        with checked_arguments(self):
            if (handle is None) == (staged is None):
                raise ConfigurationError(
                    f"{type(self).__name__} needs exactly one of handle= (a model handle to stage) and staged= "
                    f"(the stage operator's output, e.g. staged=stage.output); got "
                    f"{'both' if handle is not None else 'neither'}."
                )
            if staged is not None and (load_format is not None or cache_dir is not None):
                raise ConfigurationError(
                    "load_format= and cache_dir= apply to staging a handle=; with staged= the model is already "
                    "staged (set them on the stage operator instead)."
                )
            if not isinstance(signature, str) or not signature.strip():
                raise ConfigurationError(f"signature={signature!r} must be a signature name such as 'serving_default'.")
            self.tpu = loading.validate_tpu(tpu)
            check_hold_for(hold_for)
            check_arguments(self.argument_checks, {"load_format": load_format, "handle": handle})

    def _staged_model(self) -> Any:
        if self.staged is not None:
            return self.staged
        from airflow_provider_tfhub.hooks.tfhub import TFHubHook

        hook = TFHubHook(tfhub_conn_id=self.tfhub_conn_id)
        return run_core(hook.stage, self.handle, self.cache_dir or None, load_format=self.load_format or None)

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        raise_argument_error(self)
        staged = self._staged_model()
        plan = run_core(loading.build_plan, staged, tpu=self.tpu)
        if isinstance(staged, dict):
            run_core(hold_staged, staged, hold_for=self.hold_for, context=context, conn_id=self.tfhub_conn_id)
        try:  # loading.load logs "Loading <handle> from <path> (<reason>)"
            model = run_core(loading.load, plan, tpu=plan["tpu"])  # the target planned for, not this worker
        except ImportError as exc:  # no TensorFlow on this worker: retrying cannot help
            raise AirflowFailException(str(exc)) from exc
        result: dict[str, Any] = {**plan, "signatures": loading.describe_signatures(model)}
        self.log.info("Loaded; signatures: %s", ", ".join(result["signatures"]) or "(none)")
        if self.smoke_test:
            smoke = run_core(loading.smoke_call, model, self.signature)
            if smoke["called"]:
                self.log.info("Smoke call of %r returned outputs of shapes %s", self.signature, smoke["output_shapes"])
            else:
                self.log.warning("Smoke call of %r skipped: %s.", self.signature, smoke["reason"])
            result["smoke_test"] = smoke
        return result

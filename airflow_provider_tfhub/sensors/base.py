"""``BaseTFHubCacheSensor``: what the sensors that wait for a model to be staged (``cached``) or to
change upstream (``updated``) share.

Both share :class:`BaseTFHubCacheSensor`: arguments, parse-time checks, and the deferrable
pattern of the Google provider's GCS sensors (poke once, then defer to a trigger that polls
every ``poke_interval`` seconds; ``execute_complete`` turns the event into the XCom value).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseSensorOperator, PokeReturnValue, conf

from airflow_provider_tfhub.arguments import (
    ArgumentChecks,
    MappedArgumentChecks,
    check_arguments,
    checked_arguments,
    raise_argument_error,
)
from airflow_provider_tfhub.task_helpers import is_literal
from tfhub_cache import settings
from tfhub_cache.errors import ConfigurationError
from tfhub_cache.handles import require_cacheable

if TYPE_CHECKING:
    from airflow_provider_tfhub.hooks.tfhub import TFHubHook
    from airflow_provider_tfhub.triggers.tfhub import BaseTFHubCacheTrigger
    from tfhub_cache.storage import Storage


def cached_handle(handle: str) -> str:
    """The normalised handle of a model that can be in the cache (a local directory cannot)."""
    return require_cacheable(handle).text


class BaseTFHubCacheSensor(MappedArgumentChecks, BaseSensorOperator):
    """Common arguments of the TF Hub sensors.

    :param handle: model handle (templated).
    :param cache_dir: local dir or ``gs://bucket/prefix`` (templated); default from the connection,
        ``TFHUB_CACHE_DIR`` or ``[tfhub] cache_dir``.
    :param tfhub_conn_id: ``tfhub`` connection (optional).
    :param deferrable: wait in the triggerer instead of a worker slot (default
        ``[operators] default_deferrable``).
    :param poll_interval: seconds between the trigger's checks when deferred (templated; default
        ``poke_interval``). Poke and reschedule modes use ``poke_interval``.
    """

    template_fields: Sequence[str] = ("handle", "cache_dir", "poll_interval")
    ui_color = "#ffe8cc"
    trigger_class: ClassVar[type[BaseTFHubCacheTrigger]]
    argument_checks: ClassVar[ArgumentChecks] = {"handle": cached_handle, "cache_dir": settings.resolve_cache_dir}

    def __init__(
        self,
        *,
        handle: str,
        cache_dir: str | None = None,
        tfhub_conn_id: str = "tfhub_default",
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.handle = handle
        self.cache_dir = cache_dir
        self.tfhub_conn_id = tfhub_conn_id
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        with checked_arguments(self):
            check_arguments(self.argument_checks, {"handle": handle, "cache_dir": cache_dir})
            if poll_interval is not None and (not isinstance(poll_interval, str) or is_literal(poll_interval)):
                self.trigger_poll_interval()

    def trigger_poll_interval(self) -> float:
        """``poll_interval`` (rendered) as seconds, or ``poke_interval`` when unset."""
        value = self.poll_interval
        if value is None or (isinstance(value, str) and not value.strip()):
            return float(self.poke_interval)
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = -1.0
        if seconds <= 0:
            raise ConfigurationError(f"poll_interval={value!r} is not a positive number of seconds.")
        return seconds

    @cached_property
    def hook(self) -> TFHubHook:
        from airflow_provider_tfhub.hooks.tfhub import TFHubHook

        return TFHubHook(tfhub_conn_id=self.tfhub_conn_id)

    def storage(self) -> Storage:
        return self.hook.open_storage(self.cache_dir or None)

    def execute(self, context: Any) -> Any:
        raise_argument_error(self)
        if not self.deferrable:
            return super().execute(context)
        result = self.poke(context)
        if isinstance(result, PokeReturnValue) and result.is_done:
            return result.xcom_value
        self.defer(
            trigger=self.trigger_class(
                handle=cached_handle(self.handle),
                cache_dir=self.hook.resolve_cache_dir(self.cache_dir or None),
                tfhub_conn_id=self.tfhub_conn_id,
                poll_interval=self.trigger_poll_interval(),
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        """The XCom value of a success event; an error event fails the task.

        A permanent error (``event["permanent"]``: 404, bad handle, missing bucket) raises
        ``AirflowFailException`` (no retries, as in poke mode); any other error is retried.
        """
        from airflow.sdk.exceptions import AirflowException, AirflowFailException

        if not event or event.get("status") != "success":
            message = (event or {}).get("message", "no event")
            text = f"{self.task_id}: waiting for {self.handle} failed: {message}"
            if (event or {}).get("permanent"):
                raise AirflowFailException(text)
            raise AirflowException(text)
        return self.event_value(event)

    def event_value(self, event: dict[str, Any]) -> Any:
        """The XCom value carried by a success event."""
        raise NotImplementedError

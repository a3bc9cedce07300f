"""What every operator and sensor of this provider does the same way around the core.

- :func:`is_literal` / :func:`check_literals`: check at DAG-parse time what is already known
  (a plain string), and leave templates and XComArgs to run time.
- :func:`run_core`: a permanent core error fails the task without retries.
- :func:`emit_asset_events` / :func:`result_of`: hand a task's result to its Asset outlets and to
  OpenLineage.

One home, so the operators do not import helpers from one another (they once came from
``operators/stage.py``) and the sensors follow the same rules as the operators.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from tfhub_cache.errors import TFHubError

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator

T = TypeVar("T")


def is_literal(value: object) -> bool:
    """True for a plain value that can be validated now (not a Jinja template, not an XComArg)."""
    return isinstance(value, str) and "{{" not in value and "{%" not in value


def check_literals(*checks: tuple[object, Callable[[Any], object]]) -> None:
    """Run each ``(value, check)``'s check on its value when the value is a literal (see :func:`is_literal`).

    A check raises the core's error for a bad value, so a bad handle or setting fails at DAG-parse
    time; a templated value is checked by the core when the task runs.
    """
    for value, check in checks:
        if is_literal(value):
            check(value)


def run_core(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call the core; a permanent error (bad handle, 404, checksum) fails the task without retries."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        return fn(*args, **kwargs)
    except TFHubError as exc:
        if exc.permanent:
            raise AirflowFailException(str(exc)) from exc
        raise


def result_of(task: BaseOperator, attribute: str, task_instance: Any) -> Any:
    """What ``execute`` returned: kept on the operator, else its XCom (a listener on another instance)."""
    value = getattr(task, attribute, None)
    if value is None and task_instance is not None and hasattr(task_instance, "xcom_pull"):
        try:
            value = task_instance.xcom_pull(task_ids=task.task_id)
        except Exception:  # lineage is best effort: never fail or mask the task
            value = None
    return value


def emit_asset_events(task: BaseOperator, context: Any, extra: Mapping[str, Any]) -> None:
    """Attach ``extra`` to the event of every Asset outlet of ``task``."""
    from airflow.sdk import Asset

    events = context.get("outlet_events") if hasattr(context, "get") else None
    if events is None:
        return
    for outlet in task.outlets or ():
        if isinstance(outlet, Asset):
            events[outlet].extra = dict(extra)

"""When a bad operator argument is reported: at DAG-parse time wherever its value is known then.

A plain operator is built when the DAG file is parsed, so the checks in its constructor raise an
import error that names the bad value. A mapped operator is not: ``Operator.partial(...).expand(
handle=[...])`` only records the arguments, and Airflow builds the real operator inside the running
task ("unmapping"). An error raised there would be retried like any failure, shown under the bare map
index, and hidden in the collapsed "Pre Execute" log group. So:

- :class:`MappedArgumentChecks` gives an operator a ``partial()`` whose ``expand()`` checks the literal
  arguments (each item of a literal ``expand()`` list, and the literal ``partial()`` arguments) with the
  operator's ``argument_checks``: a bad value is an import error, like for a plain operator;
- :func:`checked_arguments` lets a constructor that runs inside a task keep its error instead of
  raising it, and :func:`raise_argument_error` fails the task with it (``AirflowFailException``: no
  retries) when ``execute`` starts: after the map label is rendered, outside the log group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

from airflow_provider_tfhub.task_helpers import is_literal
from tfhub_cache.errors import ConfigurationError, InvalidHandleError, TFHubError

#: argument name -> a check that raises the core's error for a bad value
ArgumentChecks = Mapping[str, Callable[[Any], object]]
#: called with the MappedOperator and the ``expand()`` arguments once they are checked
ExpandHook = Callable[[Any, Mapping[str, Any]], None]


def is_checkable(value: object) -> bool:
    """A value known at parse time: a string without Jinja, a number, a dict (not an XComArg, not None)."""
    if isinstance(value, bool):
        return False
    return is_literal(value) or isinstance(value, (int, float, Mapping))


def check_arguments(checks: ArgumentChecks, values: Mapping[str, object]) -> None:
    """Run the check of every named argument whose value is known now (see :func:`is_checkable`)."""
    for name, value in values.items():
        check = checks.get(name)
        if check is not None and is_checkable(value):
            check(value)


def _named(exc: TFHubError, where: str) -> TFHubError:
    error_type = InvalidHandleError if isinstance(exc, InvalidHandleError) else ConfigurationError
    return error_type(f"{where}: {exc}")


class CheckedPartial:
    """An ``OperatorPartial`` whose ``expand()`` / ``expand_kwargs()`` check literal arguments first."""

    def __init__(self, partial: Any, checks: ArgumentChecks, on_expand: ExpandHook | None = None) -> None:
        self.partial = partial
        self.checks = checks
        self.on_expand = on_expand

    def __getattr__(self, name: str) -> Any:
        return getattr(self.partial, name)

    def __repr__(self) -> str:
        return repr(self.partial)

    def _check(self, values: Mapping[str, object], where: str) -> None:
        try:
            check_arguments(self.checks, values)
        except TFHubError as exc:
            raise _named(exc, where) from exc

    def _check_partial_kwargs(self) -> str:
        task_id = str(self.partial.kwargs.get("task_id"))
        for name, value in self.partial.kwargs.items():
            self._check({name: value}, f"{task_id}: partial({name}=...)")
        return task_id

    def expand(self, **mapped_kwargs: Any) -> Any:
        mapped = self.partial.expand(**mapped_kwargs)
        task_id = self._check_partial_kwargs()
        for name, values in mapped_kwargs.items():
            if isinstance(values, Sequence) and not isinstance(values, str):
                for index, value in enumerate(values):
                    self._check({name: value}, f"{task_id}: item {index} of expand({name}=[...])")
            elif isinstance(values, Mapping):
                for key, value in values.items():
                    self._check({name: value}, f"{task_id}: key {key!r} of expand({name}={{...}})")
        if self.on_expand is not None:
            self.on_expand(mapped, mapped_kwargs)
        return mapped

    def expand_kwargs(self, kwargs: Any, *, strict: bool = True) -> Any:
        mapped = self.partial.expand_kwargs(kwargs, strict=strict)
        task_id = self._check_partial_kwargs()
        if isinstance(kwargs, Sequence):
            for index, item in enumerate(kwargs):
                if isinstance(item, Mapping):
                    self._check(item, f"{task_id}: item {index} of expand_kwargs([...])")
        return mapped


class MappedArgumentChecks:
    """Parse-time checks for mapped operators, and the run-time side of :func:`checked_arguments`.

    Subclasses list their checks in ``argument_checks`` and put this class before ``BaseOperator``.
    """

    argument_checks: ClassVar[ArgumentChecks] = {}
    argument_error: str | None = None

    @classmethod
    def on_expand(cls, mapped: Any, mapped_kwargs: Mapping[str, Any]) -> None:
        """Adjust the MappedOperator from the checked ``expand()`` arguments (e.g. its map labels); none here."""

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        base: Any = super()
        return CheckedPartial(base.partial(**kwargs), cls.argument_checks, cls.on_expand)


def _in_running_task() -> bool:
    from airflow.sdk import get_current_context

    try:
        get_current_context()
    except Exception:  # no task is running: the DAG file is being parsed
        return False
    return True


@contextmanager
def checked_arguments(task: MappedArgumentChecks) -> Iterator[None]:
    """Around a constructor's checks: raise at parse time, keep the error inside a running task.

    Set every attribute before entering: the first failing check ends the block.
    """
    try:
        yield
    except TFHubError as exc:
        if not exc.permanent or not _in_running_task():
            raise
        task.argument_error = str(exc)


def raise_argument_error(task: MappedArgumentChecks) -> None:
    """Fail the task without retries when its constructor kept an error (see :func:`checked_arguments`)."""
    if task.argument_error:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(task.argument_error)

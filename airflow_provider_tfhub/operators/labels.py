"""Mapped-instance labels for operators that take a ``handle``: ``stage [google/nnlm-en-dim50/2]``.

Airflow renders an operator's ``map_index_template`` with the task context once the templated fields
are rendered (and again after ``execute``), and shows the result instead of ``[0]``, ``[1]``... in the
grid and the task-instance lists. Declaring the template as an ``__init__`` default (see
:class:`TFHubStageModelOperator`) makes ``Operator.partial(...).expand(handle=[...])`` pick it up too,
because ``partial()`` reads BaseOperator defaults from subclass signatures. A DAG author can still pass
their own ``map_index_template`` (or ``""`` for plain indexes).
"""

from __future__ import annotations

from tfhub_cache.labels import handle_label

HANDLE_MAP_INDEX_TEMPLATE = "{{ task.handle_label }}"


class HandleLabelMixin:
    """Gives an operator with a ``handle`` attribute the ``handle_label`` used by the template above."""

    handle: object

    @property
    def handle_label(self) -> str:
        return handle_label(self.handle)

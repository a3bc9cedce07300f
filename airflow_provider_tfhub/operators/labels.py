"""Mapped-instance labels for operators that take a ``handle``: ``stage [google/nnlm-en-dim50/2]``.

Airflow renders an operator's ``map_index_template`` with the task context once the templated fields
are rendered (and again after ``execute``), and shows the result instead of ``[0]``, ``[1]``... in the
grid and the task-instance lists. Declaring the template as an ``__init__`` default (see
:class:`TFHubStageModelOperator`) makes ``Operator.partial(...).expand(handle=[...])`` pick it up too,
because ``partial()`` reads BaseOperator defaults from subclass signatures. A DAG author can still pass
their own ``map_index_template`` (or ``""`` for plain indexes).

When the literal ``expand(handle=[...])`` list holds handles that would read alike without their host
(the same model on tfhub.dev and on a mirror), :func:`keep_hosts_if_ambiguous` switches the default
template to one that keeps the host: a label only sees its own handle, the list is seen at parse time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tfhub_cache.labels import ambiguous_labels, handle_label

HANDLE_MAP_INDEX_TEMPLATE = "{{ task.handle_label }}"
HANDLE_WITH_HOST_MAP_INDEX_TEMPLATE = "{{ task.handle_label_with_host }}"


class HandleLabelMixin:
    """Gives an operator with a ``handle`` attribute the ``handle_label`` used by the template above."""

    handle: object

    @property
    def handle_label(self) -> str:
        return handle_label(self.handle)

    @property
    def handle_label_with_host(self) -> str:
        return handle_label(self.handle, keep_host=True)


def keep_hosts_if_ambiguous(mapped: Any, mapped_kwargs: Mapping[str, Any]) -> None:
    """Label ``mapped``'s instances with their hosts when its literal handles would otherwise read alike.

    Only the default template is switched: a DAG author's own ``map_index_template`` is left alone.
    """
    handles = mapped_kwargs.get("handle")
    if not isinstance(handles, Sequence) or isinstance(handles, str):
        return
    if mapped.map_index_template == HANDLE_MAP_INDEX_TEMPLATE and ambiguous_labels(handles):
        mapped.map_index_template = HANDLE_WITH_HOST_MAP_INDEX_TEMPLATE

"""The typed record each metric registers under its name in ``ncbench.registry.METRICS``."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, TypeVar

from ncbench.registry import register_metric

F = TypeVar("F", bound=Callable)


@dataclass(frozen=True)
class MetricInfo:
    """name: registry name; higher_is_better: True / False / None (a diagnostic, e.g. effective
    depth); description: one line, the first line of the metric function's docstring."""

    name: str
    higher_is_better: bool | None
    description: str


def metric(name: str, higher_is_better: bool | None) -> Callable[[F], F]:
    """Register the decorated function's :class:`MetricInfo` under ``name``; the function is unchanged."""

    def add(fn: F) -> F:
        register_metric(name, MetricInfo(name, higher_is_better, inspect.getdoc(fn).splitlines()[0]))
        return fn

    return add

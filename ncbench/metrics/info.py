"""The metric registry's entries: what each metric computes, where, and which columns it fills.

Each metric registers a :class:`MetricInfo` under its name in ``ncbench.registry.METRICS`` (done where
its function is defined, with :func:`metric`). The entry holds the function itself, its direction, and the
:class:`Column` values it produces, each with its *scope* — what it is computed from:

- ``source``: the source TRAIN (and TEST) features of the pretrained backbone and its classifier
  (:class:`ncbench.metrics.evidence.SourceEvidence`); a leaderboard column, kept in a result's ``source``;
- ``target``: the frozen features of every target-pool image (:class:`~ncbench.metrics.evidence.TargetEvidence`);
  kept in a result's ``target`` under the column's ``key``;
- ``layer``: the layer curves of :mod:`ncbench.layerwise` (``LayerCurves``); kept in ``source``;

and, when its ``curve`` is set, the name under which it is tracked during pretraining (the training curve,
``ncbench.tracking``: source- and layer-scope columns at tracked epochs).

Everything downstream is derived from these entries: what a task computes (its ``metrics:`` list selects
entries; a metric not listed is not computed and its columns stay empty), the leaderboard's columns and
their types, the training curve, and the columns ``ncbench compare`` and ``ncbench report`` show
(``headline``, ``plot``). ``docs/extending.md`` shows how to add one.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, TypeVar

from ncbench.registry import METRICS

F = TypeVar("F", bound=Callable)
SCOPES = ("source", "target", "layer")
KINDS = (float, int, bool)


@dataclass(frozen=True)
class Column:
    """One value a metric produces.

    name:     leaderboard column (snake_case, units in the name); None for a value only tracked in the curve.
    scope:    ``source``, ``target`` or ``layer`` (see the module docstring): what ``compute`` receives.
    compute:  evidence of that scope -> the value (a Python float, int or bool; non-finite floats become
              empty cells).
    kind:     float, int or bool: the column's type in the leaderboard.
    key:      the key in the result's ``source`` / ``target`` mapping (default: ``name``).
    needs:    what the evidence must hold: ``"test"`` (source TEST features), ``"classifier"`` (the source
              classifier), ``"features"`` (the features themselves, not only streamed statistics).
    curve:    name in the training curve (``curve.csv``) when tracked during pretraining, else None.
    headline: shown by ``ncbench compare`` (deltas) and in the ``ncbench report`` table.
    plot:     plotted over pretraining epochs by ``ncbench report`` (needs ``curve``).
    """

    name: str | None
    scope: str
    compute: Callable[[Any], Any] = field(repr=False)
    kind: type = float
    key: str | None = None
    needs: tuple[str, ...] = ()
    curve: str | None = None
    headline: bool = False
    plot: bool = False

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"column {self.name!r}: scope must be one of {SCOPES}, got {self.scope!r}")
        if self.kind not in KINDS:
            raise ValueError(f"column {self.name!r}: kind must be float, int or bool, got {self.kind!r}")
        if self.name is None and self.curve is None:
            raise ValueError("a column needs a leaderboard name, a curve name, or both")
        if self.plot and self.curve is None:
            raise ValueError(f"column {self.name!r}: plot needs a curve name")
        unknown = set(self.needs) - {"test", "classifier", "features"}
        if unknown:
            raise ValueError(f"column {self.name!r}: unknown needs {sorted(unknown)}")
        if self.key is None:
            object.__setattr__(self, "key", self.name)


@dataclass(frozen=True)
class MetricInfo:
    """name: registry name (what a task's ``metrics:`` lists); higher_is_better: True / False / None (a
    diagnostic, e.g. effective depth); description: one line, the first line of the function's docstring;
    function: the functional form; columns: what it produces in the pipeline."""

    name: str
    higher_is_better: bool | None
    description: str
    function: Callable = field(repr=False)
    columns: tuple[Column, ...] = ()


def metric(name: str, higher_is_better: bool | None, columns: Iterable[Column] = ()) -> Callable[[F], F]:
    """Register the decorated function as metric ``name`` with its ``columns``; the function is unchanged."""

    def add(fn: F) -> F:
        METRICS.register(name, MetricInfo(name, higher_is_better, inspect.getdoc(fn).splitlines()[0], fn,
                                          tuple(columns)))
        return fn

    return add


def selected(metrics: Iterable[str] | None = None) -> list[MetricInfo]:
    """The entries of ``metrics`` (names; None: every registered metric), in registration order."""
    names = None if metrics is None else set(metrics)
    for name in names or ():
        METRICS.get(name)  # an unknown name raises with "did you mean"
    return [info for _, info in METRICS.items() if names is None or info.name in names]


def columns(scopes: Iterable[str] = SCOPES, metrics: Iterable[str] | None = None) -> list[Column]:
    """The leaderboard columns of the ``metrics`` (None: all) in the given scopes: scope by scope in the
    order given, each in registration order."""
    chosen = selected(metrics)
    return [c for scope in scopes for m in chosen for c in m.columns if c.scope == scope and c.name is not None]


def metric_of(column: str) -> MetricInfo | None:
    """The entry producing leaderboard column ``column`` (None when no metric does, e.g. ``acc_mean``)."""
    return next((m for _, m in METRICS.items() for c in m.columns if c.name == column), None)


def uses(scope: str, metrics: Iterable[str] | None = None) -> bool:
    """Whether any of the ``metrics`` (None: all) has a column of ``scope`` (e.g. whether layer curves are needed)."""
    return any(c.scope == scope for m in selected(metrics) for c in m.columns)


def tracks(scope: str, metrics: Iterable[str] | None = None) -> bool:
    """Whether any of the ``metrics`` (None: all) tracks a column of ``scope`` in the training curve."""
    return any(c.scope == scope and c.curve for m in selected(metrics) for c in m.columns)


def evaluate(scope: str, evidence: Any, metrics: Iterable[str] | None = None, *, curve: bool = False) -> dict[str, Any]:
    """Compute the columns of ``scope`` of the ``metrics`` (None: all) on ``evidence``, skipping columns
    whose ``needs`` the evidence lacks (``evidence.available``). Keys: each column's ``key``, or with
    ``curve=True`` its curve name (only tracked columns). A value the evidence cannot give (None) is left out."""
    available = getattr(evidence, "available", frozenset())
    out = {}
    for m in selected(metrics):
        for c in m.columns:
            name = c.curve if curve else c.key
            if c.scope != scope or name is None or not set(c.needs) <= available:
                continue
            value = c.compute(evidence)
            if value is not None:
                out[name] = value
    return out

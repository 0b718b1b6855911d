"""One small registry type and its instances, one per kind of thing users name.

Objects register themselves where they are defined (``@register_dataset("glyphs")``), as timm's
``@register_model`` does; there is no second table of names. A duplicate name raises, and an unknown
name raises :class:`UnknownNameError` with the closest matches::

    >>> BACKBONES.get("conv-4")
    UnknownNameError: unknown backbone 'conv-4'; did you mean 'conv4'?

Each registry knows the module whose import fills it, so ``DATASETS.names()`` works without the
caller importing ``ncbench.data`` first.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """An unknown registry name; the message lists the closest registered names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Name -> object table for one kind (``dataset``, ``backbone``, ``head``...)."""

    def __init__(self, kind: str, populate: str | None = None):
        self.kind = kind
        self._populate = populate
        self._populated = populate is None
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as ``@registry.register("name")``."""
        if not name or name != name.strip():
            raise ValueError(f"{self.kind} name must be a non-empty string without surrounding spaces, got {name!r}")

        def add(o: T) -> T:
            if name in self._entries:
                raise ValueError(f"duplicate {self.kind} name {name!r}: already registered as {self._entries[name]!r}")
            self._entries[name] = o
            return o

        return add if obj is None else add(obj)

    def _ensure(self) -> None:
        if not self._populated:
            self._populated = True
            importlib.import_module(self._populate)

    def get(self, name: str) -> T:
        self._ensure()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        self._ensure()
        close = difflib.get_close_matches(str(name), list(self._entries), n=3, cutoff=0.5)
        if close:
            hint = "did you mean " + " or ".join(repr(c) for c in close) + "?"
        else:
            hint = "known: " + ", ".join(sorted(self._entries))
        return f"unknown {self.kind} {name!r}; {hint}"

    def names(self) -> list[str]:
        self._ensure()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """(name, object) pairs in registration order (the order their definitions were read)."""
        self._ensure()
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        self._ensure()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._ensure()
        return len(self._entries)


DATASETS: Registry = Registry("dataset", populate="ncbench.data")
BACKBONES: Registry = Registry("backbone", populate="ncbench.backbones")
HEADS: Registry = Registry("head", populate="ncbench.heads")
METRICS: Registry = Registry("metric", populate="ncbench.metrics")

register_dataset = DATASETS.register
register_backbone = BACKBONES.register
register_metric = METRICS.register

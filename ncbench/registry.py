"""One small registry type and its instances, one per kind of thing users name.

Objects register themselves where they are defined (``@register_dataset("glyphs")``), as timm's
``@register_model`` does; there is no second table of names. A duplicate name raises, and an unknown
name raises :class:`UnknownNameError` with the closest matches::

    >>> BACKBONES.get("conv-4")
    UnknownNameError: unknown backbone 'conv-4'; did you mean 'conv4'?

Each registry knows the module whose import fills it, so ``DATASETS.names()`` works without the
caller importing ``ncbench.data`` first. The registries whose modules import torch (backbones, heads,
metrics) answer ``names()`` and ``in`` from the *catalogue* until their module is imported, so that
``ncbench list`` and ``ncbench validate`` start without torch (about 2 s of imports). The first process that
needs the catalogue imports those modules once and writes what it found to ``<cache>/catalogue/<key>.json``;
later processes read that file. The key is a hash of every ``.py`` file of the installed ncbench package and
the Python version, so an edited, updated or reinstalled ncbench gets a new file (hashing the sources takes
milliseconds). The file is a cache of what the code says, never a second list to maintain: deleting it only
costs the next command the import. Its contents: ``{kind: {name: [option, ...]}}`` for the kinds
``backbone``, ``head`` and ``metric``; the options are those a task file may give a head (empty otherwise).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import importlib.metadata
import inspect
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Generic, Iterator, TypeVar

from ncbench.files import write_json
from ncbench.runtime import default_cache_dir

log = logging.getLogger(__name__)

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """An unknown registry name; the message lists the closest registered names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Name -> object table for one kind (``dataset``, ``backbone``, ``head``...)."""

    def __init__(self, kind: str, populate: str | None = None, catalogued: bool = False):
        self.kind = kind
        self._catalogued = catalogued
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
        known = self.names()
        close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
        if close:
            hint = "did you mean " + " or ".join(repr(c) for c in close) + "?"
        else:
            hint = "known: " + ", ".join(known)
        return f"unknown {self.kind} {name!r}; {hint}"

    def names(self) -> list[str]:
        """The registered names, sorted. For a ``catalogued`` registry whose module is not imported yet they come
        from :func:`catalogue` (no import of torch), plus any name registered since."""
        if self._populated:
            return sorted(self._entries)
        if not self._catalogued:
            self._ensure()
            return sorted(self._entries)
        return sorted({*catalogue()[self.kind], *self._entries})

    def items(self) -> list[tuple[str, T]]:
        """(name, object) pairs in registration order (the order their definitions were read)."""
        self._ensure()
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries or (not self._populated and name in self.names())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._ensure()
        return len(self._entries)


DATASETS: Registry = Registry("dataset", populate="ncbench.data")
BACKBONES: Registry = Registry("backbone", populate="ncbench.backbones", catalogued=True)  # their modules import torch
HEADS: Registry = Registry("head", populate="ncbench.heads", catalogued=True)
METRICS: Registry = Registry("metric", populate="ncbench.metrics", catalogued=True)

register_dataset = DATASETS.register
register_backbone = BACKBONES.register
register_metric = METRICS.register


ENTRY_POINT_GROUP = "ncbench.backbones"  # installed packages may offer backbones under this entry-point group


def is_user_spec(spec: str) -> bool:
    """True when ``spec`` has the form of a user backbone: a ``.py`` file, ``module:callable``, or the name
    of an installed entry point in :data:`ENTRY_POINT_GROUP` (nothing is imported)."""
    return (spec.endswith(".py") or ":" in spec
            or bool(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=spec)))


# ------------------------------------------------------------------------------------------------ catalogue
PACKAGE = Path(__file__).resolve().parent
CATALOGUE_FORMAT = 1  # bump when the file's layout changes
CATALOGUED = (BACKBONES, HEADS, METRICS)


def source_key(package: Path = PACKAGE) -> str:
    """sha256 (16 hex digits) of the Python version and every ``.py`` file (path and bytes) under ``package``."""
    h = hashlib.sha256(f"{CATALOGUE_FORMAT} {sys.version}".encode())
    for path in sorted(package.rglob("*.py")):
        h.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def catalogue_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/catalogue/<source_key>.json``; the cache defaults to ``$NCBENCH_CACHE`` or ``~/.cache/ncbench``."""
    return Path(cache_dir or default_cache_dir()) / "catalogue" / f"{source_key()}.json"


def signature_options(factory: Callable) -> list[str]:
    """The keyword options of ``factory`` (a class or a partial of one), in signature order."""
    return list(inspect.signature(factory).parameters)


def build_catalogue() -> dict[str, dict[str, list[str]]]:
    """The catalogue from the registries themselves (imports every module that fills them)."""
    return {r.kind: {n: signature_options(obj) if r is HEADS else [] for n, obj in r.items()} for r in CATALOGUED}


def _well_formed(data) -> bool:
    return (isinstance(data, dict) and set(data) == {r.kind for r in CATALOGUED}
            and all(isinstance(v, dict) and all(isinstance(o, list) and all(isinstance(s, str) for s in o)
                                                for o in v.values()) for v in data.values()))


@functools.lru_cache(maxsize=None)
def catalogue(cache_dir: str | None = None) -> dict[str, dict[str, list[str]]]:
    """The catalogue: read from its cache file when it is there and well-formed, else built and written there
    (an unwritable cache folder only costs the next process the import)."""
    path = catalogue_path(cache_dir)
    try:
        data = json.loads(path.read_text())
        if _well_formed(data):
            return data
        log.info("catalogue cache %s is malformed: rebuilding it", path)
    except (OSError, ValueError):
        pass
    data = build_catalogue()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, data)
    except OSError as e:
        log.info("catalogue cache not written (%s): %s", path, e)
    return data


def head_option_names(name: str) -> list[str]:
    """The options a task may give the head registered as ``name``, without importing the heads when the
    catalogue knows it (a head registered at run time is looked up in the registry itself)."""
    known = catalogue()["head"]
    return list(known[name]) if name in known else signature_options(HEADS.get(name))


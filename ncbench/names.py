"""Names are not paths: the one rule for model, task and dataset names, and paths that stay in their root.

Model, task and dataset names become folder and file names (``<results>/<task>/<model>/...json``,
``<out>/checkpoints/<model>.<task>-s..``, ``<leaderboards>/<task>.csv``) and leaderboard cells. A name is
therefore an allow-listed slug (:data:`NAME_PATTERN`): lower-case ASCII letters, digits, ``.``, ``_`` and
``-``, starting with a letter or digit, at most :data:`MAX_LENGTH` characters, without ``..`` and not ending
with ``.``. Lower case only, so two names never collide on a case-insensitive file system. A name that is
not already in that form is refused, never silently rewritten: a path (``/tmp/x``, ``../../x``), an empty
name, a spreadsheet formula (``=cmd``), a name with non-ASCII look-alikes (Cyrillic ``і`` for ``i``). When
its NFKC normal form (e.g. of full-width letters) would pass, the message suggests it.

:func:`inside` builds a path from a root and name-derived parts and checks that it resolves inside the root.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

MAX_LENGTH = 64
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
RULE = ("lower-case letters a-z, digits, '.', '_' or '-', starting with a letter or digit, at most "
        f"{MAX_LENGTH} characters, no '..'")


class BadNameError(ValueError):
    """A model, task or dataset name that breaks the name rule; the message names the argument or field."""


class PathEscapeError(ValueError):
    """A path built from names that would leave its root folder."""


def name_problem(name: object) -> str | None:
    """Why ``name`` breaks the name rule (a short phrase), or None when it is a valid name."""
    if not isinstance(name, str):
        return f"expected a name (string), got {type(name).__name__}"
    if not name:
        return "empty name"
    if any(sep and sep in name for sep in ("/", "\\", os.sep, os.altsep)):
        return "a name is not a path: no '/' or '\\'"
    if len(name) > MAX_LENGTH:
        return f"{len(name)} characters, at most {MAX_LENGTH} allowed"
    if not name.isascii():
        normal = unicodedata.normalize("NFKC", name)
        hint = f" (did you mean {normal!r}?)" if normal != name and name_problem(normal) is None else ""
        bad = next(ch for ch in name if not ch.isascii())
        return f"non-ASCII character {bad!r} (U+{ord(bad):04X}; look-alikes are refused){hint}"
    if name[0] in ".-":
        return f"must not start with {name[0]!r}"
    if ".." in name:
        return "must not contain '..'"
    if name.endswith("."):
        return "must not end with '.'"
    if NAME_PATTERN.fullmatch(name) is None:
        lower = name.lower()
        if lower != name and NAME_PATTERN.fullmatch(lower):
            return f"upper-case letters (did you mean {lower!r}?)"
        bad = next(ch for ch in name if not re.fullmatch(r"[a-z0-9._-]", ch))
        return f"character {bad!r} not allowed"
    return None


def check_name(name: object, what: str) -> str:
    """``name`` if it is a valid model / task / dataset name, else :class:`BadNameError` naming ``what`` (the
    argument or field, e.g. ``--model``), the name and the rule, on one line."""
    problem = name_problem(name)
    if problem is not None:
        long = isinstance(name, str) and len(name) > 2 * MAX_LENGTH
        shown = repr(name[:MAX_LENGTH]) + "..." if long else repr(name)
        raise BadNameError(f"{what}: invalid name {shown}: {problem}; expected {RULE}")
    return name  # type: ignore[return-value]


def is_valid_name(name: object) -> bool:
    return name_problem(name) is None


def name_from_spec(spec: str) -> str:
    """The default model name of a backbone spec (``conv4``, ``nets/my_net.py:Small``): its last path
    segment, lower-cased, every character outside the rule replaced by ``-`` (``my_net.py-small``); raises
    :class:`BadNameError` when nothing valid is left."""
    last = unicodedata.normalize("NFKC", spec).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].lower()
    slug = re.sub(r"[^a-z0-9._-]+", "-", last)
    slug = re.sub(r"\.{2,}", ".", slug).lstrip(".-").rstrip(".")[:MAX_LENGTH].rstrip(".")
    if name_problem(slug) is not None:
        raise BadNameError(f"--backbone {spec!r}: no model name can be derived from it; give one with --model")
    return slug


def inside(root: str | os.PathLike, *parts: str | os.PathLike) -> Path:
    """``Path(root, *parts)``, after checking that it resolves (symbolic links and ``..`` followed) to a path
    inside ``root`` (resolved the same way); raises :class:`PathEscapeError` otherwise. Returned unresolved,
    as the caller built it."""
    path = Path(root).joinpath(*parts)
    base = Path(root).resolve()
    target = path.resolve()
    if target != base and base not in target.parents:
        raise PathEscapeError(f"{str(path)!r} resolves to {str(target)!r}, outside its folder {str(base)!r}")
    return path

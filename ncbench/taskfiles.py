"""Where task files live, without importing what it takes to validate them (``ncbench list tasks`` stays
free of torch).

The repository's top-level ``tasks/`` folder is the one source of truth. A wheel ships a copy of it as the
package data ``ncbench/_tasks/`` (``pyproject.toml`` maps the folder there); a source checkout or an
editable install reads ``tasks/`` beside the package source.
"""

from __future__ import annotations

import os
from pathlib import Path

TASKS_ENV = "NCBENCH_TASKS"
PACKAGED = Path(__file__).resolve().parent / "_tasks"  # installed from a wheel
SOURCE = Path(__file__).resolve().parents[1] / "tasks"  # a source checkout or an editable install


def tasks_dir() -> Path:
    """The folder of task files: ``$NCBENCH_TASKS`` when set, else ``./tasks`` when that folder exists,
    else the tasks installed with the package, else the ``tasks/`` folder of the source checkout.

    A ``$NCBENCH_TASKS`` that is not a folder raises ``NotADirectoryError`` naming the variable."""
    env = os.environ.get(TASKS_ENV)
    if env:
        if not Path(env).is_dir():
            raise NotADirectoryError(f"${TASKS_ENV}={env!r} is not a folder; expected a folder of task YAML files")
        return Path(env)
    for d in (Path("tasks"), PACKAGED, SOURCE):
        if d.is_dir():
            return d
    raise FileNotFoundError(f"no task folder: none of ./tasks, {PACKAGED} or {SOURCE} exists "
                            f"(set ${TASKS_ENV} to a folder of task YAML files)")


def task_files() -> dict[str, Path]:
    """Task name (file stem) -> path, for every task file (files starting with ``_`` are bases)."""
    return {p.stem: p for p in sorted(tasks_dir().glob("*.yaml")) if not p.name.startswith("_")}

"""ncbench: neural-collapse and few-shot transfer benchmark harness.

The Python API (``docs/api.md``) is importable from here, lazily (PEP 562): ``import ncbench`` loads
neither torch nor the pipeline; the first use of a name below imports the module that defines it.

    >>> import ncbench
    >>> ncbench.evaluate                                    # doctest: +ELLIPSIS
    <function evaluate at ...>
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("ncbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

# public name -> the module that defines it (imported on first use)
_API = {
    **{name: "ncbench.api" for name in ("evaluate", "load_task", "task_dataset", "task_episodes", "weights_sha256")},
    **{name: "ncbench.metrics" for name in (
        "cdnv", "cdnv_matrix", "nc1", "nc1_quotient", "nc2", "nc3", "nc4", "ncc_accuracy", "strong_test_collapse",
        "weak_test_collapse", "effective_depth")},
    **{name: "ncbench.heads" for name in ("RidgeHead", "NCCHead", "LogisticHead", "episode_accuracy")},
    "embed_images": "ncbench.features",
    "load_checkpoint": "ncbench.checkpoint",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'ncbench' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))

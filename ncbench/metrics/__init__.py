"""Neural-collapse metrics (DESIGN.md §1–§2): functional forms, streaming accumulators, registry records.

Importing this package registers every scalar metric's :class:`MetricInfo` in
``ncbench.registry.METRICS`` (done where each function is defined, in :mod:`.functional`).
Definitions and the choices made where the literature differs: ``docs/metrics.md``.
"""

from ncbench.metrics.functional import (
    cdnv,
    cdnv_matrix,
    check_eps,
    class_subsets,
    collapse_report,
    depth_of,
    effective_depth,
    layer_curves,
    nc1,
    nc1_quotient,
    nc1_subsets,
    nc2,
    nc2_equiangularity,
    nc2_equinorm,
    nc3,
    nc4,
    ncc_accuracy,
    reaches_eps,
    strong_test_collapse,
    weak_test_collapse,
)
from ncbench.metrics.info import MetricInfo
from ncbench.metrics.streaming import ClassStatistics, ReferencedStatistics, report

__all__ = [
    "ClassStatistics",
    "MetricInfo",
    "ReferencedStatistics",
    "cdnv",
    "cdnv_matrix",
    "check_eps",
    "class_subsets",
    "collapse_report",
    "depth_of",
    "effective_depth",
    "layer_curves",
    "nc1",
    "nc1_quotient",
    "nc1_subsets",
    "nc2",
    "nc2_equiangularity",
    "nc2_equinorm",
    "nc3",
    "nc4",
    "ncc_accuracy",
    "reaches_eps",
    "report",
    "strong_test_collapse",
    "weak_test_collapse",
]

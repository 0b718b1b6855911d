"""Neural-collapse metrics (DESIGN.md §1–§2): functional forms, streaming accumulators, registry records.

Importing this package registers every metric's :class:`MetricInfo` — its function, direction and the
:class:`Column` values it produces in the pipeline — in ``ncbench.registry.METRICS`` (done where each
function is defined, in :mod:`.functional`; see :mod:`.info`). Definitions and the choices made where the
literature differs: ``docs/metrics.md``; adding a metric: ``docs/extending.md``.
"""

from ncbench.metrics.evidence import SourceEvidence, TargetEvidence, collapse_report, report
from ncbench.metrics.functional import (
    cdnv,
    cdnv_matrix,
    check_eps,
    class_subsets,
    classifier_accuracy,
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
    nc_rank_limited,
    ncc_accuracy,
    reaches_eps,
    strong_test_collapse,
    weak_test_collapse,
)
from ncbench.metrics.info import Column, MetricInfo, columns, evaluate, metric, metric_of, tracks, uses
from ncbench.metrics.streaming import ClassStatistics, ReferencedStatistics

__all__ = [
    "ClassStatistics",
    "Column",
    "MetricInfo",
    "ReferencedStatistics",
    "SourceEvidence",
    "TargetEvidence",
    "cdnv",
    "cdnv_matrix",
    "check_eps",
    "class_subsets",
    "classifier_accuracy",
    "collapse_report",
    "columns",
    "depth_of",
    "effective_depth",
    "evaluate",
    "layer_curves",
    "metric",
    "metric_of",
    "nc1",
    "nc1_quotient",
    "nc1_subsets",
    "nc2",
    "nc2_equiangularity",
    "nc2_equinorm",
    "nc3",
    "nc4",
    "nc_rank_limited",
    "ncc_accuracy",
    "reaches_eps",
    "report",
    "strong_test_collapse",
    "tracks",
    "uses",
    "weak_test_collapse",
]

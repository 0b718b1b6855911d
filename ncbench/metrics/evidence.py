"""What the registered metrics' columns are computed from, one class per scope, and the reports built on them.

:class:`SourceEvidence` holds the source TRAIN (and TEST) features of a backbone with their labels and,
optionally, its classifier; the two streaming passes every collapse metric needs (class statistics, then
samples measured against the train means) are run once, when a column first asks for them, and shared
by all columns. :class:`TargetEvidence` holds the features of every target-pool image. The layer scope's
evidence is a ``LayerCurves`` (:mod:`ncbench.layerwise`).

:func:`collapse_report` and :func:`report` are the registry's source columns evaluated on such evidence:
the one mapping from passes to named values, used by the pipeline, the training curve and the tests alike.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import torch

from ncbench.metrics.functional import _class_statistics, _referenced
from ncbench.metrics.info import evaluate
from ncbench.metrics.kernels import codes_in, nc2_values
from ncbench.metrics.streaming import ClassStatistics, ReferencedStatistics

TRAIN_NAMES, TEST_NAMES = ("train_features", "train_labels"), ("test_features", "test_labels")


class SourceEvidence:
    """Source-scope evidence. train_features: [N, m]; train_labels: [N] int; test_features: [T, m] and
    test_labels: [T] among the train labels (together, or neither); weight: [K, m] and bias: [K] the
    classifier, rows in sorted class order (optional). ``available`` says which of ``test``,
    ``classifier`` and ``features`` it holds (a column's ``needs``)."""

    def __init__(self, train_features, train_labels, test_features=None, test_labels=None, weight=None, bias=None):
        if (test_features is None) != (test_labels is None):
            raise ValueError("test_features and test_labels must be given together")
        self.train_features, self.train_labels = train_features, train_labels
        self.test_features, self.test_labels = test_features, test_labels
        self.weight, self.bias = weight, bias
        self.available = frozenset({"features"} | ({"test"} if test_features is not None else set())
                                   | ({"classifier"} if weight is not None else set()))

    @classmethod
    def from_passes(cls, train: ClassStatistics, train_pass: ReferencedStatistics, test: ClassStatistics | None = None,
                    test_pass: ReferencedStatistics | None = None) -> "SourceEvidence":
        """Evidence from streamed passes, without the features: pass 1 over the train batches, ``train_pass``
        = ``train.referenced(weight, bias)`` updated with them, and optionally pass 1 over the test batches
        and ``train.referenced()`` updated with them."""
        if (test is None) != (test_pass is None):
            raise ValueError("test and test_pass must be given together")
        e = cls.__new__(cls)
        e.weight = e.bias = None
        e.__dict__.update(train_stats=train, train_ref=train_pass, test_stats=test, test_ref=test_pass)
        e.available = frozenset(({"test"} if test is not None else set())
                                | ({"classifier"} if train_pass.weight is not None else set()))
        return e

    @cached_property
    def train_stats(self) -> ClassStatistics:
        """Pass 1 over the train features: class counts, means, squared deviations."""
        return _class_statistics(self.train_features, self.train_labels, TRAIN_NAMES)

    @cached_property
    def train_ref(self) -> ReferencedStatistics:
        """Pass 2 of the train features against their own means (with the classifier, for NC4)."""
        return _referenced(self.train_stats, self.train_features, self.train_labels, TRAIN_NAMES, weight=self.weight,
                           bias=self.bias)

    @cached_property
    def train_pass(self) -> dict[str, float]:
        return self.train_ref.compute()

    @cached_property
    def test_stats(self) -> ClassStatistics:
        """Pass 1 over the test features (their own means, for the test CDNV)."""
        return _class_statistics(self.test_features, self.test_labels, TEST_NAMES)

    @cached_property
    def test_ref(self) -> ReferencedStatistics:
        """Pass 2 of the test features against the train means (with the classifier, for its accuracy)."""
        return _referenced(self.train_stats, self.test_features, self.test_labels, TEST_NAMES, weight=self.weight,
                           bias=self.bias)

    @cached_property
    def test_pass(self) -> dict[str, float]:
        return self.test_ref.compute()

    @cached_property
    def nc2(self) -> dict[str, float]:
        """``nc2``, ``nc2_equinorm``, ``nc2_equiangularity`` of the train means."""
        return nc2_values(self.train_stats.means)

    def classifier_rows(self, labels) -> torch.Tensor:
        """The classifier row (index among the sorted train classes) of each of ``labels: [N]``."""
        classes = self.train_stats.classes
        labels = torch.as_tensor(labels).to(device=classes.device, dtype=torch.int64).contiguous()
        return codes_in(classes, labels, "labels")


class TargetEvidence:
    """Target-scope evidence: features: [N, m] of every target-pool image, labels: [N] their classes,
    train: [N] bool, which images are TRAIN images (NCC means come from those, accuracy from the rest)."""

    available = frozenset({"features"})

    def __init__(self, features, labels, train):
        self.features, self.labels, self.train = features, labels, train


def _as_floats(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value if isinstance(value, bool) else float(value) for key, value in values.items()}


def collapse_report(train_features, train_labels, test_features=None, test_labels=None, weight=None,
                    bias=None) -> dict[str, Any]:
    """Every registered source-scope column (each metric's ``source`` columns) from one set of class statistics.

    train_features: [N, m]; train_labels: [N]; test_features: [T, m] and test_labels: [T] (together, or
    neither); weight: [K, m] and bias: [K] optional classifier (rows in sorted class order). With the
    built-in metrics the keys are ``cdnv_train``, ``nc1``, ``nc1_quotient``, ``nc1_subset5``,
    ``nc_rank_limited`` (bool: K − 1 > m, NC2 / NC3 cannot reach 0), ``nc2``, ``nc2_equinorm``,
    ``nc2_equiangularity``, ``ncc_train_acc``; with weight ``nc3``, ``nc4``, ``source_train_acc``; with test
    data ``cdnv_test`` (test features around their own means), ``ncc_test_acc``, ``strong_test_collapse``,
    ``weak_test_collapse`` (and ``source_test_acc`` with weight). Values are Python floats (bools for flags).
    """
    return _as_floats(evaluate("source", SourceEvidence(train_features, train_labels, test_features, test_labels,
                                                        weight, bias)))


def report(train: ClassStatistics, train_pass: ReferencedStatistics, test: ClassStatistics | None = None,
           test_pass: ReferencedStatistics | None = None) -> dict[str, Any]:
    """The :func:`collapse_report` dict from streamed passes, less the columns that need the features
    themselves (``nc1_subset5``: NC1 of class subsets needs each subset's own Σ_W; the classifier accuracies).

    train: pass 1 over the train batches (``within_scatter`` not needed); train_pass: ``train.referenced(
    weight, bias)`` updated with the train batches and labels; test: pass 1 over the test batches (its
    own means, for ``cdnv_test``); test_pass: ``train.referenced()`` updated with the test batches and labels.
    NC1 comes from ``train_pass`` (two-pass deviations), so ``train`` needs no ``[m, m]`` scatter.
    """
    return _as_floats(evaluate("source", SourceEvidence.from_passes(train, train_pass, test, test_pass)))

"""Streaming accumulators (torchmetrics-style ``update`` / ``compute``) over batches of features.

Two passes, because NC4, NCC accuracy and test collapse compare samples with the *final* train means:

1. :class:`ClassStatistics` — one pass over the train batches. Holds per-class counts ``[K]``, means
   ``[K, m]``, summed squared deviations ``[K]`` and (optionally) the pooled within-class scatter
   ``[m, m]``: O(K·m + m²) memory. Each batch is read once: deviations from a per-class reference (the
   running class mean, or a new class's first sample) give the class sums and squared norms, and the
   batch is merged exactly with Chan et al.'s pairwise update, whose mean difference is the batch's
   shift itself — so tight classes far from the origin keep their variance (no one-pass E‖f‖² − ‖μ‖²
   cancellation). :meth:`ClassStatistics.all_reduce` merges the statistics of several processes.
   ``compute()`` gives CDNV, NC1, NC2 (+ NC3 with a classifier weight).
2. :class:`ReferencedStatistics` — built from pass 1 (``stats.referenced(weight, bias)``), one more
   pass over any batches (train or test) measured against the fixed reference means. Besides the
   reference (means ``[K, m]``, Σ_B eigenvectors ``[m, r]``, classifier) it accumulates O(r) numbers:
   NCC accuracy, NC4, strong / weak test collapse (on the train data itself strong collapse is NC1
   with exact two-pass deviations); :meth:`ReferencedStatistics.all_reduce` sums them over processes.

:func:`ncbench.metrics.report` turns both passes over train (and optionally test) data into the dict of
:func:`ncbench.metrics.collapse_report`, which is itself computed this way (:mod:`ncbench.metrics.evidence`).
"""

from __future__ import annotations

import torch

from ncbench.metrics.kernels import (
    DTYPE,
    LinearDecision,
    NearestMeanDecision,
    as_features,
    as_labels,
    between_eigen,
    cdnv_pairs,
    check_counts,
    check_weight,
    codes_in,
    compute_device,
    deviations,
    mean_over_pairs,
    nc1_quotient_value,
    nc1_value,
    nc2_values,
    nc3_value,
    row_chunks,
    shifted_chunks,
)

CANCELLATION = 1e-2  # recompute a class exactly when Σ‖x‖² − n‖x̄‖² keeps less than this share of Σ‖x‖²


class ClassStatistics:
    """Pass-1 accumulator: per-class counts, means, squared deviations and within-class scatter.

    classes:        optional ``[K]`` integer label values known in advance; labels outside raise. When
                    omitted, classes are added as they appear (kept in sorted label order).
    within_scatter: keep the ``[m, m]`` pooled within-class scatter needed by :meth:`compute`'s NC1;
                    turn off for very wide features (flattened conv maps) when NC1 is not wanted.
    """

    def __init__(self, classes=None, within_scatter: bool = True):
        self.within_scatter = within_scatter
        self._fixed = classes is not None
        self._classes = None
        if classes is not None:
            self._classes = torch.unique(as_labels(classes, len(classes), torch.device("cpu"), "classes"))
        self._counts = self._means = self._sq = self._scatter = None

    # -------------------------------------------------------------------------------- update
    def update(self, features, labels) -> None:
        """Add one batch: ``features: [n, m]`` (torch/numpy, any float dtype), ``labels: [n]`` integers.

        One pass over the batch without the ``[m, m]`` scatter: per chunk of rows (a cache-sized float64
        buffer), the deviations x = f − r_y from a per-class reference r (the running class mean, or for a
        class new in this batch its first sample) give the class sums Σx and Σ‖x‖²; the batch's squared
        deviations from its own mean are Σ‖x‖² − n‖Σx/n‖², which loses little because r is close to the
        mean: a sample of the class bounds the cancellation by n + 1 (‖r − x̄‖² ≤ Σ‖f − x̄‖²), and a running
        mean far from the batch's (a drifting class) adds a between-batch term at least as large as what
        cancels. A class where the difference keeps less than :data:`CANCELLATION` of Σ‖x‖² is still
        recomputed from its rows with exact two-pass deviations (insurance; random data never needs it). With the
        scatter, a second pass takes the deviations from the batch means (needed for Σ_W anyway).
        """
        f = as_features(features, check_finite=False)  # NaN / inf are caught in the batch statistics below
        device = compute_device(f)
        y = as_labels(labels, f.shape[0], device)
        self._check_width(f, device)
        self._update_codes(f, self._codes(y.to(self._means.device)))

    def _check_width(self, f: torch.Tensor, device: torch.device) -> None:
        if self._means is None:
            self._allocate(f.shape[1], device)
        elif f.shape[1] != self._means.shape[1]:
            raise ValueError(f"features have {f.shape[1]} columns but earlier batches had {self._means.shape[1]}")

    def _update_codes(self, f: torch.Tensor, codes: torch.Tensor, name: str = "features") -> None:
        """:meth:`update` with validated ``f: [n, m]`` and ``codes: [n]`` (indices into ``self._classes``);
        ``name`` names ``f`` in the error for NaN / inf values."""
        k, dim, device = self._classes.numel(), f.shape[1], self._means.device
        counts = torch.bincount(codes, minlength=k).to(DTYPE)
        # per-class reference: the running mean, or the first sample of a class new in this batch
        ref = self._means.clone()
        new = (self._counts == 0) & (counts > 0)
        if bool(new.any()):
            first = torch.full((k,), f.shape[0], dtype=torch.int64, device=device)
            first.scatter_reduce_(0, codes, torch.arange(f.shape[0], device=device), "amin")
            ref[new] = f[first[new].to(f.device)].to(device=device, dtype=DTYPE)
        one_pass = self._scatter is None
        sums = torch.zeros(k, dim, dtype=DTYPE, device=device)  # Σx per class
        raw_sq = torch.zeros(k, dtype=DTYPE, device=device)  # Σ‖x‖² per class
        for rows, x in shifted_chunks(f, codes, ref):
            sums.index_add_(0, codes[rows], x)
            if one_pass:
                raw_sq.index_add_(0, codes[rows], torch.linalg.vecdot(x, x))
        shift = sums / counts.clamp(min=1)[:, None]  # batch mean − reference
        scatter = None
        if one_pass:
            sq = raw_sq - counts * shift.square().sum(1)
            if not (bool(torch.isfinite(sq).all()) and bool(torch.isfinite(sums).all())):
                as_features(f, name)  # names NaN / inf inputs; otherwise an overflow
                raise ValueError("features overflow float64 in the class statistics")
            redo = (counts > 0) & ~(sq >= CANCELLATION * raw_sq)
            if bool(redo.any()):  # exact two-pass deviations for the few classes that cancelled
                rows = redo[codes].nonzero().squeeze(1)
                sub_codes = codes[rows]
                sub = f[rows.to(f.device)].to(device=device, dtype=DTYPE)
                dev = deviations(sub, sub_codes, ref + shift)
                sq[redo] = torch.zeros(k, dtype=DTYPE, device=device).index_add_(
                    0, sub_codes, torch.linalg.vecdot(dev, dev))[redo]
        else:
            if not bool(torch.isfinite(sums).all()):
                as_features(f, name)
                raise ValueError("features overflow float64 in the class statistics")
            sq = torch.zeros(k, dtype=DTYPE, device=device)
            scatter = torch.zeros_like(self._scatter)
            for rows, dev in shifted_chunks(f, codes, ref + shift):
                scatter += dev.T @ dev
                sq.index_add_(0, codes[rows], torch.linalg.vecdot(dev, dev))
        self._merge(counts, ref, shift, sq, scatter)

    def _allocate(self, dim: int, device: torch.device) -> None:
        if self._classes is None:  # discovered as they come
            self._classes = torch.zeros(0, dtype=torch.int64)
        self._classes = self._classes.to(device)
        k = self._classes.numel()
        self._counts = torch.zeros(k, dtype=DTYPE, device=device)
        self._means = torch.zeros(k, dim, dtype=DTYPE, device=device)
        self._sq = torch.zeros(k, dtype=DTYPE, device=device)
        if self.within_scatter:
            self._scatter = torch.zeros(dim, dim, dtype=DTYPE, device=device)

    def _codes(self, labels: torch.Tensor) -> torch.Tensor:
        if self._fixed:
            return codes_in(self._classes, labels, "labels")
        self._grow(torch.unique(torch.cat([self._classes, labels])))
        return torch.searchsorted(self._classes, labels)

    def _grow(self, merged: torch.Tensor) -> None:
        """Re-index the per-class rows to ``merged: [K']``, sorted classes that include the current ones."""
        if merged.numel() != self._classes.numel():
            old = torch.searchsorted(merged, self._classes)
            k, dim = merged.numel(), self._means.shape[1]
            for attr, shape in (("_counts", (k,)), ("_means", (k, dim)), ("_sq", (k,))):
                grown = torch.zeros(shape, dtype=DTYPE, device=merged.device)
                grown[old] = getattr(self, attr)
                setattr(self, attr, grown)
            self._classes = merged

    def all_reduce(self, group=None) -> "ClassStatistics":
        """Merge the statistics of every process of ``group`` (``torch.distributed``; default: the world),
        in place, so that each process holds those of all their batches together; returns ``self``.

        Sufficient statistics only travel, never features: first the class lists (classes seen by some
        processes only are added everywhere), then two float64 all-reduce sums — counts ``[K]`` with
        n·μ ``[K, m]``, which give a common reference R = Σ n μ / N, then Σ (M2 + n‖μ − R‖²) ``[K]``,
        Σ n (μ − R) ``[K, m]`` and, with ``within_scatter``, Σ (S + Σ_k n (μ_k − R_k)(μ_k − R_k)ᵀ)
        ``[m, m]``; the merged mean is R + D, D = Σ n (μ − R) / N, and N‖D‖² (N DDᵀ) is taken off again.
        Every process gets the same numbers, equal to one process's streaming of all batches to float64
        rounding. Call it once, after the last ``update`` and before ``compute`` / ``referenced``, on
        every process (also those that saw no batch). No-op without an initialised process group.
        """
        import torch.distributed as dist  # lazy: only when statistics are merged across processes

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
            return self
        mine = (None if self._classes is None else self._classes.cpu().tolist(),
                None if self._means is None else self._means.shape[1], self._scatter is not None)
        everyone = [None] * dist.get_world_size(group)
        dist.all_gather_object(everyone, mine, group=group)
        dims = {d for _, d, _ in everyone if d is not None}
        if len(dims) > 1:
            raise ValueError(f"processes hold features of different widths: {sorted(dims)}")
        if len({w for _, _, w in everyone}) > 1:
            raise ValueError("within_scatter must be the same on every process")
        if not dims:
            raise ValueError("ClassStatistics.all_reduce: no process has seen any samples")
        lists = [c for c, _, _ in everyone if c is not None]
        if self._fixed and any(c != lists[0] for c in lists):
            raise ValueError("processes declared different classes")
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" \
            else torch.device("cpu")
        home = None if self._means is None else self._means.device
        if self._means is None:
            self._allocate(dims.pop(), device)
        self._grow(torch.tensor(sorted(set().union(*map(set, lists))), dtype=torch.int64,
                                device=self._classes.device))
        k, dim = self._means.shape
        counts, means = self._counts.to(device), self._means.to(device)
        first = torch.cat([counts[:, None], counts[:, None] * means], 1)
        dist.all_reduce(first, group=group)
        total = first[:, 0]
        ref = first[:, 1:] / total.clamp(min=1)[:, None]
        d = (means - ref) * (counts > 0)[:, None]
        nd = counts[:, None] * d
        parts = [(self._sq.to(device) + (nd * d).sum(1))[:, None], nd]
        if self._scatter is not None:
            parts.append((self._scatter.to(device) + nd.T @ d).reshape(-1)[None].expand(1, -1))
        second = torch.cat([p.reshape(-1) for p in parts])
        dist.all_reduce(second, group=group)
        sq, nd_sum = second[:k], second[k:k + k * dim].reshape(k, dim)
        shift = nd_sum / total.clamp(min=1)[:, None]
        home = home or device
        self._counts = total.to(home)
        self._means = (ref + shift).to(home)
        self._sq = (sq - (nd_sum * shift).sum(1)).to(home)
        if self._scatter is not None:
            scatter = second[k + k * dim:].reshape(dim, dim)
            self._scatter = (scatter - nd_sum.T @ shift).to(home)
        self._classes = self._classes.to(home)
        return self

    def _merge(self, b_counts: torch.Tensor, ref: torch.Tensor, b_shift: torch.Tensor, b_sq: torch.Tensor,
               b_scatter: torch.Tensor | None) -> None:
        """Chan et al. pairwise merge of a batch's class statistics: ``b_counts: [K]``, batch means
        ``ref + b_shift`` (``[K, m]`` each; ``ref`` is the running mean of every class seen before, so the
        difference of the two means is ``b_shift`` itself, without rounding), ``b_sq: [K]`` squared
        deviations from the batch means, ``b_scatter: [m, m]`` or None."""
        total = self._counts + b_counts
        share = b_counts / total.clamp(min=1)  # weight of the batch in the merged mean (1 for a new class)
        cross = self._counts * share  # n_a n_b / (n_a + n_b)
        self._means = ref + b_shift * share[:, None]
        self._sq += b_sq + cross * b_shift.square().sum(1)
        if b_scatter is not None:
            both = cross > 0
            d = b_shift[both]
            self._scatter += b_scatter + (d * cross[both, None]).T @ d
        self._counts = total

    # ------------------------------------------------------------------------------- results
    @property
    def classes(self) -> torch.Tensor:
        """``[K]`` int64 label values in sorted order."""
        self._check_ready()
        return self._classes

    @property
    def counts(self) -> torch.Tensor:
        """``[K]`` float64 samples per class."""
        self._check_ready()
        return self._counts

    @property
    def means(self) -> torch.Tensor:
        """``[K, m]`` float64 class means (rows in sorted class order)."""
        self._check_ready()
        return self._means

    def _check_ready(self) -> None:
        if self._means is None:
            raise ValueError("ClassStatistics has seen no samples: call update() first")
        if self._classes.numel() < 2:
            raise ValueError(f"labels must contain at least 2 classes, got {self._classes.tolist()}")
        check_counts(self._counts, self._classes)

    def cdnv_matrix(self) -> torch.Tensor:
        """``[K, K]`` float64 pairwise CDNV (zero diagonal)."""
        return cdnv_pairs(self.variances(), self.means)

    def variances(self) -> torch.Tensor:
        """``[K]`` float64 biased class variances Var_k = (1/N_k) Σ ‖f − μ_k‖²."""
        return self._sq / self.counts

    def within_covariance(self) -> torch.Tensor:
        """``[m, m]`` float64 Σ_W = (1/N) Σ_i (f_i − μ_{y_i})(f_i − μ_{y_i})ᵀ."""
        if self._scatter is None:
            raise ValueError("within_covariance needs ClassStatistics(within_scatter=True)")
        return self._scatter / self.counts.sum()

    def nc1_quotient(self) -> float:
        """tr(Σ_W) / tr(Σ_B) (Tirer et al. 2023): needs no ``[m, m]`` scatter."""
        return nc1_quotient_value(self._sq, self.counts, self.means)

    def compute(self, weight=None) -> dict[str, float]:
        """``cdnv``, ``nc1`` (if ``within_scatter``), ``nc1_quotient``, ``nc2``, ``nc2_equinorm``,
        ``nc2_equiangularity``, and ``nc3`` when ``weight: [K, m]`` (rows in sorted class order) is given."""
        means = self.means
        out = {"cdnv": mean_over_pairs(self.cdnv_matrix()), "nc1_quotient": self.nc1_quotient()}
        if self._scatter is not None:
            vals, vecs = between_eigen(means)
            out["nc1"] = nc1_value(((self.within_covariance() @ vecs) * vecs).sum(0), vals, means.shape[0])
        out.update(nc2_values(means))
        if weight is not None:
            a, _ = check_weight(weight, None, *means.shape, means.device)
            out["nc3"] = nc3_value(a, means)
        return out

    def referenced(self, weight=None, bias=None, *, collapse: bool = True,
                   nearest: bool = True) -> ReferencedStatistics:
        """The pass-2 accumulator against this pass's final class means (see :class:`ReferencedStatistics`)."""
        return ReferencedStatistics(self.classes, self.means, weight, bias, collapse=collapse, nearest=nearest)

    def reset(self) -> None:
        """Forget all batches (classes given at construction are kept)."""
        if not self._fixed:
            self._classes = None
        self._counts = self._means = self._sq = self._scatter = None


class ReferencedStatistics:
    """Pass-2 accumulator: samples measured against fixed reference class means.

    classes: ``[K]`` sorted integer label values; means: ``[K, m]`` reference (train) class means;
    weight ``[K, m]`` / bias ``[K]``: optional classifier for NC4 (rows in sorted class order).
    collapse: project deviations on the top-r eigenvectors of the reference Σ_B (strong / weak test
    collapse); nearest: nearest-mean decisions (NCC accuracy, weak collapse, NC4).

    ``update(features, labels=None)``; ``compute()`` returns whichever of ``ncc_accuracy`` with the exact
    counts ``ncc_errors`` and ``n`` (labels, nearest), ``strong_test_collapse`` (labels, collapse),
    ``weak_test_collapse`` (nearest, collapse), ``nc4`` (weight) and ``classifier_accuracy`` (weight,
    labels: argmax of the classifier = the label's row) apply.
    """

    def __init__(self, classes, means, weight=None, bias=None, *, collapse: bool = True,
                 nearest: bool = True):
        self.means = as_features(means, "means").to(dtype=DTYPE)
        self.means = self.means.to(compute_device(self.means))
        k, dim = self.means.shape
        device = self.means.device
        self.classes = as_labels(classes, k, device, "classes")
        if k < 2 or not bool((self.classes[1:] > self.classes[:-1]).all()):
            raise ValueError("classes must be at least 2 distinct values in increasing order, "
                             f"got {self.classes.tolist()[:10]}")
        if weight is None and bias is not None:
            raise ValueError("bias given without weight")
        if weight is not None and not nearest:
            raise ValueError("NC4 (weight given) needs nearest=True")
        self.weight, self.bias = (None, None) if weight is None else check_weight(weight, bias, k, dim, device)
        self.nearest = nearest
        self._nearest = NearestMeanDecision(self.means) if nearest else None
        self._classifier = None if self.weight is None else LinearDecision(self.weight, self.bias)
        self._vals, self._vecs = between_eigen(self.means) if collapse else (None, None)
        r = 0 if self._vecs is None else self._vecs.shape[1]
        self._n = 0
        self._labelled: bool | None = None
        self._along_true = torch.zeros(r, dtype=DTYPE, device=device)
        self._along_pred = torch.zeros(r, dtype=DTYPE, device=device)
        self._correct = 0
        self._mismatch = 0
        self._classifier_hits = 0

    def update(self, features, labels=None) -> None:
        """Add one batch: ``features: [n, m]``; ``labels: [n]`` (values among ``classes``) or None."""
        f = as_features(features)
        k, dim = self.means.shape
        if f.shape[1] != dim:
            raise ValueError(f"features have {f.shape[1]} columns but the reference means have {dim}")
        if self._labelled is not None and self._labelled != (labels is not None):
            raise ValueError("labels must be given for every batch or for none")
        self._labelled = labels is not None
        device = self.means.device
        codes = None if labels is None else codes_in(self.classes, as_labels(labels, f.shape[0], device), "labels")
        for rows, chunk in row_chunks(f, max(dim, k), device):
            self._n += chunk.shape[0]
            if codes is not None:
                c = codes[rows]
                if self._vecs is not None:
                    true_sq = (deviations(chunk, c, self.means) @ self._vecs).square_()
                    self._along_true += true_sq.sum(0)
            if not self.nearest:
                continue
            pred = self._nearest.argmax(chunk)
            if codes is not None:
                hit = pred == c
                self._correct += int(hit.sum())
            if self.weight is not None:
                decided = self._classifier.argmax(chunk)
                self._mismatch += int((decided != pred).sum())
                if codes is not None:
                    self._classifier_hits += int((decided == c).sum())
            if self._vecs is not None:
                if codes is not None:  # correctly predicted rows deviate from the same mean: reuse them
                    self._along_pred += true_sq[hit].sum(0)
                    chunk, pred = chunk[~hit], pred[~hit]
                self._along_pred += (deviations(chunk, pred, self.means) @ self._vecs).square_().sum(0)

    def all_reduce(self, group=None) -> "ReferencedStatistics":
        """Sum this pass's counts (samples, NCC hits, NC4 mismatches) and ``[r]`` projections over every
        process of ``group`` (``torch.distributed``; default: the world), in place; returns ``self``.

        Every process must have built it from the same reference (``ClassStatistics.all_reduce`` first,
        then ``referenced``) and call this once after its last ``update`` (also a process that saw no
        batch). One float64 all-reduce of 6 + 2r numbers. No-op without an initialised process group.
        """
        import torch.distributed as dist  # lazy: only when statistics are merged across processes

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
            return self
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" \
            else torch.device("cpu")
        head = torch.tensor([self._n, self._correct, self._mismatch, self._labelled is True,
                             self._labelled is False, self._classifier_hits], dtype=DTYPE, device=device)
        both = torch.cat([head, self._along_true.to(device), self._along_pred.to(device)])
        dist.all_reduce(both, group=group)
        labelled, unlabelled = int(both[3]), int(both[4])
        if labelled and unlabelled:
            raise ValueError("labels must be given for every batch or for none, on every process")
        r = self._along_true.numel()
        self._n, self._correct, self._mismatch = (int(v) for v in both[:3].tolist())
        self._classifier_hits = int(both[5])
        self._labelled = True if labelled else (False if unlabelled else None)
        self._along_true = both[6:6 + r].to(self._along_true.device)
        self._along_pred = both[6 + r:].to(self._along_pred.device)
        return self

    def compute(self) -> dict[str, float]:
        """Fractions and collapse values over all batches seen (see the class docstring for keys)."""
        if self._n == 0:
            raise ValueError("ReferencedStatistics has seen no samples: call update() first")
        k = self.means.shape[0]
        out: dict[str, float] = {}
        if self._labelled and self.nearest:
            out["ncc_accuracy"] = self._correct / self._n
            out["ncc_errors"] = self._n - self._correct  # an exact count, for decisions such as error ≤ ε
            out["n"] = self._n
        if self._labelled and self._vecs is not None:
            out["strong_test_collapse"] = nc1_value(self._along_true / self._n, self._vals, k)
        if self.nearest and self._vecs is not None:
            out["weak_test_collapse"] = nc1_value(self._along_pred / self._n, self._vals, k)
        if self.weight is not None:
            out["nc4"] = self._mismatch / self._n
            if self._labelled:
                out["classifier_accuracy"] = self._classifier_hits / self._n
        return out

"""Class pools, source-class draws and few-shot episodes, all from local seeded generators.

The same (dataset, pool spec, seed) gives the same pools, source classes and episodes on every machine
and for every backbone, so that two backbones evaluated on a task are compared on identical episodes.

Seeds are combined with a fixed purpose tag into ``np.random.default_rng([tag, seed, ...])`` so the
different draws of one task never share a stream.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ncbench.data.base import TEST, TRAIN, ImageDataset

_POOL_TAG, _SOURCE_TAG, _EPISODE_TAG = 1, 2, 3


class EpisodeError(ValueError):
    """Pools or episodes cannot be drawn as asked (too few classes or images)."""


def split_pools(dataset: ImageDataset, source: list[str] | None = None, target: list[str] | None = None,
                source_fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint source and target class pools, as sorted int64 arrays of class indices.

    With ``source``/``target`` given (names of the dataset's standard class splits, e.g. ``["train"]`` and
    ``["test"]``) the pools are the union of those splits. Otherwise the classes are permuted with ``seed``
    and the first ``round(source_fraction * K)`` form the source pool, the rest the target pool.
    """
    if (source is None) != (target is None):
        raise EpisodeError("pools: give both 'source' and 'target' class splits, or neither")
    if source is not None:
        pools = []
        for role, names in (("source", source), ("target", target)):
            missing = [n for n in names if n not in dataset.class_splits]
            if missing:
                known = sorted(dataset.class_splits) or "none (this dataset has no standard class split)"
                raise EpisodeError(f"pools.{role}: unknown class split {missing} for dataset {dataset.name!r}; known: {known}")
            pools.append(np.unique(np.concatenate([np.asarray(dataset.class_splits[n], dtype=np.int64) for n in names])))
        src, tgt = pools
    else:
        if not 0.0 < source_fraction < 1.0:
            raise EpisodeError(f"pools.source_fraction must lie strictly between 0 and 1, got {source_fraction}")
        perm = np.random.default_rng([_POOL_TAG, seed]).permutation(dataset.num_classes)
        n_src = int(round(source_fraction * dataset.num_classes))
        src, tgt = np.sort(perm[:n_src]), np.sort(perm[n_src:])
    overlap = np.intersect1d(src, tgt)
    if overlap.size:
        names = [dataset.class_names[i] for i in overlap[:5]]
        raise EpisodeError(f"pools: source and target pools share {overlap.size} classes, e.g. {names}")
    if src.size < 2 or tgt.size < 2:
        raise EpisodeError(f"pools: need at least 2 classes in each pool, got source {src.size}, target {tgt.size}")
    return src.astype(np.int64), tgt.astype(np.int64)


def draw_source_classes(source_pool: np.ndarray, s: int, seed: int) -> np.ndarray:
    """``s`` classes from the source pool, sorted. Draws are nested: for one seed, the classes drawn for a
    smaller ``s`` are a subset of those for a larger one, so a sweep over ``s`` adds classes."""
    if not 2 <= s <= len(source_pool):
        raise EpisodeError(f"source_classes: {s} asked, the source pool has {len(source_pool)} classes (need 2..{len(source_pool)})")
    perm = np.random.default_rng([_SOURCE_TAG, seed]).permutation(np.sort(source_pool))
    return np.sort(perm[:s])


def source_images(dataset: ImageDataset, classes: np.ndarray, train_per_class: int,
                  test_per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the first ``train_per_class`` TRAIN and first ``test_per_class`` TEST images of each class.

    Returns ``(train_idx [s * train_per_class], test_idx [s * test_per_class])``, class-major order.
    """
    out = []
    for split, n, field in ((TRAIN, train_per_class, "train"), (TEST, test_per_class, "test")):
        parts = []
        for c in classes:
            idx = dataset.indices(int(c), split)
            if len(idx) < n:
                raise EpisodeError(f"images_per_class.{field}: {n} asked, class {dataset.class_names[c]!r} of "
                                   f"{dataset.name!r} has {len(idx)} {field.upper()} images")
            parts.append(idx[:n])
        out.append(np.concatenate(parts) if parts else np.empty(0, np.int64))
    return out[0], out[1]


@dataclass(frozen=True)
class Episodes:
    """A batch of E ``ways``-way episodes; index arrays point into the dataset (and its feature matrix).

    classes:        [E, W] int64, dataset class indices of each episode's classes, in episode-label order.
    support:        [E, W*S] int64 dataset indices; support_labels [E, W*S] int64 in 0..W-1.
    query:          [E, W*Q] int64 dataset indices; query_labels [E, W*Q] int64 in 0..W-1.
    """

    classes: np.ndarray
    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def digest(self) -> str:
        """sha256 (hex, first 16 chars) of all index arrays: identifies the episode set in result rows."""
        h = hashlib.sha256()
        for a in (self.classes, self.support, self.support_labels, self.query, self.query_labels):
            h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
            h.update(str(a.shape).encode())
        return h.hexdigest()[:16]


def sample_episodes(labels: np.ndarray, pool: np.ndarray, ways: int, shots: int, queries: int, count: int,
                    seed: int) -> Episodes:
    """Draw ``count`` class-balanced episodes from the classes in ``pool``.

    labels: [N] int class index of each dataset image (all images of a pool class are eligible).
    Each episode picks ``ways`` distinct classes and, per class, ``shots + queries`` distinct images:
    the first ``shots`` are support, the rest query. Vectorised; depends only on the arguments.
    """
    labels = np.asarray(labels)
    pool = np.sort(np.asarray(pool, dtype=np.int64))
    for field, v, lo in (("ways", ways, 2), ("shots", shots, 1), ("queries", queries, 1), ("count", count, 1)):
        if int(v) < lo:
            raise EpisodeError(f"episodes.{field} must be >= {lo}, got {v}")
    if ways > len(pool):
        raise EpisodeError(f"episodes.ways: {ways}-way episodes need {ways} target classes, the target pool has {len(pool)}")
    members = [np.flatnonzero(labels == c) for c in pool]
    sizes = np.array([len(m) for m in members])
    need = shots + queries
    if sizes.min() < need:
        c = int(pool[sizes.argmin()])
        raise EpisodeError(f"episodes: shots + queries = {need} images per class needed, target class {c} has {sizes.min()}")
    table = np.full((len(pool), sizes.max()), -1, dtype=np.int64)
    for i, m in enumerate(members):
        table[i, : len(m)] = m

    rng = np.random.default_rng([_EPISODE_TAG, seed, ways, shots, queries])
    cls_pos = np.argsort(rng.random((count, len(pool))), axis=1)[:, :ways]          # [E, W] positions in pool
    keys = rng.random((count, ways, table.shape[1]))
    keys[table[cls_pos] < 0] = np.inf                                                # never pick padding
    pick = np.argsort(keys, axis=2)[:, :, :need]                                     # [E, W, S+Q]
    chosen = np.take_along_axis(table[cls_pos], pick, axis=2)                        # dataset indices
    episode_labels = np.broadcast_to(np.arange(ways)[None, :, None], chosen.shape)
    return Episodes(
        classes=pool[cls_pos],
        support=chosen[:, :, :shots].reshape(count, -1),
        support_labels=episode_labels[:, :, :shots].reshape(count, -1).copy(),
        query=chosen[:, :, shots:].reshape(count, -1),
        query_labels=episode_labels[:, :, shots:].reshape(count, -1).copy(),
    )

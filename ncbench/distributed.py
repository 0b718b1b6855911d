"""Multi-process pretraining: the process group that ``torchrun`` (or a multi-task submitit job) sets up.

ncbench never spawns training processes itself. A launcher starts G copies of the same command and tells
each its place through the environment variables of torch's ``env://`` rendezvous (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``):

* ``torchrun --nproc-per-node=G -m ncbench pretrain|evaluate|run ...`` sets them itself;
* a Slurm job with G tasks started through submitit gets them from
  ``submitit.helpers.TorchDistributedEnvironment().export()`` (``ncbench.executor`` does this).

:func:`session` joins that group (NCCL on CUDA, gloo on CPU) when ``WORLD_SIZE`` > 1 and does nothing
otherwise, so the same code runs single-process when not launched distributed. Inside it, pretraining
wraps the model in DistributedDataParallel (``ncbench.pretrain``); rank 0 alone writes files and
evaluates.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

DEVICE_ENV = "NCBENCH_DEVICE"  # e.g. "cpu" to keep training off the GPU


@dataclass(frozen=True)
class Place:
    """This process's place in the group: rank in 0..world_size-1, local_rank on its node."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def launched() -> Place:
    """The place the launcher's environment variables describe (world size 1 when there are none)."""
    place = Place(_env_int("RANK", 0), _env_int("LOCAL_RANK", 0), _env_int("WORLD_SIZE", 1))
    if place.world_size < 1 or not 0 <= place.rank < place.world_size:
        raise ValueError(f"RANK={place.rank} and WORLD_SIZE={place.world_size} do not describe a process group "
                         "(expected 0 <= RANK < WORLD_SIZE)")
    return place


def place() -> Place:
    """This process's place in the initialised group, or the single-process place."""
    if dist.is_available() and dist.is_initialized():
        return Place(dist.get_rank(), _env_int("LOCAL_RANK", 0), dist.get_world_size())
    return Place()


def device() -> torch.device:
    """Where pretraining runs: ``$NCBENCH_DEVICE`` if set, else this process's GPU (``cuda:<local_rank>``)
    when CUDA is available, else the CPU."""
    if os.environ.get(DEVICE_ENV):
        return torch.device(os.environ[DEVICE_ENV])
    if torch.cuda.is_available():
        return torch.device("cuda", place().local_rank % torch.cuda.device_count())
    return torch.device("cpu")


@contextlib.contextmanager
def session(timeout_s: float = 1800) -> Iterator[Place]:
    """Join the launcher's process group for the duration of the block (no-op for one process).

    Yields this process's :class:`Place`. A group that is already initialised is used as it is and left
    alone at the end."""
    want = launched()
    if want.world_size == 1 or dist.is_initialized():
        yield place()
        return
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; launch one process instead")
    backend = "nccl" if torch.cuda.is_available() and device().type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(want.local_rank % torch.cuda.device_count())
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    log.info("joined process group: rank %d of %d (%s)", want.rank, want.world_size, backend)
    try:
        yield place()
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process of the group (no-op for one process)."""
    if dist.is_initialized():
        dist.barrier()


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over the group (the values themselves for one process)."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64,
                     device=device() if dist.get_backend() == "nccl" else torch.device("cpu"))
    dist.all_reduce(t)
    return t.tolist()


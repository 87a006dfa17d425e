"""The processes a run is spread over: one (the default) or several under ``torchrun``.

Training code is written once against :class:`Workers`. With one process every
operation is the identity; under ``torchrun`` each rank takes its slice of every global
batch and of every evaluation, and the pieces are put back together with collectives, so
a run on ``W`` ranks computes what one process computes on the same global batch:

- item embeddings of the whole global batch are gathered (with gradients) before the
  in-batch softmax, so every rank scores against the same negatives as one process would;
- each rank's loss is its share of the global mean, and DistributedDataParallel averages
  the gradients, which together give the gradient of the global mean;
- evaluation ranks are gathered, so metrics are computed over every user, identically on
  every rank (early stopping then agrees without further messages).

Backends: NCCL when the ranks have GPUs, gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather as differentiable_all_gather

from iisan.devices import pick_device
from iisan.errors import ConfigError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain process: the one that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass(frozen=True)
class Workers:
    """This process's place among the run's processes.

    Attributes:
        rank / world_size: as torchrun numbers them (0 and 1 for a plain run).
        device: where this rank's model and batches live.
        gather_group: a process group of its own for the differentiable gather, so that
            those collectives never interleave with DistributedDataParallel's gradient
            all-reduce on the default group.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    gather_group: object | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that writes checkpoints, logs and progress bars."""
        return self.rank == 0

    def share(self, count: int) -> slice:
        """This rank's contiguous share of ``count`` things (shares differ by at most one)."""
        base, extra = divmod(count, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def gather(self, tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Every rank's ``tensor`` concatenated along dim 0, in rank order, and where this
        rank's rows start in it. Ranks may hold different numbers of rows; gradients flow
        back to the rank that owns each row."""
        if not self.distributed:
            return tensor, 0
        sizes = torch.tensor([tensor.shape[0]], device=self.device)
        all_sizes = [torch.zeros_like(sizes) for _ in range(self.world_size)]
        dist.all_gather(all_sizes, sizes, group=self.gather_group)
        counts = [int(s) for s in all_sizes]
        longest = max(counts)
        padded = torch.cat([tensor, tensor.new_zeros(longest - tensor.shape[0], *tensor.shape[1:])])
        pieces = differentiable_all_gather(padded, group=self.gather_group)
        return torch.cat([piece[:n] for piece, n in zip(pieces, counts)]), sum(counts[: self.rank])

    def sum(self, value: float | int) -> float:
        """``value`` summed over ranks."""
        if not self.distributed:
            return float(value)
        total = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(total, group=self.gather_group)
        return float(total.item())

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.gather_group)


LOCAL = Workers()


def start(requested: bool, device: str = "auto") -> Workers:
    """Join the run's process group if there is one.

    Args:
        requested: ``--distributed``; a torchrun environment turns it on by itself.
        device: ``auto`` (this rank's GPU if any, else CPU), ``cpu`` or ``cuda``.

    Raises:
        ConfigError: ``--distributed`` outside torchrun, or ``cuda`` without a GPU.
    """
    launched = launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1
    if requested and not launched_by_torchrun():
        raise ConfigError("--distributed: start the ranks with torchrun, e.g. "
                          "`torchrun --nproc-per-node 2 -m iisan train ...` (see the README)")
    chosen = pick_device(device)
    if not launched:
        return Workers(device=chosen)
    if not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    group = dist.new_group()
    return Workers(rank=dist.get_rank(), world_size=dist.get_world_size(), device=chosen, gather_group=group)


def stop(workers: Workers) -> None:
    if workers.distributed and dist.is_initialized():
        dist.destroy_process_group()


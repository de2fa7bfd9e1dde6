"""Data parallelism under torchrun: process group from the environment, per-rank batch slices.

Every process draws the same global batch (same generators, same seed) and keeps the samples
rank, rank + W, rank + 2W, ... With ProGAN's strided minibatch-stddev groups (sample n in group
n % (N / 4)) and a per-process batch that is a multiple of 4, each process then holds whole
groups, so the all-reduced gradients equal one process's on the whole batch.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass
class World:
    """This process's place: `rank` of `size`, its `device`, and whether it started the group."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def main(self) -> bool:
        """Rank 0 writes the outputs."""
        return self.rank == 0

    def slice(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's samples of a global batch (strided)."""
        return t[self.rank::self.size] if self.size > 1 else t

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """Average of `t` over the processes."""
        if self.size > 1:
            t = t.clone()
            dist.all_reduce(t)
            t /= self.size
        return t

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def world_size_from_env() -> int:
    """WORLD_SIZE set by torchrun (1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: str) -> World:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA) and pick the device.

    Args:
        device: "auto" | "cpu" | "cuda" | "cuda:N"; under torchrun "cuda" means cuda:LOCAL_RANK.
    Returns:
        World.
    """
    size = world_size_from_env()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU is available (torch.cuda.is_available()"
                         " is False): use --device cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if size > 1 else 0)
    if size == 1:
        return World(device=dev)
    owns = not dist.is_initialized()
    if owns:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size(), device=dev, owns_group=owns)

"""Checkpoints: everything a run needs to continue bit for bit, written atomically.

A checkpoint holds G, D, G's EMA, both optimizers, the images and steps done, the optimizer
segment (Adam's state is reset at every fade-in and stabilization, as the official code does),
the states of every random generator, and the run's options (`TrainConfig.run_values`) to refuse
a resume under other ones.
"""

from __future__ import annotations

import os

import torch

CHECKPOINT = "checkpoint.pt"


def save(path: str, payload: dict) -> None:
    """torch.save to a temporary file beside `path`, then rename over it: a reader (or a crash
    mid-write) never sees half a checkpoint."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load(path: str) -> dict:
    """A checkpoint written by `save`, on the CPU.

    Raises:
        ValueError when the file is missing or not a fastgan training checkpoint.
    """
    if not os.path.isfile(path):
        raise ValueError(f"--resume: no checkpoint at {path}: start the run without --resume, "
                         "or point --resume at a checkpoint.pt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a damaged file
        raise ValueError(f"--resume: {path} cannot be read as a checkpoint ({err})") from err
    if not isinstance(ckpt, dict) or "run" not in ckpt or "G" not in ckpt:
        raise ValueError(f"--resume: {path} is not a fastgan.train checkpoint")
    return ckpt


# run values that are no command-line option, as the user sets them
_NOT_OPTIONS = {"world_size": "processes (torchrun --nproc_per_node)"}


def differences(saved: dict, current: dict) -> list[str]:
    """'--name: checkpoint X, now Y' for every run option that differs."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if a != b:
            name = _NOT_OPTIONS.get(key, f"--{key.replace('_', '-')}")
            out.append(f"{name}: checkpoint {a!r}, now {b!r}")
    return out


def rng_states(generators: dict) -> dict:
    """States of the named torch.Generators and of torch's global generators."""
    states = {name: g.get_state() for name, g in generators.items()}
    states["torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict, generators: dict) -> None:
    """Inverse of `rng_states`."""
    for name, g in generators.items():
        g.set_state(states[name])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])

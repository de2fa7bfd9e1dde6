"""What a run leaves in --out: log.jsonl, samples-*.png grids, progress.png, and the progress bar.

tqdm, torchvision and matplotlib (the `train` extra) are imported only here, when an output needs
them. Without them the run still trains and logs: the bar becomes plain lines, and a grid or plot
that cannot be drawn is skipped with one warning saying what to install.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings

import torch

LOG = "log.jsonl"
PLOT = "progress.png"
_warned: set = set()


def _missing(what: str, package: str) -> None:
    if package not in _warned:
        _warned.add(package)
        warnings.warn(f"{what} skipped: {package} is not installed (pip install "
                      "'fastgan[train]')", stacklevel=3)


class JsonLog:
    """One JSON object per line, appended and flushed as it comes."""

    def __init__(self, path: str):
        self.path = path

    def write(self, record: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Keep the records up to `step` (a resumed run rewrites what came after its
        checkpoint)."""
        kept = [r for r in self.records() if r.get("step", 0) <= step]
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(tmp, self.path)


class Progress:
    """A tqdm bar over kimg (plain lines to stderr without tqdm)."""

    def __init__(self, total_kimg: float, start_kimg: float, enabled: bool):
        self.enabled, self.bar = enabled, None
        self.total = total_kimg
        self._last_print = 0.0
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=round(total_kimg, 3), initial=round(start_kimg, 3), unit="kimg",
                        dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} kimg "
                        "[{elapsed}<{remaining}{postfix}]")

    def update(self, kimg: float, fields: dict) -> None:
        """Move to `kimg` and show `fields` (phase, resolution, alpha, img/s, losses)."""
        if not self.enabled:
            return
        text = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in fields.items())
        if self.bar is not None:
            self.bar.n = min(round(kimg, 3), self.bar.total)
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.refresh()
        elif time.monotonic() - self._last_print > 5.0:
            self._last_print = time.monotonic()
            print(f"{kimg:8.2f}/{self.total:.1f} kimg  {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def save_grid(path: str, fakes: torch.Tensor, reals: torch.Tensor) -> bool:
    """Samples (left) next to real images (right), each a square grid, as one PNG.

    Args:
        path: the PNG to write.
        fakes, reals: images [n, 3, R, R] in [-1, 1], same R.
    Returns:
        whether it was written (False without torchvision).
    """
    try:
        from torchvision.utils import make_grid, save_image
    except ImportError:
        _missing("sample grid", "torchvision")
        return False
    nrow = max(1, int(round(fakes.shape[0] ** 0.5)))
    left = make_grid(fakes.float().clamp(-1, 1), nrow=nrow, normalize=True, value_range=(-1, 1))
    right = make_grid(reals.float().clamp(-1, 1), nrow=nrow, normalize=True, value_range=(-1, 1))
    gap = torch.ones(3, left.shape[1], max(2, left.shape[2] // 32))
    save_image(torch.cat([left, gap, right], dim=2), path)
    return True


def save_plot(path: str, records: list[dict]) -> bool:
    """Losses and the sliced Wasserstein distance over kimg, as one PNG.

    Args:
        path: the PNG to write.
        records: log records (those with loss_d / swd are drawn).
    Returns:
        whether it was written (False without matplotlib).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _missing("progress plot", "matplotlib")
        return False
    steps = [r for r in records if "loss_d" in r]
    evals = [r for r in records if "swd" in r]
    fig, (ax_loss, ax_swd) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss_d", "loss_g", "gp", "r1"):
        pts = [(r["kimg"], r[key]) for r in steps if key in r]
        if pts:
            ax_loss.plot(*zip(*pts), label=key, linewidth=0.8)
    for r in evals:
        if r.get("event") == "phase_end":
            ax_loss.axvline(r["kimg"], color="grey", linewidth=0.5, linestyle=":")
    ax_loss.set_xlabel("kimg")
    ax_loss.set_title("losses")
    ax_loss.legend()
    if evals:
        ax_swd.plot([r["kimg"] for r in evals], [r["swd"] for r in evals], "o-")
    ax_swd.set_xlabel("kimg")
    ax_swd.set_title("sliced Wasserstein distance (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True

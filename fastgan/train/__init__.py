"""The training command: progressive growing ProGAN on fastgan's kernels.

    python -m fastgan.train                      # discs drawn in code, outputs in ./fastgan-run
    python -m fastgan.train --data DIR --resolution 128 --out runs/faces
    python -m fastgan.train --out runs/faces --resume        # continue an interrupted run
    torchrun --nproc_per_node 8 -m fastgan.train ...         # data-parallel

Modules: config (options, defaults, checks), schedule (growing), data (discs, image folders),
steps (D and G steps per loss, EMA), distributed (torchrun), checkpoints, outputs (log, grids,
plot, progress bar), loop (the Trainer), cli.
"""

from .config import TrainConfig, parse_args
from .loop import Trainer, run

__all__ = ["TrainConfig", "Trainer", "parse_args", "run", "main"]


def main(argv=None):
    """Run the training command in this process (see fastgan.train.cli.main); returns the
    run's summary."""
    from .cli import main as cli_main

    return cli_main(argv)

#!/usr/bin/env python
"""Train ProGAN with fastgan: the same as `python -m fastgan.train` (see its --help).

    python examples/train_progan.py                        # discs drawn in code, ./fastgan-run
    python examples/train_progan.py --data DIR --resolution 128 --out runs/mine
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fastgan.train import main  # noqa: E402

if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Model, without a GPU, what one ProGAN WGAN-GP discriminator step moves and keeps.

    python scripts/step_traffic.py [--res 256] [--batch 16] [--bf16] [--order official|port]

Runs the step (D(x_hat) penalty, D(fake), D(real), drift, backward) under FakeTensorMode at full
size, for the plain-torch D with the penalty as usually written and for fastgan's D and penalty,
and prints per op: calls and bytes (tensor inputs + outputs: what a kernel that reads each input
and writes each output once moves), plus the bytes autograd keeps before the backward. Views and
metadata ops are left out. "floor ms" = bytes / 3002 GB/s (docs/baselines.md's H100 copy rate): a
lower bound for the memory-bound ops, not a timing. Convolutions are counted apart: they are
compute-bound. A model of the step, to see where bytes go; only a GPU run measures it.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

if __name__ == "__main__":  # fake CPU tensors may take the "triton" path (never set on import)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch.multiprocessing.reductions import StorageWeakRef  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import fastgan  # noqa: E402
import fastgan.penalties as P  # noqa: E402
from fastgan.models.progan import Discriminator, PlainDiscriminator  # noqa: E402

COPY_GBPS = 3002.0


class Traffic(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.bytes, self.calls = collections.Counter(), collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view and func.namespace != "prim":
            leaves = torch.utils._pytree.tree_leaves((args, kwargs, out))
            name = "convolutions" if "convolution" in str(func) else str(func)
            self.bytes[name] += sum(t.numel() * t.element_size() for t in leaves
                                    if isinstance(t, torch.Tensor))
            self.calls[name] += 1
        return out


def step(fused: bool, res: int, n: int, bf16: bool, order: str, device: str = "cpu",
         backend: str = "triton"):
    """(Traffic, bytes kept before the backward) of one D step, on fake `device` tensors."""
    kept = {}

    def pack(t):
        s = t.untyped_storage()
        kept[s._cdata] = (StorageWeakRef(s), s.nbytes())
        return t

    with FakeTensorMode(allow_non_fake_inputs=True), torch.device(device), \
            fastgan.use_backend(backend):
        D = (Discriminator if fused else PlainDiscriminator)(resolution=res, down_order=order)
        real, fake = torch.randn(2, n, 3, res, res)
        eps = torch.rand(n)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16), Traffic() as traffic:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                if fused:
                    gp = P.gradient_penalty(D, real, fake, epsilon=eps)
                else:
                    x = torch.lerp(fake, real, eps.view(-1, 1, 1, 1)).requires_grad_()
                    (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
                    gp = 10 * ((g.float().flatten(1).norm(dim=1) - 1) ** 2).mean()
                scores = D(real)
                loss = D(fake).mean() - scores.mean() + gp + P.drift_penalty(scores)
            kept_bytes = sum(nb for ref, nb in kept.values() if not ref.expired())
            loss.backward()
    return traffic, kept_bytes


def report(title: str, traffic: Traffic, kept: int) -> None:
    print(f"\n{title}\n{'calls':>6} {'GB':>8} {'floor ms':>9}  op")
    rest = 0
    for name, b in traffic.bytes.most_common():
        if name != "convolutions":
            rest += b
        if b >= 1e8 or name == "convolutions":
            print(f"{traffic.calls[name]:6d} {b / 1e9:8.2f} {b / COPY_GBPS / 1e6:9.2f}  {name}")
    print(f"{'':6} {rest / 1e9:8.2f} {rest / COPY_GBPS / 1e6:9.2f}  all but convolutions")
    print(f"kept by autograd before the backward: {kept / 2**20:.0f} MiB")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--bf16", action="store_true", help="under bf16 autocast")
    ap.add_argument("--order", default="official", choices=("official", "port"))
    a = ap.parse_args(argv)
    what = (f"{a.res}x{a.res}, batch {a.batch}, {'bf16 autocast' if a.bf16 else 'fp32'}, "
            f"{a.order} order")
    for fused in (False, True):
        traffic, kept = step(fused, a.res, a.batch, a.bf16, a.order)
        report(f"{'fastgan D + penalty' if fused else 'plain-torch D, eager penalty'}: {what}",
               traffic, kept)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One file per fused op: its math, reference, Triton kernels and launchers, and one declaration
that registers its torch.library ops (`_registry.declare`); shared helpers in `_common`."""

"""One file per fused op: its math, reference, Triton kernels and torch.library registration."""

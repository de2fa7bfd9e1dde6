// fastgan spectral-norm power iteration: plain C++ API (no torch headers), see
// fastgan/ops/spectral_norm.py for the math and csrc/spectral_norm.cu for the kernels.
//
// Many layers in one call. Layer l's weight W (contiguous, any of the four dtypes, one dtype per
// call) is seen as [O, H, I] around its normalized dim; its matrix W_mat [H, K = O*I] has
// W_mat[h, o*I + i] = W[o, h, i]. meta holds kSNMeta int64 per layer, in device memory:
//   {W's address, O, H, I, u_off, v_off, p1_off, n_row_blocks, p2_off, n_col_blocks}
// with u_off / v_off the layer's offsets in the flat H- / K-vectors, p1_off / p2_off in the
// partial-norm vectors, n_row_blocks = ceil(H / kSNRows), n_col_blocks = ceil(K / kSNCols).
// row_blocks [n_rb][2] and col_blocks [n_cb][2] (int32, device) list every (layer, block).
// All vectors are in the accumulation type A (fp32; fp64 for fp64 weights):
//   v0 [sum K]   the right vectors to start from
//   t [sum H], s [sum K], p1 [n_rb], p2 [n_cb]   workspace
//   u [sum H], v [sum K], sigma [layers]         results
// Each iteration: t = W_mat v, u = t / max(||t||, eps), s = W_mat^T u, v = s / max(||s||, eps);
// then sigma = ||s||^2 / max(||s||, eps). 2n + 1 launches; no atomics.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "fastgan_kernels.h"

namespace fastgan {

constexpr int kSNMeta = 10;
constexpr int kSNRows = 8;   // rows per block of the W v kernel (one warp each)
constexpr int kSNCols = 32;  // columns per block of the W^T u and finishing kernels

cudaError_t spectral_norm_power_iteration(DType dtype, const int64_t* meta,
                                          const int32_t* row_blocks, int64_t n_rb,
                                          const int32_t* col_blocks, int64_t n_cb,
                                          const void* v0, void* t, void* s, void* p1, void* p2,
                                          void* u, void* v, void* sigma, int64_t n_iterations,
                                          double eps, cudaStream_t stream);

}  // namespace fastgan

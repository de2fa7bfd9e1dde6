// fastgan CUDA kernels: plain C++ API.
//
// This header (and every .cu file in csrc/) includes no torch header: kernels take raw pointers,
// sizes, int64 element strides (stride 0 allowed), a dtype tag and a cudaStream_t, and return a
// cudaError_t (the launch status from cudaGetLastError). The one torch-aware file is
// bindings.cpp, which checks tensors, allocates outputs and calls these functions.
//
// Conventions shared by all ops:
//   * every tensor argument is a view struct: a data pointer and one int64 element stride per
//     logical dim (the sizes are passed once, in the op's shape/params struct);
//   * all tensors of one call have the same dtype; fp16/bf16 accumulate in fp32, fp32 in fp32,
//     fp64 in fp64;
//   * reductions use no atomics: results are bitwise reproducible for a given shape and layout;
//   * zero-sized problems are a no-op returning cudaSuccess.
//
// Adding an op: write csrc/<op>.cu implementing functions declared in a new section below, add
// the binding in bindings.cpp (one function + one m.impl line) and its schema in fastgan/_ext.py.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace fastgan {

enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

// ---------------------------------------------------------------------------------------------
// pixel_norm along one dim. x is seen as [outer, C, inner]: outer = prod of the dims before the
// normalized dim, C its size, inner = prod of the dims after it. r = rsqrt(mean_c x^2 + eps).
//   forward:          y = x * r
//   backward:         dx = r*dy - x * r^3 * m,                              m = mean_c(x*dy)
//   double_backward:  g_dy = r*gg - x * r^3 * b
//                     g_x  = r^3 * (x*(3*r^2*m*b - a) - dy*b - m*gg),  a = mean_c(gg*dy),
//                                                                       b = mean_c(gg*x)
// ---------------------------------------------------------------------------------------------
struct View3 { void* data; int64_t s_outer, s_c, s_inner; };
struct CView3 { const void* data; int64_t s_outer, s_c, s_inner; };
struct PixelNormShape { int64_t outer, channels, inner; };

cudaError_t pixel_norm_forward(DType dtype, PixelNormShape shape, double eps,
                               View3 y, CView3 x, cudaStream_t stream);
cudaError_t pixel_norm_backward(DType dtype, PixelNormShape shape, double eps,
                                View3 dx, CView3 dy, CView3 x, cudaStream_t stream);
cudaError_t pixel_norm_double_backward(DType dtype, PixelNormShape shape, double eps,
                                       View3 g_dy, View3 g_x,
                                       CView3 gg, CView3 dy, CView3 x, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// minibatch_stddev. x [N,C,H,W], G = group_size (N % G == 0, G >= 1), M = N/G groups,
// F = num_features (C % F == 0), c = C/F, D = G (or G-1 if unbiased, needs G >= 2).
// Group of sample n: strided: m = n % M, g = n / M; contiguous: m = n / G, g = n % G.
// Per group m and element e = (ch,h,w): mu = mean_g x, sigma = sqrt(sum_g (x-mu)^2 / D + eps);
// s[m,f] = mean of sigma over the c*H*W elements of feature slice f.
//   forward:  y [N,C+F,H,W], y[:, :C] = x, y[n, C+f] = s[m(n), f]
//   backward: dS[m,f] = sum_{n in m, h, w} dy[n, C+f, h, w], K = c*H*W*D,
//             dx = dy[:, :C] + dS * (x - mu) / (K*sigma)
//   double_backward (gg [N,C,H,W]) -> g_dy [N,C+F,H,W], g_x [N,C,H,W]:
//             g_dy[:, :C] = gg, g_dy[n, C+f] = T[m(n), f] = sum_{n in m, e in f} gg*(x-mu)/(K*sigma)
//             g_x = dS/(K*sigma) * (gg - mean_g gg - (x-mu) * sum_g(gg*(x-mu)) / (D*sigma^2))
// All tensors take 4 arbitrary strides. The launches need a device workspace of
// minibatch_stddev_workspace_bytes() bytes (any alignment >= 16; contents need no init).
// ---------------------------------------------------------------------------------------------
struct View4 { void* data; int64_t s_n, s_c, s_h, s_w; };
struct CView4 { const void* data; int64_t s_n, s_c, s_h, s_w; };
struct MinibatchStddevParams {
  int64_t N, C, H, W;
  int64_t group_size, num_features;
  double eps;
  bool strided, unbiased;
};

// Same size for all three passes. Returns 0 when nothing needs launching. The launches return
// cudaErrorInvalidValue when the params are inconsistent (see above).
size_t minibatch_stddev_workspace_bytes(DType dtype, const MinibatchStddevParams& p);

cudaError_t minibatch_stddev_forward(DType dtype, const MinibatchStddevParams& p,
                                     View4 y, CView4 x, void* workspace, cudaStream_t stream);
cudaError_t minibatch_stddev_backward(DType dtype, const MinibatchStddevParams& p,
                                      View4 dx, CView4 dy, CView4 x, void* workspace,
                                      cudaStream_t stream);
cudaError_t minibatch_stddev_double_backward(DType dtype, const MinibatchStddevParams& p,
                                             View4 g_dy, View4 g_x,
                                             CView4 gg, CView4 dy, CView4 x, void* workspace,
                                             cudaStream_t stream);

}  // namespace fastgan

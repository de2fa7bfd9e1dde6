// fastgan CUDA kernels: plain C++ API.
//
// This header (and every .cu file in csrc/) includes no torch header: kernels take raw pointers,
// sizes, int64 element strides (stride 0 allowed), a dtype tag and a cudaStream_t, and return a
// cudaError_t (the launch status from cudaGetLastError). The torch-aware files are the
// csrc/bind_<op>.cpp, which check tensors, allocate outputs and call these functions.
//
// Conventions shared by all ops:
//   * every tensor argument is a view struct: a data pointer and one int64 element stride per
//     logical dim (the sizes are passed once, in the op's shape/params struct);
//   * all tensors of one call have the same dtype; fp16/bf16 accumulate in fp32, fp32 in fp32,
//     fp64 in fp64;
//   * reductions use no atomics: results are bitwise reproducible for a given shape and layout;
//   * zero-sized problems are a no-op returning cudaSuccess.
//
// Adding an op: write csrc/<op>.cu implementing functions declared in a new section below, its
// binding in csrc/bind_<op>.cpp (see binding_utils.h) and its schemas in fastgan/_ext.py.
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

// ---------------------------------------------------------------------------------------------
// Vectors of N (or C) scalars of any supported float dtype, independent of the call's dtype
// (a fp32 bias with fp16 x, fp32 penalty gradients with a bf16 g): one int64 element stride
// (0 allowed for an expand) and their own dtype tag. data == nullptr means "absent".
// ---------------------------------------------------------------------------------------------
struct Vec { void* data; int64_t stride; DType dtype; };
struct CVec { const void* data; int64_t stride; DType dtype; };

// ---------------------------------------------------------------------------------------------
// bias_act along one dim. Tensors are seen as [outer, C, inner] (View3 / CView3, as pixel_norm);
// v = x + b[c] (b optional, any float dtype), computed in fp32 (fp64 for fp64 x):
//   forward:          y = act(v) * gain,  act: linear v | relu max(v, 0) (NaN stays NaN) |
//                                              lrelu v > 0 ? v : alpha*v
//                     mask (optional, uint8 = torch.bool, [outer, C, inner]) = [v > 0]
//   backward:         dx = dy * gain * s,  s = 1 (linear) | m (relu) | m ? 1 : alpha (lrelu),
//                     m = mask != 0 (mask unused for linear);
//                     db (optional, acc_t[C] contiguous: fp32, fp64 for fp64) = sum of dx (in
//                     the accumulation type, before rounding dx) over outer and inner
//   double backward:  g_dy = (gg_x + gg_b[c]) * gain * s   (gg_b optional, any float dtype)
// All tensors of one call share outer/C/inner; each has its own strides (0 allowed for inputs).
// db is a two-stage reduction (per-program partials, then a fixed-order sum), no atomics: the
// backward needs bias_act_backward_workspace_bytes() bytes of device workspace (0: none; any
// alignment >= 16, no init), computed from the same params and views as the launch.
// ---------------------------------------------------------------------------------------------
enum class Act : int { Linear = 0, ReLU = 1, LReLU = 2 };
struct BiasActParams {
  int64_t outer, channels, inner;
  Act act;
  double alpha, gain;
};

cudaError_t bias_act_forward(DType dtype, const BiasActParams& p, View3 y, View3 mask, CView3 x,
                             CVec b, cudaStream_t stream);
size_t bias_act_backward_workspace_bytes(DType dtype, const BiasActParams& p, View3 dx,
                                         CView3 dy, CView3 mask, bool with_db);
cudaError_t bias_act_backward(DType dtype, const BiasActParams& p, View3 dx, void* db, CView3 dy,
                              CView3 mask, void* workspace, cudaStream_t stream);
cudaError_t bias_act_double_backward(DType dtype, const BiasActParams& p, View3 g_dy,
                                     CView3 gg_x, CVec gg_b, CView3 mask, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// grad_penalty: per-sample norm and penalty of a gradient batch g [N, ...]. Each sample is M
// consecutive memory slots: sample n = data + n*s_n + [0, M) (any dense layout of a sample:
// NCHW, channels_last, ...). Accumulation in fp32 (fp64 for fp64 g); t = target, w = weight.
//   forward:   ss_n = sum g_n^2, norm_n = sqrt(ss_n),
//              p_n = r1 ? w*ss_n : w*(norm_n - t)^2 / t^2;  p, norm: acc_t[N] contiguous
//   backward:  inv_n = norm_n > 0 ? 1/norm_n : 0,
//              c_n = r1 ? dp_n*2w + dnorm_n*inv_n : dp_n*(2w/t^2)*(norm_n - t)*inv_n + dnorm_n*inv_n
//              dg_n = c_n * g_n                            (dnorm optional: 0 when absent)
//   double backward (gg like g):  s_n = <gg_n, g_n>,  g_g_n = c_n * gg_n,
//              g_dp_n = s_n * (r1 ? 2w : (2w/t^2)*(norm_n - t)*inv_n),   g_dnorm_n = s_n * inv_n,
//              g_norm_n = s_n * ((r1 ? 0 : dp_n*(2w/t^2)*t*inv_n^2) - dnorm_n*inv_n^2)
// dp, dnorm, norm, g_dp, g_dnorm, g_norm are Vec/CVec of N (any float dtype, strides incl. 0).
// The sums over a sample are two-stage (per-chunk partials, then a fixed-order sum per sample),
// no atomics; forward and double backward need grad_penalty_workspace_bytes() of workspace.
// ---------------------------------------------------------------------------------------------
struct Samples { void* data; int64_t s_n; };
struct CSamples { const void* data; int64_t s_n; };
struct GradPenaltyParams {
  int64_t N, M;
  double weight, target;
  bool r1;
};

size_t grad_penalty_workspace_bytes(DType dtype, const GradPenaltyParams& p);
cudaError_t grad_penalty_forward(DType dtype, const GradPenaltyParams& p, void* penalty,
                                 void* norm, CSamples g, void* workspace, cudaStream_t stream);
cudaError_t grad_penalty_backward(DType dtype, const GradPenaltyParams& p, Samples dg, CVec dp,
                                  CVec dnorm, CSamples g, CVec norm, cudaStream_t stream);
cudaError_t grad_penalty_double_backward(DType dtype, const GradPenaltyParams& p, Vec g_dp,
                                         Vec g_dnorm, Samples g_g, Vec g_norm, CSamples gg,
                                         CVec dp, CVec dnorm, CSamples g, CVec norm,
                                         void* workspace, cudaStream_t stream);

}  // namespace fastgan

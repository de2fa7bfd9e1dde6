// pixel_norm forward / backward / double backward (math in fastgan_kernels.h).
//
// One kernel template serves the three passes. A block of 256 threads is a 2-D tile of
// nP positions x nC channel workers; each position (o, i) of the [outer, C, inner] view is reduced
// over C by its nC workers (strided loop over c, then a fixed-order combine), and the same workers
// then write the outputs of that position in a second loop over c.
//   CL = true  (channel stride smallest, e.g. channels_last or [N, C]): threadIdx.x runs along C
//              (coalesced), nC lanes of one warp per position, combined with warp shuffles.
//   CL = false (e.g. NCHW): threadIdx.x runs along positions (coalesced along inner), threadIdx.y
//              along C, combined through shared memory.
#include "fastgan_common.cuh"

namespace fastgan {
namespace {

using namespace detail;

constexpr int kThreads = 256;

enum PNPass : int { kForward = 0, kBackward = 1, kDoubleBackward = 2 };

struct PNArgs {
  int64_t C, inner, P;  // P = outer * inner positions
  double eps;
  CView3 x, dy, gg;     // dy: backward + double backward; gg: double backward
  View3 out0, out1;     // forward: y | backward: dx | double backward: g_dy, g_x
};

__device__ __forceinline__ int64_t off3(int64_t o, int64_t c, int64_t i, int64_t so, int64_t sc,
                                        int64_t si) {
  return o * so + c * sc + i * si;
}

template <typename T, int PASS, bool CL>
__global__ void __launch_bounds__(kThreads) pixel_norm_kernel(const PNArgs a) {
  using A = acc_t<T>;
  constexpr int NS = PASS == kForward ? 1 : (PASS == kBackward ? 2 : 4);
  __shared__ A red[CL ? 1 : NS * kThreads];

  const int nC = CL ? blockDim.x : blockDim.y;
  const int nP = CL ? blockDim.y : blockDim.x;
  const int tc = CL ? threadIdx.x : threadIdx.y;
  const int tp = CL ? threadIdx.y : threadIdx.x;
  const A eps = static_cast<A>(a.eps);
  const A inv_c = A(1) / static_cast<A>(a.C);

  // `base` is uniform over the block, so every thread runs the same number of iterations and
  // reaches the same barriers / shuffles.
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * nP; base < a.P;
       base += static_cast<int64_t>(gridDim.x) * nP) {
    const int64_t p = base + tp;
    const bool valid = p < a.P;
    const int64_t o = valid ? p / a.inner : 0;
    const int64_t i = valid ? p - o * a.inner : 0;

    const int64_t bx = off3(o, 0, i, a.x.s_outer, 0, a.x.s_inner);
    const int64_t bd = PASS != kForward ? off3(o, 0, i, a.dy.s_outer, 0, a.dy.s_inner) : 0;
    const int64_t bg = PASS == kDoubleBackward ? off3(o, 0, i, a.gg.s_outer, 0, a.gg.s_inner) : 0;

    // Pass 1: per-worker partial sums over c = tc, tc + nC, ...
    A s[NS];
#pragma unroll
    for (int k = 0; k < NS; ++k) s[k] = A(0);
    if (valid) {
      for (int64_t c = tc; c < a.C; c += nC) {
        const A xv = ld<T>(a.x.data, bx + c * a.x.s_c);
        s[0] += xv * xv;
        if (PASS != kForward) {
          const A dv = ld<T>(a.dy.data, bd + c * a.dy.s_c);
          s[1] += xv * dv;
          if (PASS == kDoubleBackward) {
            const A gv = ld<T>(a.gg.data, bg + c * a.gg.s_c);
            s[2] += gv * dv;
            s[3] += gv * xv;
          }
        }
      }
    }

    // Combine the nC workers of each position in a fixed order.
    if (CL) {
      // nC lanes of a position are consecutive, aligned lanes of one warp (nC | 32): the xor
      // partners stay inside the position's group.
      for (int off = nC >> 1; off > 0; off >>= 1) {
#pragma unroll
        for (int k = 0; k < NS; ++k) s[k] += __shfl_xor_sync(0xffffffffu, s[k], off);
      }
    } else {
#pragma unroll
      for (int k = 0; k < NS; ++k) red[k * kThreads + tc * nP + tp] = s[k];
      __syncthreads();
#pragma unroll
      for (int k = 0; k < NS; ++k) {
        A t = A(0);
        for (int j = 0; j < nC; ++j) t += red[k * kThreads + j * nP + tp];
        s[k] = t;
      }
      __syncthreads();  // red is rewritten by the next iteration
    }
    if (!valid) continue;

    const A r = acc_rsqrt(s[0] * inv_c + eps);
    const int64_t b0 = off3(o, 0, i, a.out0.s_outer, 0, a.out0.s_inner);

    if (PASS == kForward) {
      for (int64_t c = tc; c < a.C; c += nC) {
        const A xv = ld<T>(a.x.data, bx + c * a.x.s_c);
        st<T>(a.out0.data, b0 + c * a.out0.s_c, xv * r);
      }
    } else if (PASS == kBackward) {
      const A m = s[1] * inv_c;
      const A cx = -r * r * r * m;  // dx = r*dy + cx*x
      for (int64_t c = tc; c < a.C; c += nC) {
        const A xv = ld<T>(a.x.data, bx + c * a.x.s_c);
        const A dv = ld<T>(a.dy.data, bd + c * a.dy.s_c);
        st<T>(a.out0.data, b0 + c * a.out0.s_c, r * dv + cx * xv);
      }
    } else {
      const A m = s[1] * inv_c;
      const A av = s[2] * inv_c;
      const A bv = s[3] * inv_c;
      const A r2 = r * r;
      const A r3 = r2 * r;
      const A gdy_x = -r3 * bv;                         // g_dy = r*gg + gdy_x*x
      const A gx_x = r3 * (A(3) * r2 * m * bv - av);    // g_x = gx_x*x + gx_dy*dy + gx_gg*gg
      const A gx_dy = -r3 * bv;
      const A gx_gg = -r3 * m;
      const int64_t b1 = off3(o, 0, i, a.out1.s_outer, 0, a.out1.s_inner);
      for (int64_t c = tc; c < a.C; c += nC) {
        const A xv = ld<T>(a.x.data, bx + c * a.x.s_c);
        const A dv = ld<T>(a.dy.data, bd + c * a.dy.s_c);
        const A gv = ld<T>(a.gg.data, bg + c * a.gg.s_c);
        st<T>(a.out0.data, b0 + c * a.out0.s_c, r * gv + gdy_x * xv);
        st<T>(a.out1.data, b1 + c * a.out1.s_c, gx_x * xv + gx_dy * dv + gx_gg * gv);
      }
    }
  }
}

inline int pow2_floor(int64_t v, int cap) {
  int p = 1;
  while (p * 2 <= cap && p * 2 <= v) p *= 2;
  return p;
}

template <typename T, int PASS>
cudaError_t launch(const PixelNormShape& shape, const PNArgs& a, cudaStream_t stream) {
  if (a.P == 0 || a.C == 0) return cudaSuccess;
  // Channel-innermost layouts put the workers of a position along threadIdx.x.
  const int64_t s_pos = shape.inner > 1 ? a.x.s_inner : a.x.s_outer;
  const bool cl = a.C > 1 && a.x.s_c < s_pos;
  if (cl) {
    // nC in {1,2,...,32}: the smallest power of two >= C, at most a warp.
    int nC = 1;
    while (nC < 32 && nC < a.C) nC *= 2;
    const int nP = kThreads / nC;
    const dim3 block(nC, nP);
    pixel_norm_kernel<T, PASS, true><<<grid_for(ceil_div(a.P, nP)), block, 0, stream>>>(a);
  } else {
    // Few positions (small images): more workers per position to spread the channel loop.
    const int nC = pow2_floor(a.C, a.P < 8192 ? 32 : 8);
    const int nP = kThreads / nC;
    const dim3 block(nP, nC);
    pixel_norm_kernel<T, PASS, false><<<grid_for(ceil_div(a.P, nP)), block, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

template <int PASS>
cudaError_t run(DType dtype, const PixelNormShape& shape, PNArgs a, cudaStream_t stream) {
  if (shape.outer < 0 || shape.channels < 0 || shape.inner < 0) return cudaErrorInvalidValue;
  a.C = shape.channels;
  a.inner = shape.inner;
  a.P = shape.outer * shape.inner;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch<T, PASS>(shape, a, stream);
  });
}

}  // namespace

cudaError_t pixel_norm_forward(DType dtype, PixelNormShape shape, double eps, View3 y, CView3 x,
                               cudaStream_t stream) {
  PNArgs a{};
  a.eps = eps;
  a.x = x;
  a.out0 = y;
  return run<kForward>(dtype, shape, a, stream);
}

cudaError_t pixel_norm_backward(DType dtype, PixelNormShape shape, double eps, View3 dx, CView3 dy,
                                CView3 x, cudaStream_t stream) {
  PNArgs a{};
  a.eps = eps;
  a.x = x;
  a.dy = dy;
  a.out0 = dx;
  return run<kBackward>(dtype, shape, a, stream);
}

cudaError_t pixel_norm_double_backward(DType dtype, PixelNormShape shape, double eps, View3 g_dy,
                                       View3 g_x, CView3 gg, CView3 dy, CView3 x,
                                       cudaStream_t stream) {
  PNArgs a{};
  a.eps = eps;
  a.x = x;
  a.dy = dy;
  a.gg = gg;
  a.out0 = g_dy;
  a.out1 = g_x;
  return run<kDoubleBackward>(dtype, shape, a, stream);
}

}  // namespace fastgan

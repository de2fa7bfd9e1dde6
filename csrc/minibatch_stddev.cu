// minibatch_stddev forward / backward / double backward (math in fastgan_kernels.h).
//
// Kernels (all 1-D blocks of 256 threads, grid-stride over "virtual blocks", no atomics):
//   group_kernel<PASS>  virtual block = (m, f, split): a chunk of the c*H*W elements of feature
//                       slice f. Per element it reads the G samples of group m (x, and dy or gg),
//                       writes the per-sample outputs, and block-sums a per-slice quantity into
//                       partial[(m*F + f)*split + s]:  forward: sigma  |  double backward: the T
//                       term. Backward and double backward first combine the dS partials.
//   extra_sum_kernel    virtual block = (m, f, split): partial sums of dy[n in m, C+f, :, :] (dS).
//   fill_kernel         virtual block = (n, f, chunk of H*W): out[n, C+f, h, w] = scale * sum of
//                       the slice partials of (m(n), f).
// Every consumer combines the partials of a slice with the same code and the same block size,
// so all blocks agree bitwise on s / dS / T and results are reproducible run to run.
//
// Launch order:  forward:          group<fwd> -> fill(s, 1/(c*H*W))
//                backward:         extra_sum -> group<bwd>
//                double backward:  extra_sum -> group<dbwd> -> fill(T, 1)
#include <algorithm>

#include "fastgan_common.cuh"

namespace fastgan {
namespace {

using namespace detail;

constexpr int kThreads = 256;
constexpr int64_t kMinChunk = 2048;  // elements per block before a slice is split further
constexpr int64_t kMaxSplit = 256;   // bounds the partials every consumer block re-reads
constexpr int64_t kFillChunk = 4096;

enum MBPass : int { kForward = 0, kBackward = 1, kDoubleBackward = 2 };

struct Plan {
  int64_t M, c, HW, L;        // groups, channels per feature slice, H*W, c*H*W
  int64_t split, chunk;       // group_kernel: blocks per slice, elements per block
  int64_t split_x, chunk_x;   // extra_sum_kernel: blocks per (m, f), elements per block
};

Plan make_plan(const MinibatchStddevParams& p) {
  Plan pl{};
  pl.M = p.N / p.group_size;
  pl.c = p.C / p.num_features;
  pl.HW = p.H * p.W;
  pl.L = pl.c * pl.HW;
  pl.split = std::max<int64_t>(1, std::min(kMaxSplit, ceil_div(pl.L, kMinChunk)));
  pl.chunk = std::max<int64_t>(1, ceil_div(pl.L, pl.split));
  const int64_t lx = p.group_size * pl.HW;
  pl.split_x = std::max<int64_t>(1, std::min(kMaxSplit, ceil_div(lx, kMinChunk)));
  pl.chunk_x = std::max<int64_t>(1, ceil_div(lx, pl.split_x));
  return pl;
}

struct MBArgs {
  int64_t C, W, HW, G, M, F, c, L;
  int64_t split, chunk, split_x, chunk_x;
  bool strided;
  bool chlast;   // iterate a slice channel-innermost (x has its smallest stride along C)
  double eps;
  double inv_d;  // 1/D
  double inv_k;  // 1/K, K = c*H*W*D
  CView4 x, dy, gg;
  View4 out0, out1;  // forward: y | backward: dx | double backward: g_dy, g_x
  void* part;        // acc_t[M*F*split]: group_kernel partials (forward, double backward)
  void* part_x;      // acc_t[M*F*split_x]: dS partials (backward, double backward)
};

__device__ __forceinline__ int64_t member(const MBArgs& a, int64_t m, int64_t g) {
  return a.strided ? g * a.M + m : m * a.G + g;
}

__device__ __forceinline__ int64_t off4(int64_t n, int64_t ch, int64_t h, int64_t w,
                                        int64_t sn, int64_t sc, int64_t sh, int64_t sw) {
  return n * sn + ch * sc + h * sh + w * sw;
}

// Sum of `count` partials in a fixed order, identical in every block that calls it.
template <typename A>
__device__ __forceinline__ A combine_partials(const A* part, int64_t count, A* smem) {
  A v = A(0);
  for (int64_t j = threadIdx.x; j < count; j += blockDim.x) v += part[j];
  return block_sum(v, smem);
}

template <typename T, int PASS>
__global__ void __launch_bounds__(kThreads) group_kernel(const MBArgs a) {
  using A = acc_t<T>;
  __shared__ A smem[33];
  const int64_t nblocks = a.M * a.F * a.split;
  const A inv_g = A(1) / static_cast<A>(a.G);
  const A inv_d = static_cast<A>(a.inv_d);
  const A inv_k = static_cast<A>(a.inv_k);
  const A eps = static_cast<A>(a.eps);

  for (int64_t vb = blockIdx.x; vb < nblocks; vb += gridDim.x) {  // uniform over the block
    const int64_t mf = vb / a.split;
    const int64_t s = vb - mf * a.split;
    const int64_t m = mf / a.F;
    const int64_t f = mf - m * a.F;

    A dS = A(0);
    if (PASS != kForward) {
      dS = combine_partials(static_cast<const A*>(a.part_x) + mf * a.split_x, a.split_x, smem);
    }

    const int64_t l0 = s * a.chunk;
    const int64_t l1 = imin(a.L, l0 + a.chunk);
    A acc = A(0);
    for (int64_t l = l0 + threadIdx.x; l < l1; l += blockDim.x) {
      int64_t cl, hw;
      if (a.chlast) {
        hw = l / a.c;
        cl = l - hw * a.c;
      } else {
        cl = l / a.HW;
        hw = l - cl * a.HW;
      }
      const int64_t h = hw / a.W;
      const int64_t w = hw - h * a.W;
      const int64_t ch = f * a.c + cl;
      const int64_t ex = off4(0, ch, h, w, 0, a.x.s_c, a.x.s_h, a.x.s_w);
      const int64_t e0 = off4(0, ch, h, w, 0, a.out0.s_c, a.out0.s_h, a.out0.s_w);

      // mean over the group (forward: also copy x into y[:, :C]; double backward: copy gg
      // into g_dy[:, :C] and sum gg)
      A sx = A(0), sg = A(0);
      for (int64_t g = 0; g < a.G; ++g) {
        const int64_t n = member(a, m, g);
        sx += ld<T>(a.x.data, ex + n * a.x.s_n);
        if (PASS == kForward) {
          cp<T>(a.out0.data, e0 + n * a.out0.s_n, a.x.data, ex + n * a.x.s_n);
        } else if (PASS == kDoubleBackward) {
          const int64_t eg = off4(n, ch, h, w, a.gg.s_n, a.gg.s_c, a.gg.s_h, a.gg.s_w);
          sg += ld<T>(a.gg.data, eg);
          cp<T>(a.out0.data, e0 + n * a.out0.s_n, a.gg.data, eg);
        }
      }
      const A mu = sx * inv_g;

      // variance (two-pass), and for double backward sum_g gg*(x - mu)
      A ss = A(0), sgx = A(0);
      for (int64_t g = 0; g < a.G; ++g) {
        const int64_t n = member(a, m, g);
        const A d = ld<T>(a.x.data, ex + n * a.x.s_n) - mu;
        ss += d * d;
        if (PASS == kDoubleBackward) {
          sgx += ld<T>(a.gg.data, off4(n, ch, h, w, a.gg.s_n, a.gg.s_c, a.gg.s_h, a.gg.s_w)) * d;
        }
      }
      const A var_eps = ss * inv_d + eps;
      const A sigma = acc_sqrt(var_eps);

      if (PASS == kForward) {
        acc += sigma;
      } else if (PASS == kBackward) {
        // dx = dy + dS * (x - mu) / (K sigma)
        const A coef = dS * inv_k / sigma;
        for (int64_t g = 0; g < a.G; ++g) {
          const int64_t n = member(a, m, g);
          const A xv = ld<T>(a.x.data, ex + n * a.x.s_n);
          const A dv = ld<T>(a.dy.data, off4(n, ch, h, w, a.dy.s_n, a.dy.s_c, a.dy.s_h, a.dy.s_w));
          st<T>(a.out0.data, e0 + n * a.out0.s_n, dv + coef * (xv - mu));
        }
      } else {
        // T term: sum_g gg*(x - mu) / (K sigma)
        const A inv_ks = inv_k / sigma;
        acc += sgx * inv_ks;
        // g_x = dS/(K sigma) * (gg - mean_g gg - (x - mu) * sgx / (D sigma^2))
        const A coef = dS * inv_ks;
        const A mg = sg * inv_g;
        const A q = sgx * inv_d / var_eps;
        const int64_t e1 = off4(0, ch, h, w, 0, a.out1.s_c, a.out1.s_h, a.out1.s_w);
        for (int64_t g = 0; g < a.G; ++g) {
          const int64_t n = member(a, m, g);
          const A xv = ld<T>(a.x.data, ex + n * a.x.s_n);
          const A gv = ld<T>(a.gg.data, off4(n, ch, h, w, a.gg.s_n, a.gg.s_c, a.gg.s_h, a.gg.s_w));
          st<T>(a.out1.data, e1 + n * a.out1.s_n, coef * (gv - mg - (xv - mu) * q));
        }
      }
    }

    if (PASS != kBackward) {
      acc = block_sum(acc, smem);
      if (threadIdx.x == 0) static_cast<A*>(a.part)[vb] = acc;  // vb == mf*split + s
    }
  }
}

// dS partials: sum over n in group m and (h, w) of dy[n, C+f, h, w].
template <typename T>
__global__ void __launch_bounds__(kThreads) extra_sum_kernel(const MBArgs a) {
  using A = acc_t<T>;
  __shared__ A smem[33];
  const int64_t nblocks = a.M * a.F * a.split_x;
  const int64_t lx = a.G * a.HW;
  for (int64_t vb = blockIdx.x; vb < nblocks; vb += gridDim.x) {
    const int64_t mf = vb / a.split_x;
    const int64_t s = vb - mf * a.split_x;
    const int64_t m = mf / a.F;
    const int64_t f = mf - m * a.F;
    const int64_t l0 = s * a.chunk_x;
    const int64_t l1 = imin(lx, l0 + a.chunk_x);
    A acc = A(0);
    for (int64_t l = l0 + threadIdx.x; l < l1; l += blockDim.x) {
      const int64_t g = l / a.HW;
      const int64_t hw = l - g * a.HW;
      const int64_t h = hw / a.W;
      const int64_t w = hw - h * a.W;
      const int64_t n = member(a, m, g);
      acc += ld<T>(a.dy.data, off4(n, a.C + f, h, w, a.dy.s_n, a.dy.s_c, a.dy.s_h, a.dy.s_w));
    }
    acc = block_sum(acc, smem);
    if (threadIdx.x == 0) static_cast<A*>(a.part_x)[vb] = acc;
  }
}

// out[n, C+f, h, w] = scale * sum_s part[(m(n)*F + f)*split + s] for every n, f, h, w.
template <typename T>
__global__ void __launch_bounds__(kThreads) fill_kernel(const MBArgs a, int64_t N, int64_t nchunk,
                                                        double scale) {
  using A = acc_t<T>;
  __shared__ A smem[33];
  const int64_t nblocks = N * a.F * nchunk;
  for (int64_t vb = blockIdx.x; vb < nblocks; vb += gridDim.x) {
    const int64_t nf = vb / nchunk;
    const int64_t q = vb - nf * nchunk;
    const int64_t n = nf / a.F;
    const int64_t f = nf - n * a.F;
    const int64_t m = a.strided ? n % a.M : n / a.G;
    const A total =
        combine_partials(static_cast<const A*>(a.part) + (m * a.F + f) * a.split, a.split, smem);
    const T v = from_acc<T>(total * static_cast<A>(scale));
    const int64_t hw0 = q * kFillChunk;
    const int64_t hw1 = imin(a.HW, hw0 + kFillChunk);
    const int64_t base = n * a.out0.s_n + (a.C + f) * a.out0.s_c;
    for (int64_t hw = hw0 + threadIdx.x; hw < hw1; hw += blockDim.x) {
      const int64_t h = hw / a.W;
      const int64_t w = hw - h * a.W;
      static_cast<T*>(a.out0.data)[base + h * a.out0.s_h + w * a.out0.s_w] = v;
    }
  }
}

bool valid_params(const MinibatchStddevParams& p) {
  if (p.N < 0 || p.C < 0 || p.H < 0 || p.W < 0) return false;
  if (p.group_size < 1 || p.num_features < 1) return false;
  if (p.N % p.group_size != 0 || p.C % p.num_features != 0) return false;
  if (p.unbiased && p.group_size < 2) return false;
  return true;
}

bool nothing_to_do(const MinibatchStddevParams& p) { return p.N == 0 || p.H == 0 || p.W == 0; }

template <typename T>
size_t workspace_bytes_t(const MinibatchStddevParams& p) {
  const Plan pl = make_plan(p);
  const int64_t slices = pl.M * p.num_features;
  return static_cast<size_t>(slices * (pl.split + pl.split_x)) * sizeof(acc_t<T>);
}

template <typename T>
MBArgs make_args(const MinibatchStddevParams& p, CView4 x, void* workspace) {
  const Plan pl = make_plan(p);
  MBArgs a{};
  a.C = p.C;
  a.W = p.W;
  a.HW = pl.HW;
  a.G = p.group_size;
  a.M = pl.M;
  a.F = p.num_features;
  a.c = pl.c;
  a.L = pl.L;
  a.split = pl.split;
  a.chunk = pl.chunk;
  a.split_x = pl.split_x;
  a.chunk_x = pl.chunk_x;
  a.strided = p.strided;
  a.chlast = pl.c > 1 && x.s_c < x.s_w;
  a.eps = p.eps;
  const double d = static_cast<double>(p.unbiased ? p.group_size - 1 : p.group_size);
  a.inv_d = 1.0 / d;
  a.inv_k = 1.0 / (static_cast<double>(pl.L) * d);
  a.x = x;
  using A = acc_t<T>;
  a.part = workspace;
  a.part_x = static_cast<A*>(workspace) + pl.M * p.num_features * pl.split;
  return a;
}

template <typename T>
cudaError_t launch_fill(const MBArgs& a, int64_t N, double scale, cudaStream_t stream) {
  const int64_t nchunk = ceil_div(a.HW, kFillChunk);
  fill_kernel<T><<<grid_for(N * a.F * nchunk), kThreads, 0, stream>>>(a, N, nchunk, scale);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_extra_sum(const MBArgs& a, cudaStream_t stream) {
  extra_sum_kernel<T><<<grid_for(a.M * a.F * a.split_x), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

template <typename T, int PASS>
cudaError_t launch_group(const MBArgs& a, cudaStream_t stream) {
  group_kernel<T, PASS><<<grid_for(a.M * a.F * a.split), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

size_t minibatch_stddev_workspace_bytes(DType dtype, const MinibatchStddevParams& p) {
  if (!valid_params(p) || nothing_to_do(p)) return 0;
  return dtype == DType::Float64 ? workspace_bytes_t<double>(p) : workspace_bytes_t<float>(p);
}

cudaError_t minibatch_stddev_forward(DType dtype, const MinibatchStddevParams& p, View4 y, CView4 x,
                                     void* workspace, cudaStream_t stream) {
  if (!valid_params(p)) return cudaErrorInvalidValue;
  if (nothing_to_do(p)) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    MBArgs a = make_args<T>(p, x, workspace);
    a.out0 = y;
    cudaError_t err = launch_group<T, kForward>(a, stream);
    if (err != cudaSuccess) return err;
    // s = mean of sigma over the slice: 1/(c*H*W) (NaN for an empty slice, like the reference)
    return launch_fill<T>(a, p.N, 1.0 / static_cast<double>(a.L), stream);
  });
}

cudaError_t minibatch_stddev_backward(DType dtype, const MinibatchStddevParams& p, View4 dx,
                                      CView4 dy, CView4 x, void* workspace, cudaStream_t stream) {
  if (!valid_params(p)) return cudaErrorInvalidValue;
  if (nothing_to_do(p) || p.C == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    MBArgs a = make_args<T>(p, x, workspace);
    a.dy = dy;
    a.out0 = dx;
    cudaError_t err = launch_extra_sum<T>(a, stream);
    if (err != cudaSuccess) return err;
    return launch_group<T, kBackward>(a, stream);
  });
}

cudaError_t minibatch_stddev_double_backward(DType dtype, const MinibatchStddevParams& p,
                                             View4 g_dy, View4 g_x, CView4 gg, CView4 dy, CView4 x,
                                             void* workspace, cudaStream_t stream) {
  if (!valid_params(p)) return cudaErrorInvalidValue;
  if (nothing_to_do(p)) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    MBArgs a = make_args<T>(p, x, workspace);
    a.dy = dy;
    a.gg = gg;
    a.out0 = g_dy;
    a.out1 = g_x;
    cudaError_t err = launch_extra_sum<T>(a, stream);
    if (err != cudaSuccess) return err;
    err = launch_group<T, kDoubleBackward>(a, stream);
    if (err != cudaSuccess) return err;
    return launch_fill<T>(a, p.N, 1.0, stream);
  });
}

}  // namespace fastgan

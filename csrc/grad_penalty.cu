// grad_penalty forward / backward / double backward (math in fastgan_kernels.h).
//
// Each sample is M consecutive memory slots (data + n*s_n + [0, M)), cut into chunks of
// kChunk(T) = 256 threads * V * kIters elements (V = 16 bytes / sizeof(T)), so a batch of a few
// large samples still spreads over many blocks (16 x 3x256x256 fp32: 48 chunks per sample, 768
// blocks). Kernels (1-D blocks of 256 threads, grid-stride over virtual blocks, no atomics):
//   sample_kernel<kForward>   virtual block (n, chunk): partial sum of g^2 -> part[n*n_chunks + chunk]
//   sample_kernel<kBackward>  dg = c_n * g (no reduction)
//   sample_kernel<kDouble>    g_g = c_n * gg, and the partial sum of gg*g -> part[...]
//   finalize_kernel<PASS>     virtual block n: the n_chunks partials of sample n in a fixed order
//                             (strided per thread, then block_sum), then the per-sample outputs.
// Thread t of a chunk handles, at step j, the V elements [j*256*V + t*V, +V) in order: with 16-byte
// vector loads when every sample base is 16-byte aligned, else with scalar loads; both paths add
// the same values in the same order, so the result does not depend on the alignment.
//
// Launch order:  forward:          sample<fwd> -> finalize<fwd>
//                backward:         sample<bwd>
//                double backward:  sample<dbl> -> finalize<dbl>
#include <algorithm>
#include <cstdint>

#include "fastgan_common.cuh"

namespace fastgan {
namespace {

using namespace detail;

constexpr int kThreads = 256;
constexpr int kIters = 4;

enum GPPass : int { kForward = 0, kBackward = 1, kDouble = 2 };

template <typename T> struct VecWidth { static constexpr int value = static_cast<int>(16 / sizeof(T)); };
template <typename T> constexpr int64_t chunk_of() {
  return static_cast<int64_t>(kThreads) * VecWidth<T>::value * kIters;
}

template <typename T, int V> struct alignas(16) Pack { T v[V]; };

struct GPArgs {
  int64_t N, M, n_chunks, chunk;
  double weight, target;
  bool r1;
  bool vec;          // all sample bases 16-byte aligned: vector loads / stores
  CSamples g, gg;    // gg: double backward
  Samples out;       // backward: dg | double backward: g_g
  CVec dp, dnorm, norm;
  void* part;        // acc_t[N * n_chunks]: forward, double backward
  void* pen;         // forward: acc_t[N]
  void* nrm_out;     // forward: acc_t[N]
  Vec g_dp, g_dnorm, g_norm;  // double backward
};

// c_n and inv_n of the backward (fastgan_kernels.h); dn = 0 when dnorm is absent.
template <typename A>
struct Coef { A c, inv, dp, dn, nrm; };

template <typename A>
__device__ __forceinline__ Coef<A> coef(const GPArgs& a, int64_t n) {
  Coef<A> r;
  r.nrm = ld_as<A>(a.norm.data, n * a.norm.stride, a.norm.dtype);
  r.dp = ld_as<A>(a.dp.data, n * a.dp.stride, a.dp.dtype);
  const A w = static_cast<A>(a.weight);
  const A t = static_cast<A>(a.target);
  r.inv = r.nrm > A(0) ? A(1) / r.nrm : A(0);
  if (a.r1) {
    r.c = r.dp * (A(2) * w);
  } else {
    r.c = r.dp * (A(2) * w / (t * t)) * (r.nrm - t) * r.inv;
  }
  r.dn = A(0);
  if (a.dnorm.data != nullptr) {
    r.dn = ld_as<A>(a.dnorm.data, n * a.dnorm.stride, a.dnorm.dtype);
    r.c += r.dn * r.inv;
  }
  return r;
}

// V values of a sample starting at element e0 (a multiple of V), as the accumulation type;
// zeros past M.
template <typename T, int V>
__device__ __forceinline__ void load_v(acc_t<T> (&out)[V], const T* base, int64_t e0, int64_t M,
                                       bool vec) {
  if (vec && e0 + V <= M) {
    const Pack<T, V> pk = *reinterpret_cast<const Pack<T, V>*>(base + e0);
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = to_acc(pk.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = e0 + k < M ? to_acc(base[e0 + k]) : acc_t<T>(0);
  }
}

template <typename T, int V>
__device__ __forceinline__ void store_v(T* base, int64_t e0, int64_t M, bool vec,
                                        const acc_t<T> (&val)[V]) {
  if (vec && e0 + V <= M) {
    Pack<T, V> pk;
#pragma unroll
    for (int k = 0; k < V; ++k) pk.v[k] = from_acc<T>(val[k]);
    *reinterpret_cast<Pack<T, V>*>(base + e0) = pk;
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      if (e0 + k < M) base[e0 + k] = from_acc<T>(val[k]);
    }
  }
}

template <typename T, int PASS>
__global__ void __launch_bounds__(kThreads) sample_kernel(const GPArgs a) {
  using A = acc_t<T>;
  constexpr int V = VecWidth<T>::value;
  __shared__ A smem[33];
  const int64_t nvb = a.N * a.n_chunks;
  for (int64_t vb = blockIdx.x; vb < nvb; vb += gridDim.x) {  // uniform over the block
    const int64_t n = vb / a.n_chunks;
    const int64_t ch = vb - n * a.n_chunks;
    A c = A(0);
    if (PASS != kForward) c = coef<A>(a, n).c;
    const T* gp = static_cast<const T*>(a.g.data) + n * a.g.s_n;
    const T* ggp = PASS == kDouble ? static_cast<const T*>(a.gg.data) + n * a.gg.s_n : nullptr;
    T* op = PASS != kForward ? static_cast<T*>(a.out.data) + n * a.out.s_n : nullptr;
    const int64_t start = ch * a.chunk + static_cast<int64_t>(threadIdx.x) * V;
    A acc = A(0);
#pragma unroll
    for (int j = 0; j < kIters; ++j) {
      const int64_t e0 = start + static_cast<int64_t>(j) * kThreads * V;
      if (e0 >= a.M) break;
      A xv[V];
      load_v<T, V>(xv, gp, e0, a.M, a.vec);
      if (PASS == kForward) {
#pragma unroll
        for (int k = 0; k < V; ++k) acc += xv[k] * xv[k];
      } else if (PASS == kBackward) {
        A ov[V];
#pragma unroll
        for (int k = 0; k < V; ++k) ov[k] = c * xv[k];
        store_v<T, V>(op, e0, a.M, a.vec, ov);
      } else {
        A gv[V], ov[V];
        load_v<T, V>(gv, ggp, e0, a.M, a.vec);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          acc += gv[k] * xv[k];
          ov[k] = c * gv[k];
        }
        store_v<T, V>(op, e0, a.M, a.vec, ov);
      }
    }
    if (PASS != kBackward) {
      acc = block_sum(acc, smem);
      if (threadIdx.x == 0) static_cast<A*>(a.part)[vb] = acc;  // vb == n*n_chunks + ch
    }
  }
}

template <typename T, int PASS>
__global__ void __launch_bounds__(kThreads) finalize_kernel(const GPArgs a) {
  using A = acc_t<T>;
  __shared__ A smem[33];
  const A w = static_cast<A>(a.weight);
  const A t = static_cast<A>(a.target);
  for (int64_t n = blockIdx.x; n < a.N; n += gridDim.x) {
    const A* part = static_cast<const A*>(a.part) + n * a.n_chunks;
    A v = A(0);
    for (int64_t j = threadIdx.x; j < a.n_chunks; j += blockDim.x) v += part[j];
    const A s = block_sum(v, smem);
    if (threadIdx.x != 0) {
      // nothing: thread 0 writes sample n
    } else if (PASS == kForward) {
      const A nrm = acc_sqrt(s);
      A p;
      if (a.r1) {
        p = w * s;
      } else {
        const A d = nrm - t;
        p = w * d * d / (t * t);
      }
      static_cast<A*>(a.pen)[n] = p;
      static_cast<A*>(a.nrm_out)[n] = nrm;
    } else {
      const Coef<A> k = coef<A>(a, n);
      A dc_ddp, dc_dnorm;
      if (a.r1) {
        dc_ddp = A(2) * w;
        dc_dnorm = A(0);
      } else {
        const A kk = A(2) * w / (t * t);
        dc_ddp = kk * (k.nrm - t) * k.inv;
        dc_dnorm = k.dp * kk * t * k.inv * k.inv;
      }
      if (a.dnorm.data != nullptr) dc_dnorm -= k.dn * k.inv * k.inv;
      st_as(a.g_dp.data, n * a.g_dp.stride, a.g_dp.dtype, s * dc_ddp);
      st_as(a.g_dnorm.data, n * a.g_dnorm.stride, a.g_dnorm.dtype, s * k.inv);
      st_as(a.g_norm.data, n * a.g_norm.stride, a.g_norm.dtype, s * dc_dnorm);
    }
  }
}

bool valid(const GradPenaltyParams& p) {
  if (p.N < 0 || p.M < 0) return false;
  return p.r1 || p.target > 0;
}

template <typename T>
int64_t n_chunks_of(const GradPenaltyParams& p) {
  return ceil_div(p.M, chunk_of<T>());
}

bool aligned16(const void* ptr, int64_t s_n, size_t elem, int64_t N) {
  if (ptr == nullptr) return true;
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return false;
  return N <= 1 || (static_cast<uint64_t>(s_n) * elem) % 16 == 0;
}

template <typename T>
GPArgs make_args(const GradPenaltyParams& p, CSamples g) {
  GPArgs a{};
  a.N = p.N;
  a.M = p.M;
  a.chunk = chunk_of<T>();
  a.n_chunks = n_chunks_of<T>(p);
  a.weight = p.weight;
  a.target = p.target;
  a.r1 = p.r1;
  a.g = g;
  return a;
}

template <typename T>
bool all_aligned(const GPArgs& a) {
  return aligned16(a.g.data, a.g.s_n, sizeof(T), a.N) &&
         aligned16(a.gg.data, a.gg.s_n, sizeof(T), a.N) &&
         aligned16(a.out.data, a.out.s_n, sizeof(T), a.N);
}

template <typename T, int PASS>
cudaError_t launch_sample(GPArgs a, cudaStream_t stream) {
  const int64_t nvb = a.N * a.n_chunks;
  if (nvb == 0) return cudaSuccess;
  a.vec = all_aligned<T>(a);
  sample_kernel<T, PASS><<<grid_for(nvb), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

template <typename T, int PASS>
cudaError_t launch_finalize(const GPArgs& a, cudaStream_t stream) {
  finalize_kernel<T, PASS><<<grid_for(a.N), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

size_t grad_penalty_workspace_bytes(DType dtype, const GradPenaltyParams& p) {
  if (!valid(p) || p.N == 0) return 0;
  size_t bytes = 0;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    bytes = static_cast<size_t>(p.N * n_chunks_of<T>(p)) * sizeof(acc_t<T>);
    return cudaSuccess;
  });
  return bytes;
}

cudaError_t grad_penalty_forward(DType dtype, const GradPenaltyParams& p, void* penalty,
                                 void* norm, CSamples g, void* workspace, cudaStream_t stream) {
  if (!valid(p)) return cudaErrorInvalidValue;
  if (p.N == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    GPArgs a = make_args<T>(p, g);
    a.part = workspace;
    a.pen = penalty;
    a.nrm_out = norm;
    cudaError_t err = launch_sample<T, kForward>(a, stream);
    if (err != cudaSuccess) return err;
    return launch_finalize<T, kForward>(a, stream);  // M == 0: no partials, ss = 0
  });
}

cudaError_t grad_penalty_backward(DType dtype, const GradPenaltyParams& p, Samples dg, CVec dp,
                                  CVec dnorm, CSamples g, CVec norm, cudaStream_t stream) {
  if (!valid(p)) return cudaErrorInvalidValue;
  if (p.N == 0 || p.M == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    GPArgs a = make_args<T>(p, g);
    a.out = dg;
    a.dp = dp;
    a.dnorm = dnorm;
    a.norm = norm;
    return launch_sample<T, kBackward>(a, stream);
  });
}

cudaError_t grad_penalty_double_backward(DType dtype, const GradPenaltyParams& p, Vec g_dp,
                                         Vec g_dnorm, Samples g_g, Vec g_norm, CSamples gg,
                                         CVec dp, CVec dnorm, CSamples g, CVec norm,
                                         void* workspace, cudaStream_t stream) {
  if (!valid(p)) return cudaErrorInvalidValue;
  if (p.N == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    GPArgs a = make_args<T>(p, g);
    a.gg = gg;
    a.out = g_g;
    a.dp = dp;
    a.dnorm = dnorm;
    a.norm = norm;
    a.part = workspace;
    a.g_dp = g_dp;
    a.g_dnorm = g_dnorm;
    a.g_norm = g_norm;
    cudaError_t err = launch_sample<T, kDouble>(a, stream);
    if (err != cudaSuccess) return err;
    return launch_finalize<T, kDouble>(a, stream);  // M == 0: s = 0
  });
}

}  // namespace fastgan

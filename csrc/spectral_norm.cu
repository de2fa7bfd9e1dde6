// Spectral-norm power iteration over many layers (see spectral_norm.h and
// fastgan/ops/spectral_norm.py). Three kernels, 256 threads each; every norm is the sum of the
// layer's partials in one fixed order (the same block-wide sum in all three kernels): no
// atomics, bitwise reproducible.
#include "fastgan_common.cuh"
#include "spectral_norm.h"

namespace fastgan {
namespace {

using detail::acc_sqrt;
using detail::acc_t;
using detail::block_sum;
using detail::to_acc;
using detail::warp_sum;

constexpr int kThreads = 256;

struct Layer {
  int64_t outer, rows, inner, u_off, v_off, p1_off, n_rb, p2_off, n_cb;
};

template <typename T>
__device__ __forceinline__ const T* layer_at(const int64_t* meta, int lay, Layer& l) {
  const int64_t* m = meta + static_cast<int64_t>(lay) * kSNMeta;
  l = Layer{m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9]};
  return reinterpret_cast<const T*>(m[0]);
}

// ||x||^2 of a layer's vector from its n partials, the same on every thread.
template <typename A>
__device__ __forceinline__ A sum_partials(const A* part, int64_t n, A* smem) {
  A acc = A(0);
  for (int64_t q = threadIdx.x; q < n; q += blockDim.x) acc += part[q];
  return block_sum(acc, smem);
}

template <typename A>
__device__ __forceinline__ A denom_of(A ss, double eps) {
  const A e = static_cast<A>(eps);
  const A norm = acc_sqrt(ss);
  return norm < e ? e : norm;  // torch's clamp_min(eps); a NaN norm stays NaN
}

// t[rows] = W_mat[rows, :] v, v = vin (first) or vin / max(||vin||, eps); warp w owns one row.
template <typename T, typename A>
__global__ void __launch_bounds__(kThreads) rows_kernel(const int64_t* meta, const int32_t* blocks,
                                                        const A* vin, const A* p2, A* t, A* p1,
                                                        double eps, bool first) {
  __shared__ A smem[33];
  __shared__ A row_sq[kThreads / 32];
  const int lay = blocks[2 * blockIdx.x], blk = blocks[2 * blockIdx.x + 1];
  Layer l;
  const T* w = layer_at<T>(meta, lay, l);
  const A denom = first ? A(1) : denom_of(sum_partials(p2 + l.p2_off, l.n_cb, smem), eps);
  const int64_t k = l.outer * l.inner;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t i = static_cast<int64_t>(blk) * kSNRows + warp;
  A acc = A(0);
  if (i < l.rows) {
    for (int64_t j = lane; j < k; j += 32) {
      const int64_t o = j / l.inner;
      const A wv = to_acc(w[(o * l.rows + i) * l.inner + (j - o * l.inner)]);
      acc += wv * (vin[l.v_off + j] / denom);
    }
  }
  acc = warp_sum(acc);
  if (lane == 0) {
    if (i < l.rows) t[l.u_off + i] = acc;
    row_sq[warp] = i < l.rows ? acc * acc : A(0);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    A sq = A(0);
    for (int r = 0; r < kSNRows; ++r) sq += row_sq[r];
    p1[l.p1_off + blk] = sq;
  }
}

// u = t / max(||t||, eps) (block 0 stores it); s[cols] = W_mat[:, cols]^T u. Thread (r, c):
// column c of the block, rows r, r + 8, ...
template <typename T, typename A>
__global__ void __launch_bounds__(kThreads) cols_kernel(const int64_t* meta, const int32_t* blocks,
                                                        const A* t, const A* p1, A* s, A* p2,
                                                        A* u, double eps) {
  __shared__ A smem[33];
  __shared__ A part[kThreads / kSNCols][kSNCols + 1];
  const int lay = blocks[2 * blockIdx.x], blk = blocks[2 * blockIdx.x + 1];
  Layer l;
  const T* w = layer_at<T>(meta, lay, l);
  const A denom = denom_of(sum_partials(p1 + l.p1_off, l.n_rb, smem), eps);
  const int64_t k = l.outer * l.inner;
  const int c = threadIdx.x % kSNCols, r = threadIdx.x / kSNCols;
  constexpr int kGroups = kThreads / kSNCols;
  const int64_t j = static_cast<int64_t>(blk) * kSNCols + c;
  const bool valid = j < k;
  const int64_t o = valid ? j / l.inner : 0;
  const int64_t col = o * l.rows * l.inner + (j - o * l.inner);
  A acc = A(0);
  for (int64_t i = r; i < l.rows; i += kGroups) {
    const A ui = t[l.u_off + i] / denom;
    if (blk == 0 && c == 0) u[l.u_off + i] = ui;
    if (valid) acc += to_acc(w[col + i * l.inner]) * ui;
  }
  part[r][c] = acc;
  __syncthreads();
  if (r == 0) {
    A sv = A(0);
    for (int g = 0; g < kGroups; ++g) sv += part[g][c];
    if (valid) s[l.v_off + j] = sv;
    const A sq = warp_sum(valid ? sv * sv : A(0));
    if (c == 0) p2[l.p2_off + blk] = sq;
  }
}

// v = s / max(||s||, eps); sigma = ||s||^2 / max(||s||, eps).
template <typename A>
__global__ void __launch_bounds__(kThreads) finish_kernel(const int64_t* meta,
                                                          const int32_t* blocks, const A* s,
                                                          const A* p2, A* v, A* sigma,
                                                          double eps) {
  __shared__ A smem[33];
  const int lay = blocks[2 * blockIdx.x], blk = blocks[2 * blockIdx.x + 1];
  Layer l;
  layer_at<float>(meta, lay, l);
  const A ss = sum_partials(p2 + l.p2_off, l.n_cb, smem);
  const A denom = denom_of(ss, eps);
  const int64_t j = static_cast<int64_t>(blk) * kSNCols + threadIdx.x;
  if (threadIdx.x < kSNCols && j < l.outer * l.inner) v[l.v_off + j] = s[l.v_off + j] / denom;
  if (blk == 0 && threadIdx.x == 0) sigma[lay] = ss / denom;
}

template <typename T>
cudaError_t launch(const int64_t* meta, const int32_t* row_blocks, int64_t n_rb,
                   const int32_t* col_blocks, int64_t n_cb, const void* v0, void* t, void* s,
                   void* p1, void* p2, void* u, void* v, void* sigma, int64_t n_iterations,
                   double eps, cudaStream_t stream) {
  using A = acc_t<T>;
  if (n_rb == 0 || n_cb == 0 || n_iterations < 1) return cudaSuccess;
  if (n_rb > INT32_MAX || n_cb > INT32_MAX) return cudaErrorInvalidValue;
  const dim3 grid_r(static_cast<unsigned>(n_rb)), grid_c(static_cast<unsigned>(n_cb));
  const A* vin = static_cast<const A*>(v0);
  for (int64_t it = 0; it < n_iterations; ++it) {
    rows_kernel<T, A><<<grid_r, kThreads, 0, stream>>>(meta, row_blocks, vin,
                                                       static_cast<const A*>(p2),
                                                       static_cast<A*>(t), static_cast<A*>(p1),
                                                       eps, it == 0);
    cols_kernel<T, A><<<grid_c, kThreads, 0, stream>>>(meta, col_blocks, static_cast<const A*>(t),
                                                       static_cast<const A*>(p1),
                                                       static_cast<A*>(s), static_cast<A*>(p2),
                                                       static_cast<A*>(u), eps);
    vin = static_cast<const A*>(s);
  }
  finish_kernel<A><<<grid_c, kThreads, 0, stream>>>(meta, col_blocks, static_cast<const A*>(s),
                                                    static_cast<const A*>(p2),
                                                    static_cast<A*>(v), static_cast<A*>(sigma),
                                                    eps);
  return cudaGetLastError();
}

}  // namespace

cudaError_t spectral_norm_power_iteration(DType dtype, const int64_t* meta,
                                          const int32_t* row_blocks, int64_t n_rb,
                                          const int32_t* col_blocks, int64_t n_cb,
                                          const void* v0, void* t, void* s, void* p1, void* p2,
                                          void* u, void* v, void* sigma, int64_t n_iterations,
                                          double eps, cudaStream_t stream) {
  return detail::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch<T>(meta, row_blocks, n_rb, col_blocks, n_cb, v0, t, s, p1, p2, u, v, sigma,
                     n_iterations, eps, stream);
  });
}

}  // namespace fastgan

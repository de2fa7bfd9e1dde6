// Device-side helpers shared by the fastgan .cu files (not part of the public C++ API).
// No torch headers. Compiled with torch's default nvcc flags, which include
// -D__CUDA_NO_HALF_OPERATORS__ / -D__CUDA_NO_HALF_CONVERSIONS__ / -D__CUDA_NO_BFLOAT16_CONVERSIONS__,
// so half/bfloat16 values are converted only through the explicit intrinsics below.
#pragma once

#include <cstdint>
#include <climits>

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include "fastgan_kernels.h"

namespace fastgan {
namespace detail {

// Accumulation type: fp64 for double, fp32 for everything else.
template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };
template <typename T> using acc_t = typename AccType<T>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(acc_t<T> v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__device__ __forceinline__ float acc_rsqrt(float v) { return rsqrtf(v); }
__device__ __forceinline__ double acc_rsqrt(double v) { return rsqrt(v); }
__device__ __forceinline__ float acc_sqrt(float v) { return sqrtf(v); }
__device__ __forceinline__ double acc_sqrt(double v) { return sqrt(v); }

// Element load (converted to the accumulation type) / store at an int64 element offset.
template <typename T>
__device__ __forceinline__ acc_t<T> ld(const void* base, int64_t off) {
  return to_acc(static_cast<const T*>(base)[off]);
}
template <typename T>
__device__ __forceinline__ void st(void* base, int64_t off, acc_t<T> v) {
  static_cast<T*>(base)[off] = from_acc<T>(v);
}
// Plain copy without a round trip through the accumulation type.
template <typename T>
__device__ __forceinline__ void cp(void* dst, int64_t doff, const void* src, int64_t soff) {
  static_cast<T*>(dst)[doff] = static_cast<const T*>(src)[soff];
}

// Butterfly sum over a whole warp: every lane ends with the same, order-fixed result
// (a+b == b+a bitwise, so partner lanes agree at every level). All 32 lanes must call it.
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Deterministic sum over a 1-D block (blockDim.x a multiple of 32, <= 1024). Every thread of the
// block must call it; every thread gets the total. smem: >= 33 elements. Ends with a barrier, so
// smem may be reused right after.
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* smem) {
  const int lane = threadIdx.x & 31;
  const int wid = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) smem[wid] = v;
  __syncthreads();
  if (wid == 0) {
    A t = lane < nwarps ? smem[lane] : A(0);
    t = warp_sum(t);
    if (lane == 0) smem[32] = t;
  }
  __syncthreads();
  const A total = smem[32];
  __syncthreads();
  return total;
}

// Calls fn(T{}) with T the C++ type of the dtype tag.
template <typename Fn>
inline cudaError_t dispatch_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::Float32: return fn(float{});
    case DType::Float64: return fn(double{});
    case DType::Float16: return fn(__half{});
    case DType::BFloat16: return fn(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

// Load / store of one scalar whose dtype is only known at run time (Vec / CVec: a bias or a
// per-sample vector that may differ in dtype from the call's main tensors). Uniform branch.
template <typename A>
__device__ __forceinline__ A ld_as(const void* base, int64_t off, DType dtype) {
  switch (dtype) {
    case DType::Float64: return static_cast<A>(static_cast<const double*>(base)[off]);
    case DType::Float16: return static_cast<A>(__half2float(static_cast<const __half*>(base)[off]));
    case DType::BFloat16:
      return static_cast<A>(__bfloat162float(static_cast<const __nv_bfloat16*>(base)[off]));
    default: return static_cast<A>(static_cast<const float*>(base)[off]);
  }
}
__device__ __forceinline__ void st_as(void* base, int64_t off, DType dtype, float v) {
  switch (dtype) {
    case DType::Float64: static_cast<double*>(base)[off] = static_cast<double>(v); break;
    case DType::Float16: static_cast<__half*>(base)[off] = __float2half_rn(v); break;
    case DType::BFloat16: static_cast<__nv_bfloat16*>(base)[off] = __float2bfloat16_rn(v); break;
    default: static_cast<float*>(base)[off] = v; break;
  }
}
__device__ __forceinline__ void st_as(void* base, int64_t off, DType dtype, double v) {
  switch (dtype) {
    case DType::Float64: static_cast<double*>(base)[off] = v; break;
    case DType::Float16: static_cast<__half*>(base)[off] = __double2half(v); break;
    case DType::BFloat16: static_cast<__nv_bfloat16*>(base)[off] = __double2bfloat16(v); break;
    default: static_cast<float*>(base)[off] = static_cast<float>(v); break;
  }
}

__host__ __device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Grid size for a grid-stride loop over `n` (virtual) blocks.
inline unsigned grid_for(int64_t n) {
  return static_cast<unsigned>(n < static_cast<int64_t>(INT_MAX) ? n : static_cast<int64_t>(INT_MAX));
}

}  // namespace detail
}  // namespace fastgan

// Shared by the csrc/bind_<op>.cpp files: tensor checks and the [outer, C, inner] views the
// kernels take. Included by torch-aware .cpp files only (never by a .cu file).
//
// Each binding function: check the tensors (CUDA, same device, same supported dtype, shapes),
// view them with the strides the kernels take (making an input contiguous only when its dims
// cannot collapse), allocate outputs, set the device guard, launch on the current stream.
//
// Adding an op's CUDA code: csrc/<op>.cu (kernels, C API in fastgan_kernels.h, no torch) and
// csrc/bind_<op>.cpp (checks, launches, its own TORCH_LIBRARY_IMPL block); schemas go in
// fastgan/_ext.py. Every csrc/*.cu and *.cpp is compiled (fastgan/_build_config.py,
// CMakeLists.txt): no build file lists them.
#pragma once

#include <array>
#include <cstdint>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include "fastgan_kernels.h"

namespace fastgan {
namespace bind {

using at::Tensor;

inline DType dtype_of(const Tensor& t, const char* op, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::Float32;
    case at::kDouble: return DType::Float64;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default:
      TORCH_CHECK(false, "fastgan_cuda::", op, ": ", name,
                  " must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
  }
  return DType::Float32;  // unreachable
}

// `t` must be a CUDA tensor, and (when `ref` is given) on ref's device with ref's dtype.
inline void check_tensor(const Tensor& t, const char* op, const char* name,
                         const Tensor* ref = nullptr, const char* ref_name = nullptr) {
  TORCH_CHECK(t.defined(), "fastgan_cuda::", op, ": ", name, " is undefined");
  TORCH_CHECK(t.is_cuda(), "fastgan_cuda::", op, ": ", name, " must be a CUDA tensor, got device ",
              t.device());
  if (ref == nullptr) return;
  TORCH_CHECK(t.device() == ref->device(), "fastgan_cuda::", op, ": ", name, " is on ",
              t.device(), " but ", ref_name, " is on ", ref->device());
  TORCH_CHECK(t.scalar_type() == ref->scalar_type(), "fastgan_cuda::", op, ": ", name,
              " has dtype ", t.scalar_type(), " but ", ref_name, " has dtype ",
              ref->scalar_type());
}

inline void check_same_shape(const Tensor& t, const char* op, const char* name, const Tensor& ref,
                             const char* ref_name) {
  TORCH_CHECK(t.sizes() == ref.sizes(), "fastgan_cuda::", op, ": ", name, " has shape ",
              t.sizes(), " but ", ref_name, " has shape ", ref.sizes());
}

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "fastgan_cuda::", op, ": kernel launch failed: ",
              cudaGetErrorString(err));
}

// `t` is a CUDA tensor on ref's device (any dtype).
inline void check_device(const Tensor& t, const char* op, const char* name, const Tensor& ref,
                         const char* ref_name) {
  check_tensor(t, op, name);
  TORCH_CHECK(t.device() == ref.device(), "fastgan_cuda::", op, ": ", name, " is on ",
              t.device(), " but ", ref_name, " is on ", ref.device());
}

// Collapses dims [lo, hi) of t into one stride. False when they do not collapse. Size-1 dims are
// ignored; stride-0 (expanded) dims collapse with each other.
inline bool collapse(const Tensor& t, int64_t lo, int64_t hi, int64_t& stride) {
  stride = 0;
  bool first = true;
  int64_t expect = 0;
  for (int64_t d = hi - 1; d >= lo; --d) {
    const int64_t size = t.size(d);
    if (size == 1) continue;
    const int64_t s = t.stride(d);
    if (first) {
      stride = s;
      first = false;
    } else if (s != expect) {
      return false;
    }
    expect = s * size;
  }
  return true;
}

inline bool view3_strides(const Tensor& t, int64_t dim, std::array<int64_t, 3>& s) {
  if (t.numel() == 0) {  // nothing is read or written: any strides (a size-0 dim breaks collapse)
    s = {0, 0, 0};
    return true;
  }
  s[1] = t.size(dim) == 1 ? 0 : t.stride(dim);
  return collapse(t, 0, dim, s[0]) && collapse(t, dim + 1, t.dim(), s[2]);
}

// An input as a [outer, C, inner] view: `t` itself, or a contiguous copy when it cannot collapse.
struct In3 {
  Tensor t;
  CView3 v;
};
inline In3 input3(const Tensor& t, int64_t dim) {
  std::array<int64_t, 3> s;
  In3 r{t, {}};
  if (!view3_strides(t, dim, s)) {
    r.t = t.contiguous();
    TORCH_INTERNAL_ASSERT(view3_strides(r.t, dim, s));
  }
  r.v = CView3{r.t.data_ptr(), s[0], s[1], s[2]};
  return r;
}

// An output: empty_like(like) when its dims collapse, else contiguous (e.g. channels_last with
// dim != 1). The same rule as fastgan.ops._common.empty_like3, which the fake impls use.
struct Out3 {
  Tensor t;
  View3 v;
};
inline Out3 output3(const Tensor& like, int64_t dim) {
  Out3 r{at::empty_like(like), {}};
  std::array<int64_t, 3> s;
  if (!view3_strides(r.t, dim, s)) {
    r.t = at::empty(like.sizes(), like.options());
    TORCH_INTERNAL_ASSERT(view3_strides(r.t, dim, s));
  }
  r.v = View3{r.t.data_ptr(), s[0], s[1], s[2]};
  return r;
}

}  // namespace bind
}  // namespace fastgan

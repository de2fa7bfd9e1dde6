// Torch binding of the fastgan CUDA kernels: the only csrc file that includes torch headers.
//
// The op schemas (namespace fastgan_cuda) are defined in Python (fastgan/_ext.py), so
// `import fastgan` works without this library; loading it (as the Python module fastgan._C, or
// with torch.ops.load_library from the JIT cache) runs the TORCH_LIBRARY_IMPL block below and
// registers the CUDA kernels.
//
// Each op: check the tensors (CUDA, same device, same supported dtype, shapes), view them with
// the strides the kernels take (making an input contiguous only when its dims cannot collapse),
// allocate outputs, set the device guard, launch on the current stream.
//
// Adding an op: declare its C API in fastgan_kernels.h, implement it in csrc/<op>.cu, write the
// binding function(s) here, add m.impl(...) lines to the TORCH_LIBRARY_IMPL block, and add the
// schemas to SCHEMAS in fastgan/_ext.py. (setup.py, the JIT build and CMake pick up every .cu.)
#ifndef FASTGAN_NO_PYTHON_MODULE
#include <Python.h>
#endif

#include <algorithm>
#include <array>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/empty_strided.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "fastgan_kernels.h"

namespace fastgan {
namespace bind {
namespace {

using at::Tensor;

// ------------------------------------------------------------------------------ common checks

DType dtype_of(const Tensor& t, const char* op, const char* name) {
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
void check_tensor(const Tensor& t, const char* op, const char* name, const Tensor* ref = nullptr,
                  const char* ref_name = nullptr) {
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

void check_same_shape(const Tensor& t, const char* op, const char* name, const Tensor& ref,
                      const char* ref_name) {
  TORCH_CHECK(t.sizes() == ref.sizes(), "fastgan_cuda::", op, ": ", name, " has shape ",
              t.sizes(), " but ", ref_name, " has shape ", ref.sizes());
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "fastgan_cuda::", op, ": kernel launch failed: ",
              cudaGetErrorString(err));
}

// ------------------------------------------------------------------------------ pixel_norm

// Collapses dims [lo, hi) of t into one stride. False when they do not collapse. Size-1 dims are
// ignored; stride-0 (expanded) dims collapse with each other.
bool collapse(const Tensor& t, int64_t lo, int64_t hi, int64_t& stride) {
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

bool view3_strides(const Tensor& t, int64_t dim, std::array<int64_t, 3>& s) {
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
In3 input3(const Tensor& t, int64_t dim) {
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
Out3 output3(const Tensor& like, int64_t dim) {
  Out3 r{at::empty_like(like), {}};
  std::array<int64_t, 3> s;
  if (!view3_strides(r.t, dim, s)) {
    r.t = at::empty(like.sizes(), like.options());
    TORCH_INTERNAL_ASSERT(view3_strides(r.t, dim, s));
  }
  r.v = View3{r.t.data_ptr(), s[0], s[1], s[2]};
  return r;
}

struct PNSetup {
  int64_t dim;
  PixelNormShape shape;
  DType dtype;
};

PNSetup pixel_norm_setup(const Tensor& x, int64_t dim, double eps, const char* op) {
  check_tensor(x, op, "x");
  const DType dtype = dtype_of(x, op, "x");
  TORCH_CHECK(x.dim() >= 1, "fastgan_cuda::", op, ": x must have at least 1 dim, got shape ",
              x.sizes());
  const int64_t nd = x.dim();
  TORCH_CHECK(dim >= -nd && dim < nd, "fastgan_cuda::", op, ": dim ", dim,
              " is out of range for x of shape ", x.sizes());
  if (dim < 0) dim += nd;
  TORCH_CHECK(eps >= 0, "fastgan_cuda::", op, ": eps must be >= 0, got ", eps);
  PixelNormShape shape{1, x.size(dim), 1};
  for (int64_t d = 0; d < dim; ++d) shape.outer *= x.size(d);
  for (int64_t d = dim + 1; d < nd; ++d) shape.inner *= x.size(d);
  return {dim, shape, dtype};
}

Tensor pixel_norm_forward(const Tensor& x, double eps, int64_t dim) {
  constexpr const char* op = "pixel_norm_forward";
  const PNSetup S = pixel_norm_setup(x, dim, eps, op);
  const c10::cuda::CUDAGuard guard(x.device());
  Out3 y = output3(x, S.dim);
  if (x.numel() == 0) return y.t;
  const In3 xi = input3(x, S.dim);
  check_launch(fastgan::pixel_norm_forward(S.dtype, S.shape, eps, y.v, xi.v,
                                           c10::cuda::getCurrentCUDAStream()),
               op);
  return y.t;
}

Tensor pixel_norm_backward(const Tensor& grad, const Tensor& x, double eps, int64_t dim) {
  constexpr const char* op = "pixel_norm_backward";
  const PNSetup S = pixel_norm_setup(x, dim, eps, op);
  check_tensor(grad, op, "grad", &x, "x");
  check_same_shape(grad, op, "grad", x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  Out3 dx = output3(x, S.dim);
  if (x.numel() == 0) return dx.t;
  const In3 xi = input3(x, S.dim);
  const In3 gi = input3(grad, S.dim);
  check_launch(fastgan::pixel_norm_backward(S.dtype, S.shape, eps, dx.v, gi.v, xi.v,
                                            c10::cuda::getCurrentCUDAStream()),
               op);
  return dx.t;
}

std::tuple<Tensor, Tensor> pixel_norm_double_backward(const Tensor& gg, const Tensor& grad,
                                                      const Tensor& x, double eps, int64_t dim) {
  constexpr const char* op = "pixel_norm_double_backward";
  const PNSetup S = pixel_norm_setup(x, dim, eps, op);
  check_tensor(grad, op, "grad", &x, "x");
  check_tensor(gg, op, "gg", &x, "x");
  check_same_shape(grad, op, "grad", x, "x");
  check_same_shape(gg, op, "gg", x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  Out3 g_grad = output3(x, S.dim);
  Out3 g_x = output3(x, S.dim);
  if (x.numel() == 0) return {g_grad.t, g_x.t};
  const In3 xi = input3(x, S.dim);
  const In3 gi = input3(grad, S.dim);
  const In3 ggi = input3(gg, S.dim);
  check_launch(fastgan::pixel_norm_double_backward(S.dtype, S.shape, eps, g_grad.v, g_x.v, ggi.v,
                                                   gi.v, xi.v, c10::cuda::getCurrentCUDAStream()),
               op);
  return {g_grad.t, g_x.t};
}

// ------------------------------------------------------------------------------ minibatch_stddev

CView4 cview4(const Tensor& t) {
  return CView4{t.data_ptr(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}
View4 view4(const Tensor& t) {
  return View4{t.data_ptr(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// Every output ([N, C+F, H, W] y / g_grad and [N, C, H, W] dx / g_x) is channels_last when x is
// (and is not also contiguous), else contiguous: the rule of the fake impls in
// fastgan/ops/minibatch_stddev.py (_empty_out). The kernels take any strides.
at::MemoryFormat out_format(const Tensor& x) {
  return (x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous())
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

struct MBSetup {
  MinibatchStddevParams p;
  DType dtype;
  std::vector<int64_t> ext_shape;  // [N, C+F, H, W]
};

MBSetup mbstd_setup(const Tensor& x, int64_t group_size, int64_t num_features, double eps,
                    bool strided, bool unbiased, const char* op) {
  check_tensor(x, op, "x");
  const DType dtype = dtype_of(x, op, "x");
  TORCH_CHECK(x.dim() == 4, "fastgan_cuda::", op, ": x must be 4-D [N, C, H, W], got shape ",
              x.sizes());
  const int64_t N = x.size(0), C = x.size(1);
  TORCH_CHECK(group_size >= 1, "fastgan_cuda::", op, ": group_size must be >= 1, got ",
              group_size);
  TORCH_CHECK(num_features >= 1, "fastgan_cuda::", op, ": num_features must be >= 1, got ",
              num_features);
  const int64_t G = std::max<int64_t>(1, std::min(group_size, N));
  TORCH_CHECK(N % G == 0, "fastgan_cuda::", op, ": group_size ", G,
              " must divide the batch size, got x of shape ", x.sizes());
  TORCH_CHECK(C > 0, "fastgan_cuda::", op, ": x must have channels, got shape ", x.sizes());
  TORCH_CHECK(C % num_features == 0, "fastgan_cuda::", op, ": num_features ", num_features,
              " must divide the channels, got x of shape ", x.sizes());
  TORCH_CHECK(!(unbiased && G < 2 && N > 0), "fastgan_cuda::", op,
              ": unbiased=True needs a group size >= 2, got ", G, " for x of shape ", x.sizes());
  TORCH_CHECK(eps >= 0, "fastgan_cuda::", op, ": eps must be >= 0, got ", eps);
  MBSetup S;
  S.p = MinibatchStddevParams{N, C, x.size(2), x.size(3), G, num_features, eps, strided, unbiased};
  S.dtype = dtype;
  S.ext_shape = {N, C + num_features, x.size(2), x.size(3)};
  return S;
}

Tensor workspace(const MBSetup& S, const Tensor& x) {
  const size_t bytes = minibatch_stddev_workspace_bytes(S.dtype, S.p);
  return at::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))},
                   x.options().dtype(at::kByte));
}

Tensor minibatch_stddev_forward(const Tensor& x, int64_t group_size, int64_t num_features,
                                double eps, bool strided, bool unbiased) {
  constexpr const char* op = "minibatch_stddev_forward";
  const MBSetup S = mbstd_setup(x, group_size, num_features, eps, strided, unbiased, op);
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor y = at::empty(S.ext_shape, x.options(), out_format(x));
  if (y.numel() == 0) return y;
  Tensor ws = workspace(S, x);
  check_launch(fastgan::minibatch_stddev_forward(S.dtype, S.p, view4(y), cview4(x), ws.data_ptr(),
                                                 c10::cuda::getCurrentCUDAStream()),
               op);
  return y;
}

Tensor minibatch_stddev_backward(const Tensor& grad, const Tensor& x, int64_t group_size,
                                 int64_t num_features, double eps, bool strided, bool unbiased) {
  constexpr const char* op = "minibatch_stddev_backward";
  const MBSetup S = mbstd_setup(x, group_size, num_features, eps, strided, unbiased, op);
  check_tensor(grad, op, "grad", &x, "x");
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(S.ext_shape), "fastgan_cuda::", op,
              ": grad must have shape ", at::IntArrayRef(S.ext_shape), " (x of shape ",
              x.sizes(), "), got ", grad.sizes());
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor dx = at::empty(x.sizes(), x.options(), out_format(x));
  if (dx.numel() == 0) return dx;
  Tensor ws = workspace(S, x);
  check_launch(fastgan::minibatch_stddev_backward(S.dtype, S.p, view4(dx), cview4(grad), cview4(x),
                                                  ws.data_ptr(), c10::cuda::getCurrentCUDAStream()),
               op);
  return dx;
}

std::tuple<Tensor, Tensor> minibatch_stddev_double_backward(const Tensor& gg, const Tensor& grad,
                                                            const Tensor& x, int64_t group_size,
                                                            int64_t num_features, double eps,
                                                            bool strided, bool unbiased) {
  constexpr const char* op = "minibatch_stddev_double_backward";
  const MBSetup S = mbstd_setup(x, group_size, num_features, eps, strided, unbiased, op);
  check_tensor(grad, op, "grad", &x, "x");
  check_tensor(gg, op, "gg", &x, "x");
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(S.ext_shape), "fastgan_cuda::", op,
              ": grad must have shape ", at::IntArrayRef(S.ext_shape), " (x of shape ",
              x.sizes(), "), got ", grad.sizes());
  check_same_shape(gg, op, "gg", x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor g_grad = at::empty(S.ext_shape, x.options(), out_format(x));
  Tensor g_x = at::empty(x.sizes(), x.options(), out_format(x));
  if (g_grad.numel() == 0) return {g_grad, g_x};
  Tensor ws = workspace(S, x);
  check_launch(fastgan::minibatch_stddev_double_backward(
                   S.dtype, S.p, view4(g_grad), view4(g_x), cview4(gg), cview4(grad), cview4(x),
                   ws.data_ptr(), c10::cuda::getCurrentCUDAStream()),
               op);
  return {g_grad, g_x};
}

// ------------------------------------------------------------------------------ bias_act

// `t` is a CUDA tensor on ref's device (any dtype).
void check_device(const Tensor& t, const char* op, const char* name, const Tensor& ref,
                  const char* ref_name) {
  check_tensor(t, op, name);
  TORCH_CHECK(t.device() == ref.device(), "fastgan_cuda::", op, ": ", name, " is on ",
              t.device(), " but ", ref_name, " is on ", ref.device());
}

Act parse_act(c10::string_view act, const char* op) {
  const std::string_view a(act.data(), act.size());
  if (a == "linear") return Act::Linear;
  if (a == "relu") return Act::ReLU;
  if (a == "lrelu") return Act::LReLU;
  TORCH_CHECK(false, "fastgan_cuda::", op, ": act must be one of linear, relu, lrelu, got '",
              std::string(a), "'");
  return Act::Linear;  // unreachable
}

struct BASetup {
  int64_t dim;
  BiasActParams p;
  DType dtype;
};

BASetup bias_act_setup(const Tensor& x, const char* xname, int64_t dim, c10::string_view act,
                       double alpha, double gain, const char* op) {
  check_tensor(x, op, xname);
  const DType dtype = dtype_of(x, op, xname);
  TORCH_CHECK(x.dim() >= 1, "fastgan_cuda::", op, ": ", xname,
              " must have at least 1 dim, got shape ", x.sizes());
  const int64_t nd = x.dim();
  TORCH_CHECK(dim >= -nd && dim < nd, "fastgan_cuda::", op, ": dim ", dim,
              " is out of range for ", xname, " of shape ", x.sizes());
  if (dim < 0) dim += nd;
  BiasActParams p{1, x.size(dim), 1, parse_act(act, op), alpha, gain};
  for (int64_t d = 0; d < dim; ++d) p.outer *= x.size(d);
  for (int64_t d = dim + 1; d < nd; ++d) p.inner *= x.size(d);
  return {dim, p, dtype};
}

// A per-channel vector (b, gg_b): 1-D of size C, any float dtype, on x's device.
CVec channel_vec(const c10::optional<Tensor>& v, const char* op, const char* name,
                 const Tensor& x, const char* xname, int64_t C) {
  if (!v.has_value() || !v->defined()) return CVec{nullptr, 0, DType::Float32};
  check_device(*v, op, name, x, xname);
  const DType dt = dtype_of(*v, op, name);
  TORCH_CHECK(v->dim() == 1 && v->size(0) == C, "fastgan_cuda::", op, ": ", name,
              " must have shape [", C, "] (dim of ", xname, "), got ", v->sizes());
  return CVec{v->data_ptr(), v->stride(0), dt};
}

// The sign mask of the forward (act != linear): bool, shaped like `like`, strides that collapse
// to [outer, C, inner] and no overlap (the backward outputs take its strides).
CView3 mask_view(const Tensor& mask, const Tensor& like, const char* like_name, int64_t dim,
                 Act act, const char* op) {
  if (act == Act::Linear) return CView3{nullptr, 0, 0, 0};
  check_device(mask, op, "mask", like, like_name);
  TORCH_CHECK(mask.scalar_type() == at::kBool, "fastgan_cuda::", op,
              ": mask must be the bool sign mask of the forward, got dtype ", mask.scalar_type());
  TORCH_CHECK(mask.sizes() == like.sizes(), "fastgan_cuda::", op,
              ": the backward of this act needs the sign mask of the forward, got a mask of shape ",
              mask.sizes(), " for ", like_name, " of shape ", like.sizes(),
              " (was the forward run with save_mask=False?)");
  std::array<int64_t, 3> s;
  TORCH_CHECK(mask.is_non_overlapping_and_dense() && view3_strides(mask, dim, s),
              "fastgan_cuda::", op, ": mask must be the (dense) sign mask returned by the forward, "
              "got strides ", mask.strides());
  return CView3{mask.data_ptr(), s[0], s[1], s[2]};
}

// Output of the backward kernels: the mask's strides when there is a mask, else like `u` (the
// rule of _grad_like in fastgan/ops/bias_act.py).
Out3 grad_output(const Tensor& u, const Tensor& mask, Act act, int64_t dim) {
  if (act == Act::Linear) return output3(u, dim);
  Out3 r{at::empty_strided(mask.sizes(), mask.strides(), u.options()), {}};
  std::array<int64_t, 3> s;
  TORCH_INTERNAL_ASSERT(view3_strides(r.t, dim, s));
  r.v = View3{r.t.data_ptr(), s[0], s[1], s[2]};
  return r;
}

std::tuple<Tensor, Tensor> bias_act_forward(const Tensor& x, const c10::optional<Tensor>& b,
                                            c10::string_view act, double alpha, double gain,
                                            int64_t dim, bool save_mask) {
  constexpr const char* op = "bias_act_forward";
  const BASetup S = bias_act_setup(x, "x", dim, act, alpha, gain, op);
  const CVec bv = channel_vec(b, op, "b", x, "x", S.p.channels);
  const c10::cuda::CUDAGuard guard(x.device());
  Out3 y = output3(x, S.dim);
  const bool with_mask = S.p.act != Act::Linear && save_mask;
  Tensor mask = with_mask
                    ? at::empty_strided(y.t.sizes(), y.t.strides(), x.options().dtype(at::kBool))
                    : at::empty({0}, x.options().dtype(at::kBool));
  if (x.numel() == 0) return {y.t, mask};
  View3 mv{nullptr, 0, 0, 0};
  if (with_mask) {
    std::array<int64_t, 3> s;
    TORCH_INTERNAL_ASSERT(view3_strides(mask, S.dim, s));
    mv = View3{mask.data_ptr(), s[0], s[1], s[2]};
  }
  const In3 xi = input3(x, S.dim);
  check_launch(fastgan::bias_act_forward(S.dtype, S.p, y.v, mv, xi.v, bv,
                                         c10::cuda::getCurrentCUDAStream()),
               op);
  return {y.t, mask};
}

std::tuple<Tensor, Tensor> bias_act_backward(const Tensor& grad, const Tensor& mask,
                                             bool has_bias, c10::string_view act, double alpha,
                                             double gain, int64_t dim) {
  constexpr const char* op = "bias_act_backward";
  const BASetup S = bias_act_setup(grad, "grad", dim, act, alpha, gain, op);
  const CView3 mv = mask_view(mask, grad, "grad", S.dim, S.p.act, op);
  const c10::cuda::CUDAGuard guard(grad.device());
  Out3 dx = grad_output(grad, mask, S.p.act, S.dim);
  const at::ScalarType acc = S.dtype == DType::Float64 ? at::kDouble : at::kFloat;
  Tensor db = at::empty({has_bias ? S.p.channels : 0}, grad.options().dtype(acc));
  if (grad.numel() == 0) {
    db.zero_();
    return {dx.t, db};
  }
  const In3 gi = input3(grad, S.dim);
  const size_t bytes =
      bias_act_backward_workspace_bytes(S.dtype, S.p, dx.v, gi.v, mv, has_bias);
  Tensor ws;
  if (bytes > 0) ws = at::empty({static_cast<int64_t>(bytes)}, grad.options().dtype(at::kByte));
  check_launch(fastgan::bias_act_backward(S.dtype, S.p, dx.v, has_bias ? db.data_ptr() : nullptr,
                                          gi.v, mv, bytes > 0 ? ws.data_ptr() : nullptr,
                                          c10::cuda::getCurrentCUDAStream()),
               op);
  return {dx.t, db};
}

Tensor bias_act_double_backward(const Tensor& gg_x, const c10::optional<Tensor>& gg_b,
                                const Tensor& mask, c10::string_view act, double alpha,
                                double gain, int64_t dim) {
  constexpr const char* op = "bias_act_double_backward";
  const BASetup S = bias_act_setup(gg_x, "gg_x", dim, act, alpha, gain, op);
  const CVec vb = channel_vec(gg_b, op, "gg_b", gg_x, "gg_x", S.p.channels);
  const CView3 mv = mask_view(mask, gg_x, "gg_x", S.dim, S.p.act, op);
  const c10::cuda::CUDAGuard guard(gg_x.device());
  Out3 g_dy = grad_output(gg_x, mask, S.p.act, S.dim);
  if (gg_x.numel() == 0) return g_dy.t;
  const In3 gi = input3(gg_x, S.dim);
  check_launch(fastgan::bias_act_double_backward(S.dtype, S.p, g_dy.v, gi.v, vb, mv,
                                                 c10::cuda::getCurrentCUDAStream()),
               op);
  return g_dy.t;
}

// ------------------------------------------------------------------------------ grad_penalty

// Port of fastgan.ops._common.sample_block: (M, batch stride) when every sample t[n] fills the M
// memory slots data + n*s_n + [0, M) (a dense permutation of its dims) and the whole tensor is
// dense, so that empty_like(t) has t's strides.
bool sample_block(const Tensor& t, int64_t& M, int64_t& s_n) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size), sorted like the Python
  for (int64_t d = 1; d < t.dim(); ++d) {
    if (t.size(d) != 1) dims.emplace_back(t.stride(d), t.size(d));
  }
  std::sort(dims.begin(), dims.end());
  int64_t expected = 1;
  for (const auto& sd : dims) {
    if (sd.first != expected) return false;
    expected *= sd.second;
  }
  M = expected;
  if (t.size(0) > 1 && t.stride(0) != M) return false;
  s_n = t.size(0) > 1 ? t.stride(0) : M;
  return true;
}

// Output shaped like g: g's layout when g is dense (the rule of _alloc_like), else contiguous.
Tensor alloc_like(const Tensor& g) {
  int64_t M, s_n;
  return sample_block(g, M, s_n) ? at::empty_like(g) : at::empty(g.sizes(), g.options());
}

// g (or a contiguous copy) as N samples of M consecutive slots.
struct Flat {
  Tensor t;
  int64_t M, s_n;
};
Flat flat(const Tensor& g) {
  Flat f{g, 1, 1};
  if (g.numel() == 0) {  // nothing is read or written: any stride
    for (int64_t d = 1; d < g.dim(); ++d) f.M *= g.size(d);
    f.s_n = f.M;
    return f;
  }
  if (!sample_block(g, f.M, f.s_n)) {
    f.t = g.contiguous();
    TORCH_INTERNAL_ASSERT(sample_block(f.t, f.M, f.s_n));
  }
  return f;
}

// t (shaped like ref) with ref's strides, copying only when they differ (size-1 dims ignored).
Tensor like_layout(const Tensor& t, const Tensor& ref) {
  for (int64_t d = 0; d < ref.dim(); ++d) {
    if (ref.size(d) != 1 && t.stride(d) != ref.stride(d)) return at::empty_like(ref).copy_(t);
  }
  return t;
}

struct GPSetup {
  GradPenaltyParams p;
  DType dtype;
  at::ScalarType acc;
};

GPSetup gp_setup(const Tensor& g, double weight, double target, bool r1, const char* op) {
  check_tensor(g, op, "g");
  const DType dtype = dtype_of(g, op, "g");
  TORCH_CHECK(g.dim() >= 1, "fastgan_cuda::", op, ": g must have at least 1 dim [N, ...], got "
              "shape ", g.sizes());
  TORCH_CHECK(r1 || target > 0, "fastgan_cuda::", op, ": target must be > 0 (r1=False), got ",
              target);
  GradPenaltyParams p{g.size(0), 1, weight, target, r1};
  for (int64_t d = 1; d < g.dim(); ++d) p.M *= g.size(d);
  return {p, dtype, dtype == DType::Float64 ? at::kDouble : at::kFloat};
}

// A per-sample vector (dp, dnorm, norm): N elements, any float dtype, any stride (0 included).
struct SampleVec {
  Tensor t;
  CVec v;
};
SampleVec sample_vec(const c10::optional<Tensor>& t, const char* op, const char* name,
                     const Tensor& g, int64_t N) {
  if (!t.has_value() || !t->defined()) return {Tensor(), CVec{nullptr, 0, DType::Float32}};
  check_device(*t, op, name, g, "g");
  const DType dt = dtype_of(*t, op, name);
  TORCH_CHECK(t->numel() == N, "fastgan_cuda::", op, ": ", name, " must have ", N,
              " elements (one per sample of g of shape ", g.sizes(), "), got shape ", t->sizes());
  SampleVec r{t->dim() == 1 ? *t : t->reshape({-1}), {}};
  r.v = CVec{r.t.data_ptr(), r.t.stride(0), dt};
  return r;
}

Tensor gp_workspace(const GPSetup& S, const Tensor& g) {
  const size_t bytes = grad_penalty_workspace_bytes(S.dtype, S.p);
  return at::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))},
                   g.options().dtype(at::kByte));
}

std::tuple<Tensor, Tensor> grad_penalty_forward(const Tensor& g, double weight, double target,
                                                bool r1) {
  constexpr const char* op = "grad_penalty_forward";
  GPSetup S = gp_setup(g, weight, target, r1, op);
  const c10::cuda::CUDAGuard guard(g.device());
  Tensor pen = at::empty({S.p.N}, g.options().dtype(S.acc));
  Tensor norm = at::empty({S.p.N}, g.options().dtype(S.acc));
  if (S.p.N == 0) return {pen, norm};
  const Flat gf = flat(g);
  S.p.M = gf.M;
  Tensor ws = gp_workspace(S, g);
  check_launch(fastgan::grad_penalty_forward(S.dtype, S.p, pen.data_ptr(), norm.data_ptr(),
                                             CSamples{gf.t.data_ptr(), gf.s_n}, ws.data_ptr(),
                                             c10::cuda::getCurrentCUDAStream()),
               op);
  return {pen, norm};
}

Tensor grad_penalty_backward(const Tensor& dp, const c10::optional<Tensor>& dnorm, const Tensor& g,
                             const Tensor& norm, double weight, double target, bool r1) {
  constexpr const char* op = "grad_penalty_backward";
  GPSetup S = gp_setup(g, weight, target, r1, op);
  const SampleVec dpv = sample_vec(dp, op, "dp", g, S.p.N);
  const SampleVec dnv = sample_vec(dnorm, op, "dnorm", g, S.p.N);
  const SampleVec nv = sample_vec(norm, op, "norm", g, S.p.N);
  const c10::cuda::CUDAGuard guard(g.device());
  Tensor dg = alloc_like(g);
  if (g.numel() == 0) return dg;
  const Flat gf = flat(g);
  const Flat of = flat(dg);
  TORCH_INTERNAL_ASSERT(of.t.is_same(dg) && of.M == gf.M);
  S.p.M = gf.M;
  check_launch(fastgan::grad_penalty_backward(S.dtype, S.p, Samples{dg.data_ptr(), of.s_n},
                                              dpv.v, dnv.v, CSamples{gf.t.data_ptr(), gf.s_n},
                                              nv.v, c10::cuda::getCurrentCUDAStream()),
               op);
  return dg;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> grad_penalty_double_backward(
    const Tensor& gg, const Tensor& dp, const c10::optional<Tensor>& dnorm, const Tensor& g,
    const Tensor& norm, double weight, double target, bool r1) {
  constexpr const char* op = "grad_penalty_double_backward";
  GPSetup S = gp_setup(g, weight, target, r1, op);
  check_tensor(gg, op, "gg", &g, "g");
  check_same_shape(gg, op, "gg", g, "g");
  const SampleVec dpv = sample_vec(dp, op, "dp", g, S.p.N);
  const SampleVec dnv = sample_vec(dnorm, op, "dnorm", g, S.p.N);
  const SampleVec nv = sample_vec(norm, op, "norm", g, S.p.N);
  const c10::cuda::CUDAGuard guard(g.device());
  const int64_t N = S.p.N;
  Tensor g_dp = at::empty({N}, g.options().dtype(dp.scalar_type()));
  Tensor g_dn = at::empty({N}, g.options().dtype(dnv.t.defined() ? dnv.t.scalar_type()
                                                                 : dp.scalar_type()));
  Tensor g_g = alloc_like(g);
  Tensor g_norm = at::empty({N}, g.options().dtype(norm.scalar_type()));
  if (N == 0) return {g_dp, g_dn, g_g, g_norm};
  const Flat gf = flat(g);
  const Flat ggf = g.numel() == 0 ? Flat{gg, gf.M, gf.s_n} : flat(like_layout(gg, gf.t));
  const Flat of = flat(g_g);
  TORCH_INTERNAL_ASSERT(of.t.is_same(g_g) && of.M == gf.M && ggf.M == gf.M);
  S.p.M = gf.M;
  Tensor ws = gp_workspace(S, g);
  auto vec = [](Tensor& t) { return Vec{t.data_ptr(), 1, dtype_of(t, "", "")}; };
  check_launch(fastgan::grad_penalty_double_backward(
                   S.dtype, S.p, vec(g_dp), vec(g_dn), Samples{g_g.data_ptr(), of.s_n},
                   vec(g_norm), CSamples{ggf.t.data_ptr(), ggf.s_n}, dpv.v, dnv.v,
                   CSamples{gf.t.data_ptr(), gf.s_n}, nv.v, ws.data_ptr(),
                   c10::cuda::getCurrentCUDAStream()),
               op);
  return {g_dp, g_dn, g_g, g_norm};
}

}  // namespace
}  // namespace bind
}  // namespace fastgan

// Schemas: fastgan/_ext.py (define_schemas). One m.impl per op.
TORCH_LIBRARY_IMPL(fastgan_cuda, CUDA, m) {
  m.impl("pixel_norm_forward", &fastgan::bind::pixel_norm_forward);
  m.impl("pixel_norm_backward", &fastgan::bind::pixel_norm_backward);
  m.impl("pixel_norm_double_backward", &fastgan::bind::pixel_norm_double_backward);
  m.impl("minibatch_stddev_forward", &fastgan::bind::minibatch_stddev_forward);
  m.impl("minibatch_stddev_backward", &fastgan::bind::minibatch_stddev_backward);
  m.impl("minibatch_stddev_double_backward", &fastgan::bind::minibatch_stddev_double_backward);
  m.impl("bias_act_forward", &fastgan::bind::bias_act_forward);
  m.impl("bias_act_backward", &fastgan::bind::bias_act_backward);
  m.impl("bias_act_double_backward", &fastgan::bind::bias_act_double_backward);
  m.impl("grad_penalty_forward", &fastgan::bind::grad_penalty_forward);
  m.impl("grad_penalty_backward", &fastgan::bind::grad_penalty_backward);
  m.impl("grad_penalty_double_backward", &fastgan::bind::grad_penalty_double_backward);
}

#ifndef FASTGAN_NO_PYTHON_MODULE
// A bare Python module, so the library imports as fastgan._C (the import runs the static
// registration above). Built by torch's cpp_extension, TORCH_EXTENSION_NAME is the module name.
#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _C
#endif
#define FASTGAN_CAT_(a, b) a##b
#define FASTGAN_CAT(a, b) FASTGAN_CAT_(a, b)
#define FASTGAN_STR_(a) #a
#define FASTGAN_STR(a) FASTGAN_STR_(a)

static PyModuleDef fastgan_module_def = {
    PyModuleDef_HEAD_INIT,
    FASTGAN_STR(TORCH_EXTENSION_NAME),
    "fastgan CUDA kernels. Importing this module registers the CUDA kernels of the "
    "fastgan_cuda::* ops (schemas: fastgan._ext).",
    -1,      // m_size
    nullptr, // m_methods
    nullptr, // m_slots
    nullptr, // m_traverse
    nullptr, // m_clear
    nullptr, // m_free
};

PyMODINIT_FUNC FASTGAN_CAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  return PyModule_Create(&fastgan_module_def);
}
#endif

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
#include <tuple>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
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

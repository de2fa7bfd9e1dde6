// Torch binding of the pixel_norm kernels (csrc/pixel_norm.cu): x viewed as [outer, C, inner]
// along `dim`, outputs laid out like x where its dims collapse (else contiguous).
#include <tuple>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "binding_utils.h"

namespace fastgan {
namespace bind {
namespace {

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

}  // namespace
}  // namespace bind
}  // namespace fastgan

// Schemas: fastgan/_ext.py (SCHEMAS).
TORCH_LIBRARY_IMPL(fastgan_cuda, CUDA, m) {
  m.impl("pixel_norm_forward", &fastgan::bind::pixel_norm_forward);
  m.impl("pixel_norm_backward", &fastgan::bind::pixel_norm_backward);
  m.impl("pixel_norm_double_backward", &fastgan::bind::pixel_norm_double_backward);
}

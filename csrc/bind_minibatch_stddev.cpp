// Torch binding of the minibatch_stddev kernels (csrc/minibatch_stddev.cu): x [N, C, H, W] with
// any strides, outputs channels_last when x is, a device workspace per launch.
#include <algorithm>
#include <tuple>
#include <vector>

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "binding_utils.h"

namespace fastgan {
namespace bind {
namespace {

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

}  // namespace
}  // namespace bind
}  // namespace fastgan

// Schemas: fastgan/_ext.py (SCHEMAS).
TORCH_LIBRARY_IMPL(fastgan_cuda, CUDA, m) {
  m.impl("minibatch_stddev_forward", &fastgan::bind::minibatch_stddev_forward);
  m.impl("minibatch_stddev_backward", &fastgan::bind::minibatch_stddev_backward);
  m.impl("minibatch_stddev_double_backward", &fastgan::bind::minibatch_stddev_double_backward);
}

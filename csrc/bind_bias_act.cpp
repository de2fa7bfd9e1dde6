// Torch binding of the bias_act kernels (csrc/bias_act.cu): x viewed as [outer, C, inner] along
// `dim`, an optional per-channel bias, the forward's bool sign mask for the backward passes.
#include <array>
#include <string>
#include <string_view>
#include <tuple>

#include <ATen/ops/empty_strided.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "binding_utils.h"

namespace fastgan {
namespace bind {
namespace {

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

}  // namespace
}  // namespace bind
}  // namespace fastgan

// Schemas: fastgan/_ext.py (SCHEMAS).
TORCH_LIBRARY_IMPL(fastgan_cuda, CUDA, m) {
  m.impl("bias_act_forward", &fastgan::bind::bias_act_forward);
  m.impl("bias_act_backward", &fastgan::bind::bias_act_backward);
  m.impl("bias_act_double_backward", &fastgan::bind::bias_act_double_backward);
}

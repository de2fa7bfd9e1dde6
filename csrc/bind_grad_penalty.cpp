// Torch binding of the grad_penalty kernels (csrc/grad_penalty.cu): g as N samples of M
// consecutive slots (a contiguous copy when a sample is not dense), per-sample vectors of any
// float dtype and stride.
#include <algorithm>
#include <tuple>
#include <utility>
#include <vector>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "binding_utils.h"

namespace fastgan {
namespace bind {
namespace {

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

// Schemas: fastgan/_ext.py (SCHEMAS).
TORCH_LIBRARY_IMPL(fastgan_cuda, CUDA, m) {
  m.impl("grad_penalty_forward", &fastgan::bind::grad_penalty_forward);
  m.impl("grad_penalty_backward", &fastgan::bind::grad_penalty_backward);
  m.impl("grad_penalty_double_backward", &fastgan::bind::grad_penalty_double_backward);
}

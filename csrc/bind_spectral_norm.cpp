// Torch binding of the spectral-norm power iteration (csrc/spectral_norm.cu):
//   fastgan_cuda::spectral_norm_forward(Tensor[] weights, Tensor v, int[] dims,
//                                       int n_power_iterations, float eps) -> (u, v, sigma)
// (schema in fastgan/_ext.py). Checks the tensors, builds the per-layer tables of
// spectral_norm.h on the host and copies them to the device, allocates the workspace and the
// outputs (fp32; fp64 for fp64 weights), and launches on the current stream.
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/ops/from_blob.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "binding_utils.h"
#include "spectral_norm.h"

namespace fastgan {
namespace bind {
namespace {

constexpr const char* kOp = "spectral_norm_forward";

std::tuple<Tensor, Tensor, Tensor> spectral_norm_forward(at::TensorList weights, const Tensor& v0,
                                                         at::IntArrayRef dims,
                                                         int64_t n_power_iterations, double eps) {
  TORCH_CHECK(!weights.empty(), "fastgan_cuda::", kOp, ": weights is empty");
  TORCH_CHECK(dims.size() == weights.size(), "fastgan_cuda::", kOp,
              ": dims has ", dims.size(), " entries for ", weights.size(), " weights");
  TORCH_CHECK(n_power_iterations >= 1, "fastgan_cuda::", kOp,
              ": n_power_iterations must be >= 1, got ",
              n_power_iterations);
  const Tensor& first = weights[0];
  check_tensor(first, kOp, "weights[0]");
  const DType dtype = dtype_of(first, kOp, "weights[0]");
  const auto acc = first.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  std::vector<Tensor> held;  // contiguous weights, alive until the launch is queued
  std::vector<int64_t> meta;
  std::vector<int32_t> rows, cols;
  int64_t u_off = 0, v_off = 0, p1 = 0, p2 = 0;
  for (size_t lay = 0; lay < weights.size(); ++lay) {
    const Tensor& w = weights[lay];
    const std::string name = "weights[" + std::to_string(lay) + "]";
    check_tensor(w, kOp, name.c_str(), &first, "weights[0]");
    TORCH_CHECK(w.dim() >= 2 && w.numel() > 0, "fastgan_cuda::", kOp, ": weights[", lay,
                "] must be a non-empty tensor of >= 2 dims, got shape ", w.sizes());
    const int64_t nd = w.dim();
    const int64_t d = dims[lay] < 0 ? dims[lay] + nd : dims[lay];
    TORCH_CHECK(d >= 0 && d < nd, "fastgan_cuda::", kOp, ": dims[", lay, "] = ", dims[lay],
                " is out of range for ", nd, " dims");
    held.push_back(w.contiguous());
    int64_t outer = 1, inner = 1;
    for (int64_t k = 0; k < d; ++k) outer *= w.size(k);
    for (int64_t k = d + 1; k < nd; ++k) inner *= w.size(k);
    const int64_t h = w.size(d), kk = outer * inner;
    const int64_t n_rb = (h + kSNRows - 1) / kSNRows, n_cb = (kk + kSNCols - 1) / kSNCols;
    TORCH_CHECK(static_cast<int64_t>(rows.size() / 2) + n_rb < INT32_MAX &&
                    static_cast<int64_t>(cols.size() / 2) + n_cb < INT32_MAX,
                "fastgan_cuda::", kOp, ": too many blocks");
    meta.insert(meta.end(), {reinterpret_cast<int64_t>(held.back().data_ptr()), outer, h, inner,
                             u_off, v_off, p1, n_rb, p2, n_cb});
    for (int64_t b = 0; b < n_rb; ++b) rows.insert(rows.end(), {static_cast<int32_t>(lay),
                                                                static_cast<int32_t>(b)});
    for (int64_t b = 0; b < n_cb; ++b) cols.insert(cols.end(), {static_cast<int32_t>(lay),
                                                                static_cast<int32_t>(b)});
    u_off += h;
    v_off += kk;
    p1 += n_rb;
    p2 += n_cb;
  }
  TORCH_CHECK(v0.is_cuda() && v0.device() == first.device() && v0.scalar_type() == acc &&
                  v0.dim() == 1 && v0.numel() == v_off,
              "fastgan_cuda::", kOp, ": v must be a 1-D ", acc, " tensor of ", v_off,
              " elements on ",
              first.device(), ", got ", v0.scalar_type(), " ", v0.sizes(), " on ", v0.device());
  const c10::cuda::CUDAGuard guard(first.device());
  const auto dev = first.device();
  auto on_dev = [&](auto& host, at::ScalarType type) {
    return at::from_blob(host.data(), {static_cast<int64_t>(host.size())},
                         at::TensorOptions().dtype(type))
        .to(dev, /*non_blocking=*/false, /*copy=*/true);
  };
  const Tensor meta_d = on_dev(meta, at::kLong);
  const Tensor rows_d = on_dev(rows, at::kInt), cols_d = on_dev(cols, at::kInt);
  const auto opts = first.options().dtype(acc);
  const Tensor v_in = v0.contiguous();
  Tensor t = at::empty({u_off}, opts), s = at::empty({v_off}, opts);
  Tensor part1 = at::empty({p1}, opts), part2 = at::empty({p2}, opts);
  Tensor u = at::empty({u_off}, opts), v = at::empty({v_off}, opts);
  Tensor sigma = at::empty({static_cast<int64_t>(weights.size())}, opts);
  const cudaError_t err = spectral_norm_power_iteration(
      dtype, meta_d.data_ptr<int64_t>(), rows_d.data_ptr<int32_t>(),
      static_cast<int64_t>(rows.size() / 2), cols_d.data_ptr<int32_t>(),
      static_cast<int64_t>(cols.size() / 2), v_in.data_ptr(), t.data_ptr(), s.data_ptr(),
      part1.data_ptr(), part2.data_ptr(), u.data_ptr(), v.data_ptr(), sigma.data_ptr(),
      n_power_iterations, eps, c10::cuda::getCurrentCUDAStream(dev.index()).stream());
  check_launch(err, kOp);
  return {u, v, sigma};
}

}  // namespace
}  // namespace bind
}  // namespace fastgan

TORCH_LIBRARY_IMPL(fastgan_cuda, CUDA, m) {
  m.impl("spectral_norm_forward", &fastgan::bind::spectral_norm_forward);
}

// bias_act forward / backward / double backward (math in fastgan_kernels.h).
//
// Geometry: every tensor of a call is an [outer, C, inner] view with its own strides. Like the
// Triton launcher (fastgan/ops/bias_act.py, _geometry), outer is folded into inner when every
// tensor allows it ([N, C] becomes [1, C, N], channels_last [1, C, N*H*W]), so most layouts are
// one long run of rows.
//
// One kernel template serves the three passes. A tile is (nR * kUnroll) rows x nC channels of
// one outer index, 256 threads (nR * nC <= 256). The block is laid out along the dim the output
// is contiguous in:
//   channels fastest (channels_last, [N, C]): threadIdx.x runs along C (nC <= 32), y along rows;
//   rows fastest (NCHW):                      threadIdx.x runs along rows, y along C.
// A "program" owns one channel block q and r_iters consecutive row tiles (tile blk -> outer
// index blk / n_i_blocks, row block blk % n_i_blocks); the grid is progs * n_c_blocks virtual
// blocks (grid-stride). Each thread keeps one channel for the whole program, so the per-channel
// addend (b or gg_b) is loaded once, and the backward's per-channel sum of dx is a per-thread
// register, combined over the block's rows by a fixed shared-memory tree into
// part[program, c]; sum_partials_kernel then adds the progs rows of part in a fixed order into
// db (or, with a single program, the kernel writes db directly). No atomics.
#include <algorithm>

#include "fastgan_common.cuh"

namespace fastgan {
namespace {

using namespace detail;

constexpr int kThreads = 256;
constexpr int kUnroll = 4;          // rows per thread per tile (loads in flight)
constexpr int64_t kMaxBlocks = 2048; // programs * channel blocks; more row tiles loop inside

struct BAArgs {
  int64_t C, inner;
  int64_t n_i_blocks, n_blocks, r_iters, progs, n_c_blocks, bi;
  bool cl;            // channels fastest: threadIdx.x along C
  double alpha, gain;
  CView3 in;          // forward: x | backward: dy | double backward: gg_x
  View3 out;          // forward: y | backward: dx | double backward: g_dy
  CView3 mask_in;     // backward / double backward (act != linear)
  View3 mask_out;     // forward; data == nullptr: not written
  CVec vec;           // forward: b | double backward: gg_b; data == nullptr: absent
  void* part;         // backward with db: acc_t[progs * C] (db itself when progs == 1)
};

template <typename T, int ACT, bool FWD>
__global__ void __launch_bounds__(kThreads) bias_act_kernel(const BAArgs a) {
  using A = acc_t<T>;
  __shared__ A red[kThreads];

  const int nC = a.cl ? blockDim.x : blockDim.y;
  const int nR = a.cl ? blockDim.y : blockDim.x;
  const int tc = a.cl ? threadIdx.x : threadIdx.y;
  const int tr = a.cl ? threadIdx.y : threadIdx.x;
  const A alpha = static_cast<A>(a.alpha);
  const A gain = static_cast<A>(a.gain);
  const bool has_vec = a.vec.data != nullptr;
  const bool write_mask = FWD && a.mask_out.data != nullptr;
  const int64_t nvb = a.progs * a.n_c_blocks;

  for (int64_t vb = blockIdx.x; vb < nvb; vb += gridDim.x) {  // uniform over the block
    const int64_t q = vb / a.progs;       // channel block
    const int64_t p = vb - q * a.progs;   // program: row tiles [p*r_iters, (p+1)*r_iters)
    const int64_t c = q * nC + tc;
    const bool c_ok = c < a.C;
    const A add = (has_vec && c_ok) ? ld_as<A>(a.vec.data, c * a.vec.stride, a.vec.dtype) : A(0);
    A acc = A(0);

    if (c_ok) {
      const int64_t blk1 = imin(a.n_blocks, (p + 1) * a.r_iters);
      for (int64_t blk = p * a.r_iters; blk < blk1; ++blk) {
        const int64_t o = blk / a.n_i_blocks;
        const int64_t i0 = (blk - o * a.n_i_blocks) * a.bi + tr;
        const int64_t b_in = o * a.in.s_outer + c * a.in.s_c;
        const int64_t b_out = o * a.out.s_outer + c * a.out.s_c;
        const int64_t b_m = FWD ? o * a.mask_out.s_outer + c * a.mask_out.s_c
                                : o * a.mask_in.s_outer + c * a.mask_in.s_c;
        A t[kUnroll];
        bool pos[kUnroll];
#pragma unroll
        for (int k = 0; k < kUnroll; ++k) {
          const int64_t i = i0 + static_cast<int64_t>(k) * nR;
          t[k] = A(0);
          pos[k] = false;
          if (i < a.inner) {
            t[k] = ld<T>(a.in.data, b_in + i * a.in.s_inner);
            if (!FWD && ACT != 0) {
              pos[k] = static_cast<const uint8_t*>(a.mask_in.data)[b_m + i * a.mask_in.s_inner] != 0;
            }
          }
        }
#pragma unroll
        for (int k = 0; k < kUnroll; ++k) {
          const int64_t i = i0 + static_cast<int64_t>(k) * nR;
          if (i >= a.inner) break;
          if (FWD) {
            const A v = has_vec ? t[k] + add : t[k];
            A y;
            if (ACT == 0) {
              y = v * gain;
            } else if (ACT == 1) {
              y = (v < A(0) ? A(0) : v) * gain;  // NaN stays NaN, like torch.relu
            } else {
              y = (v > A(0) ? v : v * alpha) * gain;
            }
            st<T>(a.out.data, b_out + i * a.out.s_inner, y);
            if (write_mask) {
              static_cast<uint8_t*>(a.mask_out.data)[b_m + i * a.mask_out.s_inner] =
                  static_cast<uint8_t>(v > A(0));
            }
          } else {
            A g = (has_vec ? t[k] + add : t[k]) * gain;
            if (ACT == 1) {
              g = pos[k] ? g : A(0);
            } else if (ACT == 2) {
              g = pos[k] ? g : g * alpha;
            }
            st<T>(a.out.data, b_out + i * a.out.s_inner, g);
            acc += g;
          }
        }
      }
    }

    if (!FWD && a.part != nullptr) {  // uniform
      // Fixed tree over the nR rows of each channel (nR is a power of two).
      red[tr * nC + tc] = acc;
      __syncthreads();
      for (int s = nR >> 1; s > 0; s >>= 1) {
        if (tr < s) red[tr * nC + tc] += red[(tr + s) * nC + tc];
        __syncthreads();
      }
      if (tr == 0 && c_ok) static_cast<A*>(a.part)[p * a.C + c] = red[tc];
      __syncthreads();  // red is rewritten by the next virtual block
    }
  }
}

// out[c] = sum over p of part[p * C + c], p ascending per lane, lanes combined in a fixed tree.
// Block (32, 8): threadIdx.x along C, threadIdx.y along p.
template <typename A>
__global__ void __launch_bounds__(kThreads) sum_partials_kernel(const A* part, A* out, int64_t P,
                                                                int64_t C) {
  __shared__ A red[kThreads];
  const int lanes = blockDim.y;
  const int64_t ncb = (C + blockDim.x - 1) / blockDim.x;
  for (int64_t cb = blockIdx.x; cb < ncb; cb += gridDim.x) {
    const int64_t c = cb * blockDim.x + threadIdx.x;
    A s = A(0);
    if (c < C) {
      for (int64_t p = threadIdx.y; p < P; p += lanes) s += part[p * C + c];
    }
    const int idx = threadIdx.y * blockDim.x + threadIdx.x;
    red[idx] = s;
    __syncthreads();
    for (int h = lanes >> 1; h > 0; h >>= 1) {
      if (static_cast<int>(threadIdx.y) < h) red[idx] += red[idx + h * blockDim.x];
      __syncthreads();
    }
    if (threadIdx.y == 0 && c < C) out[c] = red[threadIdx.x];
    __syncthreads();
  }
}

inline int64_t next_pow2(int64_t v) {
  int64_t p = 1;
  while (p < v) p *= 2;
  return p;
}

inline int64_t iabs(int64_t v) { return v < 0 ? -v : v; }

struct Plan {
  int64_t outer, C, inner;
  bool cl;
  int nR, nC;
  int64_t bi, n_i_blocks, n_c_blocks, n_blocks, progs, r_iters;
};

// Folds outer into inner where every view allows (rewriting their strides in place), then picks
// the block shape from the strides of the output (views[0]). Same rules as bias_act.py's
// _geometry / _config.
struct S3 { int64_t* o; int64_t* c; int64_t* i; };

Plan make_plan(const BiasActParams& p, S3* views, int count) {
  Plan pl{};
  pl.outer = p.outer;
  pl.C = p.channels;
  pl.inner = p.inner;
  if (pl.outer > 1 && pl.inner == 1) {
    pl.inner = pl.outer;
    pl.outer = 1;
    for (int k = 0; k < count; ++k) {
      *views[k].i = *views[k].o;
      *views[k].o = 0;
    }
  } else if (pl.outer > 1) {
    bool all = true;
    for (int k = 0; k < count; ++k) all = all && *views[k].o == pl.inner * *views[k].i;
    if (all) {
      pl.inner *= pl.outer;
      pl.outer = 1;
      for (int k = 0; k < count; ++k) *views[k].o = 0;
    }
  }
  const int64_t s_c = *views[0].c, s_i = *views[0].i;
  pl.cl = pl.inner == 1 || (pl.C > 1 && iabs(s_c) < iabs(s_i));
  if (pl.cl) {
    pl.nC = static_cast<int>(std::min<int64_t>(next_pow2(pl.C), 32));
    pl.nR = kThreads / pl.nC;
  } else {
    pl.nR = static_cast<int>(std::min<int64_t>(next_pow2(pl.inner), kThreads));
    pl.nC = static_cast<int>(std::min<int64_t>(next_pow2(pl.C), kThreads / pl.nR));
    if (pl.nR * pl.nC < 32) pl.nR = 32 / pl.nC;  // at least one full warp
  }
  pl.bi = static_cast<int64_t>(pl.nR) * kUnroll;
  pl.n_i_blocks = ceil_div(pl.inner, pl.bi);
  pl.n_c_blocks = ceil_div(pl.C, pl.nC);
  pl.n_blocks = pl.outer * pl.n_i_blocks;
  pl.progs = std::max<int64_t>(1, std::min(pl.n_blocks, kMaxBlocks / pl.n_c_blocks));
  pl.r_iters = std::max<int64_t>(1, ceil_div(pl.n_blocks, pl.progs));
  pl.progs = std::max<int64_t>(1, ceil_div(pl.n_blocks, pl.r_iters));
  return pl;
}

bool valid(const BiasActParams& p) {
  if (p.outer < 0 || p.channels < 0 || p.inner < 0) return false;
  return p.act == Act::Linear || p.act == Act::ReLU || p.act == Act::LReLU;
}

bool empty(const BiasActParams& p) { return p.outer == 0 || p.channels == 0 || p.inner == 0; }

// Plan of a backward call: views (dx, dy[, mask]).
Plan backward_plan(const BiasActParams& p, View3& dx, CView3& dy, CView3& mask) {
  S3 v[3] = {{&dx.s_outer, &dx.s_c, &dx.s_inner},
             {&dy.s_outer, &dy.s_c, &dy.s_inner},
             {&mask.s_outer, &mask.s_c, &mask.s_inner}};
  return make_plan(p, v, p.act == Act::Linear ? 2 : 3);
}

template <typename T, bool FWD>
cudaError_t launch(const BiasActParams& p, const Plan& pl, BAArgs a, cudaStream_t stream) {
  a.C = pl.C;
  a.inner = pl.inner;
  a.n_i_blocks = pl.n_i_blocks;
  a.n_blocks = pl.n_blocks;
  a.r_iters = pl.r_iters;
  a.progs = pl.progs;
  a.n_c_blocks = pl.n_c_blocks;
  a.bi = pl.bi;
  a.cl = pl.cl;
  a.alpha = p.alpha;
  a.gain = p.gain;
  const dim3 block = pl.cl ? dim3(pl.nC, pl.nR) : dim3(pl.nR, pl.nC);
  const unsigned grid = grid_for(pl.progs * pl.n_c_blocks);
  switch (p.act) {
    case Act::Linear: bias_act_kernel<T, 0, FWD><<<grid, block, 0, stream>>>(a); break;
    case Act::ReLU: bias_act_kernel<T, 1, FWD><<<grid, block, 0, stream>>>(a); break;
    case Act::LReLU: bias_act_kernel<T, 2, FWD><<<grid, block, 0, stream>>>(a); break;
  }
  return cudaGetLastError();
}

template <typename A>
cudaError_t launch_sum(const A* part, A* out, int64_t P, int64_t C, cudaStream_t stream) {
  const dim3 block(32, kThreads / 32);
  sum_partials_kernel<A><<<grid_for(ceil_div(C, 32)), block, 0, stream>>>(part, out, P, C);
  return cudaGetLastError();
}

}  // namespace

cudaError_t bias_act_forward(DType dtype, const BiasActParams& p, View3 y, View3 mask, CView3 x,
                             CVec b, cudaStream_t stream) {
  if (!valid(p)) return cudaErrorInvalidValue;
  if (empty(p)) return cudaSuccess;
  if (p.act == Act::Linear) mask.data = nullptr;
  S3 v[3] = {{&y.s_outer, &y.s_c, &y.s_inner},
             {&x.s_outer, &x.s_c, &x.s_inner},
             {&mask.s_outer, &mask.s_c, &mask.s_inner}};
  const Plan pl = make_plan(p, v, mask.data != nullptr ? 3 : 2);
  BAArgs a{};
  a.in = x;
  a.out = y;
  a.mask_out = mask;
  a.vec = b;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch<T, true>(p, pl, a, stream);
  });
}

size_t bias_act_backward_workspace_bytes(DType dtype, const BiasActParams& p, View3 dx,
                                         CView3 dy, CView3 mask, bool with_db) {
  if (!with_db || !valid(p) || empty(p)) return 0;
  const Plan pl = backward_plan(p, dx, dy, mask);
  if (pl.progs <= 1) return 0;
  const size_t elem = dtype == DType::Float64 ? sizeof(double) : sizeof(float);
  return static_cast<size_t>(pl.progs * pl.C) * elem;
}

cudaError_t bias_act_backward(DType dtype, const BiasActParams& p, View3 dx, void* db, CView3 dy,
                              CView3 mask, void* workspace, cudaStream_t stream) {
  if (!valid(p)) return cudaErrorInvalidValue;
  if (empty(p)) return cudaSuccess;  // db (if any) is the caller's to zero
  const Plan pl = backward_plan(p, dx, dy, mask);
  if (db != nullptr && pl.progs > 1 && workspace == nullptr) return cudaErrorInvalidValue;
  BAArgs a{};
  a.in = dy;
  a.out = dx;
  a.mask_in = mask;
  a.vec = CVec{nullptr, 0, DType::Float32};
  a.part = db == nullptr ? nullptr : (pl.progs == 1 ? db : workspace);
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    cudaError_t err = launch<T, false>(p, pl, a, stream);
    if (err != cudaSuccess || db == nullptr || pl.progs == 1) return err;
    return launch_sum<A>(static_cast<const A*>(workspace), static_cast<A*>(db), pl.progs, pl.C,
                         stream);
  });
}

cudaError_t bias_act_double_backward(DType dtype, const BiasActParams& p, View3 g_dy,
                                     CView3 gg_x, CVec gg_b, CView3 mask, cudaStream_t stream) {
  if (!valid(p)) return cudaErrorInvalidValue;
  if (empty(p)) return cudaSuccess;
  const Plan pl = backward_plan(p, g_dy, gg_x, mask);
  BAArgs a{};
  a.in = gg_x;
  a.out = g_dy;
  a.mask_in = mask;
  a.vec = gg_b;
  a.part = nullptr;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch<T, false>(p, pl, a, stream);
  });
}

}  // namespace fastgan

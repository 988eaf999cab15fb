// progan_fast compiled kernels: device code of the memory-bound PGGAN operators and their launchers.
//
// This header is compiled twice: by nvcc in kernels/progan_ops.cu with PF_CUDA defined (the real
// GPU kernels, namespace progan_fast::gpu) and by the host compiler in csrc/bindings.cpp without it
// (namespace progan_fast::emu: the very same kernel bodies run serially on CPU tensors, so the
// indexing, layout and dtype logic is tested on machines with no GPU). That is why every kernel is
// written as an independent per-work-item body inside PF_FOR (a grid-stride loop on the GPU, a plain
// loop on the CPU): no shared memory, no cooperation between threads. The one exception,
// pn_lanes_kernel (pixel norm over channel-contiguous rows), keeps its per-lane work in shared
// helpers and has a CPU twin that runs a row's lanes in turn; only its shuffle sum is GPU-only.
//
// Conventions: loads/stores in the storage type T (float, double, Half, BFloat16), math in acc_t<T>
// (double for double, float otherwise); every operand addressed through its own strides; 16-byte
// vector loads where every operand is aligned and unit-stride along the vectorized dim, a scalar
// tail otherwise. Outputs are allocated by the caller (Python), so they follow exactly the layout
// rules of the fake functions.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include <optional>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include "pf_check.h"
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#ifdef PF_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#define PF_GUARD(t) const c10::cuda::OptionalCUDAGuard pf_device_guard_((t).device())
#define PF_HD __host__ __device__ __forceinline__
#define PF_KERNEL __global__
#define PF_FOR(t, total) \
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < (total); t += (int64_t)gridDim.x * blockDim.x)
#define PF_NS gpu
#define PF_UNROLL _Pragma("unroll")
#else
#define PF_HD inline
#define PF_KERNEL static
#define PF_FOR(t, total) for (int64_t t = 0; t < (total); ++t)
#define PF_NS emu
#define PF_GUARD(t) (void)0
#define PF_UNROLL
#endif

namespace progan_fast {
namespace PF_NS {

constexpr int kThreads = 256;
constexpr int kMaxDims = 8;
enum Act : int { ACT_LINEAR = 0, ACT_RELU = 1, ACT_LRELU = 2 };
enum EwOp : int { EW_BIAS_ACT = 0, EW_BIAS_ACT_GRAD = 1, EW_LERP = 2, EW_LERP_GRAD = 3 };
enum QuadMode : int { Q_DOWN = 0, Q_DOWN_GRAD = 1, Q_UP_BLEND = 2, Q_UP_BLEND_GRAD = 3, Q_FADE = 4 };

// Launch `kernel` over `total` work items (a grid-stride loop covers what the grid cap leaves).
#ifdef PF_CUDA
template <typename K, typename... Args>
inline void launch(K kernel, int64_t total, Args... args) {
  if (total <= 0) return;
  int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t(1) << 20);
  kernel<<<(unsigned)blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
#else
template <typename K, typename... Args>
inline void launch(K kernel, int64_t total, Args... args) {
  if (total > 0) kernel(args...);
}
#endif

// ----------------------------------------------------------------------------- scalar helpers

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename T> using acc_t = typename Acc<T>::type;

template <typename T, int N> struct alignas(sizeof(T) * N) Vec { T v[N]; };

// Elements per 16-byte vector.
template <typename T> constexpr int vec_width() { return int(16 / sizeof(T)); }

template <typename T, int N>
PF_HD void load_n(const T* p, acc_t<T> (&out)[N]) {
  if constexpr (N == 1) {
    out[0] = static_cast<acc_t<T>>(p[0]);
  } else {
    Vec<T, N> v = *reinterpret_cast<const Vec<T, N>*>(p);
    PF_UNROLL
    for (int k = 0; k < N; ++k) out[k] = static_cast<acc_t<T>>(v.v[k]);
  }
}

template <typename T, int N>
PF_HD void store_n(T* p, const acc_t<T> (&in)[N]) {
  if constexpr (N == 1) {
    p[0] = static_cast<T>(in[0]);
  } else {
    Vec<T, N> v;
    PF_UNROLL
    for (int k = 0; k < N; ++k) v.v[k] = static_cast<T>(in[k]);
    *reinterpret_cast<Vec<T, N>*>(p) = v;
  }
}

// a / b in 32-bit arithmetic when the caller knows every index fits (64-bit division is slow on GPUs).
PF_HD int64_t idiv(int64_t a, int64_t b, bool small) {
  return small ? int64_t(uint32_t(a) / uint32_t(b)) : a / b;
}

template <typename A> PF_HD A act_fn(A v, int act, A slope) {
  if (act == ACT_LRELU) return v > A(0) ? v : v * slope;
  if (act == ACT_RELU) return v > A(0) ? v : A(0);
  return v;
}

// d * act'(v), with pos = (v > 0).
template <typename A> PF_HD A act_grad(A d, bool pos, int act, A slope) {
  if (act == ACT_LRELU) return pos ? d : d * slope;
  if (act == ACT_RELU) return pos ? d : A(0);
  return d;
}

template <typename A> PF_HD A rsqrt_(A v) { return A(1) / std::sqrt(v); }

// The fade factor: from a device scalar (already in the accumulation type) when given, else the float.
template <typename A> PF_HD A get_alpha(const A* alpha_ptr, A alpha) { return alpha_ptr ? *alpha_ptr : alpha; }

// A bias value: stored either in T or in the accumulation type (fp32 bias with half activations).
template <typename T> PF_HD acc_t<T> bias_at(const T* bt, const acc_t<T>* ba, int64_t off) {
  return bt ? static_cast<acc_t<T>>(bt[off]) : (ba ? ba[off] : acc_t<T>(0));
}

// ----------------------------------------------------------------------------- elementwise family
// Operand slots: in0, in1 (inputs), out0, out1 (outputs). Per op:
//   EW_BIAS_ACT       out0 = act(in0 + bias) * gain          (bias gathered along one dim)
//   EW_BIAS_ACT_GRAD  out0 = in0 * gain * act'(in1 * gain)   (in1 = saved output y; null for linear)
//   EW_LERP           out0 = in0 + (in1 - in0) * alpha
//   EW_LERP_GRAD      out0 = in0 - in0 * alpha, out1 = in0 * alpha

template <typename T> struct EwArgs {
  const T* in0; const T* in1; T* out0; T* out1;
  const T* bias_t; const acc_t<T>* bias_a;       // bias (EW_BIAS_ACT only), one of them or none
  const acc_t<T>* alpha_ptr; acc_t<T> alpha;      // lerp factor
  acc_t<T> slope, gain;
  int op, act;
};

template <typename A> PF_HD void ew_apply(int op, int act, A slope, A gain, A alpha, A i0, A i1, A& o0, A& o1) {
  switch (op) {
    case EW_BIAS_ACT: o0 = act_fn(i0 + i1, act, slope) * gain; break;
    case EW_BIAS_ACT_GRAD: o0 = act_grad(i0 * gain, i1 * gain > A(0), act, slope); break;
    case EW_LERP: o0 = i0 + (i1 - i0) * alpha; break;
    default: o0 = i0 - i0 * alpha; o1 = i0 * alpha; break;
  }
}

// One element of the flat path: gather the bias of storage offset i, then apply the op.
template <typename T>
PF_HD void ew_elem(const EwArgs<T>& a, acc_t<T> alpha, int64_t i, int64_t cstride, int64_t csize, bool small,
                   acc_t<T> i0, acc_t<T> i1, acc_t<T>& o0, acc_t<T>& o1) {
  if (a.op == EW_BIAS_ACT && (a.bias_t || a.bias_a)) {
    int64_t c = idiv(i, cstride, small);
    c = c - idiv(c, csize, small) * csize;
    i1 = bias_at(a.bias_t, a.bias_a, c);
  }
  ew_apply<acc_t<T>>(a.op, a.act, a.slope, a.gain, alpha, i0, i1, o0, o1);
}

// Every operand dense in one shared layout: a flat loop over storage. Item t < nvec handles VEC
// elements at t * VEC (16-byte loads / stores), the rest one element each (the tail). The bias
// channel of storage offset i is (i / cstride) % csize: exact for any dense layout.
template <typename T, int VEC>
PF_KERNEL void ew_flat_kernel(EwArgs<T> a, int64_t n, int64_t nvec, int64_t cstride, int64_t csize, bool small) {
  using A = acc_t<T>;
  const int64_t total = nvec + (n - nvec * VEC);
  const A alpha = get_alpha(a.alpha_ptr, a.alpha);
  PF_FOR(t, total) {
    if (t < nvec) {
      const int64_t base = t * VEC;
      A i0[VEC], i1[VEC] = {}, o0[VEC] = {}, o1[VEC] = {};
      load_n<T, VEC>(a.in0 + base, i0);
      if (a.in1) load_n<T, VEC>(a.in1 + base, i1);
      PF_UNROLL
      for (int k = 0; k < VEC; ++k) ew_elem(a, alpha, base + k, cstride, csize, small, i0[k], i1[k], o0[k], o1[k]);
      store_n<T, VEC>(a.out0 + base, o0);
      if (a.out1) store_n<T, VEC>(a.out1 + base, o1);
    } else {
      const int64_t i = nvec * VEC + (t - nvec);
      A o0 = A(0), o1 = A(0);
      ew_elem(a, alpha, i, cstride, csize, small, static_cast<A>(a.in0[i]), a.in1 ? static_cast<A>(a.in1[i]) : A(0),
              o0, o1);
      a.out0[i] = static_cast<T>(o0);
      if (a.out1) a.out1[i] = static_cast<T>(o1);
    }
  }
}

// Any strides (broadcast, sliced, mixed layouts): one element per item, the logical index split over
// up to kMaxDims dims ordered by the first output's strides (outermost first). The bias is an
// operand with stride 0 except along its dim. Slots: 0 in0, 1 in1, 2 out0, 3 out1, 4 bias.
struct NdGeom {
  int ndim;
  int64_t size[kMaxDims];
  int64_t stride[5][kMaxDims];
};

template <typename T>
PF_KERNEL void ew_nd_kernel(EwArgs<T> a, NdGeom g, int64_t n, bool small) {
  using A = acc_t<T>;
  A alpha = get_alpha(a.alpha_ptr, a.alpha);
  PF_FOR(t, n) {
    int64_t off[5] = {0, 0, 0, 0, 0};
    int64_t rem = t;
    for (int d = g.ndim - 1; d >= 0; --d) {
      int64_t q = idiv(rem, g.size[d], small);
      int64_t i = rem - q * g.size[d];
      rem = q;
      for (int s = 0; s < 5; ++s) off[s] += i * g.stride[s][d];
    }
    A i0 = static_cast<A>(a.in0[off[0]]);
    A i1 = a.in1 ? static_cast<A>(a.in1[off[1]]) : A(0);
    if (a.op == EW_BIAS_ACT) i1 = bias_at(a.bias_t, a.bias_a, off[4]);
    A o0 = A(0), o1 = A(0);
    ew_apply<A>(a.op, a.act, a.slope, a.gain, alpha, i0, i1, o0, o1);
    a.out0[off[2]] = static_cast<T>(o0);
    if (a.out1) a.out1[off[3]] = static_cast<T>(o1);
  }
}

// The bias-act gradient with its bias gradient in the same pass, for operands laid out as dense
// [rows x cols] with the bias along the unit-stride cols (channels_last activations, 2-D [N, C]).
// Work item t = (row block rb, column c): dx over the block's rows, and the sum of those dx values
// (before rounding to T) into part[rb * cols + c]. Adjacent items are adjacent columns, so every
// load and store stays coalesced; the caller sums part over the blocks (deterministic, no atomics).
template <typename T>
PF_KERNEL void bias_grad_cols_kernel(const T* dy, const T* y, T* dx, acc_t<T>* part, int64_t rows, int64_t cols,
                                     int64_t rows_per_block, int act, acc_t<T> slope, acc_t<T> gain) {
  using A = acc_t<T>;
  const int64_t nblocks = (rows + rows_per_block - 1) / rows_per_block;
  PF_FOR(t, nblocks * cols) {
    const int64_t rb = t / cols;
    const int64_t c = t - rb * cols;
    const int64_t r1 = (rb + 1) * rows_per_block < rows ? (rb + 1) * rows_per_block : rows;
    A acc = A(0);
    for (int64_t r = rb * rows_per_block; r < r1; ++r) {
      const int64_t i = r * cols + c;
      const A yv = y ? static_cast<A>(y[i]) : A(0);
      const A d = act_grad(static_cast<A>(dy[i]) * gain, yv * gain > A(0), act, slope);  // as EW_BIAS_ACT_GRAD
      dx[i] = static_cast<T>(d);
      acc += d;
    }
    part[t] = acc;
  }
}

// ----------------------------------------------------------------------------- 2x2 resampling
// One kernel for every 2x2 op, iterating over the low-resolution grid; each low-res position owns a
// 2x2 quad of high-res taps. Dims are ordered by the high-res tensor's layout; hi strides are doubled
// along H, W and (dh, dw) step to the quad's second row / column. Slots: 0 hi_in, 1 lo_in, 2 hi_out,
// 3 lo_out. Modes:
//   Q_DOWN           lo_out = mean(hi_in quad)
//   Q_DOWN_GRAD      hi_out quad = lo_in / 4
//   Q_UP_BLEND       hi_out quad = lo_in + (hi_in - lo_in) * alpha
//   Q_UP_BLEND_GRAD  hi_out quad = hi_in * alpha;  lo_out = sum(hi_in quad) * (1 - alpha)
//   Q_FADE           hi_out quad = l + (hi_in - l) * alpha,  l = mean(hi_in quad)
struct QuadGeom {
  int64_t size[4];        // low-res sizes in hi memory order (innermost last)
  int64_t stride[4][4];   // per slot, per ordered dim
  int64_t dh[4], dw[4];   // per slot (hi slots only)
};

template <typename T> struct QuadArgs {
  const T* hi_in; const T* lo_in; T* hi_out; T* lo_out;
  const acc_t<T>* alpha_ptr; acc_t<T> alpha;
  int mode;
};

// VEC > 1 only when the innermost ordered dim has unit stride in every operand (channels_last:
// the channel dim) and every other stride and the innermost size are multiples of VEC.
template <typename T, int VEC>
PF_KERNEL void quad_kernel(QuadArgs<T> a, QuadGeom g, int64_t total, bool small) {
  using A = acc_t<T>;
  const A al = get_alpha(a.alpha_ptr, a.alpha);
  const int64_t inner = g.size[3] / VEC;
  PF_FOR(t, total) {
    int64_t idx[4];
    int64_t q = idiv(t, inner, small);
    idx[3] = (t - q * inner) * VEC;
    int64_t q2 = idiv(q, g.size[2], small);
    idx[2] = q - q2 * g.size[2];
    int64_t q1 = idiv(q2, g.size[1], small);
    idx[1] = q2 - q1 * g.size[1];
    idx[0] = q1;
    int64_t off[4];
    for (int s = 0; s < 4; ++s)
      off[s] = idx[0] * g.stride[s][0] + idx[1] * g.stride[s][1] + idx[2] * g.stride[s][2] + idx[3] * g.stride[s][3];
    A t00[VEC] = {}, t01[VEC] = {}, t10[VEC] = {}, t11[VEC] = {}, lo[VEC] = {};
    if (a.mode != Q_DOWN_GRAD) {
      const T* h = a.hi_in + off[0];
      load_n<T, VEC>(h, t00);
      load_n<T, VEC>(h + g.dw[0], t01);
      load_n<T, VEC>(h + g.dh[0], t10);
      load_n<T, VEC>(h + g.dh[0] + g.dw[0], t11);
    }
    if (a.mode == Q_DOWN_GRAD || a.mode == Q_UP_BLEND) load_n<T, VEC>(a.lo_in + off[1], lo);
    if (a.mode == Q_DOWN || a.mode == Q_UP_BLEND_GRAD) {
      A r[VEC];
      const A scale = a.mode == Q_DOWN ? A(0.25) : A(1) - al;
      for (int k = 0; k < VEC; ++k) {
        A s = t00[k] + t01[k] + t10[k] + t11[k];
        r[k] = a.mode == Q_DOWN ? s * scale : s - s * al;
      }
      store_n<T, VEC>(a.lo_out + off[3], r);
    }
    if (a.mode == Q_DOWN) continue;
    A o00[VEC], o01[VEC], o10[VEC], o11[VEC];
    for (int k = 0; k < VEC; ++k) {
      if (a.mode == Q_DOWN_GRAD) {
        // Round once, as the reference does: every tap gets the same stored value.
        A v = static_cast<A>(static_cast<T>(lo[k] * A(0.25)));
        o00[k] = o01[k] = o10[k] = o11[k] = v;
      } else if (a.mode == Q_UP_BLEND_GRAD) {
        o00[k] = t00[k] * al; o01[k] = t01[k] * al; o10[k] = t10[k] * al; o11[k] = t11[k] * al;
      } else {
        A l = a.mode == Q_UP_BLEND ? lo[k] : (t00[k] + t01[k] + t10[k] + t11[k]) * A(0.25);
        o00[k] = l + (t00[k] - l) * al; o01[k] = l + (t01[k] - l) * al;
        o10[k] = l + (t10[k] - l) * al; o11[k] = l + (t11[k] - l) * al;
      }
    }
    T* o = a.hi_out + off[2];
    store_n<T, VEC>(o, o00);
    store_n<T, VEC>(o + g.dw[2], o01);
    store_n<T, VEC>(o + g.dh[2], o10);
    store_n<T, VEC>(o + g.dh[2] + g.dw[2], o11);
  }
}

// ----------------------------------------------------------------------------- pixel norm family
// Over the [O, C, I] view of every operand (C = the normalized dim), one item per (o, i) row loops
// over C twice (sums, then outputs; the second read hits L1/L2). With C-innermost operands (channels_last,
// 2-D latents) the loop uses VEC-wide loads along C.
//   fwd: y = z * rsqrt(mean_C(z^2) + eps),  z = act(x + b) * gain
//   bwd: dx = gain * act'(x + b) * (r * g - r^3 * z * mean_C(g * z))
struct PnGeom {
  int64_t O, C, I;
  int64_t s[3][3];  // per slot (0 x, 1 dy or unused, 2 out), strides (sO, sC, sI)
  int64_t bs;       // bias stride
};

template <typename T> struct PnArgs {
  const T* x; const T* dy; T* out;
  const T* bias_t; const acc_t<T>* bias_a;
  acc_t<T> slope, gain, eps;
  int act;
};

// The row of work item `row` of the [O, I] grid: its x, dy (backward) and output pointers.
template <typename T>
PF_HD void pn_row(const PnArgs<T>& a, const PnGeom& g, int64_t row, bool small, const T*& xp, const T*& gp, T*& yp) {
  const int64_t o = idiv(row, g.I, small);
  const int64_t i = row - o * g.I;
  xp = a.x + o * g.s[0][0] + i * g.s[0][2];
  gp = a.dy ? a.dy + o * g.s[1][0] + i * g.s[1][2] : nullptr;
  yp = a.out + o * g.s[2][0] + i * g.s[2][2];
}

// z = act(x + b) * gain at channel c (u = x + b, for the activation's gradient).
template <typename T>
PF_HD acc_t<T> pn_z(const PnArgs<T>& a, const PnGeom& g, acc_t<T> v, int64_t c, acc_t<T>& u) {
  u = v + ((a.bias_t || a.bias_a) ? bias_at(a.bias_t, a.bias_a, c * g.bs) : acc_t<T>(0));
  return act_fn(u, a.act, a.slope) * a.gain;
}

// Adds channels [c, c + VEC) of a row to the sums: szz += z^2, sgz += dy * z (backward).
template <typename T, int VEC, bool BWD>
PF_HD void pn_sums(const PnArgs<T>& a, const PnGeom& g, const T* xp, const T* gp, int64_t c, acc_t<T>& szz,
                   acc_t<T>& sgz) {
  using A = acc_t<T>;
  A v[VEC], gv[VEC];
  load_n<T, VEC>(xp + c * g.s[0][1], v);
  if (BWD) load_n<T, VEC>(gp + c * g.s[1][1], gv);
  for (int k = 0; k < VEC; ++k) {
    A u;
    const A z = pn_z(a, g, v[k], c + k, u);
    szz += z * z;
    if (BWD) sgz += gv[k] * z;
  }
}

// r = rsqrt(mean(z^2) + eps) and, for the backward, kk = r^3 * mean(dy * z).
template <typename A> PF_HD void pn_factors(A szz, A sgz, int64_t C, A eps, A& r, A& kk) {
  r = rsqrt_(szz / A(C) + eps);
  kk = r * r * r * (sgz / A(C));
}

// Writes channels [c, c + VEC) of a row's output (forward z * r, or the backward's dx).
template <typename T, int VEC, bool BWD>
PF_HD void pn_write(const PnArgs<T>& a, const PnGeom& g, const T* xp, const T* gp, T* yp, int64_t c, acc_t<T> r,
                    acc_t<T> kk) {
  using A = acc_t<T>;
  A v[VEC], gv[VEC], out[VEC];
  load_n<T, VEC>(xp + c * g.s[0][1], v);
  if (BWD) load_n<T, VEC>(gp + c * g.s[1][1], gv);
  for (int k = 0; k < VEC; ++k) {
    A u;
    const A z = pn_z(a, g, v[k], c + k, u);
    out[k] = BWD ? act_grad((gv[k] * r - z * kk) * a.gain, u > A(0), a.act, a.slope) : z * r;
  }
  store_n<T, VEC>(yp + c * g.s[2][1], out);
}

// Lane `lane` of `lanes` sharing a row takes the VEC-wide chunks lane, lane + lanes, ... of its C
// channels: its part of the sums, then its part of the output.
template <typename T, int VEC, bool BWD>
PF_HD void pn_lane_sums(const PnArgs<T>& a, const PnGeom& g, const T* xp, const T* gp, int lane, int lanes,
                        acc_t<T>& szz, acc_t<T>& sgz) {
  for (int64_t c = int64_t(lane) * VEC; c < g.C; c += int64_t(lanes) * VEC) pn_sums<T, VEC, BWD>(a, g, xp, gp, c, szz, sgz);
}

template <typename T, int VEC, bool BWD>
PF_HD void pn_lane_write(const PnArgs<T>& a, const PnGeom& g, const T* xp, const T* gp, T* yp, int lane, int lanes,
                         acc_t<T> r, acc_t<T> kk) {
  for (int64_t c = int64_t(lane) * VEC; c < g.C; c += int64_t(lanes) * VEC) pn_write<T, VEC, BWD>(a, g, xp, gp, yp, c, r, kk);
}

// One thread per row (the only lane of it), over C twice (sums, then outputs; the second read hits
// L1/L2). Used where the rows are adjacent in memory (NCHW: a warp's loads are adjacent pixels of
// one channel).
template <typename T, int VEC, bool BWD>
PF_KERNEL void pn_kernel(PnArgs<T> a, PnGeom g, bool small) {
  using A = acc_t<T>;
  PF_FOR(t, g.O * g.I) {
    const T* xp; const T* gp; T* yp;
    pn_row(a, g, t, small, xp, gp, yp);
    A szz = 0, sgz = 0, r, kk;
    pn_lane_sums<T, VEC, BWD>(a, g, xp, gp, 0, 1, szz, sgz);
    pn_factors(szz, sgz, g.C, a.eps, r, kk);
    pn_lane_write<T, VEC, BWD>(a, g, xp, gp, yp, 0, 1, r, kk);
  }
}

// Channel-contiguous rows (channels_last activations, 2-D latents; every operand's channel stride
// is 1): a group of `lanes` threads (a power of two <= 32) shares one row, lane l taking the chunks
// of VEC channels at l, l + lanes, ...; a group's loads are contiguous, where one thread per row
// made a warp's loads a row (C elements) apart: 11-13 % of copy bandwidth on an H100. The sums meet
// through warp shuffles on the GPU; the CPU build runs the lanes of a row one after another and
// adds their sums: the same per-lane code, in another summation order.
#ifdef PF_CUDA
template <typename T, int VEC, bool BWD>
__global__ void pn_lanes_kernel(PnArgs<T> a, PnGeom g, int lanes, bool small) {
  using A = acc_t<T>;
  const int64_t rows = g.O * g.I;
  const int per_block = blockDim.x / lanes;
  const int lane = threadIdx.x % lanes;
  // Every thread runs every iteration (the shuffles need the whole warp); threads past the last
  // row add zeros and write nothing.
  for (int64_t base = (int64_t)blockIdx.x * per_block; base < rows; base += (int64_t)gridDim.x * per_block) {
    const int64_t row = base + threadIdx.x / lanes;
    const bool valid = row < rows;
    const T* xp = nullptr; const T* gp = nullptr; T* yp = nullptr;
    A szz = 0, sgz = 0, r, kk;
    if (valid) {
      pn_row(a, g, row, small, xp, gp, yp);
      pn_lane_sums<T, VEC, BWD>(a, g, xp, gp, lane, lanes, szz, sgz);
    }
    for (int off = lanes / 2; off > 0; off /= 2) {
      szz += __shfl_xor_sync(0xffffffffu, szz, off, lanes);
      if (BWD) sgz += __shfl_xor_sync(0xffffffffu, sgz, off, lanes);
    }
    if (valid) {
      pn_factors(szz, sgz, g.C, a.eps, r, kk);
      pn_lane_write<T, VEC, BWD>(a, g, xp, gp, yp, lane, lanes, r, kk);
    }
  }
}
#else
template <typename T, int VEC, bool BWD>
static void pn_lanes_kernel(PnArgs<T> a, PnGeom g, int lanes, bool small) {
  using A = acc_t<T>;
  for (int64_t row = 0; row < g.O * g.I; ++row) {
    const T* xp; const T* gp; T* yp;
    pn_row(a, g, row, small, xp, gp, yp);
    A szz = 0, sgz = 0, r, kk;
    for (int lane = 0; lane < lanes; ++lane) {
      A lane_szz = 0, lane_sgz = 0;
      pn_lane_sums<T, VEC, BWD>(a, g, xp, gp, lane, lanes, lane_szz, lane_sgz);
      szz += lane_szz;
      sgz += lane_sgz;
    }
    pn_factors(szz, sgz, g.C, a.eps, r, kk);
    for (int lane = 0; lane < lanes; ++lane) pn_lane_write<T, VEC, BWD>(a, g, xp, gp, yp, lane, lanes, r, kk);
  }
}
#endif

// Lanes per row for pn_lanes_kernel: one per VEC-wide chunk of C, rounded up to a power of two, <= 32.
inline int pn_lanes(int64_t C, int vec) {
  const int64_t chunks = (C + vec - 1) / vec;
  int lanes = 1;
  while (lanes < 32 && lanes < chunks) lanes *= 2;
  return lanes;
}

// ----------------------------------------------------------------------------- minibatch stddev
// Groups are strided: group m holds samples g * M + m, g < G. The per-sample index j < L = C*H*W is
// split over the per-sample dims in x's memory order (sizes S[0..2]); each operand has its own
// per-sample strides (ps) and sample stride (ns).
struct MbGeom {
  int64_t M, G, L, C, H, W;
  int64_t S[3];
  int64_t ns[3], ps[3][3];   // per slot (0 x, 1 out / dy, 2 dx)
  int64_t cs[3][3];          // per slot: strides of the (C, H, W) dims, for the stat channel
  int64_t P, chunk;          // partial sums: P chunks of `chunk` elements per group
};

PF_HD void mb_split(const MbGeom& g, int64_t j, bool small, int64_t (&idx)[3]) {
  int64_t q = idiv(j, g.S[2], small);
  idx[2] = j - q * g.S[2];
  int64_t q2 = idiv(q, g.S[1], small);
  idx[1] = q - q2 * g.S[1];
  idx[0] = q2;
}

PF_HD int64_t mb_off(const MbGeom& g, int slot, const int64_t (&idx)[3]) {
  return idx[0] * g.ps[slot][0] + idx[1] * g.ps[slot][1] + idx[2] * g.ps[slot][2];
}

// Element t of the M x L statistics grid: returns its group m and fills its (c, h, w) index.
PF_HD int64_t mb_locate(const MbGeom& g, int64_t t, bool small, int64_t (&idx)[3]) {
  const int64_t m = idiv(t, g.L, small);
  mb_split(g, t - m * g.L, small, idx);
  return m;
}

// Population variance of group m's values at offset xo, given their mean (a second pass: stable).
template <typename T>
PF_HD acc_t<T> mb_var(const T* x, const MbGeom& g, int64_t m, int64_t xo, acc_t<T> mean) {
  using A = acc_t<T>;
  A var = 0;
  for (int64_t k = 0; k < g.G; ++k) {
    A d = static_cast<A>(x[(k * g.M + m) * g.ns[0] + xo]) - mean;
    var += d * d;
  }
  return var / A(g.G);
}

// Copy x into out[:, :C] and write each element's group stddev to sd[m * L + j].
template <typename T>
PF_KERNEL void mb_fwd_kernel(const T* x, T* out, acc_t<T>* sd, MbGeom g, acc_t<T> eps, bool small) {
  using A = acc_t<T>;
  PF_FOR(t, g.M * g.L) {
    int64_t idx[3];
    const int64_t m = mb_locate(g, t, small, idx);
    const int64_t xo = mb_off(g, 0, idx), oo = mb_off(g, 1, idx);
    A mean = 0;
    for (int64_t k = 0; k < g.G; ++k) {
      const int64_t n = k * g.M + m;
      T v = x[n * g.ns[0] + xo];
      out[n * g.ns[1] + oo] = v;
      mean += static_cast<A>(v);
    }
    mean /= A(g.G);
    sd[t] = std::sqrt(mb_var(x, g, m, xo, mean) + eps);
  }
}

// part[m * P + p] = sum of sd over chunk p of group m (fixed order: deterministic).
template <typename A>
PF_KERNEL void mb_partial_kernel(const A* sd, A* part, MbGeom g) {
  PF_FOR(t, g.M * g.P) {
    const int64_t m = t / g.P, p = t - m * g.P;
    const int64_t lo = p * g.chunk, hi = lo + g.chunk < g.L ? lo + g.chunk : g.L;
    A s = 0;
    for (int64_t j = lo; j < hi; ++j) s += sd[m * g.L + j];
    part[t] = s;
  }
}

// out[n, C, h, w] = (sum of group m's partials) / L, m = n % M.
template <typename T>
PF_KERNEL void mb_fill_kernel(const acc_t<T>* part, T* out, MbGeom g) {
  using A = acc_t<T>;
  const int64_t hw = g.H * g.W;
  PF_FOR(t, g.M * g.G * hw) {
    const int64_t n = t / hw, r = t - n * hw;
    const int64_t h = r / g.W, w = r - h * g.W;
    const int64_t m = n % g.M;
    A s = 0;
    for (int64_t p = 0; p < g.P; ++p) s += part[m * g.P + p];
    out[n * g.ns[1] + g.C * g.cs[1][0] + h * g.cs[1][1] + w * g.cs[1][2]] = static_cast<T>(s / A(g.L));
  }
}

// gs[m] = sum over group m and H, W of the stat channel's upstream gradient dy[:, C].
template <typename T>
PF_KERNEL void mb_gsum_kernel(const T* dy, acc_t<T>* gs, MbGeom g) {
  using A = acc_t<T>;
  const int64_t hw = g.H * g.W;
  PF_FOR(m, g.M) {
    A s = 0;
    for (int64_t k = 0; k < g.G; ++k) {
      const T* base = dy + (k * g.M + m) * g.ns[1] + g.C * g.cs[1][0];
      for (int64_t r = 0; r < hw; ++r) {
        const int64_t h = r / g.W, w = r - h * g.W;
        s += static_cast<A>(base[h * g.cs[1][1] + w * g.cs[1][2]]);
      }
    }
    gs[m] = s;
  }
}

// dx = dy[:, :C] + gs[m] / (L * G) * (x - mean_g) / std_g.
template <typename T>
PF_KERNEL void mb_bwd_kernel(const T* dy, const T* x, T* dx, const acc_t<T>* gs, MbGeom g, acc_t<T> eps, bool small) {
  using A = acc_t<T>;
  PF_FOR(t, g.M * g.L) {
    int64_t idx[3];
    const int64_t m = mb_locate(g, t, small, idx);
    const int64_t xo = mb_off(g, 0, idx), go = mb_off(g, 1, idx), eo = mb_off(g, 2, idx);
    A mean = 0;
    for (int64_t k = 0; k < g.G; ++k) mean += static_cast<A>(x[(k * g.M + m) * g.ns[0] + xo]);
    mean /= A(g.G);
    const A coef = gs[m] / (A(g.L) * A(g.G)) / std::sqrt(mb_var(x, g, m, xo, mean) + eps);
    for (int64_t k = 0; k < g.G; ++k) {
      const int64_t n = k * g.M + m;
      A d = static_cast<A>(x[n * g.ns[0] + xo]) - mean;
      dx[n * g.ns[2] + eo] = static_cast<T>(static_cast<A>(dy[n * g.ns[1] + go]) + coef * d);
    }
  }
}

// ============================================================================= host launchers
// Called from csrc/bindings.cpp after its input checks; outputs are preallocated by the caller.

using at::Tensor;
using OptT = std::optional<Tensor>;
constexpr int64_t kI32 = (int64_t(1) << 31) - 1;

inline int64_t max_offset(const Tensor& t) {
  int64_t m = 0;
  for (int64_t d = 0; d < t.dim(); ++d)
    if (t.size(d) > 0) m += (t.size(d) - 1) * std::abs(t.stride(d));
  return m;
}

inline bool fits_i32(std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    if (t && t->defined() && (t->numel() > kI32 || max_offset(*t) > kI32)) return false;
  return true;
}

inline bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Dims from outermost to innermost in memory (largest stride first; ties keep logical order).
inline std::vector<int64_t> dim_order(const Tensor& t, const std::vector<int64_t>& dims) {
  std::vector<int64_t> order(dims);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return t.stride(a) > t.stride(b); });
  return order;
}

inline at::ScalarType acc_type(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

template <typename T> inline const T* cptr(const Tensor& t) { return t.defined() ? t.const_data_ptr<T>() : nullptr; }
template <typename T> inline T* mptr(const Tensor& t) { return t.defined() ? t.mutable_data_ptr<T>() : nullptr; }

// The fade factor as a 0-d tensor in the accumulation type on `like`'s device (no host sync).
inline Tensor alpha_tensor(const OptT& alpha_t, const Tensor& like) {
  if (!alpha_t.has_value() || !alpha_t->defined()) return Tensor();
  return alpha_t->reshape({}).to(like.device(), acc_type(like.scalar_type()));
}

// A bias in the storage type (bias_t) when it matches x, else in the accumulation type (bias_a).
inline std::pair<Tensor, Tensor> split_bias(const OptT& b, const Tensor& x) {
  if (!b.has_value() || !b->defined()) return {Tensor(), Tensor()};
  if (b->scalar_type() == x.scalar_type()) return {*b, Tensor()};
  return {Tensor(), b->to(acc_type(x.scalar_type()))};
}

inline bool same_dense(const Tensor& ref, std::initializer_list<const Tensor*> ts) {
  if (!ref.is_non_overlapping_and_dense()) return false;
  for (const Tensor* t : ts)
    if (t && t->defined() && (t->sizes() != ref.sizes() || t->strides() != ref.strides())) return false;
  return true;
}

// Elementwise family (see EwOp). `bias` only for EW_BIAS_ACT, broadcast along `dim`.
inline void elementwise(int op, const Tensor& in0, const Tensor& in1, const Tensor& out0, const Tensor& out1,
                        const OptT& bias, int64_t dim, int act, double slope, double gain,
                        const OptT& alpha_t, double alpha) {
  PF_GUARD(out0);
  if (out0.numel() == 0) return;
  Tensor al = alpha_tensor(alpha_t, out0);
  Tensor bt, ba;
  std::tie(bt, ba) = split_bias(bias, out0);
  const bool small = fits_i32({&in0, &in1, &out0, &out1});
  const bool flat = same_dense(out0, {&in0, &in1, &out1});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out0.scalar_type(), "progan_fast_elementwise", [&] {
    using A = acc_t<scalar_t>;
    EwArgs<scalar_t> a{cptr<scalar_t>(in0), cptr<scalar_t>(in1), mptr<scalar_t>(out0), mptr<scalar_t>(out1),
                       cptr<scalar_t>(bt), cptr<A>(ba), cptr<A>(al), A(alpha), A(slope), A(gain), op, act};
    if (flat) {
      constexpr int V = vec_width<scalar_t>();
      const int64_t n = out0.numel();
      const bool vec = aligned16(a.in0) && aligned16(a.in1) && aligned16(a.out0) && aligned16(a.out1);
      const int64_t cstride = op == EW_BIAS_ACT ? std::max<int64_t>(out0.stride(dim), 1) : 1;
      const int64_t csize = op == EW_BIAS_ACT ? out0.size(dim) : 1;
      if (vec) {
        launch(ew_flat_kernel<scalar_t, V>, n / V + n % V, a, n, n / V, cstride, csize, small);
      } else {
        launch(ew_flat_kernel<scalar_t, 1>, n, a, n, n, cstride, csize, small);
      }
      return;
    }
    std::vector<int64_t> dims;
    for (int64_t d = 0; d < out0.dim(); ++d)
      if (out0.size(d) != 1) dims.push_back(d);
    dims = dim_order(out0, dims);
    PF_CHECK(int64_t(dims.size()) <= kMaxDims, "progan_fast: at most ", kMaxDims, " non-unit dims supported, got ",
                dims.size());
    NdGeom g{};
    g.ndim = int(dims.size());
    const Tensor* slots[4] = {&in0, &in1, &out0, &out1};
    for (int k = 0; k < g.ndim; ++k) {
      const int64_t d = dims[k];
      g.size[k] = out0.size(d);
      for (int s = 0; s < 4; ++s) g.stride[s][k] = slots[s]->defined() ? slots[s]->stride(d) : 0;
      const Tensor& bb = bt.defined() ? bt : ba;
      g.stride[4][k] = (bb.defined() && d == dim) ? bb.stride(0) : 0;
    }
    launch(ew_nd_kernel<scalar_t>, out0.numel(), a, g, out0.numel(), small);
  });
}

// dx = bias_act_grad(dy, y) and part[rb, c] = its fp32 sums over row blocks of `rows_per_block`
// (bias_grad_cols_kernel). The caller guarantees dy, y (optional), dx dense with equal strides and
// the bias dim of unit stride, so memory is [numel / cols x cols]; part is [ceil(rows / rpb), cols].
inline void bias_grad_cols(const Tensor& dy, const Tensor& y, const Tensor& dx, const Tensor& part, int64_t cols,
                           int64_t rows_per_block, int act, double slope, double gain) {
  PF_GUARD(dx);
  if (dx.numel() == 0) return;
  const int64_t rows = dx.numel() / cols;
  const int64_t nblocks = (rows + rows_per_block - 1) / rows_per_block;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dx.scalar_type(), "progan_fast_bias_grad_cols", [&] {
    using A = acc_t<scalar_t>;
    launch(bias_grad_cols_kernel<scalar_t>, nblocks * cols, cptr<scalar_t>(dy), cptr<scalar_t>(y),
           mptr<scalar_t>(dx), mptr<A>(part), rows, cols, rows_per_block, act, A(slope), A(gain));
  });
}

// 2x2 resampling family (see QuadMode); undefined tensors are unused slots.
inline void quad(int mode, const Tensor& hi_in, const Tensor& lo_in, const Tensor& hi_out, const Tensor& lo_out,
                 const OptT& alpha_t, double alpha) {
  const Tensor& ref = hi_out.defined() ? hi_out : hi_in;
  PF_GUARD(ref);
  if (ref.numel() == 0) return;
  Tensor al = alpha_tensor(alpha_t, ref);
  const auto order = dim_order(ref, {0, 1, 2, 3});
  QuadGeom g{};
  const Tensor* slots[4] = {&hi_in, &lo_in, &hi_out, &lo_out};
  const bool is_hi[4] = {true, false, true, false};
  for (int k = 0; k < 4; ++k) {
    const int64_t d = order[k];
    g.size[k] = (d >= 2) ? ref.size(d) / 2 : ref.size(d);
    for (int s = 0; s < 4; ++s) {
      const Tensor& t = *slots[s];
      g.stride[s][k] = !t.defined() ? 0 : (is_hi[s] && d >= 2 ? 2 * t.stride(d) : t.stride(d));
    }
  }
  for (int s = 0; s < 4; ++s) {
    g.dh[s] = (is_hi[s] && slots[s]->defined()) ? slots[s]->stride(2) : 0;
    g.dw[s] = (is_hi[s] && slots[s]->defined()) ? slots[s]->stride(3) : 0;
  }
  const int64_t total = g.size[0] * g.size[1] * g.size[2] * g.size[3];
  const bool small = fits_i32({&hi_in, &lo_in, &hi_out, &lo_out});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ref.scalar_type(), "progan_fast_quad", [&] {
    using A = acc_t<scalar_t>;
    QuadArgs<scalar_t> a{cptr<scalar_t>(hi_in), cptr<scalar_t>(lo_in), mptr<scalar_t>(hi_out),
                         mptr<scalar_t>(lo_out), cptr<A>(al), A(alpha), mode};
    constexpr int V = vec_width<scalar_t>();
    bool vec = V > 1 && g.size[3] % V == 0 && aligned16(a.hi_in) && aligned16(a.lo_in) && aligned16(a.hi_out) &&
               aligned16(a.lo_out);
    for (int s = 0; s < 4 && vec; ++s) {
      if (!slots[s]->defined()) continue;
      vec = g.stride[s][3] == 1 && g.stride[s][0] % V == 0 && g.stride[s][1] % V == 0 && g.stride[s][2] % V == 0 &&
            g.dh[s] % V == 0 && g.dw[s] % V == 0;
    }
    if (vec) {
      launch(quad_kernel<scalar_t, V>, total / V, a, g, total / V, small);
    } else {
      launch(quad_kernel<scalar_t, 1>, total, a, g, total, small);
    }
  });
}

// Plan the [O, C, I] view of every operand for a reduction over `dim`: the other dims, ordered by
// the output's strides, dropping size-1 dims and merging neighbours contiguous in every operand.
// Returns false when they do not merge into two.
inline bool plan_reduction(const std::vector<const Tensor*>& ts, const Tensor& out, int64_t dim, PnGeom& g) {
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < out.dim(); ++d)
    if (d != dim && out.size(d) != 1) dims.push_back(d);
  dims = dim_order(out, dims);
  std::vector<int64_t> sizes;
  std::vector<std::vector<int64_t>> st(ts.size());
  for (int64_t d : dims) {
    sizes.push_back(out.size(d));
    for (size_t k = 0; k < ts.size(); ++k) st[k].push_back(ts[k]->defined() ? ts[k]->stride(d) : 0);
  }
  for (int64_t i = int64_t(sizes.size()) - 1; i > 0; --i) {
    bool ok = true;
    for (auto& s : st) ok = ok && s[i - 1] == s[i] * sizes[i];
    if (!ok) continue;
    sizes[i] *= sizes[i - 1];
    sizes.erase(sizes.begin() + (i - 1));
    for (auto& s : st) s.erase(s.begin() + (i - 1));
  }
  if (sizes.size() > 2) return false;
  while (sizes.size() < 2) {
    sizes.insert(sizes.begin(), 1);
    for (auto& s : st) s.insert(s.begin(), 0);
  }
  g.O = sizes[0];
  g.I = sizes[1];
  g.C = out.size(dim);
  for (size_t k = 0; k < ts.size(); ++k) {
    g.s[k][0] = st[k][0];
    g.s[k][1] = ts[k]->defined() ? ts[k]->stride(dim) : 0;
    g.s[k][2] = st[k][1];
  }
  return true;
}

// Pixel norm family: fwd out = pn(act(x + b) * gain); bwd (dy given) out = its vector-Jacobian product.
inline void pixel_norm(const Tensor& x, const Tensor& dy, const OptT& bias, const Tensor& out, int64_t dim, int act,
                       double slope, double gain, double eps) {
  PF_GUARD(out);
  if (out.numel() == 0) return;
  PnGeom g{};
  if (!plan_reduction({&x, &dy, &out}, out, dim, g)) {
    // Layouts too unlike to share one [O, C, I] view (rare): run on dense copies.
    Tensor tmp = at::empty_like(out, at::MemoryFormat::Contiguous);
    pixel_norm(x.contiguous(), dy.defined() ? dy.contiguous() : dy, bias, tmp, dim, act, slope, gain, eps);
    out.copy_(tmp);
    return;
  }
  Tensor bt, ba;
  std::tie(bt, ba) = split_bias(bias, out);
  g.bs = bt.defined() ? bt.stride(0) : (ba.defined() ? ba.stride(0) : 0);
  const bool small = fits_i32({&x, &dy, &out});
  const bool bwd = dy.defined();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "progan_fast_pixel_norm", [&] {
    using A = acc_t<scalar_t>;
    PnArgs<scalar_t> a{cptr<scalar_t>(x), cptr<scalar_t>(dy), mptr<scalar_t>(out), cptr<scalar_t>(bt), cptr<A>(ba),
                       A(slope), A(gain), A(eps), act};
    constexpr int V = vec_width<scalar_t>();
    bool vec = V > 1 && g.C % V == 0 && aligned16(a.x) && aligned16(a.dy) && aligned16(a.out);
    for (int s = 0; s < 3 && vec; ++s) {
      if (s == 1 && !bwd) continue;
      vec = g.s[s][1] == 1 && g.s[s][0] % V == 0 && g.s[s][2] % V == 0;
    }
    const int64_t total = g.O * g.I;
    bool lanes_path = true;  // every operand's channel stride 1: a group of threads per row
    for (int s = 0; s < 3; ++s)
      if (s != 1 || bwd) lanes_path = lanes_path && g.s[s][1] == 1;
    if (lanes_path) {
      const int lanes = pn_lanes(g.C, vec ? V : 1);
      if (bwd) {
        if (vec) launch(pn_lanes_kernel<scalar_t, V, true>, total * lanes, a, g, lanes, small);
        else launch(pn_lanes_kernel<scalar_t, 1, true>, total * lanes, a, g, lanes, small);
      } else {
        if (vec) launch(pn_lanes_kernel<scalar_t, V, false>, total * lanes, a, g, lanes, small);
        else launch(pn_lanes_kernel<scalar_t, 1, false>, total * lanes, a, g, lanes, small);
      }
    } else if (bwd) {
      if (vec) launch(pn_kernel<scalar_t, V, true>, total, a, g, small);
      else launch(pn_kernel<scalar_t, 1, true>, total, a, g, small);
    } else {
      if (vec) launch(pn_kernel<scalar_t, V, false>, total, a, g, small);
      else launch(pn_kernel<scalar_t, 1, false>, total, a, g, small);
    }
  });
}

inline MbGeom mb_geom(const Tensor& x, const Tensor& s1, const Tensor& s2, int64_t group_size) {
  MbGeom g{};
  const int64_t n = x.size(0);
  g.G = std::min<int64_t>(group_size, n);
  g.M = n / g.G;
  g.C = x.size(1);
  g.H = x.size(2);
  g.W = x.size(3);
  g.L = g.C * g.H * g.W;
  const auto order = dim_order(x, {1, 2, 3});
  const Tensor* slots[3] = {&x, &s1, &s2};
  for (int k = 0; k < 3; ++k) {
    g.S[k] = x.size(order[k]);
    for (int s = 0; s < 3; ++s) g.ps[s][k] = slots[s]->defined() ? slots[s]->stride(order[k]) : 0;
  }
  for (int s = 0; s < 3; ++s) {
    g.ns[s] = slots[s]->defined() ? slots[s]->stride(0) : 0;
    for (int k = 0; k < 3; ++k) g.cs[s][k] = slots[s]->defined() ? slots[s]->stride(k + 1) : 0;
  }
  g.chunk = 64;
  g.P = (g.L + g.chunk - 1) / g.chunk;
  return g;
}

// out[:, :C] = x, out[:, C] = mean stddev of x's strided group.
inline void minibatch_stddev(const Tensor& x, const Tensor& out, int64_t group_size, double eps) {
  PF_GUARD(out);
  if (out.numel() == 0) return;
  MbGeom g = mb_geom(x, out, Tensor(), group_size);
  const bool small = fits_i32({&x, &out}) && g.M * g.L <= kI32;
  const auto acc = x.options().dtype(acc_type(x.scalar_type()));
  Tensor sd = at::empty({g.M * g.L}, acc), part = at::empty({g.M * g.P}, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "progan_fast_mbstd", [&] {
    using A = acc_t<scalar_t>;
    launch(mb_fwd_kernel<scalar_t>, g.M * g.L, cptr<scalar_t>(x), mptr<scalar_t>(out), mptr<A>(sd), g, A(eps), small);
    launch(mb_partial_kernel<A>, g.M * g.P, cptr<A>(sd), mptr<A>(part), g);
    launch(mb_fill_kernel<scalar_t>, g.M * g.G * g.H * g.W, cptr<A>(part), mptr<scalar_t>(out), g);
  });
}

inline void minibatch_stddev_grad(const Tensor& dy, const Tensor& x, const Tensor& dx, int64_t group_size, double eps) {
  PF_GUARD(dx);
  if (dx.numel() == 0) return;
  MbGeom g = mb_geom(x, dy, dx, group_size);
  const bool small = fits_i32({&x, &dy, &dx});
  Tensor gs = at::empty({g.M}, x.options().dtype(acc_type(x.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "progan_fast_mbstd_grad", [&] {
    using A = acc_t<scalar_t>;
    launch(mb_gsum_kernel<scalar_t>, g.M, cptr<scalar_t>(dy), mptr<A>(gs), g);
    launch(mb_bwd_kernel<scalar_t>, g.M * g.L, cptr<scalar_t>(dy), cptr<scalar_t>(x), mptr<scalar_t>(dx),
           cptr<A>(gs), g, A(eps), small);
  });
}

}  // namespace PF_NS
}  // namespace progan_fast

// progan_fast._C: the pybind11 module of the compiled CUDA backend.
//
// Each function checks its inputs (device, dtype, shape, layout limits) with one-line messages and
// runs the kernels of kernels/progan_kernels.cuh: on CUDA tensors the nvcc-compiled ones
// (kernels/progan_ops.cu), on CPU tensors the same kernel bodies compiled here and run serially
// (slow; it lets the kernels' indexing be tested without a GPU). Outputs are allocated by the
// caller (progan_fast/_cuda_kernels.py) so their strides follow the shared layout rules.
// Operator schemas and autograd are NOT defined here: progan_fast/_cuda_backend.py wraps these
// functions with progan_fast.triton.library.define_ops, the one schema shared by every backend.
#include <torch/extension.h>

#include <string>

#include "pf_check.h"
#include "progan_kernels.cuh"
#include "progan_ops.h"

// Build facts written by the build (setup.py, the JIT loader, CMake) into a generated header.
#if __has_include("pf_build_info.h")
#include "pf_build_info.h"
#endif
#ifndef PF_TORCH_VERSION
#define PF_TORCH_VERSION "unknown"
#endif
#ifndef PF_CUDA_ARCH_LIST
#define PF_CUDA_ARCH_LIST "unknown"
#endif
#ifndef PF_BUILD_KIND
#define PF_BUILD_KIND "unknown"
#endif

namespace pf = progan_fast;
using at::Tensor;
using OptT = std::optional<Tensor>;

namespace {

bool is_float(const Tensor& t) {
  auto s = t.scalar_type();
  return s == at::kFloat || s == at::kHalf || s == at::kBFloat16 || s == at::kDouble;
}

at::IntArrayRef shape(const Tensor& t) { return t.sizes(); }

// `t` must be a defined float tensor on a CUDA or CPU device; with `ref`, on ref's device and of its dtype.
void check(const char* op, const char* name, const Tensor& t, const Tensor* ref = nullptr, bool same_dtype = true) {
  PF_CHECK(t.defined(), "progan_fast._C.", op, ": ", name, " is missing");
  PF_CHECK(t.is_cuda() || t.is_cpu(), "progan_fast._C.", op, ": ", name, " is on ", t.device(),
              "; expected a CUDA (or, for tests, CPU) tensor");
  PF_CHECK(is_float(t), "progan_fast._C.", op, ": ", name, " has dtype ", t.scalar_type(),
              "; supported: float32, float16, bfloat16 (float64 for checks)");
  PF_CHECK(t.layout() == at::kStrided, "progan_fast._C.", op, ": ", name, " must be a dense (strided) tensor");
  if (ref) {
    PF_CHECK(t.device() == ref->device(), "progan_fast._C.", op, ": ", name, " is on ", t.device(),
                " but the input is on ", ref->device());
    PF_CHECK(!same_dtype || t.scalar_type() == ref->scalar_type(), "progan_fast._C.", op, ": ", name, " is ",
                t.scalar_type(), " but the input is ", ref->scalar_type());
  }
}

void check_shape(const char* op, const char* name, const Tensor& t, at::IntArrayRef expect) {
  PF_CHECK(t.sizes() == expect, "progan_fast._C.", op, ": ", name, " must have shape ", expect, ", got ",
              shape(t));
}

void check_4d(const char* op, const char* name, const Tensor& t) {
  PF_CHECK(t.dim() == 4, "progan_fast._C.", op, ": ", name, " must be 4-D (N, C, H, W), got shape ", shape(t));
}

// `t` must be 4-D with even H and W (the high-resolution side of a 2x2 op).
void check_even_hw(const char* op, const char* name, const Tensor& t) {
  check_4d(op, name, t);
  PF_CHECK(t.size(2) % 2 == 0 && t.size(3) % 2 == 0, "progan_fast._C.", op, ": H and W must be even, got ",
              shape(t));
}

// `t` like `ref`: same device, dtype and shape (an output or a second input of an elementwise op).
void check_like(const char* op, const char* name, const Tensor& t, const Tensor& ref) {
  check(op, name, t, &ref);
  check_shape(op, name, t, ref.sizes());
}

void check_bias(const char* op, const OptT& b, const Tensor& x, int64_t dim) {
  if (!b.has_value() || !b->defined()) return;
  check(op, "b", *b, &x, /*same_dtype=*/false);
  PF_CHECK(b->dim() == 1 && b->numel() == x.size(dim), "progan_fast._C.", op, ": b must be 1-D with ",
              x.size(dim), " elements (dim ", dim, "), got shape ", shape(*b));
}

void check_alpha(const char* op, const OptT& alpha_t, const Tensor& x) {
  if (!alpha_t.has_value() || !alpha_t->defined()) return;
  PF_CHECK(is_float(*alpha_t), "progan_fast._C.", op, ": alpha_t must be a float tensor, got ",
              alpha_t->scalar_type());
  PF_CHECK(alpha_t->numel() == 1, "progan_fast._C.", op, ": alpha_t must hold one element, got shape ",
              shape(*alpha_t));
  // Same device only (as the Triton backend): a CPU alpha for CUDA inputs would need a blocking copy,
  // which fails inside CUDA-graph capture. progan_fast.ops moves alpha to the input's device first.
  PF_CHECK(alpha_t->device() == x.device(), "progan_fast._C.", op, ": alpha_t is on ",
              alpha_t->device(), " but the input is on ", x.device());
}

void check_act(const char* op, int64_t act) {
  PF_CHECK(act >= 0 && act <= 2, "progan_fast._C.", op, ": act code must be 0 (linear), 1 (relu) or 2 (lrelu), got ",
              act);
}

void check_dim(const char* op, const Tensor& t, int64_t dim) {
  PF_CHECK(dim >= 0 && dim < t.dim(), "progan_fast._C.", op, ": dim ", dim, " out of range for a ", t.dim(),
              "-D input");
}

// Run on the GPU kernels or, for CPU tensors, on the serial emulation of the same kernels.
#define PF_RUN(ref, fn, ...)                  \
  do {                                        \
    if ((ref).is_cuda()) {                    \
      pf::cuda_api::fn(__VA_ARGS__);          \
    } else {                                  \
      pf::emu::fn(__VA_ARGS__);               \
    }                                         \
  } while (0)

const Tensor kNone;

// ----------------------------------------------------------------------------- elementwise

void bias_act(const Tensor& x, const OptT& b, const Tensor& y, int64_t act, double slope, double gain, int64_t dim) {
  check("bias_act", "x", x);
  check_like("bias_act", "y", y, x);
  check_act("bias_act", act);
  check_dim("bias_act", x, dim);
  check_bias("bias_act", b, x, dim);
  PF_RUN(x, elementwise, pf::emu::EW_BIAS_ACT, x, kNone, y, kNone, b, dim, int(act), slope, gain, std::nullopt, 0.0);
}

void bias_act_grad(const Tensor& dy, const OptT& y, const Tensor& dx, int64_t act, double slope, double gain) {
  check("bias_act_grad", "dy", dy);
  check_like("bias_act_grad", "dx", dx, dy);
  check_act("bias_act_grad", act);
  PF_CHECK(act == 0 || (y.has_value() && y->defined()), "progan_fast._C.bias_act_grad: y is required unless act is linear");
  Tensor yy = act == 0 ? Tensor() : *y;
  if (yy.defined()) {
    check_like("bias_act_grad", "y", yy, dy);
  }
  PF_RUN(dy, elementwise, pf::emu::EW_BIAS_ACT_GRAD, dy, yy, dx, kNone, std::nullopt, 0, int(act), slope, gain,
         std::nullopt, 0.0);
}

// (dx, partial bias sums) in one pass: dy, y and dx dense with equal strides and the bias dim `dim`
// of unit stride; part [ceil((numel / C) / rows_per_block), C] in the accumulation dtype.
void bias_act_grad_db(const Tensor& dy, const OptT& y, const Tensor& dx, const Tensor& part, int64_t act,
                      double slope, double gain, int64_t dim, int64_t rows_per_block) {
  const char* op = "bias_act_grad_db";
  check(op, "dy", dy);
  check_like(op, "dx", dx, dy);
  check_act(op, act);
  check_dim(op, dy, dim);
  PF_CHECK(act == 0 || (y.has_value() && y->defined()), "progan_fast._C.bias_act_grad_db: y is required unless act is linear");
  Tensor yy = act == 0 ? Tensor() : *y;
  if (yy.defined()) check_like(op, "y", yy, dy);
  PF_CHECK(dy.is_non_overlapping_and_dense() && dy.stride(dim) == 1 && dx.strides() == dy.strides() &&
              (!yy.defined() || yy.strides() == dy.strides()),
              "progan_fast._C.bias_act_grad_db: dy, y and dx must be dense with equal strides and unit stride along dim ",
              dim, " (e.g. channels_last with dim 1)");
  PF_CHECK(rows_per_block >= 1, "progan_fast._C.bias_act_grad_db: rows_per_block must be >= 1");
  const int64_t cols = dy.size(dim);
  const int64_t rows = cols ? dy.numel() / cols : 0;
  const at::ScalarType acc = dy.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  check(op, "part", part, &dy, /*same_dtype=*/false);
  PF_CHECK(part.scalar_type() == acc && part.is_contiguous(), "progan_fast._C.bias_act_grad_db: part must be a "
              "contiguous ", acc, " tensor");
  check_shape(op, "part", part, {(rows + rows_per_block - 1) / rows_per_block, cols});
  PF_RUN(dy, bias_grad_cols, dy, yy, dx, part, cols, rows_per_block, int(act), slope, gain);
}

void lerp_fn(const Tensor& a, const Tensor& b, const OptT& alpha_t, double alpha, const Tensor& y) {
  check("lerp", "a", a);
  check("lerp", "b", b, &a);
  check("lerp", "y", y, &a);
  check_shape("lerp", "b", b, a.sizes());
  check_shape("lerp", "y", y, a.sizes());
  check_alpha("lerp", alpha_t, a);
  PF_RUN(a, elementwise, pf::emu::EW_LERP, a, b, y, kNone, std::nullopt, 0, 0, 0.0, 1.0, alpha_t, alpha);
}

void lerp_grad(const Tensor& g, const OptT& alpha_t, double alpha, const Tensor& da, const Tensor& db) {
  check("lerp_grad", "g", g);
  check("lerp_grad", "da", da, &g);
  check("lerp_grad", "db", db, &g);
  check_shape("lerp_grad", "da", da, g.sizes());
  check_shape("lerp_grad", "db", db, g.sizes());
  check_alpha("lerp_grad", alpha_t, g);
  PF_RUN(g, elementwise, pf::emu::EW_LERP_GRAD, g, kNone, da, db, std::nullopt, 0, 0, 0.0, 1.0, alpha_t, alpha);
}

// ----------------------------------------------------------------------------- 2x2 resampling

// hi [N, C, H, W] with H, W even and lo [N, C, H/2, W/2].
void check_pair(const char* op, const Tensor& hi, const Tensor& lo) {
  check_even_hw(op, "the high-resolution tensor", hi);
  check_shape(op, "the low-resolution tensor", lo, {hi.size(0), hi.size(1), hi.size(2) / 2, hi.size(3) / 2});
}

void downsample2x(const Tensor& x, const Tensor& y) {
  check("downsample2x", "x", x);
  check("downsample2x", "y", y, &x);
  check_pair("downsample2x", x, y);
  PF_RUN(x, quad, pf::emu::Q_DOWN, x, kNone, kNone, y, std::nullopt, 0.0);
}

void downsample2x_grad(const Tensor& g, const Tensor& dx) {
  check("downsample2x_grad", "g", g);
  check("downsample2x_grad", "dx", dx, &g);
  check_pair("downsample2x_grad", dx, g);
  PF_RUN(g, quad, pf::emu::Q_DOWN_GRAD, kNone, g, dx, kNone, std::nullopt, 0.0);
}

void upsample_blend(const Tensor& hi, const Tensor& lo, const OptT& alpha_t, double alpha, const Tensor& y) {
  check("upsample_blend", "hi", hi);
  check("upsample_blend", "lo", lo, &hi);
  check("upsample_blend", "y", y, &hi);
  check_pair("upsample_blend", hi, lo);
  check_shape("upsample_blend", "y", y, hi.sizes());
  check_alpha("upsample_blend", alpha_t, hi);
  PF_RUN(hi, quad, pf::emu::Q_UP_BLEND, hi, lo, y, kNone, alpha_t, alpha);
}

void upsample_blend_grad(const Tensor& g, const OptT& alpha_t, double alpha, const Tensor& dhi, const Tensor& dlo) {
  check("upsample_blend_grad", "g", g);
  check("upsample_blend_grad", "dhi", dhi, &g);
  check("upsample_blend_grad", "dlo", dlo, &g);
  check_pair("upsample_blend_grad", g, dlo);
  check_shape("upsample_blend_grad", "dhi", dhi, g.sizes());
  check_alpha("upsample_blend_grad", alpha_t, g);
  PF_RUN(g, quad, pf::emu::Q_UP_BLEND_GRAD, g, kNone, dhi, dlo, alpha_t, alpha);
}

void fade_reals(const Tensor& x, const OptT& alpha_t, double alpha, const Tensor& y) {
  check("fade_reals", "x", x);
  check("fade_reals", "y", y, &x);
  check_even_hw("fade_reals", "x", x);
  check_shape("fade_reals", "y", y, x.sizes());
  check_alpha("fade_reals", alpha_t, x);
  PF_RUN(x, quad, pf::emu::Q_FADE, x, kNone, y, kNone, alpha_t, alpha);
}

// ----------------------------------------------------------------------------- pixel norm family

void pixel_norm(const Tensor& x, const OptT& b, const Tensor& y, int64_t dim, int64_t act, double slope, double gain,
                double eps) {
  check("pixel_norm", "x", x);
  check_like("pixel_norm", "y", y, x);
  check_dim("pixel_norm", x, dim);
  check_act("pixel_norm", act);
  check_bias("pixel_norm", b, x, dim);
  PF_RUN(x, pixel_norm, x, kNone, b, y, dim, int(act), slope, gain, eps);
}

void pixel_norm_grad(const Tensor& dy, const Tensor& x, const OptT& b, const Tensor& dx, int64_t dim, int64_t act,
                     double slope, double gain, double eps) {
  check("pixel_norm_grad", "x", x);
  check("pixel_norm_grad", "dy", dy, &x);
  check("pixel_norm_grad", "dx", dx, &x);
  check_shape("pixel_norm_grad", "dy", dy, x.sizes());
  check_shape("pixel_norm_grad", "dx", dx, x.sizes());
  check_dim("pixel_norm_grad", x, dim);
  check_act("pixel_norm_grad", act);
  check_bias("pixel_norm_grad", b, x, dim);
  PF_RUN(x, pixel_norm, x, dy, b, dx, dim, int(act), slope, gain, eps);
}

// ----------------------------------------------------------------------------- minibatch stddev

void check_group(const char* op, const Tensor& x, int64_t group_size) {
  check_4d(op, "x", x);
  PF_CHECK(group_size >= 1, "progan_fast._C.", op, ": group_size must be >= 1, got ", group_size);
  const int64_t g = std::min<int64_t>(group_size, x.size(0));
  PF_CHECK(x.size(0) == 0 || x.size(0) % g == 0, "progan_fast._C.", op, ": batch ", x.size(0),
              " is not divisible by the group size ", g);
}

void minibatch_stddev(const Tensor& x, const Tensor& out, int64_t group_size, double eps) {
  check("minibatch_stddev", "x", x);
  check("minibatch_stddev", "out", out, &x);
  check_group("minibatch_stddev", x, group_size);
  check_shape("minibatch_stddev", "out", out, {x.size(0), x.size(1) + 1, x.size(2), x.size(3)});
  PF_RUN(x, minibatch_stddev, x, out, group_size, eps);
}

void minibatch_stddev_grad(const Tensor& dy, const Tensor& x, const Tensor& dx, int64_t group_size, double eps) {
  check("minibatch_stddev_grad", "x", x);
  check("minibatch_stddev_grad", "dy", dy, &x);
  check("minibatch_stddev_grad", "dx", dx, &x);
  check_group("minibatch_stddev_grad", x, group_size);
  check_shape("minibatch_stddev_grad", "dy", dy, {x.size(0), x.size(1) + 1, x.size(2), x.size(3)});
  check_shape("minibatch_stddev_grad", "dx", dx, x.sizes());
  PF_RUN(x, minibatch_stddev_grad, dy, x, dx, group_size, eps);
}

py::dict build_info() {
  py::dict d;
  d["torch_version"] = PF_TORCH_VERSION;
  d["cuda_runtime_version"] = pf::cuda_api::cuda_runtime_version();
  d["cuda_arch_list"] = PF_CUDA_ARCH_LIST;
  d["build_kind"] = PF_BUILD_KIND;
#if defined(__clang__)
  d["host_compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  d["host_compiler"] = std::string("gcc ") + __VERSION__;
#else
  d["host_compiler"] = "unknown";
#endif
  d["cxx11_abi"] = bool(_GLIBCXX_USE_CXX11_ABI);
  return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "progan_fast compiled CUDA kernels (use them through progan_fast.ops / torch.ops.progan_fast_cuda)";
  using namespace pybind11::literals;
  m.def("bias_act", &bias_act, "y = act(x + b) * gain", "x"_a, "b"_a, "y"_a, "act"_a, "slope"_a, "gain"_a, "dim"_a);
  m.def("bias_act_grad", &bias_act_grad, "dx = dy * gain * act'(from y)", "dy"_a, "y"_a, "dx"_a, "act"_a, "slope"_a,
        "gain"_a);
  m.def("bias_act_grad_db", &bias_act_grad_db, "dx as bias_act_grad, and the partial bias sums of dx per row block",
        "dy"_a, "y"_a, "dx"_a, "part"_a, "act"_a, "slope"_a, "gain"_a, "dim"_a, "rows_per_block"_a);
  m.def("lerp", &lerp_fn, "y = a + (b - a) * alpha", "a"_a, "b"_a, "alpha_t"_a, "alpha"_a, "y"_a);
  m.def("lerp_grad", &lerp_grad, "(da, db) = (g * (1 - alpha), g * alpha)", "g"_a, "alpha_t"_a, "alpha"_a, "da"_a,
        "db"_a);
  m.def("downsample2x", &downsample2x, "2x2 average pool", "x"_a, "y"_a);
  m.def("downsample2x_grad", &downsample2x_grad, "adjoint of downsample2x", "g"_a, "dx"_a);
  m.def("upsample_blend", &upsample_blend, "lerp(up2x(lo), hi, alpha)", "hi"_a, "lo"_a, "alpha_t"_a, "alpha"_a, "y"_a);
  m.def("upsample_blend_grad", &upsample_blend_grad, "adjoint of upsample_blend", "g"_a, "alpha_t"_a, "alpha"_a,
        "dhi"_a, "dlo"_a);
  m.def("fade_reals", &fade_reals, "lerp(up2x(down2x(x)), x, alpha)", "x"_a, "alpha_t"_a, "alpha"_a, "y"_a);
  m.def("pixel_norm", &pixel_norm, "y = pn(act(x + b) * gain) over dim", "x"_a, "b"_a, "y"_a, "dim"_a, "act"_a,
        "slope"_a, "gain"_a, "eps"_a);
  m.def("pixel_norm_grad", &pixel_norm_grad, "vector-Jacobian product of pixel_norm", "dy"_a, "x"_a, "b"_a, "dx"_a,
        "dim"_a, "act"_a, "slope"_a, "gain"_a, "eps"_a);
  m.def("minibatch_stddev", &minibatch_stddev, "out = cat(x, group stddev channel)", "x"_a, "out"_a, "group_size"_a,
        "eps"_a);
  m.def("minibatch_stddev_grad", &minibatch_stddev_grad, "dx of minibatch_stddev", "dy"_a, "x"_a, "dx"_a,
        "group_size"_a, "eps"_a);
  m.def("build_info", &build_info, "How this module was built (torch version, CUDA, archs)");
}

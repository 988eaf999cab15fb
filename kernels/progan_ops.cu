// GPU instantiation of kernels/progan_kernels.cuh: the only CUDA translation unit of progan_fast._C.
#define PF_CUDA 1
#include "progan_kernels.cuh"
#include "progan_ops.h"

namespace progan_fast {
namespace cuda_api {

void elementwise(int op, const Tensor& in0, const Tensor& in1, const Tensor& out0, const Tensor& out1,
                 const std::optional<Tensor>& bias, int64_t dim, int act, double slope, double gain,
                 const std::optional<Tensor>& alpha_t, double alpha) {
  gpu::elementwise(op, in0, in1, out0, out1, bias, dim, act, slope, gain, alpha_t, alpha);
}

void bias_grad_cols(const Tensor& dy, const Tensor& y, const Tensor& dx, const Tensor& part, int64_t cols,
                    int64_t rows_per_block, int act, double slope, double gain) {
  gpu::bias_grad_cols(dy, y, dx, part, cols, rows_per_block, act, slope, gain);
}

void quad(int mode, const Tensor& hi_in, const Tensor& lo_in, const Tensor& hi_out, const Tensor& lo_out,
          const std::optional<Tensor>& alpha_t, double alpha) {
  gpu::quad(mode, hi_in, lo_in, hi_out, lo_out, alpha_t, alpha);
}

void pixel_norm(const Tensor& x, const Tensor& dy, const std::optional<Tensor>& bias, const Tensor& out, int64_t dim,
                int act, double slope, double gain, double eps) {
  gpu::pixel_norm(x, dy, bias, out, dim, act, slope, gain, eps);
}

void minibatch_stddev(const Tensor& x, const Tensor& out, int64_t group_size, double eps) {
  gpu::minibatch_stddev(x, out, group_size, eps);
}

void minibatch_stddev_grad(const Tensor& dy, const Tensor& x, const Tensor& dx, int64_t group_size, double eps) {
  gpu::minibatch_stddev_grad(dy, x, dx, group_size, eps);
}

int cuda_runtime_version() { return CUDART_VERSION; }

}  // namespace cuda_api
}  // namespace progan_fast

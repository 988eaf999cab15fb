// The GPU entry points compiled by nvcc in kernels/progan_ops.cu, called by csrc/bindings.cpp after
// its input checks. Outputs are preallocated; undefined tensors mark unused operand slots.
#pragma once

#include <optional>

#include <ATen/core/Tensor.h>

namespace progan_fast {
namespace cuda_api {

using at::Tensor;

void elementwise(int op, const Tensor& in0, const Tensor& in1, const Tensor& out0, const Tensor& out1,
                 const std::optional<Tensor>& bias, int64_t dim, int act, double slope, double gain,
                 const std::optional<Tensor>& alpha_t, double alpha);
void bias_grad_cols(const Tensor& dy, const Tensor& y, const Tensor& dx, const Tensor& part, int64_t cols,
                    int64_t rows_per_block, int act, double slope, double gain);
void quad(int mode, const Tensor& hi_in, const Tensor& lo_in, const Tensor& hi_out, const Tensor& lo_out,
          const std::optional<Tensor>& alpha_t, double alpha);
void pixel_norm(const Tensor& x, const Tensor& dy, const std::optional<Tensor>& bias, const Tensor& out, int64_t dim,
                int act, double slope, double gain, double eps);
void minibatch_stddev(const Tensor& x, const Tensor& out, int64_t group_size, double eps);
void minibatch_stddev_grad(const Tensor& dy, const Tensor& x, const Tensor& dx, int64_t group_size, double eps);

// Build facts of the device code: CUDA runtime version the kernels were compiled with.
int cuda_runtime_version();

}  // namespace cuda_api
}  // namespace progan_fast

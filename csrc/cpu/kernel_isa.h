// The CPU kernel built once per instruction set; fused_gradcam.cpp picks one at run time.
// `weights` and `bias` are fused_weighted_cam's (CamMethod::Weighted; `G` is then never read): (B, K)
// and (B,) tensors of the output dtype, any strides; undefined tensors for the gradient methods and for
// no bias.
#pragma once

#include <ATen/core/Tensor.h>

#include "../fused_gradcam.h"

namespace sportsnet {

using CpuKernel = void (*)(const at::Tensor& A, const at::Tensor& G, const at::Tensor& weights,
                           const at::Tensor& bias, int64_t H, int64_t W, CamMethod m, bool normalize, double eps,
                           at::Tensor& out);

namespace cpu_default {
void run_kernel(const at::Tensor& A, const at::Tensor& G, const at::Tensor& weights, const at::Tensor& bias,
                int64_t H, int64_t W, CamMethod m, bool normalize, double eps, at::Tensor& out);
}

namespace cpu_avx2 {
// False where the CPU (or the compiler) lacks AVX2 + FMA; run_kernel must not be called then.
bool supported();
void run_kernel(const at::Tensor& A, const at::Tensor& G, const at::Tensor& weights, const at::Tensor& bias,
                int64_t H, int64_t W, CamMethod m, bool normalize, double eps, at::Tensor& out);
}  // namespace cpu_avx2

}  // namespace sportsnet

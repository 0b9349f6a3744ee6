// The CPU kernel for the baseline instruction set of the build (SSE2 on x86-64).
#include "kernel_deps.h"

#define SPORTSNET_CPU_NS cpu_default
#include "fused_gradcam_kernel.h"

#include "kernel_isa.h"

namespace sportsnet::cpu_default {
void run_kernel(const at::Tensor& A, const at::Tensor& G, const at::Tensor& weights, const at::Tensor& bias,
                int64_t H, int64_t W, CamMethod m, bool normalize, double eps, at::Tensor& out) {
  run(A, G, weights, bias, H, W, m, normalize, eps, out);
}
}  // namespace sportsnet::cpu_default

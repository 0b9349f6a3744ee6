// The CPU kernel compiled for AVX2 + FMA (x86-64 with GCC or Clang); chosen at run time only on CPUs
// that have both. Library headers come first, without the target, so their inline functions stay
// baseline code; only the kernel templates below (in their own namespace) get the wider ISA.
#include "kernel_deps.h"
#include "kernel_isa.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SPORTSNET_HAVE_AVX2_BUILD 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#define SPORTSNET_CPU_NS cpu_avx2
#include "fused_gradcam_kernel.h"

namespace sportsnet::cpu_avx2 {
void run_kernel(const at::Tensor& A, const at::Tensor& G, const at::Tensor& weights, const at::Tensor& bias,
                int64_t H, int64_t W, CamMethod m, bool normalize, double eps, at::Tensor& out) {
  run(A, G, weights, bias, H, W, m, normalize, eps, out);
}
}  // namespace sportsnet::cpu_avx2

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

namespace sportsnet::cpu_avx2 {
#ifdef SPORTSNET_HAVE_AVX2_BUILD
bool supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
bool supported() { return false; }
void run_kernel(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                CamMethod, bool, double, at::Tensor&) {
  TORCH_CHECK(false, "fused_gradcam: the AVX2 kernel is not built for this platform");
}
#endif
}  // namespace sportsnet::cpu_avx2

// sportsnet::fused_gradcam and sportsnet::fused_weighted_cam: the schemas (declared once), argument
// checks, and the CPU operators, which run the kernel in cpu/fused_gradcam_kernel.h built for the widest
// ISA this machine has.
// How the kernel works (its plan): the comment at the top of cpu/fused_gradcam_kernel.h.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <Python.h>

#include <cmath>
#include <cstdlib>
#include <string>

#include "cpu/kernel_isa.h"
#include "fused_gradcam.h"
#include "fused_gradcam_op.h"

extern "C" {
// `import sportsnet._C` loads this library; its static initialisers register the operator.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace sportsnet {

CamMethod parse_method(c10::string_view method) {
  if (method == "gradcam") return CamMethod::GradCAM;
  if (method == "gradcam++") return CamMethod::GradCAMPlusPlus;
  if (method == "xgradcam") return CamMethod::XGradCAM;
  if (method == "hirescam") return CamMethod::HiResCAM;
  if (method == "layercam") return CamMethod::LayerCAM;
  if (method == "gradcam-elementwise") return CamMethod::GradCAMElementWise;
  TORCH_CHECK(false, "fused_gradcam: unknown method '", std::string(method.data(), method.size()),
              "'; expected one of gradcam, gradcam++, xgradcam, hirescam, layercam, gradcam-elementwise");
}

static bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// The checks both ops share, after their tensor-specific ones: output size, non-empty maps, eps.
static void check_size_and_eps(const char* op, const at::Tensor& A, at::IntArrayRef size, double eps) {
  TORCH_CHECK(size.size() == 2 && size[0] > 0 && size[1] > 0, op,
              ": size must be two positive integers (H, W), got ", size);
  TORCH_CHECK(A.size(2) > 0 && A.size(3) > 0, op, ": the activation maps are empty: shape ", A.sizes());
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, op, ": eps must be finite and >= 0, got ", eps);
}

static at::ScalarType output_dtype(const at::Tensor& A) {
  return A.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::ScalarType check_inputs(const at::Tensor& A, const at::Tensor& G, at::IntArrayRef size, double eps) {
  TORCH_CHECK(A.dim() == 4, "fused_gradcam: activations must be 4-D (B, K, h, w), got shape ", A.sizes());
  TORCH_CHECK(G.dim() == 4, "fused_gradcam: gradients must be 4-D (B, K, h, w), got shape ", G.sizes());
  TORCH_CHECK(A.sizes() == G.sizes(), "fused_gradcam: activations ", A.sizes(), " and gradients ", G.sizes(),
              " must have the same shape");
  TORCH_CHECK(A.device() == G.device(), "fused_gradcam: activations (", A.device(), ") and gradients (",
              G.device(), ") must be on the same device");
  TORCH_CHECK(supported_dtype(A.scalar_type()) && supported_dtype(G.scalar_type()),
              "fused_gradcam: activations and gradients must be float32, float16, bfloat16 or float64, got ",
              A.scalar_type(), " and ", G.scalar_type());
  TORCH_CHECK(A.scalar_type() == G.scalar_type(), "fused_gradcam: activations (", A.scalar_type(),
              ") and gradients (", G.scalar_type(), ") must have the same dtype");
  check_size_and_eps("fused_gradcam", A, size, eps);
  return output_dtype(A);
}

// In the order of reference.py's check_weighted_inputs, so both backends report the same first problem.
at::ScalarType check_weighted_inputs(const at::Tensor& A, const at::Tensor& weights,
                                     const std::optional<at::Tensor>& bias_arg, at::IntArrayRef size, double eps) {
  const at::Tensor bias = bias_or_undefined(bias_arg);
  TORCH_CHECK(A.dim() == 4, "fused_weighted_cam: activations must be 4-D (B, K, h, w), got shape ", A.sizes());
  const int64_t B = A.size(0), K = A.size(1);
  TORCH_CHECK(weights.dim() == 2 && weights.size(0) == B && weights.size(1) == K,
              "fused_weighted_cam: weights must have shape (B, K) = (", B, ", ", K, ") for activations ",
              A.sizes(), ", got ", weights.sizes());
  TORCH_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == B),
              "fused_weighted_cam: bias must be None or a tensor of shape (B,) = (", B, ",), got ",
              bias.defined() ? bias.sizes() : at::IntArrayRef());
  TORCH_CHECK(weights.device() == A.device(), "fused_weighted_cam: weights (", weights.device(),
              ") and activations (", A.device(), ") must be on the same device");
  TORCH_CHECK(!bias.defined() || bias.device() == A.device(), "fused_weighted_cam: bias (",
              bias.defined() ? bias.device() : A.device(), ") and activations (", A.device(),
              ") must be on the same device");
  TORCH_CHECK(supported_dtype(A.scalar_type()),
              "fused_weighted_cam: activations must be float32, float16, bfloat16 or float64, got ", A.scalar_type());
  const at::ScalarType acc = output_dtype(A);
  TORCH_CHECK(weights.scalar_type() == acc, "fused_weighted_cam: weights must be ", acc,
              " (the accumulation type of ", A.scalar_type(), " activations), got ", weights.scalar_type());
  TORCH_CHECK(!bias.defined() || bias.scalar_type() == acc, "fused_weighted_cam: bias must be ", acc,
              " (the accumulation type of ", A.scalar_type(), " activations), got ",
              bias.defined() ? bias.scalar_type() : acc);
  check_size_and_eps("fused_weighted_cam", A, size, eps);
  return acc;
}

void check_out(const at::Tensor& out, const at::Tensor& A, at::IntArrayRef size, at::ScalarType dtype,
               const char* op) {
  TORCH_CHECK(out.device() == A.device(), op, ": out is on ", out.device(), " but the inputs are on ", A.device());
  TORCH_CHECK(out.scalar_type() == dtype, op, ": out must be ", dtype, " for ", A.scalar_type(), " inputs, got ",
              out.scalar_type());
  TORCH_CHECK(out.dim() == 3 && out.size(0) == A.size(0) && out.size(1) == size[0] && out.size(2) == size[1], op,
              ": out must have shape (", A.size(0), ", ", size[0], ", ", size[1], "), got ", out.sizes());
  TORCH_CHECK(out.is_contiguous(), op, ": out must be contiguous");
}

namespace {

// The widest CPU kernel this machine runs (decided once). SPORTSNET_CPU_ISA=default forces the
// baseline build, e.g. to test it on an AVX2 machine.
CpuKernel cpu_kernel() {
  static const CpuKernel chosen = [] {
    const char* isa = std::getenv("SPORTSNET_CPU_ISA");
    const bool force_default = isa != nullptr && std::string(isa) == "default";
    return (!force_default && cpu_avx2::supported()) ? &cpu_avx2::run_kernel : &cpu_default::run_kernel;
  }();
  return chosen;
}

// The out= overload returns nothing: custom ops that return an alias of a mutated input cannot be
// functionalised (torch.compile); Python's fused_gradcam(out=...) returns `out` itself.
void fused_gradcam_out_cpu(const at::Tensor& activations, const at::Tensor& gradients, at::IntArrayRef size,
                           c10::string_view method, bool normalize, double eps, at::Tensor& out) {
  const at::ScalarType dtype = check_inputs(activations, gradients, size, eps);
  const CamMethod m = parse_method(method);
  check_out(out, activations, size, dtype);
  cpu_kernel()(activations, gradients, at::Tensor(), at::Tensor(), size[0], size[1], m, normalize, eps, out);
}

at::Tensor fused_gradcam_cpu(const at::Tensor& activations, const at::Tensor& gradients, at::IntArrayRef size,
                             c10::string_view method, bool normalize, double eps) {
  const at::ScalarType dtype = check_inputs(activations, gradients, size, eps);
  at::Tensor out = at::empty({activations.size(0), size[0], size[1]}, activations.options().dtype(dtype));
  fused_gradcam_out_cpu(activations, gradients, size, method, normalize, eps, out);
  return out;
}

// fused_weighted_cam: the same kernel with CamMethod::Weighted, which never reads its gradients
// argument (the activations stand in, so the layout decisions see one tensor).
void fused_weighted_cam_out_cpu(const at::Tensor& activations, const at::Tensor& weights,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef size, bool normalize,
                                double eps, at::Tensor& out) {
  const at::ScalarType dtype = check_weighted_inputs(activations, weights, bias, size, eps);
  check_out(out, activations, size, dtype, "fused_weighted_cam");
  cpu_kernel()(activations, activations, weights, bias_or_undefined(bias), size[0], size[1], CamMethod::Weighted,
               normalize, eps, out);
}

at::Tensor fused_weighted_cam_cpu(const at::Tensor& activations, const at::Tensor& weights,
                                  const std::optional<at::Tensor>& bias, at::IntArrayRef size, bool normalize,
                                  double eps) {
  const at::ScalarType dtype = check_weighted_inputs(activations, weights, bias, size, eps);
  at::Tensor out = at::empty({activations.size(0), size[0], size[1]}, activations.options().dtype(dtype));
  fused_weighted_cam_out_cpu(activations, weights, bias, size, normalize, eps, out);
  return out;
}

}  // namespace

TORCH_LIBRARY(sportsnet, m) {
  m.def(
      "fused_gradcam(Tensor activations, Tensor gradients, int[2] size, str method=\"gradcam\", "
      "bool normalize=True, float eps=1e-07) -> Tensor");
  m.def(
      "fused_gradcam.out(Tensor activations, Tensor gradients, int[2] size, str method=\"gradcam\", "
      "bool normalize=True, float eps=1e-07, *, Tensor(a!) out) -> ()");
  // Maps from given channel weights (CAM, Score-CAM, Ablation-CAM, Eigen-CAM): no gradients.
  m.def(
      "fused_weighted_cam(Tensor activations, Tensor weights, Tensor? bias, int[2] size, bool normalize=True, "
      "float eps=1e-07) -> Tensor");
  m.def(
      "fused_weighted_cam.out(Tensor activations, Tensor weights, Tensor? bias, int[2] size, "
      "bool normalize=True, float eps=1e-07, *, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(sportsnet, CPU, m) {
  m.impl("fused_gradcam", &fused_gradcam_cpu);
  m.impl("fused_gradcam.out", &fused_gradcam_out_cpu);
  m.impl("fused_weighted_cam", &fused_weighted_cam_cpu);
  m.impl("fused_weighted_cam.out", &fused_weighted_cam_out_cpu);
}

}  // namespace sportsnet

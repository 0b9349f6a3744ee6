// sportsnet::fused_gradcam: the schema (declared once), argument checks, and the CPU operator, which
// runs the kernel in cpu/fused_gradcam_kernel.h built for the widest ISA this machine has.
// How the kernel works (its plan): the comment at the top of cpu/fused_gradcam_kernel.h.
#include <ATen/ATen.h>
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
  TORCH_CHECK(false, "fused_gradcam: unknown method '", std::string(method.data(), method.size()),
              "'; expected one of gradcam, gradcam++, xgradcam, hirescam, layercam");
}

static bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
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
  TORCH_CHECK(size.size() == 2 && size[0] > 0 && size[1] > 0,
              "fused_gradcam: size must be two positive integers (H, W), got ", size);
  TORCH_CHECK(A.size(2) > 0 && A.size(3) > 0, "fused_gradcam: the activation maps are empty: shape ", A.sizes());
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, "fused_gradcam: eps must be finite and >= 0, got ", eps);
  return A.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_out(const at::Tensor& out, const at::Tensor& A, at::IntArrayRef size, at::ScalarType dtype) {
  TORCH_CHECK(out.device() == A.device(), "fused_gradcam: out is on ", out.device(), " but the inputs are on ",
              A.device());
  TORCH_CHECK(out.scalar_type() == dtype, "fused_gradcam: out must be ", dtype, " for ", A.scalar_type(),
              " inputs, got ", out.scalar_type());
  TORCH_CHECK(out.dim() == 3 && out.size(0) == A.size(0) && out.size(1) == size[0] && out.size(2) == size[1],
              "fused_gradcam: out must have shape (", A.size(0), ", ", size[0], ", ", size[1], "), got ", out.sizes());
  TORCH_CHECK(out.is_contiguous(), "fused_gradcam: out must be contiguous");
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
  cpu_kernel()(activations, gradients, size[0], size[1], m, normalize, eps, out);
}

at::Tensor fused_gradcam_cpu(const at::Tensor& activations, const at::Tensor& gradients, at::IntArrayRef size,
                             c10::string_view method, bool normalize, double eps) {
  const at::ScalarType dtype = check_inputs(activations, gradients, size, eps);
  at::Tensor out = at::empty({activations.size(0), size[0], size[1]}, activations.options().dtype(dtype));
  fused_gradcam_out_cpu(activations, gradients, size, method, normalize, eps, out);
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
}

TORCH_LIBRARY_IMPL(sportsnet, CPU, m) {
  m.impl("fused_gradcam", &fused_gradcam_cpu);
  m.impl("fused_gradcam.out", &fused_gradcam_out_cpu);
}

}  // namespace sportsnet

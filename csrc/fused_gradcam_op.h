// Declarations shared by the CPU and CUDA translation units: argument parsing and checks, so both
// backends reject bad input with the same messages.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>

#include "fused_gradcam.h"

namespace sportsnet {

// Element strides of a (B, K, h, w) tensor, passed by value to the kernels.
struct Strides {
  int64_t b, k, y, x;
};

inline Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// "gradcam" | "gradcam++" | "xgradcam" | "hirescam" | "layercam" | "gradcam-elementwise"; anything
// else (CamMethod::Weighted has no name: it is fused_weighted_cam's) is a TORCH_CHECK error.
CamMethod parse_method(c10::string_view method);

// Validates activations/gradients/size/eps and returns the output dtype (float32, or float64 for
// float64 inputs).
at::ScalarType check_inputs(const at::Tensor& activations, const at::Tensor& gradients, at::IntArrayRef size,
                            double eps);

// fused_weighted_cam's checks (the rules of sportsnet/ops/reference.py's check_weighted_inputs):
// activations as above; weights (B, K) and bias (B,) on the activations' device, in the output dtype
// (float32, or float64 for float64 activations). Returns the output dtype.
at::ScalarType check_weighted_inputs(const at::Tensor& activations, const at::Tensor& weights,
                                     const std::optional<at::Tensor>& bias, at::IntArrayRef size, double eps);

// Checks a caller-provided output tensor: (B, H, W), the output dtype, contiguous, same device. `op`
// names the operator in the messages.
void check_out(const at::Tensor& out, const at::Tensor& activations, at::IntArrayRef size, at::ScalarType dtype,
               const char* op = "fused_gradcam");

// The bias tensor of fused_weighted_cam, or an undefined tensor (no bias; also for fused_gradcam).
inline at::Tensor bias_or_undefined(const std::optional<at::Tensor>& bias) {
  return bias.has_value() && bias->defined() ? *bias : at::Tensor();
}

// fused_weighted_cam's weights (B, K) and bias (B,) as pointers and element strides, for both kernels:
// weights[b, k] at w[b * w_b + k * w_k], bias[b] at bias[b * bias_b]. Null (strides 0) where the tensor is
// undefined: the gradient methods have no weights, and a map may have no bias.
template <typename acc_t>
struct WeightedInputs {
  const acc_t* w = nullptr;
  int64_t w_b = 0, w_k = 0;
  const acc_t* bias = nullptr;
  int64_t bias_b = 0;
};

template <typename acc_t>
WeightedInputs<acc_t> weighted_inputs(const at::Tensor& weights, const at::Tensor& bias) {
  WeightedInputs<acc_t> in;
  if (weights.defined()) {
    in.w = weights.const_data_ptr<acc_t>();
    in.w_b = weights.stride(0);
    in.w_k = weights.stride(1);
  }
  if (bias.defined()) {
    in.bias = bias.const_data_ptr<acc_t>();
    in.bias_b = bias.stride(0);
  }
  return in;
}

}  // namespace sportsnet

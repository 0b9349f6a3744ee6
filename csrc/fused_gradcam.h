// The per-element math of fused_gradcam and fused_weighted_cam, shared by the CPU kernel
// (cpu/fused_gradcam_kernel.h) and the CUDA kernel (cuda/fused_gradcam.cu): what the CPU tests prove
// about these functions holds for the GPU.
//
// A = activations, G = gradients, both (B, K, h, w); sums run over the h*w positions of one map.
//   gradcam    w_k = mean(G_k)                                     map = ReLU(sum_k w_k A_k)
//   gradcam++  w_k = sum(alpha * ReLU(G_k)),
//              alpha = G^2 / (2 G^2 + sum(A_k) G^3 + 1e-6), 0 where G = 0
//   xgradcam   w_k = sum(A_k G_k) / (sum(A_k) + eps)
//   hirescam   map = ReLU(sum_k G_k A_k)
//   layercam   map = ReLU(sum_k ReLU(G_k) A_k)
//   gradcam-elementwise  map = ReLU(sum_k ReLU(G_k A_k))   (pytorch-grad-cam's GradCAMElementWise)
// and, for the sibling op fused_weighted_cam (CamMethod::Weighted, not a method name of fused_gradcam),
// weights given by the caller and a per-map bias, no gradients:
//   weighted   map = ReLU(sum_k weights[b, k] A_k + bias[b])
// then bilinear resizing with torch.nn.functional.interpolate's align_corners=False semantics and,
// optionally, per-map (x - min) / (max - min + eps * max(|min|, |max|)) with near-constant maps set to
// zero. The eps is relative: a CAM is defined up to a positive scale (logits times a temperature scale
// every map), so its normalised map must not depend on that scale, also for maps of 1e-9.
//
// Non-finite values are never hidden (the contract the reference, sportsnet/ops/reference.py, states
// too): NaN passes through every step (ReLU and the [0, 1] clamp return a NaN operand), so a raw map
// holds NaN/inf where IEEE arithmetic puts them (which neighbours a resize spreads them to may differ
// from interpolate's); a normalised map whose unresized map holds any NaN or inf is NaN everywhere.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SPORTSNET_HD __host__ __device__ __forceinline__
#else
#define SPORTSNET_HD inline
#endif

namespace sportsnet {

enum class CamMethod : int {
  GradCAM = 0,
  GradCAMPlusPlus = 1,
  XGradCAM = 2,
  HiResCAM = 3,
  LayerCAM = 4,
  GradCAMElementWise = 5,
  Weighted = 6,  // fused_weighted_cam: channel weights (and a bias) from the caller
};

// pytorch-grad-cam's constant in the Grad-CAM++ alpha denominator; with it our maps match theirs.
constexpr double kGradCamPlusPlusEps = 1e-6;
// A resized map whose range is within this fraction of its magnitude is rounding noise: zeros.
constexpr double kFlatTolerance = 1e-5;

// Channel weights computed from sums over each channel's positions (a first pass over the planes).
SPORTSNET_HD constexpr bool computes_channel_weights(CamMethod m) {
  return m == CamMethod::GradCAM || m == CamMethod::GradCAMPlusPlus || m == CamMethod::XGradCAM;
}

// The map is sum_k w_k A_k, with computed or given weights: the contribution pass reads A only.
SPORTSNET_HD constexpr bool uses_channel_weights(CamMethod m) {
  return computes_channel_weights(m) || m == CamMethod::Weighted;
}

// max(x, 0) that keeps NaN (as torch.relu does): x < 0 is false for NaN, so NaN is returned. GCC emits
// a compare and a mask, as for the NaN-dropping `0 < x ? x : 0` (checked with GCC 12, -O3 -mavx2).
template <typename acc_t>
SPORTSNET_HD acc_t relu(acc_t x) {
  return x < acc_t(0) ? acc_t(0) : x;
}

// Whether x is neither NaN nor infinite (x - x is 0 for finite x, NaN otherwise), without <cmath>.
template <typename acc_t>
SPORTSNET_HD bool is_finite(acc_t x) {
  return x - x == acc_t(0);
}

// Sums over one channel's positions, gathered in a first pass.
template <typename acc_t>
struct ChannelSums {
  acc_t a = 0, g = 0, ag = 0;
  SPORTSNET_HD void add(acc_t av, acc_t gv) {
    a += av;
    g += gv;
    ag += av * gv;
  }
  SPORTSNET_HD void merge(const ChannelSums& o) {
    a += o.a;
    g += o.g;
    ag += o.ag;
  }
};

// Grad-CAM++: alpha * ReLU(g) at one position, given the channel's activation sum (a second pass),
// for a channel whose sum is finite. There "alpha = 0 where g = 0" needs no select: the numerator is 0
// and the denominator exactly 1e-6, and ReLU(g) is 0 as well. Branch-free, so CPU loops vectorise
// (compilers will not speculate a division past a branch, nor keep one in a vector loop that a select
// follows: measured 6x slower).
template <typename acc_t>
SPORTSNET_HD acc_t gradcampp_term(acc_t g, acc_t sum_a) {
  const acc_t g2 = g * g;
  const acc_t g3 = g2 * g;
  return g2 / (acc_t(2) * g2 + sum_a * g3 + acc_t(kGradCamPlusPlusEps)) * relu(g);
}

// The same for any sum: a channel whose sum overflowed to inf would give 0 / (inf * 0) = NaN where g = 0,
// and the reference has 0 there; the select says so. CPU kernels use it only for channels (or,
// channels-last, chunks of channels) with such a sum.
template <typename acc_t>
SPORTSNET_HD acc_t gradcampp_term_any(acc_t g, acc_t sum_a) {
  const acc_t term = gradcampp_term(g, sum_a);
  return g == acc_t(0) ? acc_t(0) : term;
}

// The channel weight w_k from the first-pass sums (and, for Grad-CAM++, the second-pass sum).
template <typename acc_t>
SPORTSNET_HD acc_t channel_weight(CamMethod m, const ChannelSums<acc_t>& s, acc_t pp_sum, int64_t hw, acc_t eps) {
  switch (m) {
    case CamMethod::GradCAM: return s.g / acc_t(hw);
    case CamMethod::GradCAMPlusPlus: return pp_sum;
    case CamMethod::XGradCAM: return s.ag / (s.a + eps);
    default: return acc_t(0);
  }
}

// What one channel adds to the map at one position (before the final ReLU).
template <typename acc_t>
SPORTSNET_HD acc_t contribution(CamMethod m, acc_t w, acc_t a, acc_t g) {
  switch (m) {
    case CamMethod::HiResCAM: return g * a;
    case CamMethod::LayerCAM: return relu(g) * a;
    case CamMethod::GradCAMElementWise: return relu(g * a);
    default: return w * a;  // the channel-weighted methods, Weighted included
  }
}

// One output coordinate of linear interpolation along an axis, exactly as PyTorch's upsample with
// align_corners=False and no scale factor: src = (dst + 0.5) * in/out - 0.5, clamped at 0.
template <typename acc_t>
struct LinearTap {
  int64_t i0, i1;
  acc_t l0, l1;
};

template <typename acc_t>
SPORTSNET_HD acc_t axis_scale(int64_t in_size, int64_t out_size) {
  return acc_t(in_size) / acc_t(out_size);
}

template <typename acc_t>
SPORTSNET_HD LinearTap<acc_t> linear_tap(int64_t dst, int64_t in_size, acc_t scale) {
  acc_t src = scale * (acc_t(dst) + acc_t(0.5)) - acc_t(0.5);
  if (src < acc_t(0)) src = acc_t(0);
  int64_t i0 = static_cast<int64_t>(src);  // floor: src >= 0
  if (i0 > in_size - 1) i0 = in_size - 1;
  const int64_t i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
  acc_t l1 = src - acc_t(i0);
  l1 = l1 < acc_t(0) ? acc_t(0) : (l1 > acc_t(1) ? acc_t(1) : l1);
  return {i0, i1, acc_t(1) - l1, l1};
}

// Vertical blend of one input column: the first half of a bilinear sample.
template <typename acc_t>
SPORTSNET_HD acc_t blend_rows(const acc_t* map, int64_t w, const LinearTap<acc_t>& y, int64_t x) {
  return y.l0 * map[y.i0 * w + x] + y.l1 * map[y.i1 * w + x];
}

// Bilinear sample of a (h, w) map with row stride w: vertical blends, then horizontal. Kernels that
// blend a whole row first and then interpolate along it compute the same operations in the same order.
template <typename acc_t>
SPORTSNET_HD acc_t bilinear(const acc_t* map, int64_t w, const LinearTap<acc_t>& y, const LinearTap<acc_t>& x) {
  return x.l0 * blend_rows(map, w, y, x.i0) + x.l1 * blend_rows(map, w, y, x.i1);
}

// Whether output row/column `i` can hold a resized map's minimum or maximum: it is the first or
// last output position interpolating inside its input cell (the value is bilinear in the two
// interpolation weights within a cell, so extremes over the sampled grid sit at those positions).
template <typename acc_t>
SPORTSNET_HD bool is_extreme_candidate(int64_t i, int64_t out_size, int64_t in_size, acc_t scale) {
  if (i == 0 || i == out_size - 1) return true;
  const int64_t cell = linear_tap(i, in_size, scale).i0;
  return cell != linear_tap(i - 1, in_size, scale).i0 || cell != linear_tap(i + 1, in_size, scale).i0;
}

template <typename acc_t>
SPORTSNET_HD acc_t abs_value(acc_t x) {
  return x < acc_t(0) ? -x : x;
}

// A map whose range is only rounding noise (or exactly constant) normalises to zeros.
template <typename acc_t>
SPORTSNET_HD bool is_flat(acc_t lo, acc_t hi) {
  const acc_t mag = abs_value(lo) > abs_value(hi) ? abs_value(lo) : abs_value(hi);
  return hi - lo <= acc_t(kFlatTolerance) * mag;
}

// (v - lo) / (hi - lo + eps * mag), written as a multiply by the precomputed scale; clamped into [0, 1]
// with NaN kept (1 < NaN is false). A map with a non-finite value gets lo = inv_range = NaN: all NaN.
template <typename acc_t>
SPORTSNET_HD acc_t normalized(acc_t v, acc_t lo, acc_t inv_range) {
  const acc_t r = relu((v - lo) * inv_range);
  return acc_t(1) < r ? acc_t(1) : r;
}

template <typename acc_t>
SPORTSNET_HD acc_t inverse_range(acc_t lo, acc_t hi, acc_t eps) {
  const acc_t mag = abs_value(lo) > abs_value(hi) ? abs_value(lo) : abs_value(hi);
  return is_flat(lo, hi) ? acc_t(0) : acc_t(1) / (hi - lo + eps * mag);
}

}  // namespace sportsnet

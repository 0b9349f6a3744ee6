// The CPU kernel of sportsnet::fused_gradcam and sportsnet::fused_weighted_cam (CamMethod::Weighted:
// channel weights and a bias given, no gradients), as templates in namespace sportsnet::SPORTSNET_CPU_NS.
// Included by cpu/kernel_default.cpp (baseline ISA) and cpu/kernel_avx2.cpp (AVX2 + FMA), which must
// include kernel_deps.h *before* any target pragma so library inline functions keep the baseline ISA.
//
// The plan of the CPU operator (this is its one description; fused_gradcam.cpp points here). Memory
// traffic: no (B, H, W) intermediate at the output size, and the output written once.
//  1. channel pass, parallel over (map, channel chunk); small batches split the channels into more
//     chunks, so every thread has work. Each chunk adds its channels' contributions to its own small
//     partial map (h*w values). Grad-CAM, Grad-CAM++ and XGrad-CAM first reduce each channel's h*w
//     positions to its weight w_k; HiResCAM, LayerCAM and Grad-CAM element-wise need no weights;
//     Weighted reads w_k from the given (B, K) weights. The channel-weighted methods (Weighted
//     included) read only A in the contribution pass; Weighted never reads G at all.
//     - spatially contiguous planes (NCHW): channels in groups of four, their weights first, then one
//       pass adding all four while their planes are still in cache, so A and G are read from memory
//       once;
//     - channels-last (channel stride 1, K > 1): loops over pixels with the channel loop innermost,
//       one pass for the chunk's sums (two for Grad-CAM++), then one for the contributions;
//     - any other strides: the NCHW loops, reading through the strides.
//  2. partial maps summed in a fixed order (deterministic), plus the map's bias (Weighted), ReLU -> cam
//     (B, h*w).
//  3. only when normalising: the exact min/max of the resized map from a few samples. A bilinear
//     sample is bilinear in its two interpolation weights within one input cell, so the extremes over
//     the output grid lie on the first or last output row/column of each cell (at most 2h x 2w
//     samples, not H x W).
//  4. one write pass: rows blended vertically once, then runs of output columns that share a cell
//     interpolate horizontally with contiguous weights (vectorisable); when normalising, into a row
//     buffer that one full-width loop then normalises (short clamped loops per run are slow under AVX2).
#include "kernel_deps.h"

#ifndef SPORTSNET_CPU_NS
#error "define SPORTSNET_CPU_NS before including fused_gradcam_kernel.h"
#endif

namespace sportsnet {
namespace SPORTSNET_CPU_NS {

// One channel's h*w values, read either as a dense plane or through arbitrary strides.
template <typename scalar_t>
struct DensePlane {
  const scalar_t* p;
  scalar_t operator[](int64_t i) const { return p[i]; }
};

template <typename scalar_t>
struct StridedPlane {
  const scalar_t* p;
  int64_t w, sy, sx;
  scalar_t operator[](int64_t i) const { return p[(i / w) * sy + (i % w) * sx]; }
};

// Sums over a plane with L independent accumulators, so the loop vectorises without reassociation.
// L = 32 (four AVX2 vectors) keeps the adds from forming one dependent chain (X-Grad-CAM: -26%
// measured at 14 x 14); small planes (7 x 7 = 49) use L = 8, or most of the plane is scalar tail.
// Only the sums method m needs are gathered, except that A is always read here: streaming A through
// this plain read loop before the contribution loop re-reads it measured 16% faster for Grad-CAM
// than touching A first in the contribution loop (which also loads and stores the partial map).
template <CamMethod m, int L, typename acc_t, typename Plane>
ChannelSums<acc_t> plane_sums(const Plane& a, const Plane& g, int64_t n) {
  constexpr bool need_g = m == CamMethod::GradCAM;
  constexpr bool need_ag = m == CamMethod::XGradCAM;
  acc_t sa[L] = {}, sg[L] = {}, sag[L] = {};
  int64_t p = 0;
  for (; p + L <= n; p += L) {
    for (int l = 0; l < L; ++l) {
      sa[l] += acc_t(a[p + l]);
      if constexpr (need_g) sg[l] += acc_t(g[p + l]);
      if constexpr (need_ag) sag[l] += acc_t(a[p + l]) * acc_t(g[p + l]);
    }
  }
  ChannelSums<acc_t> s;
  for (int l = 0; l < L; ++l) {
    s.a += sa[l];
    s.g += sg[l];
    s.ag += sag[l];
  }
  for (; p < n; ++p) s.add(acc_t(a[p]), acc_t(g[p]));
  return s;
}

template <typename acc_t, typename Plane>
acc_t plane_gradcampp_sum(const Plane& g, int64_t n, acc_t sum_a) {
  if (!is_finite(sum_a)) {  // rare (an overflowed or non-finite channel): the select, unvectorised
    acc_t s = 0;
    for (int64_t p = 0; p < n; ++p) s += gradcampp_term_any(acc_t(g[p]), sum_a);
    return s;
  }
  constexpr int L = 8;
  acc_t lanes[L] = {};
  int64_t p = 0;
  for (; p + L <= n; p += L)
    for (int l = 0; l < L; ++l) lanes[l] += gradcampp_term(acc_t(g[p + l]), sum_a);
  acc_t s = 0;
  for (int l = 0; l < L; ++l) s += lanes[l];
  for (; p < n; ++p) s += gradcampp_term(acc_t(g[p]), sum_a);
  return s;
}

template <CamMethod m, int L, typename acc_t, typename Plane>
acc_t plane_weight(const Plane& a, const Plane& g, int64_t hw, acc_t eps) {
  if constexpr (!computes_channel_weights(m)) {
    return acc_t(0);
  } else {
    const ChannelSums<acc_t> s = plane_sums<m, L, acc_t>(a, g, hw);
    const acc_t pp = m == CamMethod::GradCAMPlusPlus ? plane_gradcampp_sum(g, hw, s.a) : acc_t(0);
    return channel_weight(m, s, pp, hw, eps);
  }
}

// fused_weighted_cam's channel weights for one map, from its first channel on: given[c] is channel c's
// (the (B, K) tensor's row, any stride). Unused (null) for the gradient methods.
template <typename acc_t>
struct GivenWeights {
  const acc_t* p = nullptr;
  int64_t stride = 0;
  acc_t operator[](int64_t c) const { return p[c * stride]; }
};

// Channel c's weight: given (Weighted), computed from its planes (Grad-CAM, ++, XGrad-CAM), else unused (0).
template <CamMethod m, int L, typename acc_t, typename PlaneOf>
acc_t weight_of(const PlaneOf& plane, int64_t c, const GivenWeights<acc_t>& given, int64_t hw, acc_t eps) {
  if constexpr (m == CamMethod::Weighted) {
    return given[c];
  } else {
    return plane_weight<m, L, acc_t>(plane.a(c), plane.g(c), hw, eps);
  }
}

// One channel's contribution at position i of its planes (or at a[i], g[i] through pointers). The
// channel-weighted methods load A only: G is not read (for Weighted, `g` is a stand-in for A).
template <CamMethod m, typename acc_t, typename AV, typename GV>
acc_t term(acc_t wk, const AV& a, const GV& g, int64_t i) {
  if constexpr (uses_channel_weights(m)) {
    return contribution(m, wk, acc_t(a[i]), acc_t(0));
  } else {
    return contribution(m, acc_t(0), acc_t(a[i]), acc_t(g[i]));
  }
}

// Adds channels [0, n) (planes from plane(c)) to `partial` (h*w values, row-major). Channels go in
// groups of 4: their weights first, then one pass adding all four, so `partial` is loaded and stored
// once per group while the four planes are still in L1. The method is a template argument, so every
// loop is specialised (no per-element switch).
template <CamMethod m, int L, typename acc_t, typename PlaneOf>
void add_channels_plane_lanes(const PlaneOf& plane, int64_t n, int64_t hw, acc_t eps, const GivenWeights<acc_t>& given,
                              acc_t* partial) {
  constexpr int CB = 4;
  int64_t c = 0;
  for (; c + CB <= n; c += CB) {
    const auto a0 = plane.a(c), a1 = plane.a(c + 1), a2 = plane.a(c + 2), a3 = plane.a(c + 3);
    const auto g0 = plane.g(c), g1 = plane.g(c + 1), g2 = plane.g(c + 2), g3 = plane.g(c + 3);
    const acc_t w0 = weight_of<m, L>(plane, c, given, hw, eps), w1 = weight_of<m, L>(plane, c + 1, given, hw, eps);
    const acc_t w2 = weight_of<m, L>(plane, c + 2, given, hw, eps), w3 = weight_of<m, L>(plane, c + 3, given, hw, eps);
    // `partial` is private scratch: it never aliases the inputs, so no runtime alias checks are needed.
#pragma GCC ivdep
    for (int64_t p = 0; p < hw; ++p) {
      partial[p] += term<m>(w0, a0, g0, p) + term<m>(w1, a1, g1, p) + term<m>(w2, a2, g2, p) + term<m>(w3, a3, g3, p);
    }
  }
  for (; c < n; ++c) {
    const auto a = plane.a(c), g = plane.g(c);
    const acc_t wk = weight_of<m, L>(plane, c, given, hw, eps);
#pragma GCC ivdep
    for (int64_t p = 0; p < hw; ++p) partial[p] += term<m>(wk, a, g, p);
  }
}

template <CamMethod m, typename acc_t, typename PlaneOf>
void add_channels_plane(const PlaneOf& plane, int64_t n, int64_t hw, acc_t eps, const GivenWeights<acc_t>& given,
                        acc_t* partial) {
  if (hw >= 64) {
    add_channels_plane_lanes<m, 32>(plane, n, hw, eps, given, partial);
  } else {
    add_channels_plane_lanes<m, 8>(plane, n, hw, eps, given, partial);
  }
}

// Plane factories over a channel range: dense (NCHW) planes or arbitrary strides.
template <typename scalar_t>
struct DensePlanes {
  const scalar_t *A, *G;
  int64_t ska, skg;
  DensePlane<scalar_t> a(int64_t c) const { return {A + c * ska}; }
  DensePlane<scalar_t> g(int64_t c) const { return {G + c * skg}; }
};

template <typename scalar_t>
struct StridedPlanes {
  const scalar_t *A, *G;
  Strides sa, sg;
  int64_t w;
  StridedPlane<scalar_t> a(int64_t c) const { return {A + c * sa.k, w, sa.y, sa.x}; }
  StridedPlane<scalar_t> g(int64_t c) const { return {G + c * sg.k, w, sg.y, sg.x}; }
};

// Channels [k0, k1) of one map when channels are contiguous (channels-last): loops over pixels, with
// the channel loop innermost. `scratch` holds 4 * (k1 - k0) values.
template <CamMethod m, typename scalar_t, typename acc_t>
void add_channels_pixel_major(const scalar_t* A, const scalar_t* G, Strides sa, Strides sg, int64_t h, int64_t w,
                              int64_t n, acc_t eps, const GivenWeights<acc_t>& given, acc_t* partial,
                              acc_t* scratch) {
  acc_t* sum_a = scratch;
  acc_t* sum_g = scratch + n;
  acc_t* sum_ag = scratch + 2 * n;
  acc_t* wk = scratch + 3 * n;
  std::fill(scratch, scratch + 4 * n, acc_t(0));
  if constexpr (m == CamMethod::Weighted) {
    for (int64_t c = 0; c < n; ++c) wk[c] = given[c];
  } else if constexpr (computes_channel_weights(m)) {
    for (int64_t i = 0; i < h; ++i) {
      for (int64_t j = 0; j < w; ++j) {
        const scalar_t* ap = A + i * sa.y + j * sa.x;
        const scalar_t* gp = G + i * sg.y + j * sg.x;
        for (int64_t c = 0; c < n; ++c) {
          const acc_t av = acc_t(ap[c]), gv = acc_t(gp[c]);
          sum_a[c] += av;
          sum_g[c] += gv;
          sum_ag[c] += av * gv;
        }
      }
    }
    if constexpr (m == CamMethod::GradCAMPlusPlus) {  // wk holds the alpha sums until it is overwritten below
      bool finite = true;
      for (int64_t c = 0; c < n; ++c) finite &= is_finite(sum_a[c]);
      for (int64_t i = 0; i < h; ++i)
        for (int64_t j = 0; j < w; ++j) {
          const scalar_t* gp = G + i * sg.y + j * sg.x;
          if (finite) {  // the vectorised loop; the select only where a channel's sum is not finite
            for (int64_t c = 0; c < n; ++c) wk[c] += gradcampp_term(acc_t(gp[c]), sum_a[c]);
          } else {
            for (int64_t c = 0; c < n; ++c) wk[c] += gradcampp_term_any(acc_t(gp[c]), sum_a[c]);
          }
        }
    }
    for (int64_t c = 0; c < n; ++c) {
      ChannelSums<acc_t> s;
      s.a = sum_a[c];
      s.g = sum_g[c];
      s.ag = sum_ag[c];
      wk[c] = channel_weight(m, s, wk[c], h * w, eps);
    }
  }
  for (int64_t i = 0; i < h; ++i) {
    for (int64_t j = 0; j < w; ++j) {
      const scalar_t* ap = A + i * sa.y + j * sa.x;
      const scalar_t* gp = G + i * sg.y + j * sg.x;
      constexpr int L = 8;
      acc_t v[L] = {};
      int64_t c = 0;
      for (; c + L <= n; c += L)
        for (int l = 0; l < L; ++l) v[l] += term<m>(wk[c + l], ap, gp, c + l);
      acc_t total = 0;
      for (int l = 0; l < L; ++l) total += v[l];
      for (; c < n; ++c) total += term<m>(wk[c], ap, gp, c);
      partial[i * w + j] += total;
    }
  }
}

// Output rows/columns where a resized map can attain its extremes (see is_extreme_candidate).
template <typename acc_t>
std::vector<int64_t> extreme_candidates(int64_t out_size, int64_t in_size, acc_t scale) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < out_size; ++i)
    if (is_extreme_candidate(i, out_size, in_size, scale)) out.push_back(i);
  return out;
}

// `weights` and `bias` (Weighted only; bias may be undefined): see kernel_isa.h. For Weighted, G is A.
template <CamMethod m, typename scalar_t>
void fused_gradcam_cpu_kernel(const at::Tensor& A, const at::Tensor& G, const at::Tensor& weights,
                              const at::Tensor& bias, int64_t H, int64_t W, bool normalize, double eps_d,
                              at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = A.size(0), K = A.size(1), h = A.size(2), w = A.size(3), hw = h * w;
  if (B == 0) return;
  const acc_t eps = static_cast<acc_t>(eps_d);
  const scalar_t* a_ptr = A.const_data_ptr<scalar_t>();
  const scalar_t* g_ptr = G.const_data_ptr<scalar_t>();
  const Strides sa = strides_of(A), sg = strides_of(G);
  const bool pixel_major = K > 1 && sa.k == 1 && sg.k == 1;
  const bool dense = sa.x == 1 && sa.y == w && sg.x == 1 && sg.y == w;
  const WeightedInputs<acc_t> weighted = weighted_inputs<acc_t>(weights, bias);

  // 1. channel pass. Small batches split the channels too, so every thread has work.
  const int64_t threads = at::get_num_threads();
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(K, (2 * threads + B - 1) / B));
  std::vector<acc_t> partial(B * chunks * hw, acc_t(0));
  at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / chunks, c = item % chunks;
      const int64_t k0 = c * K / chunks, k1 = (c + 1) * K / chunks;
      acc_t* part = partial.data() + item * hw;
      const scalar_t* a_b = a_ptr + b * sa.b;
      const scalar_t* g_b = g_ptr + b * sg.b;
      GivenWeights<acc_t> given;
      if constexpr (m == CamMethod::Weighted) {
        given = {weighted.w + b * weighted.w_b + k0 * weighted.w_k, weighted.w_k};
      }
      if (pixel_major) {
        scratch.resize(4 * (k1 - k0));
        add_channels_pixel_major<m>(a_b + k0, g_b + k0, sa, sg, h, w, k1 - k0, eps, given, part, scratch.data());
      } else if (dense) {
        add_channels_plane<m>(DensePlanes<scalar_t>{a_b + k0 * sa.k, g_b + k0 * sg.k, sa.k, sg.k}, k1 - k0, hw, eps,
                              given, part);
      } else {
        add_channels_plane<m>(StridedPlanes<scalar_t>{a_b + k0 * sa.k, g_b + k0 * sg.k, sa, sg, w}, k1 - k0, hw, eps,
                              given, part);
      }
    }
  });

  // 2. chunks summed in order, the bias added (after the channel sum, as the reference does), ReLU.
  std::vector<acc_t> cam(B * hw);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const acc_t bias_b = weighted.bias != nullptr ? weighted.bias[b * weighted.bias_b] : acc_t(0);
      for (int64_t p = 0; p < hw; ++p) {
        acc_t s = 0;
        for (int64_t c = 0; c < chunks; ++c) s += partial[(b * chunks + c) * hw + p];
        cam[b * hw + p] = relu(weighted.bias != nullptr ? s + bias_b : s);
      }
    }
  });

  // Interpolation taps, shared by every map.
  std::vector<LinearTap<acc_t>> ty(H), tx(W);
  const acc_t scale_y = axis_scale<acc_t>(h, H), scale_x = axis_scale<acc_t>(w, W);
  for (int64_t i = 0; i < H; ++i) ty[i] = linear_tap(i, h, scale_y);
  for (int64_t j = 0; j < W; ++j) tx[j] = linear_tap(j, w, scale_x);
  std::vector<acc_t> lx0(W), lx1(W);
  std::vector<int64_t> run_starts;  // output columns where a new input cell begins, plus W
  for (int64_t j = 0; j < W; ++j) {
    lx0[j] = tx[j].l0;
    lx1[j] = tx[j].l1;
    if (j == 0 || tx[j].i0 != tx[j - 1].i0) run_starts.push_back(j);
  }
  run_starts.push_back(W);

  // 3. per-map min/max from the candidate samples (NaN for a map with a non-finite value: see
  //    fused_gradcam.h).
  std::vector<acc_t> lo(B, acc_t(0)), inv(B, acc_t(1));
  if (normalize) {
    const std::vector<int64_t> rows = extreme_candidates(H, h, scale_y), cols = extreme_candidates(W, w, scale_x);
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        acc_t mn = std::numeric_limits<acc_t>::infinity(), mx = -std::numeric_limits<acc_t>::infinity();
        for (int64_t i : rows)
          for (int64_t j : cols) {
            const acc_t v = bilinear(cam.data() + b * hw, w, ty[i], tx[j]);
            mn = std::min(mn, v);
            mx = std::max(mx, v);
          }
        bool finite = true;  // the unresized map: where a NaN or inf would show up in the resized one
        for (int64_t p = 0; p < hw; ++p) finite &= is_finite(cam[b * hw + p]);
        lo[b] = finite ? mn : std::numeric_limits<acc_t>::quiet_NaN();
        inv[b] = finite ? inverse_range(mn, mx, eps) : std::numeric_limits<acc_t>::quiet_NaN();
      }
    });
  }

  // 4. write.
  acc_t* o = out.data_ptr<acc_t>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(W, 1));
  at::parallel_for(0, B * H, grain, [&](int64_t r0, int64_t r1) {
    std::vector<acc_t> row(w), line(normalize ? W : 0);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / H, i = r % H;
      const acc_t* cb = cam.data() + b * hw;
      acc_t* orow = o + r * W;
      if (H == h && W == w) {  // a copy, as interpolate does at the same size (a zero weight would spread NaN)
        for (int64_t j = 0; j < W; ++j) orow[j] = normalize ? normalized(cb[i * w + j], lo[b], inv[b]) : cb[i * w + j];
        continue;
      }
      const LinearTap<acc_t>& y = ty[i];
      for (int64_t x = 0; x < w; ++x) row[x] = blend_rows(cb, w, y, x);
      // Short runs of columns share one input cell: interpolate them with contiguous weights into
      // the output row (raw maps) or a row buffer that one full-width loop then normalises.
      acc_t* dst = normalize ? line.data() : orow;
      for (size_t run = 0; run + 1 < run_starts.size(); ++run) {
        const int64_t j0 = run_starts[run], j1 = run_starts[run + 1];
        const acc_t v0 = row[tx[j0].i0], v1 = row[tx[j0].i1];
        for (int64_t j = j0; j < j1; ++j) dst[j] = lx0[j] * v0 + lx1[j] * v1;
      }
      if (normalize) {
        const acc_t lo_b = lo[b], inv_b = inv[b];
        for (int64_t j = 0; j < W; ++j) orow[j] = normalized(line[j], lo_b, inv_b);
      }
    }
  });
}

// Entry point of this ISA variant: dtype and method dispatch.
inline void run(const at::Tensor& A, const at::Tensor& G, const at::Tensor& weights, const at::Tensor& bias, int64_t H,
                int64_t W, CamMethod m, bool normalize, double eps, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, A.scalar_type(), "fused_gradcam_cpu", [&] {
    const auto go = [&](auto method) {
      fused_gradcam_cpu_kernel<decltype(method)::value, scalar_t>(A, G, weights, bias, H, W, normalize, eps, out);
    };
    switch (m) {
      case CamMethod::GradCAM: go(std::integral_constant<CamMethod, CamMethod::GradCAM>{}); break;
      case CamMethod::GradCAMPlusPlus: go(std::integral_constant<CamMethod, CamMethod::GradCAMPlusPlus>{}); break;
      case CamMethod::XGradCAM: go(std::integral_constant<CamMethod, CamMethod::XGradCAM>{}); break;
      case CamMethod::HiResCAM: go(std::integral_constant<CamMethod, CamMethod::HiResCAM>{}); break;
      case CamMethod::LayerCAM: go(std::integral_constant<CamMethod, CamMethod::LayerCAM>{}); break;
      case CamMethod::GradCAMElementWise:
        go(std::integral_constant<CamMethod, CamMethod::GradCAMElementWise>{});
        break;
      case CamMethod::Weighted: go(std::integral_constant<CamMethod, CamMethod::Weighted>{}); break;
    }
  });
}

}  // namespace SPORTSNET_CPU_NS
}  // namespace sportsnet

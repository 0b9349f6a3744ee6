// sportsnet::fused_gradcam and sportsnet::fused_weighted_cam, CUDA kernel. Same plan as the CPU kernel
// (cpu/fused_gradcam_kernel.h), with the per-element arithmetic from fused_gradcam.h. The method is a
// template parameter, so each pass loads only the tensors its method needs:
//
//   method      weight pass          second pass     contribution pass     A and G from DRAM
//   gradcam     G (mean)             -               A (w_k A_k)           once each
//   gradcam++   A (sum)              G (alpha sum)   A                     once each (A again from L1/L2)
//   xgradcam    A and G (sums)       -               A                     once each
//   hirescam    -                    -               A and G               once each
//   layercam    -                    -               A and G               once each
//   gradcam-elementwise  -           -               A and G               once each
//   weighted    the given weights    -               A (w_k A_k)           A once; G never (none is given)
//
// fused_weighted_cam (CamMethod::Weighted) passes A in G's place (never read) and adds its per-map bias
// in cam_and_range, after the channel sum and before the ReLU.
//
// Where both passes read A (Grad-CAM++, XGrad-CAM), the contribution pass re-reads the chunk's channels
// soon after the weight pass (from L2 while a chunk's planes fit there, as at 7x7 to 56x56). Other
// traffic: a partial map per chunk (1/32 of the input's elements at 32 channels per chunk, 1/8 at 8),
// and the output written once.
//
//  0. plan_axes        2 blocks, once per call: each output row/column's interpolation taps (int32
//                      indices, weights from the host's scale: no division per pixel) and the ordered
//                      list of rows/columns that can hold a resized map's min/max (fused_gradcam.h).
//  1. channel_pass_*   grid (channel chunks, B): per-channel weights, then the chunk's contribution to
//                      each position -> partial (B, chunks, h*w). Separate kernels for spatially
//                      contiguous planes (NCHW) and for channels-last, so loads coalesce in both; other
//                      strides use the plane kernel's generic path. Small batches use chunks of 16 or 8
//                      channels instead of 32, so the grid has blocks for every SM (at most 64 chunks:
//                      step 2 adds them one after another).
//  2. cam_and_range    grid B: chunks summed in a fixed order (deterministic), plus the bias, ReLU -> cam; min/max of
//                      the resized map over the candidate rows x columns, spread over the whole block.
//  3. resize_write     grid (W/128, H/8, maps): four output pixels per thread, 16-byte stores when W % 4
//                      == 0 and the output is 16-byte aligned.
// Batches go in slices of maps that bound the partial-map scratch to kScratchBytes (or one map's worth,
// if larger) and the grid's third dimension to 65535.
// Half/bfloat16 inputs are loaded as such and accumulated in float; float64 stays float64.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "../fused_gradcam.h"
#include "../fused_gradcam_op.h"

namespace sportsnet {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxChunk = 32;  // channels per block in the channel pass, at most (one per lane in channels-last)
constexpr int kMinChunk = 8;
constexpr int kVector = 4;                      // output pixels per thread in resize_write
constexpr int64_t kMaxMaps = 65535;             // gridDim.y / gridDim.z limit
constexpr int64_t kScratchBytes = int64_t(64) << 20;  // partial maps + cam of one slice of the batch

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T positive_infinity();
template <>
__device__ __forceinline__ float positive_infinity<float>() {
  return __int_as_float(0x7f800000);
}
template <>
__device__ __forceinline__ double positive_infinity<double>() {
  return __longlong_as_double(0x7ff0000000000000LL);
}

template <typename T>
__device__ __forceinline__ T quiet_nan();
template <>
__device__ __forceinline__ float quiet_nan<float>() {
  return __int_as_float(0x7fc00000);
}
template <>
__device__ __forceinline__ double quiet_nan<double>() {
  return __longlong_as_double(0x7ff8000000000000LL);
}

// Four consecutive outputs in one 16-byte-aligned store (two for double).
__device__ __forceinline__ void store4(float* p, const float (&v)[kVector]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store4(double* p, const double (&v)[kVector]) {
  reinterpret_cast<double2*>(p)[0] = make_double2(v[0], v[1]);
  reinterpret_cast<double2*>(p)[1] = make_double2(v[2], v[3]);
}

// Offset of position p (row-major over h x w) inside one channel's plane.
template <bool kDense>
__device__ __forceinline__ int64_t plane_offset(int p, int w, const Strides& s) {
  return kDense ? p : static_cast<int64_t>(p / w) * s.y + static_cast<int64_t>(p % w) * s.x;
}

// One position's share of a channel's first-pass sums, loading only what method m's weight uses:
// Grad-CAM sum(G); Grad-CAM++ sum(A); XGrad-CAM sum(A) and sum(A G).
template <CamMethod m, typename acc_t, typename scalar_t>
__device__ __forceinline__ void add_sums(ChannelSums<acc_t>& s, const scalar_t* a, const scalar_t* g) {
  if constexpr (m == CamMethod::GradCAM) {
    s.g += acc_t(*g);
  } else if constexpr (m == CamMethod::XGradCAM) {
    const acc_t av = acc_t(*a);
    s.a += av;
    s.ag += av * acc_t(*g);
  } else {
    s.a += acc_t(*a);
  }
}

// One position's contribution from one channel: w_k A for the weighted methods (A only), else from A and G.
// The channel-weighted methods (Weighted included) never dereference g.
template <CamMethod m, typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t channel_term(acc_t wk, const scalar_t* a, const scalar_t* g) {
  if constexpr (uses_channel_weights(m)) {
    return contribution(m, wk, acc_t(*a), acc_t(0));
  } else {
    return contribution(m, acc_t(0), acc_t(*a), acc_t(*g));
  }
}

// Spatially contiguous (or arbitrarily strided) planes: one warp per channel for the weights (or the
// given weights, for Weighted: wts[b * swb + k * swk]), then the block's threads over positions, each
// adding the chunk's channels in order.
template <typename scalar_t, typename acc_t, CamMethod m, bool kDense>
__global__ void __launch_bounds__(kThreads) channel_pass_planes(
    const scalar_t* __restrict__ A, const scalar_t* __restrict__ G, Strides sa, Strides sg, int K, int chunk_size,
    int h, int w, acc_t eps, const acc_t* __restrict__ wts, int64_t swb, int64_t swk, acc_t* __restrict__ partial) {
  const int chunk = blockIdx.x, chunks = gridDim.x;
  const int64_t b = blockIdx.y;
  const int k0 = chunk * chunk_size, n = min(chunk_size, K - k0), hw = h * w;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const scalar_t* Ab = A + b * sa.b + k0 * sa.k;
  const scalar_t* Gb = G + b * sg.b + k0 * sg.k;
  __shared__ acc_t weight[kMaxChunk];

  if constexpr (m == CamMethod::Weighted) {
    const acc_t* wb = wts + b * swb + static_cast<int64_t>(k0) * swk;
    for (int c = threadIdx.x; c < n; c += kThreads) weight[c] = wb[c * swk];
    __syncthreads();
  } else if constexpr (computes_channel_weights(m)) {
    for (int c = warp; c < n; c += kWarps) {  // warp-uniform: lanes stride over the channel's positions
      const scalar_t* a = Ab + c * sa.k;
      const scalar_t* g = Gb + c * sg.k;
      ChannelSums<acc_t> s;
      for (int p = lane; p < hw; p += 32) add_sums<m>(s, a + plane_offset<kDense>(p, w, sa), g + plane_offset<kDense>(p, w, sg));
      s.a = warp_sum(s.a);
      s.g = warp_sum(s.g);
      s.ag = warp_sum(s.ag);
      acc_t pp = 0;
      if constexpr (m == CamMethod::GradCAMPlusPlus) {
        for (int p = lane; p < hw; p += 32) pp += gradcampp_term_any(acc_t(g[plane_offset<kDense>(p, w, sg)]), s.a);
        pp = warp_sum(pp);
      }
      if (lane == 0) weight[c] = channel_weight(m, s, pp, hw, eps);
    }
    __syncthreads();
  }
  for (int p = threadIdx.x; p < hw; p += kThreads) {
    const int64_t oa = plane_offset<kDense>(p, w, sa), og = plane_offset<kDense>(p, w, sg);
    acc_t v = 0;
    for (int c = 0; c < n; ++c) {
      const acc_t wk = uses_channel_weights(m) ? weight[c] : acc_t(0);
      v += channel_term<m>(wk, Ab + c * sa.k + oa, Gb + c * sg.k + og);
    }
    partial[(b * chunks + chunk) * hw + p] = v;
  }
}

// Channels-last (channel stride 1): `lanes` (8, 16 or 32, a power of two) consecutive threads hold one
// pixel's `lanes` channels, so each group's loads are contiguous; the block's groups split the positions.
template <typename scalar_t, typename acc_t, CamMethod m>
__global__ void __launch_bounds__(kThreads) channel_pass_pixels(
    const scalar_t* __restrict__ A, const scalar_t* __restrict__ G, Strides sa, Strides sg, int K, int lanes,
    int h, int w, acc_t eps, const acc_t* __restrict__ wts, int64_t swb, int64_t swk, acc_t* __restrict__ partial) {
  const int chunk = blockIdx.x, chunks = gridDim.x;
  const int64_t b = blockIdx.y;
  const int k0 = chunk * lanes, hw = h * w;
  const int lane = threadIdx.x & (lanes - 1), group = threadIdx.x / lanes, groups = kThreads / lanes;
  const bool valid = k0 + lane < K;
  const int k = k0 + (valid ? lane : 0);  // an invalid lane's pointer stays inside the tensor (never read)
  const scalar_t* Ab = A + b * sa.b + k;
  const scalar_t* Gb = G + b * sg.b + k;
  __shared__ acc_t red[3][kThreads];  // [sum][group * lanes + lane]
  __shared__ acc_t sum_a[kMaxChunk];
  __shared__ acc_t weight[kMaxChunk];

  if constexpr (computes_channel_weights(m)) {
    ChannelSums<acc_t> s;
    if (valid)
      for (int p = group; p < hw; p += groups) {
        const int i = p / w, j = p % w;
        add_sums<m>(s, Ab + i * sa.y + j * sa.x, Gb + i * sg.y + j * sg.x);
      }
    red[0][threadIdx.x] = s.a;
    red[1][threadIdx.x] = s.g;
    red[2][threadIdx.x] = s.ag;
    __syncthreads();
    if (threadIdx.x < lanes) {
      ChannelSums<acc_t> t;
      for (int v = 0; v < groups; ++v) {  // fixed order: deterministic
        ChannelSums<acc_t> part;
        part.a = red[0][v * lanes + lane];
        part.g = red[1][v * lanes + lane];
        part.ag = red[2][v * lanes + lane];
        t.merge(part);
      }
      sum_a[lane] = t.a;
      weight[lane] = channel_weight(m, t, acc_t(0), hw, eps);
    }
    __syncthreads();
    if constexpr (m == CamMethod::GradCAMPlusPlus) {
      acc_t pp = 0;
      if (valid)
        for (int p = group; p < hw; p += groups) {
          const int i = p / w, j = p % w;
          pp += gradcampp_term_any(acc_t(Gb[i * sg.y + j * sg.x]), sum_a[lane]);
        }
      red[0][threadIdx.x] = pp;
      __syncthreads();
      if (threadIdx.x < lanes) {
        acc_t t = 0;
        for (int v = 0; v < groups; ++v) t += red[0][v * lanes + lane];
        const ChannelSums<acc_t> unused;
        weight[lane] = channel_weight(m, unused, t, hw, eps);
      }
      __syncthreads();
    }
  }
  acc_t wk = acc_t(0);  // this lane's channel weight (unused by the element-wise methods)
  if constexpr (m == CamMethod::Weighted) {
    if (valid) wk = wts[b * swb + static_cast<int64_t>(k) * swk];  // each thread its own channel's: no barrier
  } else if constexpr (computes_channel_weights(m)) {
    wk = weight[lane];
  }
  // Positions in warp-uniform steps (every lane reaches the shuffles): warp `warp` covers groups
  // warp * per_warp ... + per_warp - 1 of each step of `groups` positions.
  const int warp = threadIdx.x / 32, per_warp = 32 / lanes, sub = (threadIdx.x % 32) / lanes;
  for (int base = warp * per_warp; base < hw; base += groups) {
    const int p = base + sub;
    acc_t v = 0;
    if (valid && p < hw) {
      const int i = p / w, j = p % w;
      v = channel_term<m>(wk, Ab + i * sa.y + j * sa.x, Gb + i * sg.y + j * sg.x);
    }
    for (int o = lanes / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);  // within the group
    if (lane == 0 && p < hw) partial[(b * chunks + chunk) * hw + p] = v;
  }
}

// One axis of the resize: taps of every output index, and the indices that can hold an extreme.
template <typename acc_t>
struct AxisPlan {
  int in_size, out_size;
  acc_t scale;  // in_size / out_size, computed on the host
  int* i0;
  int* i1;
  acc_t* l0;
  acc_t* l1;
  int* candidates;  // ordered; count in *count
  int* count;

  __device__ __forceinline__ LinearTap<acc_t> tap(int i) const { return {i0[i], i1[i], l0[i], l1[i]}; }
};

// Block 0 plans the rows, block 1 the columns. The candidate list is compacted in order with warp
// ballots (block-uniform loop, so every thread reaches each barrier).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads) plan_axes(AxisPlan<acc_t> rows, AxisPlan<acc_t> cols) {
  const AxisPlan<acc_t>& ax = blockIdx.x == 0 ? rows : cols;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __shared__ int warp_count[kWarps];
  int base = 0;  // the same in every thread
  for (int start = 0; start < ax.out_size; start += kThreads) {
    const int i = start + threadIdx.x;
    bool candidate = false;
    if (i < ax.out_size) {
      const LinearTap<acc_t> t = linear_tap<acc_t>(i, ax.in_size, ax.scale);
      ax.i0[i] = static_cast<int>(t.i0);
      ax.i1[i] = static_cast<int>(t.i1);
      ax.l0[i] = t.l0;
      ax.l1[i] = t.l1;
      candidate = is_extreme_candidate<acc_t>(i, ax.out_size, ax.in_size, ax.scale);
    }
    const unsigned ballot = __ballot_sync(0xffffffffu, candidate);
    if (lane == 0) warp_count[warp] = __popc(ballot);
    __syncthreads();
    int offset = base;
    for (int v = 0; v < warp; ++v) offset += warp_count[v];
    if (candidate) ax.candidates[offset + __popc(ballot & ((1u << lane) - 1u))] = i;
    for (int v = 0; v < kWarps; ++v) base += warp_count[v];
    __syncthreads();  // warp_count is rewritten in the next step
  }
  if (threadIdx.x == 0) *ax.count = base;
}

// `bias` (fused_weighted_cam's, bias[b * sbias]) is null when there is none.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads) cam_and_range(const acc_t* __restrict__ partial, int chunks, int h, int w,
                                                          const acc_t* __restrict__ bias, int64_t sbias,
                                                          bool normalize, acc_t eps, AxisPlan<acc_t> rows,
                                                          AxisPlan<acc_t> cols, acc_t* __restrict__ cam,
                                                          acc_t* __restrict__ lo, acc_t* __restrict__ inv) {
  const int64_t b = blockIdx.x;
  const int hw = h * w;
  acc_t* cam_b = cam + b * hw;
  const bool has_bias = bias != nullptr;
  const acc_t bias_b = has_bias ? bias[b * sbias] : acc_t(0);
  bool finite = true;
  for (int p = threadIdx.x; p < hw; p += kThreads) {
    acc_t s = 0;
    for (int c = 0; c < chunks; ++c) s += partial[(b * chunks + c) * hw + p];
    cam_b[p] = relu(has_bias ? s + bias_b : s);
    finite &= is_finite(cam_b[p]);
  }
  if (!normalize) return;  // the same for every thread of the block
  // A barrier (cam_b is complete and visible to the block) that also tells whether every value of the
  // unresized map is finite: a map with a NaN or inf normalises to NaN everywhere (fused_gradcam.h).
  const bool all_finite = __syncthreads_and(finite);

  acc_t mn = positive_infinity<acc_t>(), mx = -positive_infinity<acc_t>();
  const int nr = *rows.count, nc = *cols.count;
  const int64_t total = static_cast<int64_t>(nr) * nc;
  for (int64_t t = threadIdx.x; t < total; t += kThreads) {  // every candidate (row, column) pair
    const int r = static_cast<int>(t / nc), c = static_cast<int>(t - static_cast<int64_t>(r) * nc);
    const acc_t v = bilinear(cam_b, w, rows.tap(rows.candidates[r]), cols.tap(cols.candidates[c]));
    mn = v < mn ? v : mn;
    mx = v > mx ? v : mx;
  }
  for (int o = 16; o > 0; o >>= 1) {
    const acc_t omn = __shfl_xor_sync(0xffffffffu, mn, o), omx = __shfl_xor_sync(0xffffffffu, mx, o);
    mn = omn < mn ? omn : mn;
    mx = omx > mx ? omx : mx;
  }
  __shared__ acc_t smn[kWarps], smx[kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    smn[warp] = mn;
    smx[warp] = mx;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int v = 1; v < kWarps; ++v) {
      mn = smn[v] < mn ? smn[v] : mn;
      mx = smx[v] > mx ? smx[v] : mx;
    }
    lo[b] = all_finite ? mn : quiet_nan<acc_t>();
    inv[b] = all_finite ? inverse_range(mn, mx, eps) : quiet_nan<acc_t>();
  }
}

// Block (32, 8): thread (x, y) writes output pixels 4x .. 4x + 3 of row y. kAligned: W % 4 == 0 and the
// output 16-byte aligned, so the four go out in one vector store.
template <typename acc_t, bool kAligned>
__global__ void __launch_bounds__(kThreads) resize_write(const acc_t* __restrict__ cam, int h, int w, bool normalize,
                                                         AxisPlan<acc_t> rows, AxisPlan<acc_t> cols,
                                                         const acc_t* __restrict__ lo, const acc_t* __restrict__ inv,
                                                         acc_t* __restrict__ out) {
  const int H = rows.out_size, W = cols.out_size;
  const int i = blockIdx.y * blockDim.y + threadIdx.y;
  const int j0 = (blockIdx.x * blockDim.x + threadIdx.x) * kVector;
  const int64_t b = blockIdx.z;
  if (i >= H || j0 >= W) return;
  const acc_t* cam_b = cam + b * h * w;
  const bool copy = H == h && W == w;  // a copy, as interpolate does at the same size (a zero weight would spread NaN)
  const LinearTap<acc_t> ty = rows.tap(i);
  const acc_t l = normalize ? lo[b] : acc_t(0), s = normalize ? inv[b] : acc_t(0);
  acc_t v[kVector];
#pragma unroll
  for (int q = 0; q < kVector; ++q) {
    const int j = min(j0 + q, W - 1);  // past the row's end: computed, not stored
    const acc_t x = copy ? cam_b[static_cast<int64_t>(i) * w + j] : bilinear(cam_b, w, ty, cols.tap(j));
    v[q] = normalize ? normalized(x, l, s) : x;
  }
  acc_t* row = out + (b * H + i) * static_cast<int64_t>(W);
  if (kAligned) {
    store4(row + j0, v);
  } else {
#pragma unroll
    for (int q = 0; q < kVector; ++q)
      if (j0 + q < W) row[j0 + q] = v[q];
  }
}

// Channels per block: 32, or fewer when the batch is too small to give every SM two blocks, as long as
// a map has at most kMaxChunks partial maps (cam_and_range adds them serially per position).
constexpr int64_t kMaxChunks = 64;
int chunk_size_for(int64_t B, int64_t K) {
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  int size = kMaxChunk;
  while (size > kMinChunk && B * ((K + size - 1) / size) < 2 * static_cast<int64_t>(sms) &&
         (K + size / 2 - 1) / (size / 2) <= kMaxChunks)
    size /= 2;
  return size;
}

// `weights` and `bias`: fused_weighted_cam's (m == Weighted, G is then A and never read), as in
// cpu/kernel_isa.h; undefined tensors otherwise (and for no bias).
template <typename scalar_t, CamMethod m>
void launch(const at::Tensor& A, const at::Tensor& G, const at::Tensor& weights, const at::Tensor& bias, int64_t H,
            int64_t W, bool normalize, double eps_d, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = A.size(0), K = A.size(1), h = A.size(2), w = A.size(3);
  if (B == 0) return;
  // int loop counters step past h*w, H and W by up to kThreads; grid rows are 8 output rows each.
  TORCH_CHECK(h * w <= INT32_MAX - kThreads && K <= INT32_MAX - kMaxChunk && H <= 65535 * 8 &&
                  W <= INT32_MAX - kThreads,
              m == CamMethod::Weighted ? "fused_weighted_cam" : "fused_gradcam",
              " (CUDA): sizes too large: activations ", A.sizes(), ", output (", H, ", ", W,
              "); supported: h*w <= ", INT32_MAX - kThreads, ", K <= ", INT32_MAX - kMaxChunk, ", H <= ",
              65535 * 8, ", W <= ", INT32_MAX - kThreads);
  const acc_t eps = static_cast<acc_t>(eps_d);
  const Strides sa = strides_of(A), sg = strides_of(G);
  const WeightedInputs<acc_t> weighted = weighted_inputs<acc_t>(weights, bias);
  const bool pixels = K > 1 && sa.k == 1 && sg.k == 1;
  const bool dense = sa.x == 1 && sa.y == w && sg.x == 1 && sg.y == w;
  const int chunk_size = chunk_size_for(B, K);
  const int chunks = static_cast<int>(std::max<int64_t>(1, (K + chunk_size - 1) / chunk_size));  // K = 0: one empty
  const int64_t per_map = (chunks + 1) * h * w * static_cast<int64_t>(sizeof(acc_t));
  const int64_t slice = std::min({B, kMaxMaps, std::max<int64_t>(1, kScratchBytes / per_map)});

  const auto opts = A.options().dtype(out.scalar_type());
  at::Tensor partial = at::empty({slice * chunks * h * w}, opts);
  at::Tensor cam = at::empty({slice * h * w}, opts);
  at::Tensor range = at::empty({2, slice}, opts);
  at::Tensor index = at::empty({3 * (H + W) + 2}, A.options().dtype(at::kInt));
  at::Tensor tap_weights = at::empty({2 * (H + W)}, opts);  // interpolation weights (not the channel weights)
  int* ip = index.mutable_data_ptr<int>();
  acc_t* wp = tap_weights.mutable_data_ptr<acc_t>();
  const AxisPlan<acc_t> rows{static_cast<int>(h), static_cast<int>(H), axis_scale<acc_t>(h, H), ip, ip + H,
                             wp, wp + H, ip + 2 * H, ip + 3 * (H + W)};
  const AxisPlan<acc_t> cols{static_cast<int>(w), static_cast<int>(W), axis_scale<acc_t>(w, W), ip + 3 * H,
                             ip + 3 * H + W, wp + 2 * H, wp + 2 * H + W, ip + 3 * H + 2 * W, ip + 3 * (H + W) + 1};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  plan_axes<acc_t><<<2, kThreads, 0, stream>>>(rows, cols);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  acc_t* part = partial.mutable_data_ptr<acc_t>();
  acc_t* cam_ptr = cam.mutable_data_ptr<acc_t>();
  acc_t* lo_ptr = range.mutable_data_ptr<acc_t>();
  acc_t* inv_ptr = lo_ptr + slice;
  for (int64_t start = 0; start < B; start += slice) {  // scratch reused: the stream orders the slices
    const int64_t n = std::min(slice, B - start);
    const scalar_t* a = A.const_data_ptr<scalar_t>() + start * sa.b;
    const scalar_t* g = G.const_data_ptr<scalar_t>() + start * sg.b;
    const acc_t* wt = weighted.w != nullptr ? weighted.w + start * weighted.w_b : nullptr;
    const acc_t* bs = weighted.bias != nullptr ? weighted.bias + start * weighted.bias_b : nullptr;
    const dim3 grid1(chunks, static_cast<unsigned>(n));
    if (pixels) {
      channel_pass_pixels<scalar_t, acc_t, m><<<grid1, kThreads, 0, stream>>>(
          a, g, sa, sg, static_cast<int>(K), chunk_size, h, w, eps, wt, weighted.w_b, weighted.w_k, part);
    } else if (dense) {
      channel_pass_planes<scalar_t, acc_t, m, true><<<grid1, kThreads, 0, stream>>>(
          a, g, sa, sg, static_cast<int>(K), chunk_size, h, w, eps, wt, weighted.w_b, weighted.w_k, part);
    } else {
      channel_pass_planes<scalar_t, acc_t, m, false><<<grid1, kThreads, 0, stream>>>(
          a, g, sa, sg, static_cast<int>(K), chunk_size, h, w, eps, wt, weighted.w_b, weighted.w_k, part);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    cam_and_range<acc_t><<<static_cast<unsigned>(n), kThreads, 0, stream>>>(
        part, chunks, h, w, bs, weighted.bias_b, normalize, eps, rows, cols, cam_ptr, lo_ptr, inv_ptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    acc_t* o = out.mutable_data_ptr<acc_t>() + start * H * W;
    const dim3 block3(32, 8);
    const dim3 grid3((W + 32 * kVector - 1) / (32 * kVector), (H + 7) / 8, static_cast<unsigned>(n));
    if (W % kVector == 0 && reinterpret_cast<std::uintptr_t>(o) % 16 == 0) {
      resize_write<acc_t, true><<<grid3, block3, 0, stream>>>(cam_ptr, h, w, normalize, rows, cols, lo_ptr, inv_ptr, o);
    } else {
      resize_write<acc_t, false><<<grid3, block3, 0, stream>>>(cam_ptr, h, w, normalize, rows, cols, lo_ptr, inv_ptr, o);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename scalar_t>
void launch_method(const at::Tensor& A, const at::Tensor& G, const at::Tensor& weights, const at::Tensor& bias,
                   int64_t H, int64_t W, CamMethod m, bool normalize, double eps, at::Tensor& out) {
  switch (m) {
#define SPORTSNET_LAUNCH(M) \
  case CamMethod::M: return launch<scalar_t, CamMethod::M>(A, G, weights, bias, H, W, normalize, eps, out);
    SPORTSNET_LAUNCH(GradCAM)
    SPORTSNET_LAUNCH(GradCAMPlusPlus)
    SPORTSNET_LAUNCH(XGradCAM)
    SPORTSNET_LAUNCH(HiResCAM)
    SPORTSNET_LAUNCH(LayerCAM)
    SPORTSNET_LAUNCH(GradCAMElementWise)
    SPORTSNET_LAUNCH(Weighted)
#undef SPORTSNET_LAUNCH
  }
}

void fused_gradcam_out_cuda(const at::Tensor& activations, const at::Tensor& gradients, at::IntArrayRef size,
                            c10::string_view method, bool normalize, double eps, at::Tensor& out) {
  const at::ScalarType dtype = check_inputs(activations, gradients, size, eps);
  const CamMethod m = parse_method(method);
  check_out(out, activations, size, dtype);
  const c10::cuda::CUDAGuard guard(activations.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, activations.scalar_type(), "fused_gradcam_cuda", [&] {
    launch_method<scalar_t>(activations, gradients, at::Tensor(), at::Tensor(), size[0], size[1], m, normalize, eps,
                            out);
  });
}

at::Tensor fused_gradcam_cuda(const at::Tensor& activations, const at::Tensor& gradients, at::IntArrayRef size,
                              c10::string_view method, bool normalize, double eps) {
  const at::ScalarType dtype = check_inputs(activations, gradients, size, eps);
  at::Tensor out = at::empty({activations.size(0), size[0], size[1]}, activations.options().dtype(dtype));
  fused_gradcam_out_cuda(activations, gradients, size, method, normalize, eps, out);
  return out;
}

void fused_weighted_cam_out_cuda(const at::Tensor& activations, const at::Tensor& weights,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef size, bool normalize,
                                 double eps, at::Tensor& out) {
  const at::ScalarType dtype = check_weighted_inputs(activations, weights, bias, size, eps);
  check_out(out, activations, size, dtype, "fused_weighted_cam");
  const c10::cuda::CUDAGuard guard(activations.device());
  const at::Tensor b = bias_or_undefined(bias);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, activations.scalar_type(), "fused_weighted_cam_cuda", [&] {
    launch<scalar_t, CamMethod::Weighted>(activations, activations, weights, b, size[0], size[1], normalize, eps, out);
  });
}

at::Tensor fused_weighted_cam_cuda(const at::Tensor& activations, const at::Tensor& weights,
                                   const std::optional<at::Tensor>& bias, at::IntArrayRef size, bool normalize,
                                   double eps) {
  const at::ScalarType dtype = check_weighted_inputs(activations, weights, bias, size, eps);
  at::Tensor out = at::empty({activations.size(0), size[0], size[1]}, activations.options().dtype(dtype));
  fused_weighted_cam_out_cuda(activations, weights, bias, size, normalize, eps, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sportsnet, CUDA, m) {
  m.impl("fused_gradcam", &fused_gradcam_cuda);
  m.impl("fused_gradcam.out", &fused_gradcam_out_cuda);
  m.impl("fused_weighted_cam", &fused_weighted_cam_cuda);
  m.impl("fused_weighted_cam.out", &fused_weighted_cam_out_cuda);
}

}  // namespace sportsnet

// sportsnet::fused_gradcam, CUDA kernel. Same plan as the CPU kernel (cpu/fused_gradcam_kernel.h), with
// the per-element arithmetic from fused_gradcam.h. Bytes moved: A and G read once from DRAM (the
// contribution pass re-reads a 32-channel slice that the weight pass just brought into L1/L2), a
// partial map per 32 channels (~1/32 of the input), and the output written once.
//
//  1. channel_pass_*   grid (channel chunks, B): per-channel weights by warp reductions, then the
//                      chunk's contribution to each position -> partial (B, chunks, h*w).
//                      Separate kernels for spatially contiguous planes (NCHW) and for channels-last,
//                      so loads coalesce in both; other strides use the plane kernel's generic path.
//  2. cam_and_range    grid B: chunks summed in a fixed order (deterministic), ReLU -> cam; min/max
//                      of the resized map from the candidate rows/columns only.
//  3. resize_write     grid (W/32, H/8, B): one thread per output pixel, coalesced stores.
// Half/bfloat16 inputs are loaded as such and accumulated in float; float64 stays float64.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "../fused_gradcam.h"
#include "../fused_gradcam_op.h"

namespace sportsnet {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 32;  // channels per block in the channel pass (one per lane in channels-last)

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

// Offset of position p (row-major over h x w) inside one channel's plane.
template <bool kDense>
__device__ __forceinline__ int64_t plane_offset(int p, int w, const Strides& s) {
  return kDense ? p : static_cast<int64_t>(p / w) * s.y + static_cast<int64_t>(p % w) * s.x;
}

template <typename scalar_t, typename acc_t, bool kDense>
__global__ void __launch_bounds__(kThreads) channel_pass_planes(
    const scalar_t* __restrict__ A, const scalar_t* __restrict__ G, Strides sa, Strides sg, int K, int h, int w,
    CamMethod m, acc_t eps, acc_t* __restrict__ partial) {
  const int chunk = blockIdx.x, chunks = gridDim.x;
  const int64_t b = blockIdx.y;
  const int k0 = chunk * kChunk, n = min(kChunk, K - k0), hw = h * w;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const scalar_t* Ab = A + b * sa.b + k0 * sa.k;
  const scalar_t* Gb = G + b * sg.b + k0 * sg.k;
  __shared__ acc_t weight[kChunk];

  if (uses_channel_weights(m)) {
    for (int c = warp; c < n; c += kWarps) {  // one warp per channel; lanes stride over positions
      const scalar_t* a = Ab + c * sa.k;
      const scalar_t* g = Gb + c * sg.k;
      ChannelSums<acc_t> s;
      for (int p = lane; p < hw; p += 32) s.add(acc_t(a[plane_offset<kDense>(p, w, sa)]), acc_t(g[plane_offset<kDense>(p, w, sg)]));
      s.a = warp_sum(s.a);
      s.g = warp_sum(s.g);
      s.ag = warp_sum(s.ag);
      acc_t pp = 0;
      if (m == CamMethod::GradCAMPlusPlus) {
        for (int p = lane; p < hw; p += 32) pp += gradcampp_term(acc_t(g[plane_offset<kDense>(p, w, sg)]), s.a);
        pp = warp_sum(pp);
      }
      if (lane == 0) weight[c] = channel_weight(m, s, pp, hw, eps);
    }
  }
  __syncthreads();
  const bool weighted = uses_channel_weights(m);
  for (int p = threadIdx.x; p < hw; p += kThreads) {
    const int64_t oa = plane_offset<kDense>(p, w, sa), og = plane_offset<kDense>(p, w, sg);
    acc_t v = 0;
    for (int c = 0; c < n; ++c)
      v += contribution(m, weighted ? weight[c] : acc_t(0), acc_t(Ab[c * sa.k + oa]), acc_t(Gb[c * sg.k + og]));
    partial[(b * chunks + chunk) * hw + p] = v;
  }
}

// Channels-last (channel stride 1): lane c handles channel k0 + c; warps split the positions.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) channel_pass_pixels(
    const scalar_t* __restrict__ A, const scalar_t* __restrict__ G, Strides sa, Strides sg, int K, int h, int w,
    CamMethod m, acc_t eps, acc_t* __restrict__ partial) {
  const int chunk = blockIdx.x, chunks = gridDim.x;
  const int64_t b = blockIdx.y;
  const int k0 = chunk * kChunk, hw = h * w;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const bool valid = k0 + lane < K;
  const scalar_t* Ab = A + b * sa.b + k0 + lane;
  const scalar_t* Gb = G + b * sg.b + k0 + lane;
  __shared__ acc_t red[3][kWarps][kChunk];
  __shared__ acc_t sum_a[kChunk];
  __shared__ acc_t weight[kChunk];

  if (uses_channel_weights(m)) {
    ChannelSums<acc_t> s;
    if (valid)
      for (int p = warp; p < hw; p += kWarps) {
        const int i = p / w, j = p % w;
        s.add(acc_t(Ab[i * sa.y + j * sa.x]), acc_t(Gb[i * sg.y + j * sg.x]));
      }
    red[0][warp][lane] = s.a;
    red[1][warp][lane] = s.g;
    red[2][warp][lane] = s.ag;
    __syncthreads();
    if (warp == 0) {
      ChannelSums<acc_t> t;
      for (int v = 0; v < kWarps; ++v) {  // fixed order: deterministic
        ChannelSums<acc_t> part;
        part.a = red[0][v][lane];
        part.g = red[1][v][lane];
        part.ag = red[2][v][lane];
        t.merge(part);
      }
      sum_a[lane] = t.a;
      weight[lane] = channel_weight(m, t, acc_t(0), hw, eps);
    }
    __syncthreads();
    if (m == CamMethod::GradCAMPlusPlus) {
      acc_t pp = 0;
      if (valid)
        for (int p = warp; p < hw; p += kWarps) {
          const int i = p / w, j = p % w;
          pp += gradcampp_term(acc_t(Gb[i * sg.y + j * sg.x]), sum_a[lane]);
        }
      red[0][warp][lane] = pp;
      __syncthreads();
      if (warp == 0) {
        acc_t t = 0;
        for (int v = 0; v < kWarps; ++v) t += red[0][v][lane];
        ChannelSums<acc_t> unused;
        weight[lane] = channel_weight(m, unused, t, hw, eps);
      }
      __syncthreads();
    }
  }
  const acc_t wk = uses_channel_weights(m) ? weight[lane] : acc_t(0);
  for (int p = warp; p < hw; p += kWarps) {  // one warp per position, lanes over channels
    const int i = p / w, j = p % w;
    acc_t v = valid ? contribution(m, wk, acc_t(Ab[i * sa.y + j * sa.x]), acc_t(Gb[i * sg.y + j * sg.x])) : acc_t(0);
    v = warp_sum(v);
    if (lane == 0) partial[(b * chunks + chunk) * hw + p] = v;
  }
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads) cam_and_range(const acc_t* __restrict__ partial, int chunks, int h, int w,
                                                          int H, int W, bool normalize, acc_t eps,
                                                          acc_t* __restrict__ cam, acc_t* __restrict__ lo,
                                                          acc_t* __restrict__ inv) {
  const int64_t b = blockIdx.x;
  const int hw = h * w;
  acc_t* cam_b = cam + b * hw;
  bool finite = true;
  for (int p = threadIdx.x; p < hw; p += kThreads) {
    acc_t s = 0;
    for (int c = 0; c < chunks; ++c) s += partial[(b * chunks + c) * hw + p];
    cam_b[p] = relu(s);
    finite &= is_finite(cam_b[p]);
  }
  if (!normalize) return;  // the same for every thread of the block
  // A barrier (cam_b is complete and visible to the block) that also tells whether every value of the
  // unresized map is finite: a map with a NaN or inf normalises to NaN everywhere (fused_gradcam.h).
  const bool all_finite = __syncthreads_and(finite);

  const acc_t sy = axis_scale<acc_t>(h, H), sx = axis_scale<acc_t>(w, W);
  acc_t mn = positive_infinity<acc_t>(), mx = -positive_infinity<acc_t>();
  for (int i = threadIdx.x; i < H; i += kThreads) {
    if (!is_extreme_candidate<acc_t>(i, H, h, sy)) continue;
    const LinearTap<acc_t> ty = linear_tap<acc_t>(i, h, sy);
    for (int j = 0; j < W; ++j) {
      if (!is_extreme_candidate<acc_t>(j, W, w, sx)) continue;
      const acc_t v = bilinear(cam_b, w, ty, linear_tap<acc_t>(j, w, sx));
      mn = v < mn ? v : mn;
      mx = v > mx ? v : mx;
    }
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

template <typename acc_t>
__global__ void resize_write(const acc_t* __restrict__ cam, int h, int w, int H, int W, bool normalize,
                             const acc_t* __restrict__ lo, const acc_t* __restrict__ inv, acc_t* __restrict__ out) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  const int i = blockIdx.y * blockDim.y + threadIdx.y;
  const int64_t b = blockIdx.z;
  if (i >= H || j >= W) return;
  acc_t v;
  if (H == h && W == w) {  // a copy, as interpolate does at the same size (a zero weight would spread NaN)
    v = cam[(b * h + i) * w + j];
  } else {
    const LinearTap<acc_t> ty = linear_tap<acc_t>(i, h, axis_scale<acc_t>(h, H));
    const LinearTap<acc_t> tx = linear_tap<acc_t>(j, w, axis_scale<acc_t>(w, W));
    v = bilinear(cam + b * h * w, w, ty, tx);
  }
  out[(b * H + i) * W + j] = normalize ? normalized(v, lo[b], inv[b]) : v;
}

template <typename scalar_t>
void launch(const at::Tensor& A, const at::Tensor& G, int64_t H, int64_t W, CamMethod m, bool normalize, double eps_d,
            at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = A.size(0), K = A.size(1), h = A.size(2), w = A.size(3);
  if (B == 0) return;
  constexpr int64_t kMaxMaps = 65535;  // gridDim.y / gridDim.z limit: larger batches go in slices
  if (B > kMaxMaps) {
    for (int64_t start = 0; start < B; start += kMaxMaps) {
      const int64_t n = std::min(kMaxMaps, B - start);
      at::Tensor slice = out.narrow(0, start, n);
      launch<scalar_t>(A.narrow(0, start, n), G.narrow(0, start, n), H, W, m, normalize, eps_d, slice);
    }
    return;
  }
  TORCH_CHECK(h * w <= INT32_MAX && K <= INT32_MAX - kChunk && H <= 65535 * 8 && W <= INT32_MAX,
              "fused_gradcam (CUDA): sizes too large: activations ", A.sizes(), ", output (", H, ", ", W, ")");
  const acc_t eps = static_cast<acc_t>(eps_d);
  const Strides sa = strides_of(A), sg = strides_of(G);
  const int chunks = static_cast<int>(std::max<int64_t>(1, (K + kChunk - 1) / kChunk));  // K = 0: one empty chunk
  const auto opts = A.options().dtype(out.scalar_type());
  at::Tensor partial = at::empty({B * chunks * h * w}, opts);
  at::Tensor cam = at::empty({B * h * w}, opts);
  at::Tensor lo = at::empty({B}, opts), inv = at::empty({B}, opts);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  const dim3 grid1(chunks, static_cast<unsigned>(B));
  const scalar_t* a = A.const_data_ptr<scalar_t>();
  const scalar_t* g = G.const_data_ptr<scalar_t>();
  acc_t* part = partial.mutable_data_ptr<acc_t>();
  if (K > 1 && sa.k == 1 && sg.k == 1) {
    channel_pass_pixels<scalar_t, acc_t><<<grid1, kThreads, 0, stream>>>(a, g, sa, sg, K, h, w, m, eps, part);
  } else if (sa.x == 1 && sa.y == w && sg.x == 1 && sg.y == w) {
    channel_pass_planes<scalar_t, acc_t, true><<<grid1, kThreads, 0, stream>>>(a, g, sa, sg, K, h, w, m, eps, part);
  } else {
    channel_pass_planes<scalar_t, acc_t, false><<<grid1, kThreads, 0, stream>>>(a, g, sa, sg, K, h, w, m, eps, part);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  acc_t* cam_ptr = cam.mutable_data_ptr<acc_t>();
  acc_t* lo_ptr = lo.mutable_data_ptr<acc_t>();
  acc_t* inv_ptr = inv.mutable_data_ptr<acc_t>();
  cam_and_range<acc_t><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(part, chunks, h, w, H, W, normalize, eps,
                                                                           cam_ptr, lo_ptr, inv_ptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const dim3 block3(32, 8);
  const dim3 grid3((W + 31) / 32, (H + 7) / 8, static_cast<unsigned>(B));
  resize_write<acc_t><<<grid3, block3, 0, stream>>>(cam_ptr, h, w, H, W, normalize, lo_ptr, inv_ptr,
                                                   out.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void fused_gradcam_out_cuda(const at::Tensor& activations, const at::Tensor& gradients, at::IntArrayRef size,
                            c10::string_view method, bool normalize, double eps, at::Tensor& out) {
  const at::ScalarType dtype = check_inputs(activations, gradients, size, eps);
  const CamMethod m = parse_method(method);
  check_out(out, activations, size, dtype);
  const c10::cuda::CUDAGuard guard(activations.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, activations.scalar_type(), "fused_gradcam_cuda", [&] {
    launch<scalar_t>(activations, gradients, size[0], size[1], m, normalize, eps, out);
  });
}

at::Tensor fused_gradcam_cuda(const at::Tensor& activations, const at::Tensor& gradients, at::IntArrayRef size,
                              c10::string_view method, bool normalize, double eps) {
  const at::ScalarType dtype = check_inputs(activations, gradients, size, eps);
  at::Tensor out = at::empty({activations.size(0), size[0], size[1]}, activations.options().dtype(dtype));
  fused_gradcam_out_cuda(activations, gradients, size, method, normalize, eps, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sportsnet, CUDA, m) {
  m.impl("fused_gradcam", &fused_gradcam_cuda);
  m.impl("fused_gradcam.out", &fused_gradcam_out_cuda);
}

}  // namespace sportsnet

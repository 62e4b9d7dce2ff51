// CUDA kernels of kuda_mmsa::ratio_cross_attention (see csrc/ratio_attention.cpp for the
// contract and the schemas).
//
// Forward: FlashAttention-style tiled online softmax. One launch for all B*M*H heads:
// grid (B*M*H, ceil(Lq / TILE)), 256 threads (16 x 16), a TILE of query rows per block,
// K/V tiles staged in shared memory (fp32), fp32 accumulation, exp2-domain softmax.
// Saves the unweighted output (fp32) and the row log-sum-exp (natural log, +inf for a
// fully masked row) for backward.
// Backward: a small kernel computes D = rowsum(dO_attn * O_unweighted) (and the per-row
// terms of dweight); a kv-major kernel owns one K/V tile, loops over the query tiles,
// recomputes P from lse, accumulates dK and dV in registers and adds dQ with fp32 atomics.
// Templated on the head dim D in {16, 32, 64, 128}; any other d <= 128 runs the next larger
// D with zero-padded columns.
//
// fp16/bf16 inputs take the tensor-core kernels of ratio_attention_tc.cu instead when
// KUDA_MMSA_TC=1 (opt-in, sm_80+); the SIMT kernels here stay the default.
// Headers: ATen core and c10/cuda only (no ATen/cuda/CUDAContext.h, no cuBLAS).
#include "ratio_attention_tc.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <cmath>
#include <tuple>

// fp32 / fp16 / bf16 only (check_inputs rejects the rest; no dead double instantiations).
#define KUDA_DISPATCH(TYPE, NAME, ...)                                                     \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)                 \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)              \
                                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

namespace kuda_mmsa {

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& weight,
                  const c10::optional<at::Tensor>& mask);

namespace {

constexpr int kThreads = 256;  // 16 x 16
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <typename T>
__device__ __forceinline__ float to_f(T x) {
  return static_cast<float>(x);
}
template <typename T>
__device__ __forceinline__ T from_f(float x) {
  return static_cast<T>(x);
}

template <int D>
struct Tile {
  static constexpr int value = D >= 128 ? 32 : 64;
};

template <int D, int TILE>
constexpr size_t fwd_smem_bytes() {
  return sizeof(float) * (3 * TILE * (D + 1) + TILE * (TILE + 1) + TILE);
}
template <int D, int TILE>
constexpr size_t bwd_smem_bytes() {
  return sizeof(float) * (4 * TILE * (D + 1) + 2 * TILE * (TILE + 1) + 3 * TILE);
}

// Loads rows [r0, r0 + TILE) of a [L, d] matrix into dst [TILE][D + 1] (fp32, zero padded),
// multiplied by mul.
template <typename T, int D, int TILE>
__device__ __forceinline__ void load_tile(const T* __restrict__ src, float* __restrict__ dst, int r0, int L, int d,
                                          float mul = 1.f) {
  constexpr int LD = D + 1;
  for (int idx = threadIdx.x; idx < TILE * D; idx += kThreads) {
    const int r = idx / D, c = idx - (idx / D) * D;
    float x = 0.f;
    if (r0 + r < L && c < d) x = mul * to_f(src[(size_t)(r0 + r) * d + c]);
    dst[r * LD + c] = x;
  }
}

template <typename T, int D, int TILE>
__global__ void __launch_bounds__(kThreads)
    rca_fwd_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                   const float* __restrict__ w, const bool* __restrict__ mask, T* __restrict__ out,
                   float* __restrict__ o_unw, float* __restrict__ lse, int H, int Lq, int Lk, int d,
                   float scale_log2) {
  constexpr int LD = D + 1, TP = TILE + 1, RM = TILE / 16, CS = TILE / 16, CO = D / 16;
  extern __shared__ float smem[];
  float* Qs = smem;
  float* Ks = Qs + TILE * LD;
  float* Vs = Ks + TILE * LD;
  float* Ps = Vs + TILE * LD;
  float* kbias = Ps + TILE * TP;
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const long bmh = blockIdx.x;
  const long bm = bmh / H;
  const int q0 = blockIdx.y * TILE;
  const T* qh = q + bmh * Lq * d;
  const T* kh = k + bmh * Lk * d;
  const T* vh = v + bmh * Lk * d;
  const bool* mh = mask ? mask + bm * Lk : nullptr;
  const float ninf = -INFINITY;

  load_tile<T, D, TILE>(qh, Qs, q0, Lq, d);
  float m_i[RM], l_i[RM], acc[RM][CO];
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    m_i[i] = ninf;
    l_i[i] = 0.f;
#pragma unroll
    for (int j = 0; j < CO; ++j) acc[i][j] = 0.f;
  }
  for (int k0 = 0; k0 < Lk; k0 += TILE) {
    __syncthreads();  // previous tile fully consumed
    load_tile<T, D, TILE>(kh, Ks, k0, Lk, d);
    load_tile<T, D, TILE>(vh, Vs, k0, Lk, d);
    for (int j = tid; j < TILE; j += kThreads) {
      const int kj = k0 + j;
      kbias[j] = (kj < Lk && !(mh && mh[kj])) ? 0.f : ninf;
    }
    __syncthreads();
    float s[RM][CS];
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int j = 0; j < CS; ++j) s[i][j] = 0.f;
#pragma unroll 8
    for (int c = 0; c < D; ++c) {
      float a[RM], b[CS];
#pragma unroll
      for (int i = 0; i < RM; ++i) a[i] = Qs[(ty + 16 * i) * LD + c];
#pragma unroll
      for (int j = 0; j < CS; ++j) b[j] = Ks[(tx + 16 * j) * LD + c];
#pragma unroll
      for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int j = 0; j < CS; ++j) s[i][j] = fmaf(a[i], b[j], s[i][j]);
    }
#pragma unroll
    for (int i = 0; i < RM; ++i) {
      float mx = ninf;
#pragma unroll
      for (int j = 0; j < CS; ++j) {
        s[i][j] = s[i][j] * scale_log2 + kbias[tx + 16 * j];
        mx = fmaxf(mx, s[i][j]);
      }
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float m_new = fmaxf(m_i[i], mx);
      float alpha = 1.f, rs = 0.f;
      if (m_new == ninf) {
#pragma unroll
        for (int j = 0; j < CS; ++j) s[i][j] = 0.f;
      } else {
        alpha = exp2f(m_i[i] - m_new);
#pragma unroll
        for (int j = 0; j < CS; ++j) {
          s[i][j] = exp2f(s[i][j] - m_new);
          rs += s[i][j];
        }
      }
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) rs += __shfl_xor_sync(0xffffffffu, rs, off);
      l_i[i] = l_i[i] * alpha + rs;
      m_i[i] = m_new;
#pragma unroll
      for (int j = 0; j < CO; ++j) acc[i][j] *= alpha;
#pragma unroll
      for (int j = 0; j < CS; ++j) Ps[(ty + 16 * i) * TP + tx + 16 * j] = s[i][j];
    }
    __syncthreads();
    const int kn = min(TILE, Lk - k0);
    for (int kk = 0; kk < kn; ++kk) {
      float a[RM], b[CO];
#pragma unroll
      for (int i = 0; i < RM; ++i) a[i] = Ps[(ty + 16 * i) * TP + kk];
#pragma unroll
      for (int j = 0; j < CO; ++j) b[j] = Vs[kk * LD + tx + 16 * j];
#pragma unroll
      for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int j = 0; j < CO; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
  }
  const float wv = w[bm];
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const int r = q0 + ty + 16 * i;
    if (r >= Lq) continue;
    const bool any = l_i[i] > 0.f;
    const float inv = any ? 1.f / l_i[i] : 0.f;
    const size_t base = ((size_t)bmh * Lq + r) * d;
#pragma unroll
    for (int j = 0; j < CO; ++j) {
      const int c = tx + 16 * j;
      if (c < d) {
        const float o = acc[i][j] * inv;
        o_unw[base + c] = o;
        out[base + c] = from_f<T>(wv * o);
      }
    }
    if (tx == 0) lse[(size_t)bmh * Lq + r] = any ? (m_i[i] + log2f(l_i[i])) * kLn2 : INFINITY;
  }
}

// One warp per row: rowdot = sum_c dout * o_unw; dvec = weight * rowdot.
template <typename T>
__global__ void rca_bwd_pre_kernel(const T* __restrict__ g, const float* __restrict__ o_unw,
                                   const float* __restrict__ w, float* __restrict__ dvec,
                                   float* __restrict__ rowdot, long rows, int HLq, int d) {
  const long row = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  float acc = 0.f;
  for (int c = lane; c < d; c += 32) acc += to_f(g[row * d + c]) * o_unw[row * d + c];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) {
    rowdot[row] = acc;
    dvec[row] = w[row / HLq] * acc;
  }
}

template <typename T, int D, int TILE>
__global__ void __launch_bounds__(kThreads)
    rca_bwd_kernel(const T* __restrict__ g, const T* __restrict__ q, const T* __restrict__ k,
                   const T* __restrict__ v, const float* __restrict__ w, const bool* __restrict__ mask,
                   const float* __restrict__ lse, const float* __restrict__ dvec, float* __restrict__ dq_acc,
                   T* __restrict__ dk, T* __restrict__ dv, int H, int Lq, int Lk, int d, float scale,
                   float scale_log2) {
  constexpr int LD = D + 1, TP = TILE + 1, RM = TILE / 16, CS = TILE / 16, CO = D / 16;
  extern __shared__ float smem[];
  float* Ks = smem;
  float* Vs = Ks + TILE * LD;
  float* Qs = Vs + TILE * LD;
  float* dOs = Qs + TILE * LD;
  float* PTs = dOs + TILE * LD;
  float* dSTs = PTs + TILE * TP;
  float* lse2s = dSTs + TILE * TP;
  float* Ds = lse2s + TILE;
  float* kvalid = Ds + TILE;
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const long bmh = blockIdx.x;
  const long bm = bmh / H;
  const int k0 = blockIdx.y * TILE;
  const T* qh = q + bmh * Lq * d;
  const T* gh = g + bmh * Lq * d;
  const T* kh = k + bmh * Lk * d;
  const T* vh = v + bmh * Lk * d;
  const bool* mh = mask ? mask + bm * Lk : nullptr;
  const float wv = w[bm];

  load_tile<T, D, TILE>(kh, Ks, k0, Lk, d);
  load_tile<T, D, TILE>(vh, Vs, k0, Lk, d);
  for (int j = tid; j < TILE; j += kThreads) {
    const int kj = k0 + j;
    kvalid[j] = (kj < Lk && !(mh && mh[kj])) ? 1.f : 0.f;
  }
  float dk_acc[RM][CO], dv_acc[RM][CO];
#pragma unroll
  for (int i = 0; i < RM; ++i)
#pragma unroll
    for (int j = 0; j < CO; ++j) {
      dk_acc[i][j] = 0.f;
      dv_acc[i][j] = 0.f;
    }
  for (int q0 = 0; q0 < Lq; q0 += TILE) {
    __syncthreads();
    load_tile<T, D, TILE>(qh, Qs, q0, Lq, d);
    load_tile<T, D, TILE>(gh, dOs, q0, Lq, d, wv);  // dO_attn = weight * dout
    for (int r = tid; r < TILE; r += kThreads) {
      const int qr = q0 + r;
      lse2s[r] = qr < Lq ? lse[(size_t)bmh * Lq + qr] * kLog2e : INFINITY;
      Ds[r] = qr < Lq ? dvec[(size_t)bmh * Lq + qr] : 0.f;
    }
    __syncthreads();
    // S^T[j][r] = K[j] . Q[r] and dP^T[j][r] = V[j] . dO[r]; rows j = ty + 16 i, cols r = tx + 16 jj
    float st[RM][CS], dpt[RM][CS];
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int j = 0; j < CS; ++j) {
        st[i][j] = 0.f;
        dpt[i][j] = 0.f;
      }
#pragma unroll 4
    for (int c = 0; c < D; ++c) {
      float ak[RM], av[RM], bq[CS], bo[CS];
#pragma unroll
      for (int i = 0; i < RM; ++i) {
        ak[i] = Ks[(ty + 16 * i) * LD + c];
        av[i] = Vs[(ty + 16 * i) * LD + c];
      }
#pragma unroll
      for (int j = 0; j < CS; ++j) {
        bq[j] = Qs[(tx + 16 * j) * LD + c];
        bo[j] = dOs[(tx + 16 * j) * LD + c];
      }
#pragma unroll
      for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int j = 0; j < CS; ++j) {
          st[i][j] = fmaf(ak[i], bq[j], st[i][j]);
          dpt[i][j] = fmaf(av[i], bo[j], dpt[i][j]);
        }
    }
#pragma unroll
    for (int i = 0; i < RM; ++i) {
      const int jr = ty + 16 * i;
      const float kv = kvalid[jr];
#pragma unroll
      for (int j = 0; j < CS; ++j) {
        const int r = tx + 16 * j;
        // lse2 = +inf (fully masked row or r >= Lq) gives p = 0.
        const float p = kv * exp2f(fminf(st[i][j] * scale_log2 - lse2s[r], 0.f));
        PTs[jr * TP + r] = p;
        dSTs[jr * TP + r] = p * (dpt[i][j] - Ds[r]);
      }
    }
    __syncthreads();
    // dV[j] += sum_r P^T[j][r] dO[r];  dK[j] += sum_r dS^T[j][r] Q[r]
    const int qn = min(TILE, Lq - q0);
    for (int r = 0; r < qn; ++r) {
      float ap[RM], as[RM], bo[CO], bq[CO];
#pragma unroll
      for (int i = 0; i < RM; ++i) {
        ap[i] = PTs[(ty + 16 * i) * TP + r];
        as[i] = dSTs[(ty + 16 * i) * TP + r];
      }
#pragma unroll
      for (int j = 0; j < CO; ++j) {
        bo[j] = dOs[r * LD + tx + 16 * j];
        bq[j] = Qs[r * LD + tx + 16 * j];
      }
#pragma unroll
      for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int j = 0; j < CO; ++j) {
          dv_acc[i][j] = fmaf(ap[i], bo[j], dv_acc[i][j]);
          dk_acc[i][j] = fmaf(as[i], bq[j], dk_acc[i][j]);
        }
    }
    // dQ[r] += scale * sum_j dS[r][j] K[j]; rows r = ty + 16 i, cols c = tx + 16 jj
    float dq_t[RM][CO];
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int j = 0; j < CO; ++j) dq_t[i][j] = 0.f;
    const int kn = min(TILE, Lk - k0);
    for (int jj = 0; jj < kn; ++jj) {
      float a[RM], b[CO];
#pragma unroll
      for (int i = 0; i < RM; ++i) a[i] = dSTs[jj * TP + ty + 16 * i];
#pragma unroll
      for (int j = 0; j < CO; ++j) b[j] = Ks[jj * LD + tx + 16 * j];
#pragma unroll
      for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int j = 0; j < CO; ++j) dq_t[i][j] = fmaf(a[i], b[j], dq_t[i][j]);
    }
#pragma unroll
    for (int i = 0; i < RM; ++i) {
      const int r = q0 + ty + 16 * i;
      if (r >= Lq) continue;
      float* dst = dq_acc + ((size_t)bmh * Lq + r) * d;
#pragma unroll
      for (int j = 0; j < CO; ++j) {
        const int c = tx + 16 * j;
        if (c < d) atomicAdd(dst + c, scale * dq_t[i][j]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const int kj = k0 + ty + 16 * i;
    if (kj >= Lk) continue;
    const size_t base = ((size_t)bmh * Lk + kj) * d;
#pragma unroll
    for (int j = 0; j < CO; ++j) {
      const int c = tx + 16 * j;
      if (c < d) {
        dk[base + c] = from_f<T>(scale * dk_acc[i][j]);
        dv[base + c] = from_f<T>(dv_acc[i][j]);
      }
    }
  }
}

inline void check_launch() {
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "kuda_mmsa ratio_cross_attention CUDA kernel launch failed: ",
              cudaGetErrorString(err));
}

template <typename KernelT>
inline void set_smem(KernelT kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    TORCH_CHECK(err == cudaSuccess, "kuda_mmsa: cannot reserve ", bytes,
                " bytes of shared memory: ", cudaGetErrorString(err));
  }
}

template <typename T, int D>
void launch_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& w,
                const bool* mask, at::Tensor& out, at::Tensor& o_unw, at::Tensor& lse, float scale,
                cudaStream_t stream) {
  constexpr int TILE = Tile<D>::value;
  const int H = q.size(2), Lq = q.size(3), Lk = k.size(3), d = q.size(4);
  const long BMH = q.size(0) * q.size(1) * q.size(2);
  const size_t smem = fwd_smem_bytes<D, TILE>();
  auto kernel = rca_fwd_kernel<T, D, TILE>;
  set_smem(kernel, smem);
  dim3 grid((unsigned)BMH, (unsigned)((Lq + TILE - 1) / TILE));
  kernel<<<grid, kThreads, smem, stream>>>(
      reinterpret_cast<const T*>(q.data_ptr()), reinterpret_cast<const T*>(k.data_ptr()),
      reinterpret_cast<const T*>(v.data_ptr()), w.data_ptr<float>(), mask, reinterpret_cast<T*>(out.data_ptr()),
      o_unw.data_ptr<float>(), lse.data_ptr<float>(), H, Lq, Lk, d, scale * kLog2e);
  check_launch();
}

template <typename T, int D>
void launch_bwd(const at::Tensor& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& w, const bool* mask, const at::Tensor& lse, const at::Tensor& dvec,
                at::Tensor& dq_acc, at::Tensor& dk, at::Tensor& dv, float scale, cudaStream_t stream) {
  constexpr int TILE = Tile<D>::value;
  const int H = q.size(2), Lq = q.size(3), Lk = k.size(3), d = q.size(4);
  const long BMH = q.size(0) * q.size(1) * q.size(2);
  const size_t smem = bwd_smem_bytes<D, TILE>();
  auto kernel = rca_bwd_kernel<T, D, TILE>;
  set_smem(kernel, smem);
  dim3 grid((unsigned)BMH, (unsigned)((Lk + TILE - 1) / TILE));
  kernel<<<grid, kThreads, smem, stream>>>(
      reinterpret_cast<const T*>(g.data_ptr()), reinterpret_cast<const T*>(q.data_ptr()),
      reinterpret_cast<const T*>(k.data_ptr()), reinterpret_cast<const T*>(v.data_ptr()), w.data_ptr<float>(), mask,
      lse.data_ptr<float>(), dvec.data_ptr<float>(), dq_acc.data_ptr<float>(), reinterpret_cast<T*>(dk.data_ptr()),
      reinterpret_cast<T*>(dv.data_ptr()), H, Lq, Lk, d, scale, scale * kLog2e);
  check_launch();
}

#define KUDA_DISPATCH_D(d, ...)                                   \
  [&] {                                                            \
    if ((d) <= 16) {                                               \
      constexpr int kD = 16;                                       \
      __VA_ARGS__();                                               \
    } else if ((d) <= 32) {                                        \
      constexpr int kD = 32;                                       \
      __VA_ARGS__();                                               \
    } else if ((d) <= 64) {                                        \
      constexpr int kD = 64;                                       \
      __VA_ARGS__();                                               \
    } else {                                                       \
      constexpr int kD = 128;                                      \
      __VA_ARGS__();                                               \
    }                                                              \
  }()

c10::optional<at::Tensor> contiguous_mask(const c10::optional<at::Tensor>& mask) {
  if (!mask.has_value()) return c10::nullopt;
  return mask->contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fwd_cuda(const at::Tensor& q_, const at::Tensor& k_,
                                                        const at::Tensor& v_, const at::Tensor& weight,
                                                        const c10::optional<at::Tensor>& mask_, double scale) {
  check_inputs(q_, k_, v_, weight, mask_);
  TORCH_CHECK(q_.size(4) <= 128, "ratio_cross_attention (CUDA): head dim d must be <= 128, got ", q_.size(4));
  c10::cuda::CUDAGuard guard(q_.device());
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const auto mask = contiguous_mask(mask_);
  const auto w = weight.to(at::kFloat).contiguous();
  auto out = at::empty_like(q);
  auto o_unw = at::empty(q.sizes(), q.options().dtype(at::kFloat));
  auto lse = at::empty({q.size(0), q.size(1), q.size(2), q.size(3)}, q.options().dtype(at::kFloat));
  const int64_t BMH = q.size(0) * q.size(1) * q.size(2);
  if (BMH == 0 || q.size(3) == 0 || q.size(4) == 0 || k.size(3) == 0) {
    return {out.zero_(), o_unw.zero_(), lse.fill_(INFINITY)};
  }
  TORCH_CHECK(BMH < (int64_t)1 << 31 && q.numel() < ((int64_t)1 << 62), "ratio_cross_attention: too large");
  const bool* mp = mask.has_value() ? mask->data_ptr<bool>() : nullptr;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int d = (int)q.size(4);
  if (tc::wanted(q)) {
    tc::forward(q, k, v, w, mp, out, o_unw, lse, (float)scale, stream);
    return {out, o_unw, lse};
  }
  KUDA_DISPATCH(q.scalar_type(), "ratio_cross_attention_fwd_cuda", [&] {
    KUDA_DISPATCH_D(d, [&] { launch_fwd<scalar_t, kD>(q, k, v, w, mp, out, o_unw, lse, (float)scale, stream); });
  });
  return {out, o_unw, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bwd_cuda(
    const at::Tensor& grad_, const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
    const at::Tensor& weight, const c10::optional<at::Tensor>& mask_, const at::Tensor& o_unw_,
    const at::Tensor& lse_, double scale) {
  check_inputs(q_, k_, v_, weight, mask_);
  TORCH_CHECK(grad_.sizes() == q_.sizes(), "ratio_cross_attention backward: grad shape mismatch");
  TORCH_CHECK(q_.size(4) <= 128, "ratio_cross_attention (CUDA): head dim d must be <= 128, got ", q_.size(4));
  c10::cuda::CUDAGuard guard(q_.device());
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const auto g = grad_.to(q.scalar_type()).contiguous();
  const auto o_unw = o_unw_.to(at::kFloat).contiguous();
  const auto lse = lse_.to(at::kFloat).contiguous();
  const auto mask = contiguous_mask(mask_);
  const auto w = weight.to(at::kFloat).contiguous();
  const int64_t B = q.size(0), M = q.size(1), H = q.size(2), Lq = q.size(3), Lk = k.size(3), d = q.size(4);
  const int64_t BMH = B * M * H;
  auto dk = at::empty_like(k), dv = at::empty_like(v);
  if (BMH == 0 || Lq == 0 || Lk == 0 || d == 0) {
    return {at::zeros_like(q), dk.zero_(), dv.zero_(), at::zeros_like(weight)};
  }
  auto dq_acc = at::zeros(q.sizes(), q.options().dtype(at::kFloat));
  auto dvec = at::empty({B, M, H, Lq}, q.options().dtype(at::kFloat));
  auto rowdot = at::empty({B, M, H, Lq}, q.options().dtype(at::kFloat));
  const bool* mp = mask.has_value() ? mask->data_ptr<bool>() : nullptr;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool use_tc = tc::wanted(q);
  KUDA_DISPATCH(q.scalar_type(), "ratio_cross_attention_bwd_cuda", [&] {
    const long rows = BMH * Lq;
    const int warps = 8;
    rca_bwd_pre_kernel<scalar_t><<<(unsigned)((rows + warps - 1) / warps), warps * 32, 0, stream>>>(
        reinterpret_cast<const scalar_t*>(g.data_ptr()), o_unw.data_ptr<float>(), w.data_ptr<float>(),
        dvec.data_ptr<float>(), rowdot.data_ptr<float>(), rows, (int)(H * Lq), (int)d);
    check_launch();
    if (use_tc) {
      tc::backward(g, q, k, v, w, mp, lse, dvec, dq_acc, dk, dv, (float)scale, stream);
      return;
    }
    KUDA_DISPATCH_D(d, [&] {
      launch_bwd<scalar_t, kD>(g, q, k, v, w, mp, lse, dvec, dq_acc, dk, dv, (float)scale, stream);
    });
  });
  auto dq = q.scalar_type() == at::kFloat ? dq_acc : dq_acc.to(q.scalar_type());
  auto dweight = rowdot.view({B, M, H * Lq}).sum(-1).to(weight.scalar_type());
  return {dq, dk, dv, dweight};
}

}  // namespace

TORCH_LIBRARY_IMPL(kuda_mmsa, CUDA, m) {
  m.impl("_ratio_cross_attention_fwd", TORCH_FN(fwd_cuda));
  m.impl("_ratio_cross_attention_bwd", TORCH_FN(bwd_cuda));
}

}  // namespace kuda_mmsa

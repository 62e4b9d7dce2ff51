// Tensor-core (WMMA) kernels of kuda_mmsa::ratio_cross_attention, fp16/bf16, sm_80+.
// Opt-in (KUDA_MMSA_TC=1); see ratio_attention_tc.h and csrc/ratio_attention.cpp.
//
// FlashAttention-style tiling with nvcuda::wmma 16x16x16 fragments (fp16/bf16 inputs,
// fp32 accumulation). A block has 4 warps; every warp owns 16 rows of a 64-row tile.
//
// Forward: grid (B*M*H, ceil(Lq / 64)). The block keeps a 64-row Q tile (as WMMA fragments,
// per warp) and streams 64-key K/V tiles through shared memory. Per tile, each warp
//   S = Q K^T (tensor cores) -> shared fp32 -> online softmax (exp2 domain; key padding
//   mask as a -inf bias) -> P rounded to the input dtype -> O += P V (tensor cores).
// The running output stays in accumulator fragments; when a row maximum grows, the warp
// rescales it through shared memory (skipped when no row of the warp changed). Epilogue:
// O / l (fp32, saved for backward), out = weight * O (the ratio weight is applied here),
// lse = ln-sum-exp (+inf for a row without any valid key: output 0). Key tiles without a
// valid key are skipped.
// Backward: grid (B*M*H, ceil(Lk / 64)); a block owns 64 keys and loops over 64-row query
// tiles: S^T = K Q^T and dP^T = V g^T (tensor cores), P^T = exp2(S^T * scale*log2e - lse2)
// (0 for masked keys and for rows without keys), dS^T = P^T (weight * dP^T - D) with
// D = weight * rowsum(g * O) (precomputed), both rounded to the input dtype;
// dV += P^T g and dK += dS^T Q stay in fragments; dQ += dS K goes to an fp32 buffer with
// atomics. weight and scale are applied in fp32 at the end (dV = weight * P^T g).
// Headers: ATen core, CUDA runtime, mma.h (no ATen/cuda/CUDAContext.h, no cuBLAS).
#include "ratio_attention_tc.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace kuda_mmsa {
namespace tc {
namespace {

using namespace nvcuda;

constexpr int BM = 64;  // query rows per tile (16 per warp)
constexpr int BN = 64;  // keys per tile (16 per warp in backward)
constexpr int WARPS = 4;
constexpr int NT = 32 * WARPS;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
static_assert(BM == 16 * WARPS && BN == 16 * WARPS, "one 16-row slice per warp");

template <typename T>
__device__ __forceinline__ T to_t(float x);
template <>
__device__ __forceinline__ __half to_t<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 to_t<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

template <typename T>
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>;
template <typename T>
using FragAT = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::col_major>;
template <typename T>
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major>;
template <typename T>
using FragBT = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// Copies rows [r0, r0 + ROWS) of a row-major [L, d] matrix of 16-bit values into shared
// dst[ROWS][LDT] (columns [0, D)), zero filling rows >= L and columns >= d. vec: d % 8 == 0
// and src 16-byte aligned, so rows are copied 16 bytes at a time.
template <int D, int ROWS, int LDT>
__device__ __forceinline__ void load_rows(const uint16_t* __restrict__ src, uint16_t* __restrict__ dst, int r0,
                                          int L, int d, bool vec) {
  if (vec) {
    constexpr int VPR = D / 8;
    for (int idx = threadIdx.x; idx < ROWS * VPR; idx += NT) {
      const int r = idx / VPR, c = (idx - r * VPR) * 8;
      uint4 val = make_uint4(0u, 0u, 0u, 0u);
      if (r0 + r < L && c < d) val = *reinterpret_cast<const uint4*>(src + (size_t)(r0 + r) * d + c);
      *reinterpret_cast<uint4*>(dst + r * LDT + c) = val;
    }
  } else {
    for (int idx = threadIdx.x; idx < ROWS * D; idx += NT) {
      const int r = idx / D, c = idx - r * D;
      dst[r * LDT + c] = (r0 + r < L && c < d) ? src[(size_t)(r0 + r) * d + c] : (uint16_t)0;
    }
  }
}

// ------------------------------------------------------------------------------ forward
template <int D>
struct FwdLayout {
  static constexpr int LDT = D + 8;   // 16-bit rows of Q, K, V
  static constexpr int LDP = BN + 8;  // 16-bit rows of P
  static constexpr int LDS = BN + 4;  // fp32 rows of S
  static constexpr int LDO = D + 4;   // fp32 rows of the output staging
  static constexpr int WS = 16 * (LDS > LDO ? LDS : LDO);  // fp32 scratch per warp (S, then O)
  static constexpr size_t q = 0;
  static constexpr size_t k = q + sizeof(uint16_t) * BM * LDT;
  static constexpr size_t v = k + sizeof(uint16_t) * BN * LDT;
  static constexpr size_t p = v + sizeof(uint16_t) * BN * LDT;
  static constexpr size_t s = p + sizeof(uint16_t) * BM * LDP;
  static constexpr size_t bias = s + sizeof(float) * WARPS * WS;
  static constexpr size_t rowv = bias + sizeof(float) * BN;
  static constexpr size_t bytes = rowv + sizeof(float) * BM;
  static_assert(k % 32 == 0 && v % 32 == 0 && p % 32 == 0 && s % 32 == 0 && (WS * 4) % 32 == 0,
                "WMMA pointers must be 32-byte aligned");
};

template <typename T, int D>
__global__ void __launch_bounds__(NT)
    fwd_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
               const float* __restrict__ w, const bool* __restrict__ mask, T* __restrict__ out,
               float* __restrict__ o_unw, float* __restrict__ lse, int H, int Lq, int Lk, int d,
               float scale_log2, bool vec) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // never launched: the host takes this path on sm_80+ only
#else
  using Lay = FwdLayout<D>;
  constexpr int LDT = Lay::LDT, LDP = Lay::LDP, LDS = Lay::LDS, LDO = Lay::LDO;
  constexpr int KD = D / 16, KN = BN / 16, HALF = BN / 2;
  extern __shared__ __align__(128) unsigned char smem[];
  T* Qs = reinterpret_cast<T*>(smem + Lay::q);
  T* Ks = reinterpret_cast<T*>(smem + Lay::k);
  T* Vs = reinterpret_cast<T*>(smem + Lay::v);
  T* Ps = reinterpret_cast<T*>(smem + Lay::p);
  float* scratch = reinterpret_cast<float*>(smem + Lay::s);
  float* kbias = reinterpret_cast<float*>(smem + Lay::bias);
  float* rowv = reinterpret_cast<float*>(smem + Lay::rowv);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const long bmh = blockIdx.x;
  const long bm = bmh / H;
  const int q0 = blockIdx.y * BM;
  const uint16_t* qh = reinterpret_cast<const uint16_t*>(q) + (size_t)bmh * Lq * d;
  const uint16_t* kh = reinterpret_cast<const uint16_t*>(k) + (size_t)bmh * Lk * d;
  const uint16_t* vh = reinterpret_cast<const uint16_t*>(v) + (size_t)bmh * Lk * d;
  const bool* mh = mask ? mask + bm * Lk : nullptr;
  const float ninf = -INFINITY;

  load_rows<D, BM, LDT>(qh, reinterpret_cast<uint16_t*>(Qs), q0, Lq, d, vec);
  __syncthreads();
  FragA<T> qf[KD];
#pragma unroll
  for (int kk = 0; kk < KD; ++kk) wmma::load_matrix_sync(qf[kk], Qs + warp * 16 * LDT + kk * 16, LDT);
  FragC of[KD];
#pragma unroll
  for (int j = 0; j < KD; ++j) wmma::fill_fragment(of[j], 0.f);

  float* Sw = scratch + warp * Lay::WS;  // this warp's scores, then its output staging
  T* Pw = Ps + warp * 16 * LDP;
  float* alpha_w = rowv + warp * 16;
  const int r = lane & 15, h = lane >> 4;  // lanes r and r + 16 share row r (column halves)
  float m_r = ninf, l_r = 0.f;             // running max (log2 domain) and sum of row r

  for (int k0 = 0; k0 < Lk; k0 += BN) {
    __syncthreads();  // every warp is done with the previous K/V tile
    int valid = 0;
    for (int j = tid; j < BN; j += NT) {
      const int kj = k0 + j;
      const bool ok = kj < Lk && !(mh && mh[kj]);
      kbias[j] = ok ? 0.f : ninf;
      valid |= ok;
    }
    if (!__syncthreads_or(valid)) continue;  // no valid key in this tile: nothing to add
    load_rows<D, BN, LDT>(kh, reinterpret_cast<uint16_t*>(Ks), k0, Lk, d, vec);
    load_rows<D, BN, LDT>(vh, reinterpret_cast<uint16_t*>(Vs), k0, Lk, d, vec);
    __syncthreads();

    // S = Q K^T for this warp's 16 rows
#pragma unroll
    for (int j = 0; j < KN; ++j) {
      FragC sf;
      wmma::fill_fragment(sf, 0.f);
#pragma unroll
      for (int kk = 0; kk < KD; ++kk) {
        FragBT<T> kf;
        wmma::load_matrix_sync(kf, Ks + j * 16 * LDT + kk * 16, LDT);
        wmma::mma_sync(sf, qf[kk], kf, sf);
      }
      wmma::store_matrix_sync(Sw + j * 16, sf, LDS, wmma::mem_row_major);
    }
    __syncwarp();

    // online softmax of row r over this lane's half of the tile (columns visited in a
    // rotated order so the 16 rows hit different shared-memory banks)
    const float* srow = Sw + r * LDS + h * HALF;
    const float* brow = kbias + h * HALF;
    T* prow = Pw + r * LDP + h * HALF;
    float mx = ninf;
#pragma unroll 8
    for (int c = 0; c < HALF; ++c) {
      const int cc = (c + r) & (HALF - 1);
      mx = fmaxf(mx, srow[cc] * scale_log2 + brow[cc]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
    const float m_new = fmaxf(m_r, mx);
    float alpha = 1.f, rs = 0.f;
    if (m_new == ninf) {  // no valid key for this row so far
#pragma unroll 8
      for (int c = 0; c < HALF; ++c) prow[c] = to_t<T>(0.f);
    } else {
      alpha = exp2f(m_r - m_new);  // 0 when m_r = -inf (the output is still 0 then)
#pragma unroll 8
      for (int c = 0; c < HALF; ++c) {
        const int cc = (c + r) & (HALF - 1);
        const float p = exp2f(srow[cc] * scale_log2 + brow[cc] - m_new);
        rs += p;
        prow[cc] = to_t<T>(p);
      }
    }
    rs += __shfl_xor_sync(0xffffffffu, rs, 16);
    l_r = l_r * alpha + rs;
    m_r = m_new;
    if (h == 0) alpha_w[r] = alpha;
    const bool rescale = !__all_sync(0xffffffffu, alpha == 1.f);
    __syncwarp();

    if (rescale) {  // O *= alpha row-wise, through shared memory (fragment layouts are opaque)
#pragma unroll
      for (int j = 0; j < KD; ++j) wmma::store_matrix_sync(Sw + j * 16, of[j], LDO, wmma::mem_row_major);
      __syncwarp();
      for (int idx = lane; idx < 16 * D; idx += 32) {
        const int rr = idx / D, c = idx - rr * D;
        Sw[rr * LDO + c] *= alpha_w[rr];
      }
      __syncwarp();
#pragma unroll
      for (int j = 0; j < KD; ++j) wmma::load_matrix_sync(of[j], Sw + j * 16, LDO, wmma::mem_row_major);
    }

    // O += P V
    FragA<T> pf[KN];
#pragma unroll
    for (int kk = 0; kk < KN; ++kk) wmma::load_matrix_sync(pf[kk], Pw + kk * 16, LDP);
#pragma unroll
    for (int j = 0; j < KD; ++j) {
#pragma unroll
      for (int kk = 0; kk < KN; ++kk) {
        FragB<T> vf;
        wmma::load_matrix_sync(vf, Vs + kk * 16 * LDT + j * 16, LDT);
        wmma::mma_sync(of[j], pf[kk], vf, of[j]);
      }
    }
  }

  // epilogue: O / l (saved for backward) and weight * O / l (the op's output)
  __syncwarp();
#pragma unroll
  for (int j = 0; j < KD; ++j) wmma::store_matrix_sync(Sw + j * 16, of[j], LDO, wmma::mem_row_major);
  if (h == 0) alpha_w[r] = l_r > 0.f ? 1.f / l_r : 0.f;
  __syncwarp();
  const float wv = w[bm];
  const int row0 = q0 + warp * 16;
  for (int idx = lane; idx < 16 * D; idx += 32) {
    const int rr = idx / D, c = idx - rr * D;
    const int row = row0 + rr;
    if (row < Lq && c < d) {
      const float o = Sw[rr * LDO + c] * alpha_w[rr];
      const size_t at = ((size_t)bmh * Lq + row) * d + c;
      o_unw[at] = o;
      out[at] = to_t<T>(wv * o);
    }
  }
  if (h == 0 && row0 + r < Lq)
    lse[(size_t)bmh * Lq + row0 + r] = l_r > 0.f ? (m_r + log2f(l_r)) * kLn2 : INFINITY;
#endif
}

// ------------------------------------------------------------------------------ backward
template <int D>
struct BwdLayout {
  static constexpr int LDT = D + 8;       // 16-bit rows of K, V, Q, g
  static constexpr int LDP = BM + 8;      // 16-bit rows (one per key) of P^T, dS^T
  static constexpr int LDS = BM + 4;      // fp32 rows of S^T, dP^T
  static constexpr int LDO = D + 4;       // fp32 rows of the dQ / dK / dV staging
  static constexpr int WS = 2 * 16 * LDS;  // fp32 scratch per warp: S^T, dP^T (then staging)
  static_assert(16 * LDO <= WS, "the staging must fit in a warp's scratch");
  static constexpr size_t k = 0;
  static constexpr size_t v = k + sizeof(uint16_t) * BN * LDT;
  static constexpr size_t q = v + sizeof(uint16_t) * BN * LDT;
  static constexpr size_t g = q + sizeof(uint16_t) * BM * LDT;
  static constexpr size_t pt = g + sizeof(uint16_t) * BM * LDT;
  static constexpr size_t dst = pt + sizeof(uint16_t) * BN * LDP;
  static constexpr size_t s = dst + sizeof(uint16_t) * BN * LDP;
  static constexpr size_t lse2 = s + sizeof(float) * WARPS * WS;
  static constexpr size_t dd = lse2 + sizeof(float) * BM;
  static constexpr size_t kvalid = dd + sizeof(float) * BM;
  static constexpr size_t bytes = kvalid + sizeof(float) * BN;
  static_assert(v % 32 == 0 && q % 32 == 0 && g % 32 == 0 && pt % 32 == 0 && dst % 32 == 0 && s % 32 == 0 &&
                    (WS * 4) % 32 == 0 && (16 * LDS * 4) % 32 == 0,
                "WMMA pointers must be 32-byte aligned");
};

template <typename T, int D>
__global__ void __launch_bounds__(NT)
    bwd_kernel(const T* __restrict__ g, const T* __restrict__ q, const T* __restrict__ k,
               const T* __restrict__ v, const float* __restrict__ w, const bool* __restrict__ mask,
               const float* __restrict__ lse, const float* __restrict__ dvec, float* __restrict__ dq_acc,
               T* __restrict__ dk, T* __restrict__ dv, int H, int Lq, int Lk, int d, float scale,
               float scale_log2, bool vec) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // never launched: the host takes this path on sm_80+ only
#else
  using Lay = BwdLayout<D>;
  constexpr int LDT = Lay::LDT, LDP = Lay::LDP, LDS = Lay::LDS, LDO = Lay::LDO;
  constexpr int KD = D / 16, KN = BN / 16, KM = BM / 16;
  extern __shared__ __align__(128) unsigned char smem[];
  T* Ks = reinterpret_cast<T*>(smem + Lay::k);
  T* Vs = reinterpret_cast<T*>(smem + Lay::v);
  T* Qs = reinterpret_cast<T*>(smem + Lay::q);
  T* Gs = reinterpret_cast<T*>(smem + Lay::g);
  T* PT = reinterpret_cast<T*>(smem + Lay::pt);
  T* dST = reinterpret_cast<T*>(smem + Lay::dst);
  float* scratch = reinterpret_cast<float*>(smem + Lay::s);
  float* lse2s = reinterpret_cast<float*>(smem + Lay::lse2);
  float* dds = reinterpret_cast<float*>(smem + Lay::dd);
  float* kvalid = reinterpret_cast<float*>(smem + Lay::kvalid);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const long bmh = blockIdx.x;
  const long bm = bmh / H;
  const int k0 = blockIdx.y * BN;
  const uint16_t* qh = reinterpret_cast<const uint16_t*>(q) + (size_t)bmh * Lq * d;
  const uint16_t* gh = reinterpret_cast<const uint16_t*>(g) + (size_t)bmh * Lq * d;
  const uint16_t* kh = reinterpret_cast<const uint16_t*>(k) + (size_t)bmh * Lk * d;
  const uint16_t* vh = reinterpret_cast<const uint16_t*>(v) + (size_t)bmh * Lk * d;
  const bool* mh = mask ? mask + bm * Lk : nullptr;
  const float wv = w[bm];

  int valid = 0;
  for (int j = tid; j < BN; j += NT) {
    const int kj = k0 + j;
    const bool ok = kj < Lk && !(mh && mh[kj]);
    kvalid[j] = ok ? 1.f : 0.f;
    valid |= ok;
  }
  if (!__syncthreads_or(valid)) {  // no valid key here: dK = dV = 0, nothing for dQ
    for (int idx = tid; idx < BN * d; idx += NT) {
      const int jr = idx / d, c = idx - jr * d;
      if (k0 + jr < Lk) {
        const size_t at = ((size_t)bmh * Lk + k0 + jr) * d + c;
        dk[at] = to_t<T>(0.f);
        dv[at] = to_t<T>(0.f);
      }
    }
    return;
  }
  load_rows<D, BN, LDT>(kh, reinterpret_cast<uint16_t*>(Ks), k0, Lk, d, vec);
  load_rows<D, BN, LDT>(vh, reinterpret_cast<uint16_t*>(Vs), k0, Lk, d, vec);

  FragC dkf[KD], dvf[KD];
#pragma unroll
  for (int j = 0; j < KD; ++j) {
    wmma::fill_fragment(dkf[j], 0.f);
    wmma::fill_fragment(dvf[j], 0.f);
  }
  float* Sw = scratch + warp * Lay::WS;  // S^T of this warp's 16 keys (then staging)
  float* dPw = Sw + 16 * LDS;            // dP^T of this warp's 16 keys
  T* ptw = PT + warp * 16 * LDP;
  T* dstw = dST + warp * 16 * LDP;
  const T* kw = Ks + warp * 16 * LDT;
  const T* vw = Vs + warp * 16 * LDT;

  for (int q0 = 0; q0 < Lq; q0 += BM) {
    __syncthreads();  // the previous Q/g tile, P^T and dS^T are consumed (and K, V are loaded)
    load_rows<D, BM, LDT>(qh, reinterpret_cast<uint16_t*>(Qs), q0, Lq, d, vec);
    load_rows<D, BM, LDT>(gh, reinterpret_cast<uint16_t*>(Gs), q0, Lq, d, vec);
    for (int r = tid; r < BM; r += NT) {
      const int qr = q0 + r;
      // lse = +inf (a row without valid keys) or a row past Lq: P = 0
      lse2s[r] = qr < Lq ? lse[(size_t)bmh * Lq + qr] * kLog2e : INFINITY;
      dds[r] = qr < Lq ? dvec[(size_t)bmh * Lq + qr] : 0.f;
    }
    __syncthreads();

    // S^T = K Q^T and dP^T = V g^T for this warp's 16 keys (all BM query columns)
#pragma unroll
    for (int j = 0; j < KM; ++j) {
      FragC sf, pf;
      wmma::fill_fragment(sf, 0.f);
      wmma::fill_fragment(pf, 0.f);
#pragma unroll
      for (int kk = 0; kk < KD; ++kk) {
        FragA<T> ka, va;
        FragBT<T> qb, gb;
        wmma::load_matrix_sync(ka, kw + kk * 16, LDT);
        wmma::load_matrix_sync(va, vw + kk * 16, LDT);
        wmma::load_matrix_sync(qb, Qs + j * 16 * LDT + kk * 16, LDT);
        wmma::load_matrix_sync(gb, Gs + j * 16 * LDT + kk * 16, LDT);
        wmma::mma_sync(sf, ka, qb, sf);
        wmma::mma_sync(pf, va, gb, pf);
      }
      wmma::store_matrix_sync(Sw + j * 16, sf, LDS, wmma::mem_row_major);
      wmma::store_matrix_sync(dPw + j * 16, pf, LDS, wmma::mem_row_major);
    }
    __syncwarp();

    // P^T and dS^T = P^T (weight * dP^T - D), rounded to the input dtype
    for (int idx = lane; idx < 16 * BM; idx += 32) {
      const int jr = idx / BM, rc = idx - jr * BM;
      const float x = fminf(Sw[jr * LDS + rc] * scale_log2 - lse2s[rc], 0.f);
      const float p = kvalid[warp * 16 + jr] != 0.f ? exp2f(x) : 0.f;
      const float ds = p * (wv * dPw[jr * LDS + rc] - dds[rc]);
      ptw[jr * LDP + rc] = to_t<T>(p);
      dstw[jr * LDP + rc] = to_t<T>(ds);
    }
    __syncthreads();  // dQ below reads the dS^T rows of every warp

    // dV += P^T g and dK += dS^T Q for this warp's keys
#pragma unroll
    for (int kk = 0; kk < KM; ++kk) {
      FragA<T> pa, sa;
      wmma::load_matrix_sync(pa, ptw + kk * 16, LDP);
      wmma::load_matrix_sync(sa, dstw + kk * 16, LDP);
#pragma unroll
      for (int j = 0; j < KD; ++j) {
        FragB<T> gb, qb;
        wmma::load_matrix_sync(gb, Gs + kk * 16 * LDT + j * 16, LDT);
        wmma::load_matrix_sync(qb, Qs + kk * 16 * LDT + j * 16, LDT);
        wmma::mma_sync(dvf[j], pa, gb, dvf[j]);
        wmma::mma_sync(dkf[j], sa, qb, dkf[j]);
      }
    }

    // dQ[this warp's 16 rows] += scale * dS K over this block's keys (fp32 atomics)
    const int qrow0 = q0 + warp * 16;
    if (qrow0 < Lq) {
#pragma unroll
      for (int j = 0; j < KD; ++j) {
        FragC qacc;
        wmma::fill_fragment(qacc, 0.f);
#pragma unroll
        for (int kk = 0; kk < KN; ++kk) {
          FragAT<T> sa;  // dS[r][key] = dS^T[key][r]: column-major view of dS^T
          FragB<T> kb;
          wmma::load_matrix_sync(sa, dST + kk * 16 * LDP + warp * 16, LDP);
          wmma::load_matrix_sync(kb, Ks + kk * 16 * LDT + j * 16, LDT);
          wmma::mma_sync(qacc, sa, kb, qacc);
        }
        wmma::store_matrix_sync(Sw + j * 16, qacc, LDO, wmma::mem_row_major);
      }
      __syncwarp();
      for (int idx = lane; idx < 16 * D; idx += 32) {
        const int rr = idx / D, c = idx - rr * D;
        const int row = qrow0 + rr;
        if (row < Lq && c < d) atomicAdd(dq_acc + ((size_t)bmh * Lq + row) * d + c, scale * Sw[rr * LDO + c]);
      }
    }
  }

  // epilogue: dK = scale * dS^T Q, dV = weight * P^T g
  const int krow0 = k0 + warp * 16;
  __syncwarp();
#pragma unroll
  for (int j = 0; j < KD; ++j) wmma::store_matrix_sync(Sw + j * 16, dkf[j], LDO, wmma::mem_row_major);
  __syncwarp();
  for (int idx = lane; idx < 16 * D; idx += 32) {
    const int jr = idx / D, c = idx - jr * D;
    if (krow0 + jr < Lk && c < d) dk[((size_t)bmh * Lk + krow0 + jr) * d + c] = to_t<T>(scale * Sw[jr * LDO + c]);
  }
  __syncwarp();
#pragma unroll
  for (int j = 0; j < KD; ++j) wmma::store_matrix_sync(Sw + j * 16, dvf[j], LDO, wmma::mem_row_major);
  __syncwarp();
  for (int idx = lane; idx < 16 * D; idx += 32) {
    const int jr = idx / D, c = idx - jr * D;
    if (krow0 + jr < Lk && c < d) dv[((size_t)bmh * Lk + krow0 + jr) * d + c] = to_t<T>(wv * Sw[jr * LDO + c]);
  }
#endif
}

// ------------------------------------------------------------------------------ host
inline void check_launch() {
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "kuda_mmsa ratio_cross_attention tensor-core kernel launch failed: ",
              cudaGetErrorString(err));
}

template <typename KernelT>
inline void set_smem(KernelT kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    TORCH_CHECK(err == cudaSuccess, "kuda_mmsa: cannot reserve ", bytes, " bytes of shared memory: ",
                cudaGetErrorString(err));
  }
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename T, int D>
void launch_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& w,
                const bool* mask, at::Tensor& out, at::Tensor& o_unw, at::Tensor& lse, float scale,
                cudaStream_t stream) {
  const int H = q.size(2), Lq = q.size(3), Lk = k.size(3), d = q.size(4);
  const long BMH = q.size(0) * q.size(1) * q.size(2);
  const bool vec = d % 8 == 0 && aligned16(q.data_ptr()) && aligned16(k.data_ptr()) && aligned16(v.data_ptr());
  constexpr size_t smem = FwdLayout<D>::bytes;
  auto kernel = fwd_kernel<T, D>;
  set_smem(kernel, smem);
  dim3 grid((unsigned)BMH, (unsigned)((Lq + BM - 1) / BM));
  kernel<<<grid, NT, smem, stream>>>(
      reinterpret_cast<const T*>(q.data_ptr()), reinterpret_cast<const T*>(k.data_ptr()),
      reinterpret_cast<const T*>(v.data_ptr()), w.data_ptr<float>(), mask, reinterpret_cast<T*>(out.data_ptr()),
      o_unw.data_ptr<float>(), lse.data_ptr<float>(), H, Lq, Lk, d, scale * kLog2e, vec);
  check_launch();
}

template <typename T, int D>
void launch_bwd(const at::Tensor& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& w, const bool* mask, const at::Tensor& lse, const at::Tensor& dvec,
                at::Tensor& dq_acc, at::Tensor& dk, at::Tensor& dv, float scale, cudaStream_t stream) {
  const int H = q.size(2), Lq = q.size(3), Lk = k.size(3), d = q.size(4);
  const long BMH = q.size(0) * q.size(1) * q.size(2);
  const bool vec = d % 8 == 0 && aligned16(q.data_ptr()) && aligned16(k.data_ptr()) && aligned16(v.data_ptr()) &&
                   aligned16(g.data_ptr());
  constexpr size_t smem = BwdLayout<D>::bytes;
  auto kernel = bwd_kernel<T, D>;
  set_smem(kernel, smem);
  dim3 grid((unsigned)BMH, (unsigned)((Lk + BN - 1) / BN));
  kernel<<<grid, NT, smem, stream>>>(
      reinterpret_cast<const T*>(g.data_ptr()), reinterpret_cast<const T*>(q.data_ptr()),
      reinterpret_cast<const T*>(k.data_ptr()), reinterpret_cast<const T*>(v.data_ptr()), w.data_ptr<float>(), mask,
      lse.data_ptr<float>(), dvec.data_ptr<float>(), dq_acc.data_ptr<float>(), reinterpret_cast<T*>(dk.data_ptr()),
      reinterpret_cast<T*>(dv.data_ptr()), H, Lq, Lk, d, scale, scale * kLog2e, vec);
  check_launch();
}

// Runs __VA_ARGS__ with `using T` = the 16-bit CUDA type of `dtype` and `constexpr int kD`
// = d rounded up to 16, 32, 64 or 128 (the extra columns are zero padded). C++17.
#define KUDA_TC_DISPATCH_D(d, ...)     \
  do {                                 \
    if ((d) <= 16) {                   \
      constexpr int kD = 16;           \
      __VA_ARGS__;                     \
    } else if ((d) <= 32) {            \
      constexpr int kD = 32;           \
      __VA_ARGS__;                     \
    } else if ((d) <= 64) {            \
      constexpr int kD = 64;           \
      __VA_ARGS__;                     \
    } else {                           \
      constexpr int kD = 128;          \
      __VA_ARGS__;                     \
    }                                  \
  } while (0)
#define KUDA_TC_DISPATCH(dtype, d, ...)                                              \
  do {                                                                               \
    if ((dtype) == at::kHalf) {                                                      \
      using T = __half;                                                              \
      KUDA_TC_DISPATCH_D(d, __VA_ARGS__);                                            \
    } else if ((dtype) == at::kBFloat16) {                                           \
      using T = __nv_bfloat16;                                                       \
      KUDA_TC_DISPATCH_D(d, __VA_ARGS__);                                            \
    } else {                                                                         \
      TORCH_CHECK(false, "kuda_mmsa tensor-core path: fp16/bf16 only, got ", dtype); \
    }                                                                                \
  } while (0)

}  // namespace

bool wanted(const at::Tensor& q) {
  const char* env = std::getenv("KUDA_MMSA_TC");
  if (env == nullptr || std::strcmp(env, "1") != 0) return false;
  if (q.scalar_type() != at::kHalf && q.scalar_type() != at::kBFloat16) return false;
  if (q.dim() != 5 || q.size(4) < 1 || q.size(4) > 128) return false;
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, q.get_device()) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return major >= 8;
}

void forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& w,
             const bool* mask, at::Tensor& out, at::Tensor& o_unw, at::Tensor& lse, float scale,
             cudaStream_t stream) {
  const int d = (int)q.size(4);
  KUDA_TC_DISPATCH(q.scalar_type(), d, (launch_fwd<T, kD>(q, k, v, w, mask, out, o_unw, lse, scale, stream)));
}

void backward(const at::Tensor& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
              const at::Tensor& w, const bool* mask, const at::Tensor& lse, const at::Tensor& dvec,
              at::Tensor& dq_acc, at::Tensor& dk, at::Tensor& dv, float scale, cudaStream_t stream) {
  const int d = (int)q.size(4);
  KUDA_TC_DISPATCH(q.scalar_type(), d, (launch_bwd<T, kD>(g, q, k, v, w, mask, lse, dvec, dq_acc, dk, dv, scale, stream)));
}

}  // namespace tc
}  // namespace kuda_mmsa

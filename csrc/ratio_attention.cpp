// kuda_mmsa::ratio_cross_attention — schema, composite public op and CPU kernels.
//
//   out[b, m] = weight[b, m] * softmax(scale * q[b, m] k[b, m]^T, key padding masked) v[b, m]
//
// q [B, M, H, Lq, d]; k, v [B, M, H, Lk, d]; weight [B, M]; key_padding_mask [B, M, Lk] bool
// (True = padding) or None. A query row whose keys are all padding gives zeros (and zero
// gradients), never NaN.
//
// Ops (schemas below):
//   ratio_cross_attention            public op, CompositeImplicitAutograd: returns the first
//                                    output of _ratio_cross_attention_fwd, so autograd and
//                                    torch.compile go through the internal ops.
//   _ratio_cross_attention_fwd       -> (out [q dtype], o_unweighted [fp32], lse [fp32, B,M,H,Lq])
//                                    lse is +inf for fully masked rows (P = exp(s - lse) = 0).
//   _ratio_cross_attention_bwd       -> (dq, dk, dv, dweight); recomputes P from lse.
// Autograd for _ratio_cross_attention_fwd and the fake (meta) kernels are registered in
// Python (kuda_mmsa/ops/_registration.py).
//
// Inputs that are not contiguous are made contiguous once here (a copy); the Python
// wrapper passes contiguous tensors so the saved tensors are not copied again in backward.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <cstdlib>
#include <string>
#include <vector>

extern "C" {
// The op library is loaded by importing kuda_mmsa._C; it has no Python API.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

// fp32 / fp16 / bf16 only (check_inputs rejects the rest; no dead double instantiations).
#define KUDA_DISPATCH(TYPE, NAME, ...)                                                     \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)                 \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)              \
                                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

namespace kuda_mmsa {

// Shared argument checks (CPU and CUDA).
void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& weight, const c10::optional<at::Tensor>& mask) {
  TORCH_CHECK(q.dim() == 5, "ratio_cross_attention: q must be [B, M, H, Lq, d], got ", q.sizes());
  TORCH_CHECK(k.dim() == 5 && v.dim() == 5, "ratio_cross_attention: k, v must be [B, M, H, Lk, d]");
  TORCH_CHECK(k.sizes() == v.sizes(), "ratio_cross_attention: k and v shapes differ: ", k.sizes(), " vs ", v.sizes());
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(2) == q.size(2) &&
                  k.size(4) == q.size(4),
              "ratio_cross_attention: q ", q.sizes(), " and k ", k.sizes(), " disagree on B, M, H or d");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "ratio_cross_attention: q, k, v must share a dtype");
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16,
              "ratio_cross_attention: dtype must be float32, float16 or bfloat16, got ", q.scalar_type());
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == q.size(0) && weight.size(1) == q.size(1),
              "ratio_cross_attention: weight must be [B, M] = [", q.size(0), ", ", q.size(1), "], got ", weight.sizes());
  TORCH_CHECK(at::isFloatingType(weight.scalar_type()), "ratio_cross_attention: weight must be floating point");
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device() && weight.device() == q.device(),
              "ratio_cross_attention: all tensors must be on one device");
  if (mask.has_value()) {
    const auto& mk = *mask;
    TORCH_CHECK(mk.scalar_type() == at::kBool, "ratio_cross_attention: key_padding_mask must be bool");
    TORCH_CHECK(mk.dim() == 3 && mk.size(0) == q.size(0) && mk.size(1) == q.size(1) && mk.size(2) == k.size(3),
                "ratio_cross_attention: key_padding_mask must be [B, M, Lk] = [", q.size(0), ", ", q.size(1), ", ",
                k.size(3), "], got ", mk.sizes());
    TORCH_CHECK(mk.device() == q.device(), "ratio_cross_attention: key_padding_mask on another device");
  }
}

namespace {

constexpr int64_t BK = 64;  // key tile (columns of the score tile)

// The per-head kernels are compiled three times on x86-64: baseline ISA, AVX2+FMA and
// AVX-512, picked at run time (the package stays portable; -march is not used).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define KUDA_X86_DISPATCH 1
#endif
#define KUDA_INLINE inline __attribute__((always_inline))

// exp(x) for x <= 0 (and -inf), written so the compiler vectorises a loop of it (no
// calls, no branches; needs -fno-trapping-math to if-convert the clamps, which setup.py
// passes). Relative error ~2e-7; exactly 0 below about -88; x > 0 is taken as 0.
static KUDA_INLINE float exp_neg(float x) {
  x = x < -100.0f ? -100.0f : x;
  x = x > 0.0f ? 0.0f : x;  // callers pass x <= 0 up to rounding; never overflow
  const float t = x * 1.44269504088896341f;  // x * log2(e), in [-145, 0]
  // floor(t) without floorf (a library call the compiler would not vectorise)
  int32_t ti = static_cast<int32_t>(t);  // truncates towards zero
  ti -= static_cast<int32_t>(static_cast<float>(ti) > t);
  const float f = t - static_cast<float>(ti);  // [0, 1)
  float p = 1.535336188319500e-4f;  // 2^f on [0, 1)
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  int32_t e = ti + 127;
  e = e < 0 ? 0 : e;  // 2^ti below the normal range: scale 0, result exactly 0
  int32_t bits = e << 23;
  float sc;
  std::memcpy(&sc, &bits, sizeof(float));
  return p * sc;
}

// Transposes x [L, d] into xt [d, Lp] (Lp = L rounded up to BK), zero padded; 8 x 8
// blocks so both sides stay in a few cache lines.
static KUDA_INLINE void transpose_pad(const float* __restrict x, float* __restrict xt, int64_t L, int64_t d,
                                      int64_t Lp) {
  constexpr int64_t T = 8;
  for (int64_t c0 = 0; c0 < d; c0 += T) {
    const int64_t cn = std::min(T, d - c0);
    for (int64_t j0 = 0; j0 < L; j0 += T) {
      const int64_t jn = std::min(T, L - j0);
      for (int64_t c = 0; c < cn; ++c)
        for (int64_t j = 0; j < jn; ++j) xt[(c0 + c) * Lp + j0 + j] = x[(j0 + j) * d + c0 + c];
    }
    for (int64_t c = 0; c < cn; ++c)
      for (int64_t j = L; j < Lp; ++j) xt[(c0 + c) * Lp + j] = 0.f;
  }
}

// keep[j] = 1 for a real, unpadded key, 0 otherwise (j < Lp); bias[j] = 0 or -inf.
static KUDA_INLINE void key_masks(const bool* __restrict mask, int64_t Lk, int64_t Lp, float* __restrict keep,
                                  float* __restrict bias) {
  for (int64_t j = 0; j < Lp; ++j) {
    const bool ok = j < Lk && !(mask && mask[j]);
    keep[j] = ok ? 1.f : 0.f;
    if (bias) bias[j] = ok ? 0.f : -std::numeric_limits<float>::infinity();
  }
}

// End of the key tiles that hold a valid key: tiles past the last valid key (a padded
// suffix, as key padding masks are) are all masked and add exactly nothing to O, dQ, dK or
// dV, so the loops stop there (a quarter of the work for lengths spread over [L/2, L]).
static KUDA_INLINE int64_t valid_key_end(const float* __restrict keep, int64_t Lk) {
  int64_t last = Lk;
  while (last > 0 && keep[last - 1] == 0.f) --last;
  return (last + BK - 1) / BK * BK;
}

// C[m, n] += sum_k A(m, k) B(k, n), A(i, k) = a[i * sai + k * sak], B(k, j) = b[k * ldb + j],
// C(i, j) = c[i * ldc + j]. Register-blocked MR x NR micro-kernel (the n loop is what the
// compiler vectorises: NR = 16 is two AVX2 registers, 32 two AVX-512 ones); column
// remainders go to the 16-wide kernel, then to a plain loop.
template <int64_t MR, int64_t NR>
static KUDA_INLINE void gemm_acc(int64_t m, int64_t n, int64_t K, const float* __restrict a,
                                                            int64_t sai, int64_t sak, const float* __restrict b,
                                                            int64_t ldb, float* __restrict c, int64_t ldc) {
  const int64_t nfull = n / NR * NR;
  for (int64_t i0 = 0; i0 < m; i0 += MR) {
    const int64_t mr = std::min(MR, m - i0);
    const float* ar[MR];
    for (int64_t r = 0; r < MR; ++r) ar[r] = a + (i0 + std::min(r, mr - 1)) * sai;
    for (int64_t j0 = 0; j0 < nfull; j0 += NR) {
      float acc[MR][NR];
      for (int64_t r = 0; r < MR; ++r)
        for (int64_t j = 0; j < NR; ++j) acc[r][j] = 0.f;
      for (int64_t k = 0; k < K; ++k) {
        const float* __restrict bk = b + k * ldb + j0;
        for (int64_t r = 0; r < MR; ++r) {
          const float av = ar[r][k * sak];
#pragma omp simd
          for (int64_t j = 0; j < NR; ++j) acc[r][j] += av * bk[j];
        }
      }
      for (int64_t r = 0; r < mr; ++r) {
        float* __restrict cr = c + (i0 + r) * ldc + j0;
        for (int64_t j = 0; j < NR; ++j) cr[j] += acc[r][j];
      }
    }
    if constexpr (NR <= 16) {
      for (int64_t r = 0; r < mr; ++r) {
        for (int64_t j = nfull; j < n; ++j) {
          float acc = 0.f;
          for (int64_t k = 0; k < K; ++k) acc += ar[r][k * sak] * b[k * ldb + j];
          c[(i0 + r) * ldc + j] += acc;
        }
      }
    }
  }
  if constexpr (NR > 16) {
    if (nfull < n) gemm_acc<MR, 16>(m, n - nfull, K, a, sai, sak, b + nfull, ldb, c + nfull, ldc);
  }
}

constexpr int64_t BR = 24;   // query rows per block (forward; a multiple of every MR)
constexpr int64_t BRB = 48;  // query rows per block (backward; a multiple of every MR)

// Forward for one (b, m, h): o [Lq, d] receives the unweighted output, lse [Lq].
// kt: scratch [d, Lp]; s: scratch [BR, BK]; m/l: scratch [BR].
template <int64_t MR, int64_t NR>
static KUDA_INLINE void fwd_head_impl(const float* __restrict q, const float* __restrict k, const float* __restrict v,
              const bool* __restrict mask, int64_t Lq, int64_t Lk, int64_t d, float scale,
              float* __restrict o, float* __restrict lse, float* __restrict kt, float* __restrict s) {
  const int64_t Lp = (Lk + BK - 1) / BK * BK;
  transpose_pad(k, kt, Lk, d, Lp);
  float* __restrict keep = kt + d * Lp;
  float* __restrict bias = keep + Lp;
  key_masks(mask, Lk, Lp, keep, bias);
  const int64_t Lend = valid_key_end(keep, Lk);
  const float ninf = -std::numeric_limits<float>::infinity();
  float mrow[BR], lrow[BR];
  for (int64_t i0 = 0; i0 < Lq; i0 += BR) {
    const int64_t nr = std::min(BR, Lq - i0);
    float* __restrict ob = o + i0 * d;
    for (int64_t i = 0; i < nr * d; ++i) ob[i] = 0.f;
    for (int64_t r = 0; r < BR; ++r) {
      mrow[r] = ninf;
      lrow[r] = 0.f;
    }
    for (int64_t j0 = 0; j0 < Lend; j0 += BK) {
      const int64_t n = std::min(BK, Lk - j0);
      const int64_t nw = (n + NR - 1) / NR * NR;  // columns computed (kt is zero padded)
      for (int64_t i = 0; i < nr * BK; ++i) s[i] = 0.f;
      gemm_acc<MR, NR>(nr, nw, d, q + i0 * d, d, 1, kt + j0, Lp, s, BK);
      for (int64_t r = 0; r < nr; ++r) {
        float* __restrict sr = s + r * BK;
        for (int64_t j = 0; j < BK; ++j) sr[j] = sr[j] * scale + bias[j0 + j];
        float tmax = ninf;
#pragma omp simd reduction(max : tmax)
        for (int64_t j = 0; j < BK; ++j) tmax = tmax > sr[j] ? tmax : sr[j];
        if (tmax == ninf) {  // nothing valid in this tile for this row
          for (int64_t j = 0; j < BK; ++j) sr[j] = 0.f;
          continue;
        }
        const float mnew = std::max(mrow[r], tmax);
        if (mrow[r] != ninf && mnew > mrow[r]) {
          const float alpha = std::exp(mrow[r] - mnew);
          lrow[r] *= alpha;
          float* __restrict orow = ob + r * d;
          for (int64_t c = 0; c < d; ++c) orow[c] *= alpha;
        }
        mrow[r] = mnew;
#pragma omp simd
        for (int64_t j = 0; j < BK; ++j) sr[j] = exp_neg(sr[j] - mnew);
        float lsum = 0.f;
#pragma omp simd reduction(+ : lsum)
        for (int64_t j = 0; j < BK; ++j) lsum += sr[j];
        lrow[r] += lsum;
      }
      gemm_acc<MR, NR>(nr, d, n, s, BK, 1, v + j0 * d, d, ob, d);
    }
    for (int64_t r = 0; r < nr; ++r) {
      float* __restrict orow = ob + r * d;
      if (lrow[r] > 0.f) {
        const float inv = 1.f / lrow[r];
        for (int64_t c = 0; c < d; ++c) orow[c] *= inv;
        lse[i0 + r] = mrow[r] + std::log(lrow[r]);
      } else {
        for (int64_t c = 0; c < d; ++c) orow[c] = 0.f;
        lse[i0 + r] = std::numeric_limits<float>::infinity();
      }
    }
  }
}

// Backward for one (b, m, h). do_ = weight * grad_out (fp32), dvec = rowsum(do_ * o_unw).
// Accumulates into dq, dk, dv (zeroed by the caller; dq/dk still need the factor `scale`,
// applied by the caller). kt, vt: scratch [d, Lp]; s, dp: scratch [BR, BK].
template <int64_t MR, int64_t NR>
static KUDA_INLINE void bwd_head_impl(const float* __restrict q, const float* __restrict k, const float* __restrict v,
              const float* __restrict do_, const float* __restrict dvec, const float* __restrict lse,
              const bool* __restrict mask, int64_t Lq, int64_t Lk, int64_t d, float scale,
              float* __restrict dq, float* __restrict dk, float* __restrict dv, float* __restrict kt,
              float* __restrict vt, float* __restrict s, float* __restrict dp) {
  const int64_t Lp = (Lk + BK - 1) / BK * BK;
  transpose_pad(k, kt, Lk, d, Lp);
  transpose_pad(v, vt, Lk, d, Lp);
  float* __restrict keep = kt + d * Lp;
  key_masks(mask, Lk, Lp, keep, nullptr);
  const int64_t Lend = valid_key_end(keep, Lk);
  for (int64_t i0 = 0; i0 < Lq; i0 += BRB) {
    const int64_t nr = std::min(BRB, Lq - i0);
    for (int64_t j0 = 0; j0 < Lend; j0 += BK) {
      const int64_t n = std::min(BK, Lk - j0);
      const int64_t nw = (n + NR - 1) / NR * NR;  // columns computed (kt, vt are zero padded)
      for (int64_t i = 0; i < nr * BK; ++i) {
        s[i] = 0.f;
        dp[i] = 0.f;
      }
      gemm_acc<MR, NR>(nr, nw, d, q + i0 * d, d, 1, kt + j0, Lp, s, BK);
      gemm_acc<MR, NR>(nr, nw, d, do_ + i0 * d, d, 1, vt + j0, Lp, dp, BK);
      for (int64_t r = 0; r < nr; ++r) {
        float* __restrict sr = s + r * BK;
        float* __restrict dpr = dp + r * BK;
        const float li = lse[i0 + r];  // +inf for a fully masked row: P = 0
        const float Di = dvec[i0 + r];
        // s - lse <= 0 up to rounding (exp_neg clamps at 0); masked/padded keys get keep = 0.
#pragma omp simd
        for (int64_t j = 0; j < BK; ++j) sr[j] = keep[j0 + j] * exp_neg(sr[j] * scale - li);
        for (int64_t j = 0; j < BK; ++j) dpr[j] = sr[j] * (dpr[j] - Di);  // dS
      }
      // dV[tile] += P^T dO ; dK[tile] += dS^T Q ; dQ[rows] += dS K[tile]
      gemm_acc<MR, NR>(n, d, nr, s, 1, BK, do_ + i0 * d, d, dv + j0 * d, d);
      gemm_acc<MR, NR>(n, d, nr, dp, 1, BK, q + i0 * d, d, dk + j0 * d, d);
      gemm_acc<MR, NR>(nr, d, n, dp, BK, 1, k + j0 * d, d, dq + i0 * d, d);
    }
  }
}

#define FWD_ARGS                                                                                          \
  const float *__restrict q, const float *__restrict k, const float *__restrict v, const bool *__restrict mask, \
      int64_t Lq, int64_t Lk, int64_t d, float scale, float *__restrict o, float *__restrict lse,               \
      float *__restrict kt, float *__restrict s
#define FWD_PASS q, k, v, mask, Lq, Lk, d, scale, o, lse, kt, s
#define BWD_ARGS                                                                                             \
  const float *__restrict q, const float *__restrict k, const float *__restrict v, const float *__restrict do_, \
      const float *__restrict dvec, const float *__restrict lse, const bool *__restrict mask, int64_t Lq,      \
      int64_t Lk, int64_t d, float scale, float *__restrict dq, float *__restrict dk, float *__restrict dv,    \
      float *__restrict kt, float *__restrict vt, float *__restrict s, float *__restrict dp
#define BWD_PASS q, k, v, do_, dvec, lse, mask, Lq, Lk, d, scale, dq, dk, dv, kt, vt, s, dp

void fwd_head_base(FWD_ARGS) { fwd_head_impl<4, 16>(FWD_PASS); }
void bwd_head_base(BWD_ARGS) { bwd_head_impl<4, 16>(BWD_PASS); }
#ifdef KUDA_X86_DISPATCH
__attribute__((target("avx2,fma"))) void fwd_head_avx2(FWD_ARGS) { fwd_head_impl<6, 16>(FWD_PASS); }
__attribute__((target("avx2,fma"))) void bwd_head_avx2(BWD_ARGS) { bwd_head_impl<6, 16>(BWD_PASS); }
#define KUDA_AVX512 "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,prefer-vector-width=512"
__attribute__((target(KUDA_AVX512))) void fwd_head_avx512(FWD_ARGS) { fwd_head_impl<8, 32>(FWD_PASS); }
__attribute__((target(KUDA_AVX512))) void bwd_head_avx512(BWD_ARGS) { bwd_head_impl<8, 32>(BWD_PASS); }
// 0 = baseline, 1 = AVX2+FMA, 2 = AVX-512 (KUDA_MMSA_CPU_ISA=base|avx2 caps it, for testing).
int cpu_isa() {
  static const int isa = [] {
    int best = 0;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = 1;
    if (best == 1 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
      best = 2;
    const char* cap = std::getenv("KUDA_MMSA_CPU_ISA");
    if (cap && std::string(cap) == "base") best = 0;
    if (cap && std::string(cap) == "avx2" && best > 1) best = 1;
    return best;
  }();
  return isa;
}
#endif
void fwd_head(FWD_ARGS) {
#ifdef KUDA_X86_DISPATCH
  switch (cpu_isa()) {
    case 2: return fwd_head_avx512(FWD_PASS);
    case 1: return fwd_head_avx2(FWD_PASS);
    default: break;
  }
#endif
  fwd_head_base(FWD_PASS);
}
void bwd_head(BWD_ARGS) {
#ifdef KUDA_X86_DISPATCH
  switch (cpu_isa()) {
    case 2: return bwd_head_avx512(BWD_PASS);
    case 1: return bwd_head_avx2(BWD_PASS);
    default: break;
  }
#endif
  bwd_head_base(BWD_PASS);
}

template <typename T>
inline const float* as_float(const T* src, int64_t n, std::vector<float>& buf) {
  buf.resize(n);
  for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<float>(src[i]);
  return buf.data();
}
template <>
inline const float* as_float<float>(const float* src, int64_t, std::vector<float>&) {
  return src;
}

c10::optional<at::Tensor> contiguous_mask(const c10::optional<at::Tensor>& mask) {
  if (!mask.has_value()) return c10::nullopt;
  return mask->contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fwd_cpu(const at::Tensor& q_, const at::Tensor& k_,
                                                       const at::Tensor& v_, const at::Tensor& weight,
                                                       const c10::optional<at::Tensor>& mask_, double scale) {
  check_inputs(q_, k_, v_, weight, mask_);
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const auto mask = contiguous_mask(mask_);
  const auto w = weight.to(at::kFloat).contiguous();
  const int64_t B = q.size(0), M = q.size(1), H = q.size(2), Lq = q.size(3), Lk = k.size(3), d = q.size(4);
  auto out = at::empty_like(q);
  auto o_unw = at::empty(q.sizes(), q.options().dtype(at::kFloat));
  auto lse = at::empty({B, M, H, Lq}, q.options().dtype(at::kFloat));
  const int64_t BMH = B * M * H;
  if (BMH == 0 || Lq == 0 || d == 0) return {out.zero_(), o_unw.zero_(), lse.fill_(INFINITY)};
  if (Lk == 0) return {out.zero_(), o_unw.zero_(), lse.fill_(INFINITY)};
  const int64_t Lp = (Lk + BK - 1) / BK * BK;
  const float fscale = static_cast<float>(scale);
  const float* wp = w.data_ptr<float>();
  const bool* mp = mask.has_value() ? mask->data_ptr<bool>() : nullptr;
  float* op = o_unw.data_ptr<float>();
  float* lp = lse.data_ptr<float>();
  KUDA_DISPATCH(q.scalar_type(), "ratio_cross_attention_fwd_cpu", [&] {
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* kp = k.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    scalar_t* outp = out.data_ptr<scalar_t>();
    at::parallel_for(0, BMH, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> qb, kb, vb, kt(static_cast<size_t>(d * Lp + 2 * Lp)), sbuf(BR * BK);
      for (int64_t bmh = begin; bmh < end; ++bmh) {
        const int64_t bm = bmh / H;
        const float* qf = as_float(qp + bmh * Lq * d, Lq * d, qb);
        const float* kf = as_float(kp + bmh * Lk * d, Lk * d, kb);
        const float* vf = as_float(vp + bmh * Lk * d, Lk * d, vb);
        float* o = op + bmh * Lq * d;
        fwd_head(qf, kf, vf, mp ? mp + bm * Lk : nullptr, Lq, Lk, d, fscale, o, lp + bmh * Lq, kt.data(), sbuf.data());
        const float wv = wp[bm];
        scalar_t* dst = outp + bmh * Lq * d;
        for (int64_t i = 0; i < Lq * d; ++i) dst[i] = static_cast<scalar_t>(wv * o[i]);
      }
    });
  });
  return {out, o_unw, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bwd_cpu(
    const at::Tensor& grad_, const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
    const at::Tensor& weight, const c10::optional<at::Tensor>& mask_, const at::Tensor& o_unw_,
    const at::Tensor& lse_, double scale) {
  check_inputs(q_, k_, v_, weight, mask_);
  TORCH_CHECK(grad_.sizes() == q_.sizes(), "ratio_cross_attention backward: grad shape mismatch");
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const auto g = grad_.to(at::kFloat).contiguous();
  const auto o_unw = o_unw_.to(at::kFloat).contiguous();
  const auto lse = lse_.to(at::kFloat).contiguous();
  const auto mask = contiguous_mask(mask_);
  const auto w = weight.to(at::kFloat).contiguous();
  const int64_t B = q.size(0), M = q.size(1), H = q.size(2), Lq = q.size(3), Lk = k.size(3), d = q.size(4);
  auto dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  auto dw_part = at::zeros({B, M, H}, q.options().dtype(at::kFloat));
  const int64_t BMH = B * M * H;
  if (BMH == 0 || Lq == 0 || Lk == 0 || d == 0) {
    return {dq.zero_(), dk.zero_(), dv.zero_(), at::zeros_like(weight)};
  }
  const int64_t Lp = (Lk + BK - 1) / BK * BK;
  const float fscale = static_cast<float>(scale);
  const float* wp = w.data_ptr<float>();
  const bool* mp = mask.has_value() ? mask->data_ptr<bool>() : nullptr;
  const float* gp = g.data_ptr<float>();
  const float* op = o_unw.data_ptr<float>();
  const float* lp = lse.data_ptr<float>();
  float* dwp = dw_part.data_ptr<float>();
  KUDA_DISPATCH(q.scalar_type(), "ratio_cross_attention_bwd_cpu", [&] {
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* kp = k.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    scalar_t* dqp = dq.data_ptr<scalar_t>();
    scalar_t* dkp = dk.data_ptr<scalar_t>();
    scalar_t* dvp = dv.data_ptr<scalar_t>();
    at::parallel_for(0, BMH, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> qb, kb, vb, kt(static_cast<size_t>(d * Lp + 2 * Lp)), vt(static_cast<size_t>(d * Lp));
      std::vector<float> sbuf(BRB * BK), dpbuf(BRB * BK);
      std::vector<float> dob(static_cast<size_t>(Lq * d)), dvec(static_cast<size_t>(Lq));
      std::vector<float> dqa(static_cast<size_t>(Lq * d)), dka(static_cast<size_t>(Lk * d)),
          dva(static_cast<size_t>(Lk * d));
      for (int64_t bmh = begin; bmh < end; ++bmh) {
        const int64_t bm = bmh / H;
        const float wv = wp[bm];
        const float* qf = as_float(qp + bmh * Lq * d, Lq * d, qb);
        const float* kf = as_float(kp + bmh * Lk * d, Lk * d, kb);
        const float* vf = as_float(vp + bmh * Lk * d, Lk * d, vb);
        const float* gi = gp + bmh * Lq * d;
        const float* oi = op + bmh * Lq * d;
        double dwsum = 0.0;
        for (int64_t i = 0; i < Lq; ++i) {
          float acc = 0.f;
          for (int64_t c = 0; c < d; ++c) {
            const float gg = gi[i * d + c];
            acc += gg * oi[i * d + c];
            dob[i * d + c] = wv * gg;
          }
          dvec[i] = wv * acc;  // rowsum(dO_attn * O_unw)
          dwsum += acc;
        }
        dwp[bmh] = static_cast<float>(dwsum);
        std::fill(dqa.begin(), dqa.end(), 0.f);
        std::fill(dka.begin(), dka.end(), 0.f);
        std::fill(dva.begin(), dva.end(), 0.f);
        bwd_head(qf, kf, vf, dob.data(), dvec.data(), lp + bmh * Lq, mp ? mp + bm * Lk : nullptr, Lq, Lk, d,
                 fscale, dqa.data(), dka.data(), dva.data(), kt.data(), vt.data(), sbuf.data(), dpbuf.data());
        scalar_t* dqo = dqp + bmh * Lq * d;
        for (int64_t i = 0; i < Lq * d; ++i) dqo[i] = static_cast<scalar_t>(fscale * dqa[i]);
        scalar_t* dko = dkp + bmh * Lk * d;
        scalar_t* dvo = dvp + bmh * Lk * d;
        for (int64_t i = 0; i < Lk * d; ++i) {
          dko[i] = static_cast<scalar_t>(fscale * dka[i]);
          dvo[i] = static_cast<scalar_t>(dva[i]);
        }
      }
    });
  });
  auto dweight = dw_part.sum(-1).to(weight.scalar_type());
  return {dq, dk, dv, dweight};
}

}  // namespace

// Public op: composes the internal forward (CompositeImplicitAutograd, so autograd, fake
// tensors and torch.compile see _ratio_cross_attention_fwd and its registered formulas).
at::Tensor ratio_cross_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& weight, const c10::optional<at::Tensor>& mask, double scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("kuda_mmsa::_ratio_cross_attention_fwd", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const c10::optional<at::Tensor>&, double)>();
  return std::get<0>(op.call(q, k, v, weight, mask, scale));
}

TORCH_LIBRARY(kuda_mmsa, m) {
  m.def("ratio_cross_attention(Tensor q, Tensor k, Tensor v, Tensor weight, Tensor? key_padding_mask, "
        "float scale) -> Tensor");
  m.def("_ratio_cross_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor weight, Tensor? key_padding_mask, "
        "float scale) -> (Tensor, Tensor, Tensor)");
  m.def("_ratio_cross_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor weight, "
        "Tensor? key_padding_mask, Tensor o_unweighted, Tensor lse, float scale) -> (Tensor, Tensor, Tensor, Tensor)");
  m.impl("ratio_cross_attention", c10::DispatchKey::CompositeImplicitAutograd, TORCH_FN(ratio_cross_attention));
}

TORCH_LIBRARY_IMPL(kuda_mmsa, CPU, m) {
  m.impl("_ratio_cross_attention_fwd", TORCH_FN(fwd_cpu));
  m.impl("_ratio_cross_attention_bwd", TORCH_FN(bwd_cpu));
}

}  // namespace kuda_mmsa

// Tensor-core (WMMA) path of kuda_mmsa::ratio_cross_attention on CUDA, fp16/bf16 only.
// Opt-in: taken when KUDA_MMSA_TC=1 (read at every call), the inputs are fp16 or bf16,
// d <= 128 and the GPU is sm_80 or newer; otherwise the SIMT kernels run. Same outputs and
// saved state (o_unweighted fp32, lse natural-log, +inf for fully masked rows) as the SIMT
// kernels, so forward and backward may come from either path.
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime.h>

namespace kuda_mmsa {
namespace tc {

// KUDA_MMSA_TC=1 set, fp16/bf16, d <= 128, compute capability >= 8.0.
bool wanted(const at::Tensor& q);

// q, k, v contiguous, one dtype (fp16/bf16); w fp32 [B, M]; mask bool [B, M, Lk] or null.
void forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& w,
             const bool* mask, at::Tensor& out, at::Tensor& o_unw, at::Tensor& lse, float scale,
             cudaStream_t stream);

// g (grad_out, q's dtype), dvec = w * rowsum(g * o_unw) [B, M, H, Lq] fp32; dq_acc fp32
// zero-initialised (atomically accumulated); dk, dv written.
void backward(const at::Tensor& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
              const at::Tensor& w, const bool* mask, const at::Tensor& lse, const at::Tensor& dvec,
              at::Tensor& dq_acc, at::Tensor& dk, at::Tensor& dv, float scale, cudaStream_t stream);

}  // namespace tc
}  // namespace kuda_mmsa

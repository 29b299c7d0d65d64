// bf16_gemm.h: GEMM with bf16 operands and fp32 accumulation, and the bf16 casts, for the runtime's bf16 plans.
#ifndef SBP_BF16_GEMM_H
#define SBP_BF16_GEMM_H
#include <stddef.h>
#include <stdint.h>

/// The two ways to multiply bf16 operands: widen them to fp32 while packing and use fp32
/// FMA (AVX-512F; portable C without it), or multiply bf16 pairs with AVX512-BF16's
/// vdpbf16ps. Which is faster depends on the CPU (BENCHMARKS.md).
enum { SBP_BF16_WIDEN = 0, SBP_BF16_DOT = 1 };

/// 1 when this CPU has the instructions the kernel needs.
int sbp_bf16_kernel_available(int kernel);

/// Bytes of scratch one call needs (packed panels); the caller owns it, one per thread.
size_t sbp_bf16_gemm_workspace(void);

/// C[m,n] = alpha · op(A)[m,k] · op(B)[k,n] + beta · C, row-major, C fp32; lda, ldb, ldc are
/// row strides in elements. A and B are bf16 (the upper half of an fp32), or fp32 when
/// `a_fp32` / `b_fp32` says so: such an operand is rounded to bf16 as it is packed, so the
/// product is the same as if it had been cast first.
void sbp_bf16_gemm(int kernel, int transA, int transB, int m, int n, int k, float alpha, const void *a, int a_fp32, int lda,
                   const void *b, int b_fp32, int ldb, float beta, float *c, int ldc, void *workspace);

/// fp32 to bf16, rounding to nearest even (NaN stays NaN), and back.
void sbp_f32_to_bf16(const float *x, uint16_t *y, size_t n);
void sbp_bf16_to_f32(const uint16_t *x, float *y, size_t n);

/// GFLOP/s of independent chains of the kernel's multiply-add instruction on this core
/// (vdpbf16ps for DOT, vfmadd231ps for WIDEN), `iterations` rounds of 24: the peak a GEMM
/// can approach. 0 when the kernel is not available.
double sbp_bf16_peak_gflops(int kernel, long iterations);
#endif

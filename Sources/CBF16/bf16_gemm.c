// bf16_gemm.c: bf16 GEMM kernels (widen to fp32 + FMA, or vdpbf16ps) with OpenBLAS-style packing, the bf16 casts, and peak probes.
#include "bf16_gemm.h"

#include <immintrin.h>
#include <string.h>
#include <time.h>

// Register block MR×NR of C, and the cache blocks: KC of the depth, MC rows of A and NC
// columns of B per packed panel (B's panel, KC×NC fp32 = 1 MiB, stays in L2).
#define MR 12
#define NR 32
#define KC 256
#define MC 144
#define NC 1024

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

int sbp_bf16_kernel_available(int kernel) {
  __builtin_cpu_init();
  if (kernel == SBP_BF16_DOT) return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
  return 1;
}

size_t sbp_bf16_gemm_workspace(void) { return (size_t)(KC + 2) * (NC + NR) * 4 + (size_t)(KC + 2) * (MC + MR) * 4 + 64; }

static inline float widen(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static inline uint16_t narrow(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  uint16_t rounded = (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
  return (u & 0x7FFFFFFF) > 0x7F800000 ? (uint16_t)((u >> 16) | 0x40) : rounded;  // NaN stays a (quiet) NaN
}

// Element (row, col) of op(P) as bf16; an fp32 operand is rounded on the way.
static inline uint16_t element(const void *p, int fp32, int trans, int ld, int row, int col) {
  size_t i = trans ? (size_t)col * ld + row : (size_t)row * ld + col;
  return fp32 ? narrow(((const float *)p)[i]) : ((const uint16_t *)p)[i];
}

// C's rows × cols corner of a register block: alpha · acc + beta · C (C not read when beta is 0).
AVX512 static inline void store_block(__m512 acc[MR][2], float *c, int ldc, int rows, int cols, float alpha, float beta) {
  __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  for (int r = 0; r < rows; r++)
    for (int h = 0; h < 2 && cols > 16 * h; h++) {
      int left = cols - 16 * h;
      __mmask16 mask = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
      float *cp = c + (size_t)r * ldc + 16 * h;
      __m512 x = _mm512_mul_ps(acc[r][h], va);
      if (beta != 0) x = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, cp), vb, x);
      _mm512_mask_storeu_ps(cp, mask, x);
    }
}

// ---- widen: fp32 panels, fp32 FMA ----

// Element i of an operand as the fp32 value of its bf16: an fp32 operand is rounded first.
#define WIDENED(p, fp32, i) widen((fp32) ? narrow(((const float *)(p))[i]) : ((const uint16_t *)(p))[i])

// A panel of an operand as strips of `width` lines (rows of op(A), columns of op(B)), each
// k's `width` values contiguous; lines past `extent` are zero. `along` says the operand is
// contiguous along the lines (op(A) transposed, op(B) not): each loop then runs along the
// operand's contiguous axis. The cases are separate loops, so no element pays for a test.
static inline __attribute__((always_inline)) void pack_widen_case(int along, int fp32, int width, const void *p, int ld, int l0, int lc,
                                                                  int k0, int kc, int extent, float *dst) {
  for (int i = 0; i < lc; i += width) {
    float *strip = dst + (size_t)i * kc;
    int lines = extent - (l0 + i) < width ? extent - (l0 + i) : width;
    if (lines < 0) lines = 0;
    if (along) {
      for (int k = 0; k < kc; k++) {
        size_t at = (size_t)(k0 + k) * ld + l0 + i;
        for (int r = 0; r < lines; r++) strip[k * width + r] = WIDENED(p, fp32, at + r);
      }
    } else {
      for (int r = 0; r < lines; r++) {
        size_t at = (size_t)(l0 + i + r) * ld + k0;
        for (int k = 0; k < kc; k++) strip[k * width + r] = WIDENED(p, fp32, at + k);
      }
    }
    for (int r = lines; r < width; r++)
      for (int k = 0; k < kc; k++) strip[k * width + r] = 0.0f;
  }
}

// op(B)[k0:k0+kc, n0:n0+nc] as NR-column strips.
static void pack_b_widen(int transB, const void *b, int bf, int ldb, int k0, int kc, int n0, int nc, int n, float *dst) {
  if (!transB)
    bf ? pack_widen_case(1, 1, NR, b, ldb, n0, nc, k0, kc, n, dst) : pack_widen_case(1, 0, NR, b, ldb, n0, nc, k0, kc, n, dst);
  else
    bf ? pack_widen_case(0, 1, NR, b, ldb, n0, nc, k0, kc, n, dst) : pack_widen_case(0, 0, NR, b, ldb, n0, nc, k0, kc, n, dst);
}

// op(A)[m0:m0+mc, k0:k0+kc] as MR-row strips.
static void pack_a_widen(int transA, const void *a, int af, int lda, int m0, int mc, int k0, int kc, int m, float *dst) {
  if (transA)
    af ? pack_widen_case(1, 1, MR, a, lda, m0, mc, k0, kc, m, dst) : pack_widen_case(1, 0, MR, a, lda, m0, mc, k0, kc, m, dst);
  else
    af ? pack_widen_case(0, 1, MR, a, lda, m0, mc, k0, kc, m, dst) : pack_widen_case(0, 0, MR, a, lda, m0, mc, k0, kc, m, dst);
}

AVX512 static void micro_widen_avx512(int kc, const float *a, const float *b, float *c, int ldc, int rows, int cols, float alpha, float beta) {
  __m512 acc[MR][2];
  for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int k = 0; k < kc; k++) {
    __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
    b += NR;
#pragma GCC unroll 12
    for (int r = 0; r < MR; r++) {
      __m512 av = _mm512_set1_ps(a[r]);
      acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
    }
    a += MR;
  }
  store_block(acc, c, ldc, rows, cols, alpha, beta);
}

// The same block in plain C, for a CPU without AVX-512 (the compiler vectorizes it for the baseline).
static void micro_widen_c(int kc, const float *a, const float *b, float *c, int ldc, int rows, int cols, float alpha, float beta) {
  float acc[MR][NR];
  memset(acc, 0, sizeof acc);
  for (int k = 0; k < kc; k++, a += MR, b += NR)
    for (int r = 0; r < MR; r++)
      for (int j = 0; j < NR; j++) acc[r][j] += a[r] * b[j];
  for (int r = 0; r < rows; r++)
    for (int j = 0; j < cols; j++) {
      float *cp = c + (size_t)r * ldc + j;
      *cp = alpha * acc[r][j] + (beta != 0 ? beta * *cp : 0.0f);
    }
}

// ---- dot: bf16 pairs, vdpbf16ps ----

// op(B) as NR-column strips of k-pairs: for pair p, NR (b[2p][c], b[2p+1][c]); an odd last k pairs with 0.
static void pack_b_dot(int transB, const void *b, int bf, int ldb, int k0, int kc, int n0, int nc, int n, uint16_t *dst) {
  int pairs = (kc + 1) / 2;
  for (int j = 0; j < nc; j += NR)
    for (int p = 0; p < pairs; p++)
      for (int c = 0; c < NR; c++) {
        int col = n0 + j + c;
        for (int h = 0; h < 2; h++) {
          int k = 2 * p + h;
          *dst++ = col < n && k < kc ? element(b, bf, transB, ldb, k0 + k, col) : 0;
        }
      }
}

static void pack_a_dot(int transA, const void *a, int af, int lda, int m0, int mc, int k0, int kc, int m, uint16_t *dst) {
  int pairs = (kc + 1) / 2;
  for (int i = 0; i < mc; i += MR)
    for (int p = 0; p < pairs; p++)
      for (int r = 0; r < MR; r++) {
        int row = m0 + i + r;
        for (int h = 0; h < 2; h++) {
          int k = 2 * p + h;
          *dst++ = row < m && k < kc ? element(a, af, transA, lda, row, k0 + k) : 0;
        }
      }
}

AVX512BF16 static void micro_dot(int pairs, const uint16_t *a, const uint16_t *b, float *c, int ldc, int rows, int cols, float alpha,
                                 float beta) {
  __m512 acc[MR][2];
  for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  const uint32_t *ap = (const uint32_t *)a;
  for (int p = 0; p < pairs; p++) {
    __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + 32);
    b += 2 * NR;
#pragma GCC unroll 12
    for (int r = 0; r < MR; r++) {
      __m512bh av = (__m512bh)_mm512_set1_epi32((int)ap[r]);
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
    }
    ap += MR;
  }
  store_block(acc, c, ldc, rows, cols, alpha, beta);
}

void sbp_bf16_gemm(int kernel, int transA, int transB, int m, int n, int k, float alpha, const void *a, int a_fp32, int lda,
                   const void *b, int b_fp32, int ldb, float beta, float *c, int ldc, void *workspace) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int r = 0; r < m; r++)
      for (int j = 0; j < n; j++) c[(size_t)r * ldc + j] *= beta;
    return;
  }
  int dot = kernel == SBP_BF16_DOT && sbp_bf16_kernel_available(SBP_BF16_DOT);
  int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  // 64-byte aligned panels inside the caller's workspace.
  char *base = (char *)(((uintptr_t)workspace + 63) & ~(uintptr_t)63);
  void *pb = base, *pa = base + (size_t)(KC + 2) * (NC + NR) * 4;
  for (int n0 = 0; n0 < n; n0 += NC) {
    int nc = n - n0 < NC ? n - n0 : NC, ncr = (nc + NR - 1) / NR * NR;
    for (int k0 = 0; k0 < k; k0 += KC) {
      int kc = k - k0 < KC ? k - k0 : KC, pairs = (kc + 1) / 2;
      float bk = k0 == 0 ? beta : 1.0f;  // later depth blocks add to what the first wrote
      if (dot)
        pack_b_dot(transB, b, b_fp32, ldb, k0, kc, n0, ncr, n, pb);
      else
        pack_b_widen(transB, b, b_fp32, ldb, k0, kc, n0, ncr, n, pb);
      for (int m0 = 0; m0 < m; m0 += MC) {
        int mc = m - m0 < MC ? m - m0 : MC, mcr = (mc + MR - 1) / MR * MR;
        if (dot)
          pack_a_dot(transA, a, a_fp32, lda, m0, mcr, k0, kc, m, pa);
        else
          pack_a_widen(transA, a, a_fp32, lda, m0, mcr, k0, kc, m, pa);
        for (int j = 0; j < nc; j += NR)
          for (int i = 0; i < mc; i += MR) {
            int rows = mc - i < MR ? mc - i : MR, cols = nc - j < NR ? nc - j : NR;
            float *cp = c + (size_t)(m0 + i) * ldc + n0 + j;
            if (dot)
              micro_dot(pairs, (const uint16_t *)pa + (size_t)i * pairs * 2, (const uint16_t *)pb + (size_t)j * pairs * 2, cp, ldc, rows,
                        cols, alpha, bk);
            else if (avx512)
              micro_widen_avx512(kc, (const float *)pa + (size_t)i * kc, (const float *)pb + (size_t)j * kc, cp, ldc, rows, cols, alpha,
                                 bk);
            else
              micro_widen_c(kc, (const float *)pa + (size_t)i * kc, (const float *)pb + (size_t)j * kc, cp, ldc, rows, cols, alpha, bk);
          }
      }
    }
  }
}

void sbp_f32_to_bf16(const float *x, uint16_t *y, size_t n) {
  for (size_t i = 0; i < n; i++) y[i] = narrow(x[i]);
}

void sbp_bf16_to_f32(const uint16_t *x, float *y, size_t n) {
  for (size_t i = 0; i < n; i++) y[i] = widen(x[i]);
}

static double seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

AVX512BF16 static double peak_dot(long iterations) {
  __m512 acc[24];
  for (int i = 0; i < 24; i++) acc[i] = _mm512_setzero_ps();
  __m512bh x = (__m512bh)_mm512_set1_epi32(0x3F803F80);
  double t = seconds();
  for (long it = 0; it < iterations; it++) {
#pragma GCC unroll 24
    for (int i = 0; i < 24; i++) acc[i] = _mm512_dpbf16_ps(acc[i], x, x);
  }
  t = seconds() - t;
  volatile float sink = 0;
  for (int i = 0; i < 24; i++) sink += _mm512_reduce_add_ps(acc[i]);
  return iterations * 24.0 * 64 / t / 1e9;
}

AVX512 static double peak_fma(long iterations) {
  __m512 acc[24];
  for (int i = 0; i < 24; i++) acc[i] = _mm512_setzero_ps();
  __m512 x = _mm512_set1_ps(0.999f), y = _mm512_set1_ps(1e-3f);
  double t = seconds();
  for (long it = 0; it < iterations; it++) {
#pragma GCC unroll 24
    for (int i = 0; i < 24; i++) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
  }
  t = seconds() - t;
  volatile float sink = 0;
  for (int i = 0; i < 24; i++) sink += _mm512_reduce_add_ps(acc[i]);
  return iterations * 24.0 * 32 / t / 1e9;
}

double sbp_bf16_peak_gflops(int kernel, long iterations) {
  if (kernel == SBP_BF16_DOT) return sbp_bf16_kernel_available(SBP_BF16_DOT) ? peak_dot(iterations) : 0;
  return __builtin_cpu_supports("avx512f") ? peak_fma(iterations) : 0;
}

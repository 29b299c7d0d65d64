// bf16_gemm.c: the bf16 GEMM choice (make bench-bf16-gemm): sbpc's two kernels against oneDNN's bf16 matmul and OpenBLAS fp32.
//
// One core (OMP_NUM_THREADS=1, OpenBLAS single-threaded), on the products of a ViT-Tiny step
// at batch 16 (3152 tokens × width 192, MLP 768; forward, weight gradient with A
// transposed, input gradient with B transposed), a ConvNeXt-Tiny 1×1 conv at batch 8, one
// attention product and a 2048³ square. For each: GFLOP/s of the best of 5 calls of
//   - sbpc widen: bf16 operands widened to fp32 while packing, fp32 FMA (Sources/CBF16);
//   - sbpc dot: bf16 pairs, AVX512-BF16 vdpbf16ps (Sources/CBF16);
//   - oneDNN: the matmul primitive, bf16 × bf16 → f32 (its implementation's name is printed);
//   - OpenBLAS: fp32 sgemm on the same (widened) values;
// and the largest difference from OpenBLAS. Then the peaks of vdpbf16ps and of fp32 FMA
// chains on this core. Prints Markdown.
#include <math.h>
#include <oneapi/dnnl/dnnl.h>
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../Sources/CBF16/include/bf16_gemm.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static void row(const char *what, int m, int n, int k, int ta, int tb) {
  float *af = malloc(4 * (size_t)m * k), *bf = malloc(4 * (size_t)k * n), *ref = malloc(4 * (size_t)m * n), *c = malloc(4 * (size_t)m * n);
  uint16_t *a = malloc(2 * (size_t)m * k), *b = malloc(2 * (size_t)k * n);
  srand(7);
  for (size_t i = 0; i < (size_t)m * k; i++) af[i] = rand() / (float)RAND_MAX - 0.5f;
  for (size_t i = 0; i < (size_t)k * n; i++) bf[i] = rand() / (float)RAND_MAX - 0.5f;
  sbp_f32_to_bf16(af, a, (size_t)m * k);
  sbp_f32_to_bf16(bf, b, (size_t)k * n);
  sbp_bf16_to_f32(a, af, (size_t)m * k);
  sbp_bf16_to_f32(b, bf, (size_t)k * n);
  int lda = ta ? m : k, ldb = tb ? k : n;
  void *ws = aligned_alloc(64, (sbp_bf16_gemm_workspace() + 63) / 64 * 64);
  double flop = 2.0 * m * n * k, best[4] = {1e9, 1e9, 1e9, 1e9}, err[3] = {0, 0, 0};
  // oneDNN: one primitive for the shape, created outside the timing.
  dnnl_engine_t eng;
  dnnl_engine_create(&eng, dnnl_cpu, 0);
  dnnl_stream_t st;
  dnnl_stream_create(&st, eng, dnnl_stream_default_flags);
  dnnl_memory_desc_t amd, bmd, cmd;
  dnnl_dims_t ad = {m, k}, bd = {k, n}, cd = {m, n};
  dnnl_memory_desc_init_by_tag(&amd, 2, ad, dnnl_bf16, ta ? dnnl_ba : dnnl_ab);
  dnnl_memory_desc_init_by_tag(&bmd, 2, bd, dnnl_bf16, tb ? dnnl_ba : dnnl_ab);
  dnnl_memory_desc_init_by_tag(&cmd, 2, cd, dnnl_f32, dnnl_ab);
  dnnl_matmul_desc_t mmd;
  dnnl_matmul_desc_init(&mmd, &amd, &bmd, NULL, &cmd);
  dnnl_primitive_desc_t pd;
  dnnl_primitive_desc_create(&pd, &mmd, NULL, eng, NULL);
  const char *impl = "?";
  dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
  dnnl_primitive_t prim;
  dnnl_primitive_create(&prim, pd);
  float *d = malloc(4 * (size_t)m * n);
  dnnl_memory_t am, bm, cm;
  dnnl_memory_create(&am, &amd, eng, a);
  dnnl_memory_create(&bm, &bmd, eng, b);
  dnnl_memory_create(&cm, &cmd, eng, d);
  dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}};
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, 1, af, lda, bf, ldb, 0, ref, n);
  for (int it = 0; it < 5; it++) {
    for (int kern = 0; kern < 2; kern++) {
      if (!sbp_bf16_kernel_available(kern)) continue;
      double t = now();
      sbp_bf16_gemm(kern, ta, tb, m, n, k, 1, a, 0, lda, b, 0, ldb, 0, c, n, ws);
      t = now() - t;
      if (t < best[kern]) best[kern] = t;
      for (size_t i = 0; i < (size_t)m * n; i++) err[kern] = fmax(err[kern], fabs(c[i] - ref[i]));
    }
    double t = now();
    dnnl_primitive_execute(prim, st, 3, args);
    dnnl_stream_wait(st);
    t = now() - t;
    if (t < best[2]) best[2] = t;
    t = now();
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, 1, af, lda, bf, ldb, 0, c, n);
    t = now() - t;
    if (t < best[3]) best[3] = t;
  }
  for (size_t i = 0; i < (size_t)m * n; i++) err[2] = fmax(err[2], fabs(d[i] - ref[i]));
  printf("| %s | %d×%d×%d%s%s | %.1f | %.1f | %.1f | %.1f | %.1e / %.1e / %.1e | %s |\n", what, m, n, k, ta ? " Aᵀ" : "", tb ? " Bᵀ" : "",
         flop / best[0] / 1e9, best[1] < 1e9 ? flop / best[1] / 1e9 : 0.0, flop / best[2] / 1e9, flop / best[3] / 1e9, err[0], err[1],
         err[2], impl);
  dnnl_primitive_destroy(prim);
  dnnl_primitive_desc_destroy(pd);
  dnnl_memory_destroy(am);
  dnnl_memory_destroy(bm);
  dnnl_memory_destroy(cm);
  dnnl_stream_destroy(st);
  dnnl_engine_destroy(eng);
  free(af), free(bf), free(ref), free(c), free(a), free(b), free(d), free(ws);
}

int main(void) {
  printf("OpenBLAS core: %s\n\n", openblas_get_corename());
  printf("| product | m×n×k | sbpc widen | sbpc dot | oneDNN bf16 | OpenBLAS fp32 | max diff widen / dot / oneDNN | oneDNN kernel |\n");
  printf("|---|---|---|---|---|---|---|---|\n");
  row("ViT-Tiny qkv, forward", 3152, 576, 192, 0, 0);
  row("ViT-Tiny fc1, forward", 3152, 768, 192, 0, 0);
  row("ViT-Tiny fc2, forward", 3152, 192, 768, 0, 0);
  row("ViT-Tiny qkv, weight gradient", 192, 576, 3152, 1, 0);
  row("ViT-Tiny fc2, input gradient", 3152, 768, 192, 0, 1);
  row("ViT-Tiny attention scores, one head", 197, 197, 64, 0, 1);
  row("ConvNeXt-Tiny 1×1 conv, stage 1", 25088, 384, 96, 0, 0);
  row("square", 2048, 2048, 2048, 0, 0);
  double dot = sbp_bf16_peak_gflops(SBP_BF16_DOT, 2000000), fma = sbp_bf16_peak_gflops(SBP_BF16_WIDEN, 2000000);
  printf("\npeaks on one core: vdpbf16ps chains %.1f GFLOP/s, fp32 FMA chains %.1f GFLOP/s (ratio %.2f)\n", dot, fma, fma > 0 ? dot / fma : 0);
  return 0;
}

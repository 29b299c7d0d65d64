// count_malloc.c: an LD_PRELOAD shim that counts malloc, calloc and realloc calls and prints the count at exit (make check-allocs).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static unsigned long count = 0, blas = 0;
/* OpenBLAS's own allocations are counted apart: its SkylakeX small-matrix sgemm kernels
   malloc a 128-byte buffer per call, which no caller can avoid; the check is about sbpc's. */
static int from_blas(void *caller) {
  Dl_info info;
  return dladdr(caller, &info) && info.dli_fname && strstr(info.dli_fname, "libopenblas");
}
static void *(*real_malloc)(size_t) = 0;
static void *(*real_calloc)(size_t, size_t) = 0;
static void *(*real_realloc)(void *, size_t) = 0;
static char tmp[65536]; static size_t used = 0;
void *malloc(size_t n) {
  if (!real_malloc) real_malloc = dlsym(RTLD_NEXT, "malloc");
  if (from_blas(__builtin_return_address(0))) blas++; else count++;
  return real_malloc(n); }
void *calloc(size_t a, size_t b) {
  if (!real_calloc) { if (used + a*b < sizeof tmp) { void *p = tmp + used; used += (a*b + 15) & ~15; return p; } }
  if (!real_calloc) real_calloc = dlsym(RTLD_NEXT, "calloc"); count++; return real_calloc(a, b); }
void *realloc(void *p, size_t n) { if (!real_realloc) real_realloc = dlsym(RTLD_NEXT, "realloc"); count++; return real_realloc(p, n); }
void free(void *p) { static void (*rf)(void*) = 0; if ((char*)p >= tmp && (char*)p < tmp + sizeof tmp) return; if (!rf) rf = dlsym(RTLD_NEXT, "free"); rf(p); }
__attribute__((destructor)) static void done(void) { char b[96]; int k = snprintf(b, sizeof b, "mallocs %lu\nopenblas mallocs %lu\n", count, blas); write(2, b, k); }

// count_malloc.c: an LD_PRELOAD shim that counts malloc, calloc and realloc calls and prints the count at exit (make check-allocs).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static unsigned long count = 0, blas = 0, codec = 0;
/* OpenBLAS's own allocations are counted apart: its SkylakeX small-matrix sgemm kernels
   malloc a 128-byte buffer per call, which no caller can avoid; the check is about sbpc's.
   So are the image libraries': libjpeg-turbo and libpng set up their decoder state per image. */
/* The library a caller's address belongs to: 0 sbpc (or libc, Swift), 1 OpenBLAS, 2 an image
   codec. dladdr is slow (about 0.1 ms a call here), so answers are cached per address. */
static void *seen[8192]; static int seen_lib[8192];
static int library(void *caller) {
  /* Callers repeat: a direct-mapped cache of the answer per return address. */
  size_t slot = ((size_t)caller >> 3) & 8191;
  if (seen[slot] == caller) return seen_lib[slot];
  Dl_info info;
  int lib = 0;
  if (dladdr(caller, &info) && info.dli_fname) {
    if (strstr(info.dli_fname, "libopenblas")) lib = 1;
    else if (strstr(info.dli_fname, "libjpeg") || strstr(info.dli_fname, "libturbojpeg") || strstr(info.dli_fname, "libpng")) lib = 2;
  }
  seen[slot] = caller;
  seen_lib[slot] = lib;
  return lib;
}
static void *(*real_malloc)(size_t) = 0;
static void *(*real_calloc)(size_t, size_t) = 0;
static void *(*real_realloc)(void *, size_t) = 0;
static char tmp[65536]; static size_t used = 0;
void *malloc(size_t n) {
  if (!real_malloc) real_malloc = dlsym(RTLD_NEXT, "malloc");
  switch (library(__builtin_return_address(0))) { case 1: blas++; break; case 2: codec++; break; default: count++; }
  return real_malloc(n); }
void *calloc(size_t a, size_t b) {
  if (!real_calloc) { if (used + a*b < sizeof tmp) { void *p = tmp + used; used += (a*b + 15) & ~15; return p; } }
  if (!real_calloc) real_calloc = dlsym(RTLD_NEXT, "calloc");
  if (library(__builtin_return_address(0)) == 2) codec++; else count++;
  return real_calloc(a, b); }
void *realloc(void *p, size_t n) { if (!real_realloc) real_realloc = dlsym(RTLD_NEXT, "realloc"); count++; return real_realloc(p, n); }
void free(void *p) { static void (*rf)(void*) = 0; if ((char*)p >= tmp && (char*)p < tmp + sizeof tmp) return; if (!rf) rf = dlsym(RTLD_NEXT, "free"); rf(p); }
__attribute__((destructor)) static void done(void) { char b[128]; int k = snprintf(b, sizeof b, "mallocs %lu\nopenblas mallocs %lu\ncodec mallocs %lu\n", count, blas, codec); write(2, b, k); }

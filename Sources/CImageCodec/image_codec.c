// image_codec.c: JPEG and PNG decoding into 8-bit RGB; libpng's longjmp errors stay inside this file.
#include "image_codec.h"

#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <turbojpeg.h>

// A larger header is refused before anything is allocated: a hostile file cannot ask for
// gigabytes (256 Mpixel is 768 MB of RGB).
#define SBP_MAX_SIDE 32768
#define SBP_MAX_PIXELS (256u * 1024u * 1024u)

static int fail(char *error, size_t error_size, const char *what) {
  snprintf(error, error_size, "%s", what);
  return -1;
}

int sbp_image_format(const uint8_t *data, size_t size) {
  if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) return SBP_IMAGE_JPEG;
  static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  if (size >= 8 && memcmp(data, png_sig, 8) == 0) return SBP_IMAGE_PNG;
  return SBP_IMAGE_UNKNOWN;
}

static int check_size(int w, int h, char *error, size_t error_size) {
  if (w <= 0 || h <= 0 || w > SBP_MAX_SIDE || h > SBP_MAX_SIDE || (size_t)w * (size_t)h > SBP_MAX_PIXELS)
    return fail(error, error_size, "image dimensions out of range");
  return 0;
}

void *sbp_jpeg_create(void) { return tjInitDecompress(); }
void sbp_jpeg_destroy(void *handle) {
  if (handle) tjDestroy(handle);
}

typedef struct {
  const uint8_t *data;
  size_t size, offset;
} png_source;

static void png_read_memory(png_structp png, png_bytep out, png_size_t n) {
  png_source *src = png_get_io_ptr(png);
  if (n > src->size - src->offset) png_error(png, "truncated PNG");
  memcpy(out, src->data + src->offset, n);
  src->offset += n;
}

typedef struct {
  char *error;
  size_t error_size;
} png_errors;

static void png_on_error(png_structp png, png_const_charp message) {
  png_errors *e = png_get_error_ptr(png);
  snprintf(e->error, e->error_size, "%s", message);
  png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp message) {
  (void)png;
  (void)message;
}

// Reads the header (and, with `out`, the pixels). One function for both so the error
// handling, which must set its jump point in the frame that calls libpng, is written once.
static int png_run(const uint8_t *data, size_t size, uint8_t *out, size_t capacity, int *width, int *height, char *error,
                   size_t error_size) {
  png_errors errors = {error, error_size};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &errors, png_on_error, png_on_warning);
  if (!png) return fail(error, error_size, "out of memory");
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_read_struct(&png, NULL, NULL);
    return fail(error, error_size, "out of memory");
  }
  png_source src = {data, size, 0};
  // volatile: read after a longjmp
  volatile int status = -1;
  if (setjmp(png_jmpbuf(png))) goto done;
  png_set_read_fn(png, &src, png_read_memory);
  png_set_user_limits(png, SBP_MAX_SIDE, SBP_MAX_SIDE);
  png_set_chunk_malloc_max(png, 64u * 1024u * 1024u);
  png_read_info(png, info);
  int w = (int)png_get_image_width(png, info), h = (int)png_get_image_height(png, info);
  if (check_size(w, h, error, error_size) != 0) goto done;
  *width = w;
  *height = h;
  if (!out) {
    status = 0;
    goto done;
  }
  if ((size_t)w * (size_t)h * 3 > capacity) {
    fail(error, error_size, "decode buffer too small");
    goto done;
  }
  int color = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
  if (depth == 16) png_set_strip_16(png);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
  // PIL's convert('RGB') drops the alpha channel and a tRNS colour without compositing.
  if (color & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(png);
  int passes = png_set_interlace_handling(png);
  png_read_update_info(png, info);
  if (png_get_rowbytes(png, info) != (size_t)w * 3) {
    fail(error, error_size, "unexpected PNG row layout");
    goto done;
  }
  for (int pass = 0; pass < passes; pass++)
    for (int y = 0; y < h; y++) png_read_row(png, out + (size_t)y * (size_t)w * 3, NULL);
  png_read_end(png, NULL);
  status = 0;
done:
  png_destroy_read_struct(&png, &info, NULL);
  return status;
}

int sbp_png_decode(const uint8_t *data, size_t size, uint8_t *out, size_t capacity, int *width, int *height, char *error,
                   size_t error_size) {
  if (!out) return fail(error, error_size, "no output buffer");
  return png_run(data, size, out, capacity, width, height, error, error_size);
}

int sbp_image_size(void *jpeg_handle, const uint8_t *data, size_t size, int *width, int *height, char *error, size_t error_size) {
  switch (sbp_image_format(data, size)) {
  case SBP_IMAGE_JPEG: {
    int w, h, subsampling, colorspace;
    if (tjDecompressHeader3(jpeg_handle, data, (unsigned long)size, &w, &h, &subsampling, &colorspace) != 0)
      return fail(error, error_size, tjGetErrorStr2(jpeg_handle));
    if (check_size(w, h, error, error_size) != 0) return -1;
    *width = w;
    *height = h;
    return 0;
  }
  case SBP_IMAGE_PNG: return png_run(data, size, NULL, 0, width, height, error, error_size);
  default: return fail(error, error_size, "neither a JPEG nor a PNG");
  }
}

int sbp_jpeg_decode(void *handle, const uint8_t *data, size_t size, int scale_num, int fast, uint8_t *out, size_t capacity,
                    int *width, int *height, char *error, size_t error_size) {
  int w, h, subsampling, colorspace;
  if (tjDecompressHeader3(handle, data, (unsigned long)size, &w, &h, &subsampling, &colorspace) != 0)
    return fail(error, error_size, tjGetErrorStr2(handle));
  if (check_size(w, h, error, error_size) != 0) return -1;
  tjscalingfactor f = {scale_num, 8};
  int sw = TJSCALED(w, f), sh = TJSCALED(h, f);
  if ((size_t)sw * (size_t)sh * 3 > capacity) return fail(error, error_size, "decode buffer too small");
  // Warnings (a truncated or corrupt stream) are errors: a damaged image is skipped, never
  // trained on half grey. Progressive scans are capped so a crafted file cannot spin.
  int flags = TJFLAG_STOPONWARNING | TJFLAG_LIMITSCANS | (fast ? TJFLAG_FASTDCT | TJFLAG_FASTUPSAMPLE : 0);
  if (tjDecompress2(handle, data, (unsigned long)size, out, sw, sw * 3, sh, TJPF_RGB, flags) != 0)
    return fail(error, error_size, tjGetErrorStr2(handle));
  *width = sw;
  *height = sh;
  return 0;
}

// image_codec.h: JPEG (TurboJPEG) and PNG (libpng) decoding into 8-bit RGB for sbpc's data loader.
#ifndef SBP_IMAGE_CODEC_H
#define SBP_IMAGE_CODEC_H
#include <stddef.h>
#include <stdint.h>

enum { SBP_IMAGE_UNKNOWN = 0, SBP_IMAGE_JPEG = 1, SBP_IMAGE_PNG = 2 };

/// The format by the file's signature, not its name.
int sbp_image_format(const uint8_t *data, size_t size);

/// Width and height from the header; 0 on success, -1 with `error` (size `error_size`) filled.
int sbp_image_size(void *jpeg_handle, const uint8_t *data, size_t size, int *width, int *height, char *error, size_t error_size);

/// A TurboJPEG decompressor, reused across images (NULL when it cannot be made).
void *sbp_jpeg_create(void);
void sbp_jpeg_destroy(void *handle);

/// Decodes a JPEG into RGB at `scale_num`/8 of its size (1, 2, 4 or 8: TurboJPEG's IDCT
/// scaling), into `out` of `capacity` bytes. The scaled size comes back in width/height.
/// `fast`: the fast integer IDCT and plain upsampling (training crops), instead of the
/// accurate IDCT and fancy upsampling PIL uses (evaluation, which must match it).
int sbp_jpeg_decode(void *handle, const uint8_t *data, size_t size, int scale_num, int fast, uint8_t *out, size_t capacity,
                    int *width, int *height, char *error, size_t error_size);

/// Decodes a PNG of any bit depth and colour type into 8-bit RGB (16-bit samples keep their
/// high byte, alpha is dropped, grey is replicated: what PIL's convert('RGB') gives).
int sbp_png_decode(const uint8_t *data, size_t size, uint8_t *out, size_t capacity, int *width, int *height, char *error,
                   size_t error_size);
#endif

// shim.h: exposes libpng to the image codec.
#include <png.h>

// shim.h: exposes libjpeg-turbo's TurboJPEG API to the image codec.
#include <turbojpeg.h>

// shim.h: exposes OpenBLAS's CBLAS interface to Swift.
#include <cblas.h>

// fuzzer_driver.c: empty; the declaration in include/ is all this target provides.
#include "fuzzer_driver.h"

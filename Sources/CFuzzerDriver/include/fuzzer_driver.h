// fuzzer_driver.h: declares libFuzzer's driver entry point (libclang_rt.fuzzer_no_main) for sbpc-fuzz.
#include <stddef.h>
#include <stdint.h>
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

// libFuzzer's driver, linked in by -sanitize=fuzzer (compiler-rt's libclang_rt.fuzzer).
#ifndef TOLLGATE_CLIBFUZZER_SHIM_H
#define TOLLGATE_CLIBFUZZER_SHIM_H

#include <stddef.h>
#include <stdint.h>

/// Parses libFuzzer's flags from argc/argv and fuzzes `test_one_input`; returns the exit status.
int LLVMFuzzerRunDriver(int *_Nonnull argc, char *_Nullable *_Nullable *_Nonnull argv,
                        int (*_Nonnull test_one_input)(const uint8_t *_Nullable data, size_t size));

#endif

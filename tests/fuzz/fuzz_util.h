/*
 * fuzz_util — what the libFuzzer harnesses of tests/fuzz share.
 *
 * FUZZ_CHECK is an assertion that holds whatever NDEBUG says: a broken
 * property prints where and why, then aborts, which libFuzzer reports as a
 * crash and saves the input for.
 */
#ifndef CQRS_FUZZ_UTIL_H
#define CQRS_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define FUZZ_CHECK(cond, ...)                                                   \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "%s:%d: property broken: %s: ", __FILE__, __LINE__, \
                    #cond);                                                     \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
            abort();                                                            \
        }                                                                       \
    } while (0)

/* libFuzzer's entry points. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#endif

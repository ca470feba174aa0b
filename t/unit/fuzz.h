
/*
 * Shared by the fuzz harnesses: an assertion that also holds in -O2
 * builds and tells libFuzzer (or fuzz_driver.c) that the input failed.
 */

#ifndef _QUOTA_FUZZ_H_INCLUDED_
#define _QUOTA_FUZZ_H_INCLUDED_


#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>


#define FUZZ_ASSERT(cond)                                                     \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "fuzz assertion failed: %s at %s:%d\n", #cond,    \
                    __FILE__, __LINE__);                                      \
            abort();                                                          \
        }                                                                     \
    } while (0)


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


#endif /* _QUOTA_FUZZ_H_INCLUDED_ */

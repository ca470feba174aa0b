
/*
 * Runs a fuzz harness without libFuzzer: N deterministic pseudo-random
 * inputs, biased towards the bytes the parsers care about, then every
 * file given on the command line (to replay a crash).
 *
 *     fuzz_driver_template 200000 [seed] [file...]
 */


#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"


#define BUF_MAX  16384


static uint64_t
rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;

    return *s * 2685821657736338717ULL;
}


static size_t
gen(uint64_t *s, uint8_t *buf)
{
    size_t    len, i;
    unsigned  mode, r;

    static const char  tpl[] = "//////:{}**aab_Z09.\n";
    static const char  digits[] = "00123456789";

    r = (unsigned) (rnd(s) % 1000);

    /* mostly short inputs, some long ones, a few very long ones */

    if (r < 900) {
        len = (size_t) (rnd(s) % 48);

    } else if (r < 995) {
        len = (size_t) (rnd(s) % 1024);

    } else {
        len = (size_t) (rnd(s) % BUF_MAX);
    }

    mode = (unsigned) (rnd(s) % 4);

    for (i = 0; i < len; i++) {
        r = (unsigned) rnd(s);

        switch (mode) {

        case 0:     /* any byte */
            buf[i] = (uint8_t) r;
            break;

        case 1:     /* template alphabet */
            buf[i] = (uint8_t) tpl[(r >> 8) % (sizeof(tpl) - 1)];
            break;

        case 2:     /* digits, rarely something else */
            buf[i] = ((r & 0xff) < 4) ? (uint8_t) (r >> 8)
                     : (uint8_t) digits[(r >> 8) % (sizeof(digits) - 1)];
            break;

        default:    /* printable ASCII */
            buf[i] = (uint8_t) (0x20 + (r >> 8) % 0x60);
        }
    }

    /* a valid-looking template start now and then */

    if (len > 0 && mode != 2 && (rnd(s) & 1)) {
        buf[0] = '/';
    }

    return len;
}


int
main(int argc, char **argv)
{
    int             i;
    FILE           *f;
    size_t          len;
    uint8_t        *buf;
    uint64_t        seed, iters, n;

    iters = (argc > 1) ? strtoull(argv[1], NULL, 10) : 200000;
    seed = (argc > 2) ? strtoull(argv[2], NULL, 10) : 1;

    /* xorshift must not start from 0 */

    seed = seed * 0x9e3779b97f4a7c15ULL + 1;

    buf = malloc(BUF_MAX);
    if (buf == NULL) {
        return 2;
    }

    for (n = 0; n < iters; n++) {
        len = gen(&seed, buf);

        /* an exact-size copy, so ASan sees reads past the end */

        {
            uint8_t  *copy = malloc(len ? len : 1);

            if (copy == NULL) {
                return 2;
            }

            memcpy(copy, buf, len);
            LLVMFuzzerTestOneInput(copy, len);
            free(copy);
        }
    }

    for (i = 3; i < argc; i++) {
        f = fopen(argv[i], "rb");
        if (f == NULL) {
            perror(argv[i]);
            return 2;
        }

        len = fread(buf, 1, BUF_MAX, f);
        fclose(f);

        LLVMFuzzerTestOneInput(buf, len);
    }

    printf("executions: %llu\n", (unsigned long long) iters);

    free(buf);

    return 0;
}

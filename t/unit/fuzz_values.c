
/*
 * Fuzzes quota_parse_cost and quota_tenant_valid against independent
 * reference implementations.
 */


#include <stdint.h>
#include <string.h>

#include "ngx_http_quota_pure.h"
#include "fuzz.h"


static int
ref_cost(const uint8_t *s, size_t len, int64_t *out)
{
    size_t   i, k;
    int64_t  v;

    static const char  max[] = "9007199254740991";

    if (len == 0 || len > 16) {
        return -1;
    }

    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
    }

    /* compare as text, without leading zeros: no arithmetic to overflow */

    for (k = 0; k + 1 < len && s[k] == '0'; k++) {
        /* void */
    }

    if (len - k > 16
        || (len - k == 16 && memcmp(s + k, max, 16) > 0))
    {
        return -1;
    }

    v = 0;
    for (i = k; i < len; i++) {
        v = v * 10 + (s[i] - '0');
    }

    *out = v;

    return 0;
}


static int
ref_tenant(const uint8_t *s, size_t len)
{
    size_t  i;

    if (len < 1 || len > 256) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (!(s[i] >= '!' && s[i] <= '~') || s[i] == '{' || s[i] == '}') {
            return 0;
        }
    }

    return 1;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int          rc, ref;
    size_t       off;
    int64_t      v, w;
    const char  *s;

    s = (const char *) data;

    /* every prefix and suffix split, so short digit runs come up often */

    for (off = 0; off <= size && off < 24; off++) {
        v = -7;
        w = -7;

        rc = quota_parse_cost(s + off, size - off, &v);
        ref = ref_cost(data + off, size - off, &w);

        FUZZ_ASSERT(rc == ref);
        FUZZ_ASSERT(v == w);
        FUZZ_ASSERT(rc != 0 || (v >= 0 && v <= QUOTA_COST_MAX));

        rc = quota_parse_cost(s, size - off, &v);
        ref = ref_cost(data, size - off, &w);

        FUZZ_ASSERT(rc == ref);
        FUZZ_ASSERT(rc != 0 || v == w);

        FUZZ_ASSERT(quota_tenant_valid(s + off, size - off)
                    == ref_tenant(data + off, size - off));
    }

    return 0;
}


/*
 * Validation of per-request values: costs and raw tenant ids.
 *
 * Pure code: no nginx headers, no allocation, no state.
 */


#include <stddef.h>
#include <stdint.h>

#include "ngx_http_quota_pure.h"


/* strlen("9007199254740991"): more digits can never be in range */
#define QUOTA_COST_DIGITS   16


int
quota_parse_cost(const char *s, size_t len, int64_t *out)
{
    size_t   i;
    int64_t  v;

    /*
     * Checking the length first bounds the value below 10^16, so the
     * accumulation below cannot overflow whatever the input.
     */

    if (s == NULL || len == 0 || len > QUOTA_COST_DIGITS) {
        return -1;
    }

    v = 0;

    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }

        v = v * 10 + (s[i] - '0');
    }

    /* 2^53-1 keeps the value exact in Lua and JSON doubles */

    if (v > QUOTA_COST_MAX) {
        return -1;
    }

    *out = v;

    return 0;
}


int
quota_tenant_valid(const char *s, size_t len)
{
    size_t         i;
    unsigned char  c;

    if (s == NULL || len == 0 || len > QUOTA_TENANT_MAX) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        c = (unsigned char) s[i];

        /* braces would change the Redis Cluster hash tag "{T}" */

        if (c < 0x21 || c > 0x7e || c == '{' || c == '}') {
            return 0;
        }
    }

    return 1;
}


/*
 * The circuit breaker of quota_fallback and the arithmetic of the local
 * decisions (fallback share, enforcement point).
 *
 * Pure code: no nginx headers, no allocation.  The breaker lives in shared
 * memory and is updated with the compiler's __atomic builtins, which is
 * what ngx_atomic_cmp_set() and ngx_atomic_fetch_add() are on gcc and
 * clang; being pure, the state machine is unit-tested in t/unit/.
 */


#include <stddef.h>
#include <stdint.h>

#include "ngx_http_quota_pure.h"


#define quota_load(p)         __atomic_load_n(p, __ATOMIC_SEQ_CST)
#define quota_store(p, v)     __atomic_store_n(p, v, __ATOMIC_SEQ_CST)
#define quota_add(p, v)       __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST)
#define quota_cas(p, o, n)                                                    \
    __atomic_compare_exchange_n(p, o, n, 0, __ATOMIC_SEQ_CST,                 \
                                __ATOMIC_SEQ_CST)


int
quota_breaker_is_open(quota_breaker_t *b)
{
    return quota_load(&b->open) != 0;
}


int
quota_breaker_failure(quota_breaker_t *b, uint64_t threshold)
{
    uint64_t  closed;

    if (quota_add(&b->failures, 1) < threshold) {
        return 0;
    }

    /* only the worker whose failure flips it opens it */
    closed = 0;

    if (!quota_cas(&b->open, &closed, 1)) {
        return 0;
    }

    quota_add(&b->opened, 1);

    return 1;
}


int
quota_breaker_success(quota_breaker_t *b)
{
    uint64_t  open;

    /* the request path of a healthy Redis only reads: no shared write per
       request, no cache line bouncing between workers */
    if (quota_load(&b->failures) != 0) {
        quota_store(&b->failures, 0);
    }

    if (quota_load(&b->open) == 0) {
        return 0;
    }

    open = 1;

    return quota_cas(&b->open, &open, 0) ? 1 : 0;
}


int
quota_breaker_probe_take(quota_breaker_t *b, uint64_t now, uint64_t hold)
{
    uint64_t  until;

    until = quota_load(&b->probe);

    /* another worker's probe is running (or it died: its deadline passes) */
    if (until != 0 && now < until) {
        return 0;
    }

    return quota_cas(&b->probe, &until, now + hold) ? 1 : 0;
}


void
quota_breaker_probe_done(quota_breaker_t *b)
{
    quota_store(&b->probe, 0);
}


int64_t
quota_fallback_share(int64_t limit, int64_t used, uint64_t nodes)
{
    if (limit < 0) {
        return -1;
    }

    if (used >= limit || nodes == 0) {
        return 0;
    }

    return (int64_t) ((uint64_t) (limit - (used > 0 ? used : 0)) / nodes);
}


int64_t
quota_enforce_point(int64_t limit, uint64_t grace)
{
    int64_t  q, r, extra;

    if (limit < 0) {
        return limit;
    }

    /* limit * (100 + grace) / 100 = limit + q * grace + r * grace / 100 */
    q = limit / 100;
    r = limit % 100;

    if (grace > (uint64_t) INT64_MAX / 200
        || (q != 0 && (int64_t) grace > (INT64_MAX - limit) / q / 2))
    {
        return INT64_MAX;
    }

    extra = q * (int64_t) grace + r * (int64_t) grace / 100;

    return extra > INT64_MAX - limit ? INT64_MAX : limit + extra;
}


/*
 * What a decoded charge reply says about the rule's metrics, for the
 * header filter, the $quota_* variables, the JSON bodies and reconcile:
 * the period a metric was counted in and the first metric's numbers.
 */


#include "ngx_http_quota_module.h"


/* the period a charged metric was counted in */
quota_period_t
ngx_http_quota_metric_period(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx,
    ngx_uint_t index)
{
    quota_period_t               day;
    ngx_http_quota_metric_t     *metrics;
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    metrics = qmcf->metrics.elts;

    if (metrics[ctx->rule->charges[index].metric].period
        == NGX_HTTP_QUOTA_PERIOD_DAY
        && quota_period_day(ngx_time(), &day) == 0)
    {
        return day;
    }

    return ctx->billing;
}


ngx_int_t
ngx_http_quota_first_numbers(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx,
    ngx_http_quota_numbers_t *n)
{
    if (ctx == NULL || !ctx->have_usage || ctx->rule == NULL) {
        return NGX_DECLINED;
    }

    n->used = ctx->used[0];
    n->limit = ctx->limit[0];
    n->period = ngx_http_quota_metric_period(r, ctx, 0);

    if (n->limit < 0) {
        n->remaining = -1;
        n->percent = -1;
        return NGX_OK;
    }

    n->remaining = n->limit > n->used ? n->limit - n->used : 0;
    n->percent = ngx_http_quota_percent(n->used, n->limit);

    return NGX_OK;
}


/*
 * floor(used * 100 / limit) without overflow (review D9): used comes from
 * Redis and may pass 2^63 / 100.  100 * used = 100 * (q * limit + r), so
 * the result is 100 * q + floor(100 * r / limit); the second term is a
 * binary long division in which every intermediate stays below 2 * limit,
 * which fits in a uint64_t.  A result past INT64_MAX saturates.
 */
int64_t
ngx_http_quota_percent(int64_t used, int64_t limit)
{
    int64_t     q;
    uint64_t    r, rem, frac, lim;
    ngx_int_t   bit;

    if (limit < 0) {
        return -1;
    }

    if (used <= 0) {
        return 0;
    }

    if (limit == 0) {
        return 100;
    }

    q = used / limit;

    if (q > (INT64_MAX - 99) / 100) {
        return INT64_MAX;
    }

    r = (uint64_t) (used % limit);
    lim = (uint64_t) limit;
    rem = 0;
    frac = 0;

    /* 100 = 0b1100100, most significant bit first */
    for (bit = 6; bit >= 0; bit--) {
        frac <<= 1;
        rem <<= 1;

        if (rem >= lim) {
            rem -= lim;
            frac++;
        }

        if (100 & (1 << bit)) {
            rem += r;

            if (rem >= lim) {
                rem -= lim;
                frac++;
            }
        }
    }

    return q * 100 + (int64_t) frac;
}

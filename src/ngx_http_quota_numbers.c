
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

    if (n->limit == 0) {
        n->percent = n->used > 0 ? 100 : 0;

    } else {
        n->percent = n->used * 100 / n->limit;
    }

    return NGX_OK;
}

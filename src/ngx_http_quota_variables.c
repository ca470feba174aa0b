
/*
 * $quota_status, $quota_tenant, $quota_metric, $quota_cost, $quota_used,
 * $quota_limit, $quota_remaining, $quota_percent, $quota_reset.
 *
 * All describe the rule's first metric.  They are not cacheable: the
 * access log reads them after the decision, a map may read them before.
 */


#include "ngx_http_quota_module.h"


#define NGX_HTTP_QUOTA_VAR_STATUS      0
#define NGX_HTTP_QUOTA_VAR_TENANT      1
#define NGX_HTTP_QUOTA_VAR_METRIC      2
#define NGX_HTTP_QUOTA_VAR_COST        3
#define NGX_HTTP_QUOTA_VAR_USED        4
#define NGX_HTTP_QUOTA_VAR_LIMIT       5
#define NGX_HTTP_QUOTA_VAR_REMAINING   6
#define NGX_HTTP_QUOTA_VAR_PERCENT     7
#define NGX_HTTP_QUOTA_VAR_RESET       8


static ngx_int_t ngx_http_quota_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_quota_variable_numbers(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, ngx_http_quota_ctx_t *ctx, uintptr_t data);
static ngx_int_t ngx_http_quota_variable_int(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, int64_t n);
static ngx_int_t ngx_http_quota_variable_str(ngx_http_variable_value_t *v,
    ngx_str_t *s);


ngx_str_t  ngx_http_quota_status_names[] = {
    ngx_string("UNMETERED"),
    ngx_string("ALLOWED"),
    ngx_string("REJECTED_QUOTA"),
    ngx_string("REJECTED_RATE"),
    ngx_string("REJECTED_CONCURRENCY"),
    ngx_string("REJECTED_CAP"),
    ngx_string("REJECTED_SUSPENDED"),
    ngx_string("REJECTED_UNKNOWN"),
    ngx_string("BAD_REQUEST"),
    ngx_string("BYPASS"),
    ngx_string("DRY_RUN_REJECT"),
    ngx_string("FAIL_OPEN"),
    ngx_string("FAIL_CLOSED"),
    ngx_string("ABORTED"),
    ngx_string("FALLBACK"),
    ngx_null_string
};


static ngx_http_variable_t  ngx_http_quota_vars[] = {

    { ngx_string("quota_status"), NULL, ngx_http_quota_variable,
      NGX_HTTP_QUOTA_VAR_STATUS, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("quota_tenant"), NULL, ngx_http_quota_variable,
      NGX_HTTP_QUOTA_VAR_TENANT, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("quota_metric"), NULL, ngx_http_quota_variable,
      NGX_HTTP_QUOTA_VAR_METRIC, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("quota_cost"), NULL, ngx_http_quota_variable,
      NGX_HTTP_QUOTA_VAR_COST, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("quota_used"), NULL, ngx_http_quota_variable,
      NGX_HTTP_QUOTA_VAR_USED, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("quota_limit"), NULL, ngx_http_quota_variable,
      NGX_HTTP_QUOTA_VAR_LIMIT, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("quota_remaining"), NULL, ngx_http_quota_variable,
      NGX_HTTP_QUOTA_VAR_REMAINING, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("quota_percent"), NULL, ngx_http_quota_variable,
      NGX_HTTP_QUOTA_VAR_PERCENT, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("quota_reset"), NULL, ngx_http_quota_variable,
      NGX_HTTP_QUOTA_VAR_RESET, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


ngx_int_t
ngx_http_quota_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_quota_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return ngx_http_quota_add_template_variables(cf);
}


static ngx_int_t
ngx_http_quota_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    ngx_str_t                   *name;
    ngx_http_quota_ctx_t        *ctx;
    ngx_http_quota_view_t       *view, tmp;
    ngx_http_quota_metric_t     *m;
    ngx_http_quota_main_conf_t  *qmcf;

    /* a body template's report, or the request's metering ctx */
    view = ngx_http_quota_view(r, &tmp);
    ctx = view ? view->ctx : NULL;

    if (data == NGX_HTTP_QUOTA_VAR_STATUS) {
        name = &ngx_http_quota_status_names[ctx ? ctx->status
                                                : NGX_HTTP_QUOTA_UNMETERED];
        return ngx_http_quota_variable_str(v, name);
    }

    if (data == NGX_HTTP_QUOTA_VAR_TENANT && ctx && ctx->tenant.len) {
        return ngx_http_quota_variable_str(v, &ctx->tenant);
    }

    if (ctx == NULL || ctx->rule == NULL) {
        v->valid = 0;
        v->not_found = 1;
        return NGX_OK;
    }

    switch (data) {

    case NGX_HTTP_QUOTA_VAR_METRIC:
        qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
        m = qmcf->metrics.elts;
        return ngx_http_quota_variable_str(v,
                                      &m[ctx->rule->charges[0].metric].name);

    case NGX_HTTP_QUOTA_VAR_COST:
        return ngx_http_quota_variable_int(r, v, ctx->costs[0]);

    default:
        return ngx_http_quota_variable_numbers(r, v, ctx, data);
    }
}


/* used, reset, limit, remaining, percent: the first metric's numbers */
static ngx_int_t
ngx_http_quota_variable_numbers(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, ngx_http_quota_ctx_t *ctx, uintptr_t data)
{
    u_char                    *p;
    ngx_str_t                  reset;
    ngx_http_quota_numbers_t   num;

    if (ngx_http_quota_first_numbers(r->main, ctx, &num) != NGX_OK) {
        v->valid = 0;
        v->not_found = 1;
        return NGX_OK;
    }

    switch (data) {

    case NGX_HTTP_QUOTA_VAR_USED:
        return ngx_http_quota_variable_int(r, v, num.used);

    case NGX_HTTP_QUOTA_VAR_RESET:
        p = ngx_pnalloc(r->pool, QUOTA_ISO8601_LEN);
        if (p == NULL) {
            return NGX_ERROR;
        }

        quota_format_iso8601(num.period.end, (char *) p);
        reset.data = p;
        reset.len = QUOTA_ISO8601_LEN;

        return ngx_http_quota_variable_str(v, &reset);
    }

    /* limit, remaining and percent mean nothing for an unlimited metric */

    if (num.limit < 0) {
        v->valid = 0;
        v->not_found = 1;
        return NGX_OK;
    }

    switch (data) {

    case NGX_HTTP_QUOTA_VAR_LIMIT:
        return ngx_http_quota_variable_int(r, v, num.limit);

    case NGX_HTTP_QUOTA_VAR_REMAINING:
        return ngx_http_quota_variable_int(r, v, num.remaining);

    default: /* NGX_HTTP_QUOTA_VAR_PERCENT */
        return ngx_http_quota_variable_int(r, v, num.percent);
    }
}


static ngx_int_t
ngx_http_quota_variable_int(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, int64_t n)
{
    u_char     *p;
    ngx_str_t   s;

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    s.data = p;
    s.len = ngx_sprintf(p, "%L", n) - p;

    return ngx_http_quota_variable_str(v, &s);
}


/* the per-request state changes: never cached */
static ngx_int_t
ngx_http_quota_variable_str(ngx_http_variable_value_t *v, ngx_str_t *s)
{
    v->len = s->len;
    v->data = s->data;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}

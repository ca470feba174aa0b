
/*
 * Response filters of a metered request.
 *
 * The header filter adds the headers, so that
 * they are on whatever answers: the upstream, the module's own JSON, or a
 * page served by error_page after an internal redirect (the ctx is found
 * again through its pool cleanup).
 *
 *   X-Quota-Limit / -Remaining / -Reset / -Used   (quota_headers, prefix)
 *   the warning header, from quota_warning_threshold on
 *   RateLimit-Policy / RateLimit                  (quota_ratelimit_headers)
 *
 * They describe the rule's first metric after the charge (before it, on a
 * rejection).  Inside the grace band Limit is the plan's limit and
 * Remaining is 0 (SPEC 4a).
 *
 * The body filter gives the in-flight (concurrency) slot back when the last
 * buffer of the response goes out, before the client can read it and come
 * back; the pool cleanup releases it for requests that end otherwise.
 */


#include "ngx_http_quota_module.h"


static ngx_int_t ngx_http_quota_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_quota_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);
static ngx_int_t ngx_http_quota_ratelimit_headers(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx);
static ngx_int_t ngx_http_quota_header_num(ngx_http_request_t *r,
    ngx_str_t *name, int64_t n);


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;


ngx_int_t
ngx_http_quota_headers_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_quota_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_quota_body_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_quota_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_chain_t           *cl;
    ngx_http_quota_ctx_t  *ctx;

    if (r != r->main || in == NULL) {
        return ngx_http_next_body_filter(r, in);
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_quota_module);

    if (ctx == NULL || !ctx->slot_taken) {
        return ngx_http_next_body_filter(r, in);
    }

    for (cl = in; cl; cl = cl->next) {
        if (cl->buf->last_buf) {
            ctx->slot_taken = 0;
            ngx_http_quota_script_release(ctx);
            break;
        }
    }

    return ngx_http_next_body_filter(r, in);
}


static ngx_int_t
ngx_http_quota_header_filter(ngx_http_request_t *r)
{
    u_char                     *reset;
    ngx_str_t                   value;
    ngx_table_elt_t            *h;
    ngx_http_quota_ctx_t       *ctx;
    ngx_http_quota_numbers_t    n;
    ngx_http_quota_loc_conf_t  *qlcf;

    if (r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_quota_get_ctx(r);

    if (ngx_http_quota_first_numbers(r, ctx, &n) != NGX_OK) {
        return ngx_http_next_header_filter(r);
    }

    /* the charging location's settings, wherever the answer comes from */
    qlcf = ctx->conf;

    if (qlcf->headers) {
        if (n.limit >= 0) {
            if (ngx_http_quota_header_num(r, &qlcf->hdr_limit, n.limit)
                != NGX_OK
                || ngx_http_quota_header_num(r, &qlcf->hdr_remaining,
                                             n.remaining)
                   != NGX_OK)
            {
                return NGX_ERROR;
            }
        }

        h = ngx_http_quota_push_header(r, &qlcf->hdr_reset);
        reset = ngx_pnalloc(r->pool, QUOTA_ISO8601_LEN);

        if (h == NULL || reset == NULL) {
            return NGX_ERROR;
        }

        quota_format_iso8601(n.period.end, (char *) reset);
        h->value.data = reset;
        h->value.len = QUOTA_ISO8601_LEN;

        if (ngx_http_quota_header_num(r, &qlcf->hdr_used, n.used) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (qlcf->warning_value && n.limit >= 0
        && n.percent >= (int64_t) qlcf->warning_threshold)
    {
        if (ngx_http_complex_value(r, qlcf->warning_value, &value) != NGX_OK) {
            return NGX_ERROR;
        }

        /* like add_header: an empty value sends no header */
        if (value.len) {
            h = ngx_http_quota_push_header(r, &qlcf->warning_name);
            if (h == NULL) {
                return NGX_ERROR;
            }

            h->value = value;
        }
    }

    if (qlcf->ratelimit_headers
        && ngx_http_quota_ratelimit_headers(r, ctx) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_next_header_filter(r);
}


/*
 * draft-ietf-httpapi-ratelimit-headers-10, Structured Field lists:
 *   RateLimit-Policy: "api_requests";q=5000;w=2592000, "rate";q=120;w=60,
 *                     "concurrency";q=3;qu="concurrent-requests"
 *   RateLimit: "api_requests";r=4577;t=1209600
 */
static ngx_int_t
ngx_http_quota_ratelimit_headers(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx)
{
    u_char                      *policy, *p, *limit, *l;
    size_t                       len;
    time_t                       now;
    ngx_str_t                   *name;
    ngx_uint_t                   i;
    quota_period_t               period;
    ngx_table_elt_t             *h;
    ngx_http_quota_plan_t       *plan;
    ngx_http_quota_metric_t     *metrics;
    ngx_http_quota_main_conf_t  *qmcf;

    static ngx_str_t  policy_name = ngx_string("RateLimit-Policy");
    static ngx_str_t  limit_name = ngx_string("RateLimit");

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    metrics = qmcf->metrics.elts;
    plan = (ctx->plan > 0 && ctx->plan <= qmcf->plans.nelts)
           ? (ngx_http_quota_plan_t *) qmcf->plans.elts + ctx->plan - 1
           : NULL;
    now = ngx_time();

    len = 128;

    for (i = 0; i < ctx->ncharges; i++) {
        len += metrics[ctx->rule->charges[i].metric].name.len
               + 3 * NGX_INT64_LEN + 16;
    }

    policy = ngx_pnalloc(r->pool, len);
    limit = ngx_pnalloc(r->pool, len);
    if (policy == NULL || limit == NULL) {
        return NGX_ERROR;
    }

    p = policy;
    l = limit;

    for (i = 0; i < ctx->ncharges; i++) {
        if (ctx->limit[i] < 0) {
            continue;
        }

        name = &metrics[ctx->rule->charges[i].metric].name;
        period = ngx_http_quota_metric_period(r, ctx, i);

        if (p != policy) {
            *p++ = ','; *p++ = ' ';
            *l++ = ','; *l++ = ' ';
        }

        p = ngx_sprintf(p, "\"%V\";q=%L;w=%T", name, ctx->limit[i],
                        (time_t) (period.end - period.start));
        l = ngx_sprintf(l, "\"%V\";r=%L;t=%T", name,
                        ctx->limit[i] > ctx->used[i]
                        ? ctx->limit[i] - ctx->used[i] : (int64_t) 0,
                        (time_t) (period.end > now ? period.end - now : 0));
    }

    if (plan && plan->rate) {
        p = ngx_sprintf(p, "%s\"rate\";q=%ui;w=%M", p != policy ? ", " : "",
                        plan->rate, plan->rate_period / 1000);
    }

    if (plan && plan->concurrency) {
        p = ngx_sprintf(p, "%s\"concurrency\";q=%ui;qu=\"concurrent-requests\"",
                        p != policy ? ", " : "", plan->concurrency);
    }

    if (p != policy) {
        h = ngx_http_quota_push_header(r, &policy_name);
        if (h == NULL) {
            return NGX_ERROR;
        }

        h->value.data = policy;
        h->value.len = p - policy;
    }

    if (l != limit) {
        h = ngx_http_quota_push_header(r, &limit_name);
        if (h == NULL) {
            return NGX_ERROR;
        }

        h->value.data = limit;
        h->value.len = l - limit;
    }

    return NGX_OK;
}


/*
 * A response header; the value is the caller's to set.  Ours win: an
 * entry of the same name already there (the upstream's X-Quota-Used,
 * RateLimit, ...) is dropped, so a client never sees two conflicting
 * values (review D17; README, "HTTP contract").
 */
ngx_table_elt_t *
ngx_http_quota_push_header(ngx_http_request_t *r, ngx_str_t *name)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_out.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash != 0 && h[i].key.len == name->len
            && ngx_strncasecmp(h[i].key.data, name->data, name->len) == 0)
        {
            h[i].hash = 0;
        }
    }

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NULL;
    }

    h->hash = 1;
    h->key = *name;
    h->lowcase_key = NULL;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    return h;
}


static ngx_int_t
ngx_http_quota_header_num(ngx_http_request_t *r, ngx_str_t *name, int64_t n)
{
    u_char           *p;
    ngx_table_elt_t  *h;

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN);
    h = ngx_http_quota_push_header(r, name);

    if (p == NULL || h == NULL) {
        return NGX_ERROR;
    }

    h->value.data = p;
    h->value.len = ngx_sprintf(p, "%L", n) - p;

    return NGX_OK;
}

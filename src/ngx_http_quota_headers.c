
/*
 * X-Quota-Limit / -Remaining / -Reset / -Used on every response to a
 * metered request: upstream answers, our own 402/400/503 JSON, and pages
 * served by error_page after an internal redirect (the ctx is found again
 * through its pool cleanup).  They describe the rule's first metric after
 * the charge (before it, on a rejection).
 */


#include "ngx_http_quota_module.h"


static ngx_int_t ngx_http_quota_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_quota_add_header(ngx_http_request_t *r,
    ngx_str_t *name, int64_t n, const u_char *text, size_t len);


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;


ngx_int_t
ngx_http_quota_headers_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_quota_header_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_quota_header_filter(ngx_http_request_t *r)
{
    int64_t                     used, limit;
    u_char                      reset[QUOTA_ISO8601_LEN];
    ngx_http_quota_ctx_t       *ctx;
    ngx_http_quota_loc_conf_t  *qlcf;

    if (r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_quota_get_ctx(r);

    if (ctx == NULL || !ctx->have_usage) {
        return ngx_http_next_header_filter(r);
    }

    qlcf = ngx_http_get_module_loc_conf(r, ngx_http_quota_module);

    if (!qlcf->headers) {
        return ngx_http_next_header_filter(r);
    }

    used = ctx->used[0];
    limit = ctx->limit[0];

    if (limit >= 0) {
        if (ngx_http_quota_add_header(r, &qlcf->hdr_limit, limit, NULL, 0)
            != NGX_OK
            || ngx_http_quota_add_header(r, &qlcf->hdr_remaining,
                                         limit > used ? limit - used : 0,
                                         NULL, 0)
               != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    quota_format_iso8601(ctx->period.end, (char *) reset);

    if (ngx_http_quota_add_header(r, &qlcf->hdr_reset, 0, reset,
                                  QUOTA_ISO8601_LEN) != NGX_OK
        || ngx_http_quota_add_header(r, &qlcf->hdr_used, used, NULL, 0)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_next_header_filter(r);
}


/* a number n, or the text when it is given */
static ngx_int_t
ngx_http_quota_add_header(ngx_http_request_t *r, ngx_str_t *name, int64_t n,
    const u_char *text, size_t len)
{
    u_char           *p;
    ngx_table_elt_t  *h;

    p = ngx_pnalloc(r->pool, text ? len : NGX_INT64_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key = *name;
    h->value.data = p;
    h->value.len = text ? (size_t) (ngx_cpymem(p, text, len) - p)
                        : (size_t) (ngx_sprintf(p, "%L", n) - p);
    h->lowcase_key = NULL;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    return NGX_OK;
}

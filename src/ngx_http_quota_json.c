
/*
 * JSON answers of the module (SPEC section 5), every one through yajl_gen:
 * tenant-controlled text must never be pasted into JSON by hand.
 */


#include "ngx_http_quota_module.h"

#include <yajl/yajl_gen.h>


#define ngx_http_quota_yajl_literal(g, s)                                   \
    yajl_gen_string(g, (const unsigned char *) s, sizeof(s) - 1)


static ngx_int_t ngx_http_quota_has_error_page(ngx_http_request_t *r,
    ngx_uint_t status);
static ngx_int_t ngx_http_quota_retry_after(ngx_http_request_t *r,
    time_t seconds);


/*
 * Answers a rejection.  Returns what the phase handler must return: the
 * status itself when an error_page takes it over, else NGX_DONE after the
 * request has been finalized here.
 */
ngx_int_t
ngx_http_quota_send_rejection(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx,
    const char *error, ngx_uint_t status)
{
    ngx_int_t  rc;
    ngx_str_t  body;

    if (ctx->tenant.len) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "quota: %s for tenant \"%V\"", error, &ctx->tenant);

    } else {
        /* a rejected raw tenant value is not logged: it may be a secret */
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0, "quota: %s", error);
    }

    if (ctx->code == NGX_HTTP_QUOTA_CODE_RATE
        || ctx->code == NGX_HTTP_QUOTA_CODE_CONCURRENCY)
    {
        if (ngx_http_quota_retry_after(r, (ctx->retry_after + 999) / 1000)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (ngx_http_quota_has_error_page(r, status)) {
        return status;
    }

    if (ngx_http_quota_error_body(r, ctx, error, &body) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_quota_send_json(r, status, &body);

    ngx_http_finalize_request(r, rc);

    return NGX_DONE;
}


ngx_int_t
ngx_http_quota_error_body(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx,
    const char *error, ngx_str_t *body)
{
    u_char                      *p, reset[QUOTA_ISO8601_LEN];
    u_char                       message[NGX_MAX_ERROR_STR];
    time_t                       retry;
    yajl_gen                     g;
    ngx_str_t                   *name;
    ngx_uint_t                   i, daily, exceeded;
    quota_period_t               period;
    yajl_gen_status              s;
    ngx_http_quota_metric_t     *m;
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    m = qmcf->metrics.elts;

    i = ctx->reject_index;
    name = ctx->rule ? &m[ctx->rule->charges[i].metric].name : NULL;

    g = yajl_gen_alloc(NULL);
    if (g == NULL) {
        return NGX_ERROR;
    }

    s = yajl_gen_map_open(g);
    s |= ngx_http_quota_yajl_literal(g, "error");
    s |= yajl_gen_string(g, (const unsigned char *) error, ngx_strlen(error));
    s |= ngx_http_quota_yajl_literal(g, "message");

    exceeded = (ngx_strcmp(error, "QUOTA_EXCEEDED") == 0 && name);

    if (exceeded || ngx_strcmp(error, "SPENDING_CAP_REACHED") == 0) {

        if (exceeded) {
            daily = (m[ctx->rule->charges[i].metric].period
                     == NGX_HTTP_QUOTA_PERIOD_DAY);

            /* the refused metric may not be the first one: its own period */
            period = ngx_http_quota_metric_period(r, ctx, i);
            quota_format_iso8601(period.end, (char *) reset);

            p = ngx_snprintf(message, sizeof(message),
                             "%s %V quota exhausted. Quota resets on %*s.",
                             daily ? "Daily" : "Monthly", name,
                             (size_t) QUOTA_DATE_LEN, reset);

        } else {
            /* the cap is the account's: its billing period */
            quota_format_iso8601(ctx->billing.end, (char *) reset);

            p = ngx_snprintf(message, sizeof(message),
                             "Spending cap reached for this billing period. "
                             "Quota resets on %*s.",
                             (size_t) QUOTA_DATE_LEN, reset);
        }

        s |= yajl_gen_string(g, message, p - message);

        if (name) {
            s |= ngx_http_quota_yajl_literal(g, "metric");
            s |= yajl_gen_string(g, name->data, name->len);
            s |= ngx_http_quota_yajl_literal(g, "current_usage");
            s |= yajl_gen_integer(g, ctx->used[i]);
            s |= ngx_http_quota_yajl_literal(g, "quota_limit");
            s |= yajl_gen_integer(g, ctx->limit[i]);
        }

        s |= ngx_http_quota_yajl_literal(g, "quota_reset_date");
        s |= yajl_gen_string(g, reset, QUOTA_ISO8601_LEN);

    } else if (ngx_strcmp(error, "RATE_LIMITED") == 0
               || ngx_strcmp(error, "CONCURRENCY_LIMIT") == 0)
    {
        retry = (time_t) ((ctx->retry_after + 999) / 1000);

        p = ngx_snprintf(message, sizeof(message),
                         error[0] == 'R'
                         ? "Rate limit exceeded. Retry in %T s."
                         : "Too many concurrent requests. Retry in %T s.",
                         retry);

        s |= yajl_gen_string(g, message, p - message);
        s |= ngx_http_quota_yajl_literal(g, "retry_after");
        s |= yajl_gen_integer(g, retry);

    } else if (ngx_strcmp(error, "ACCOUNT_SUSPENDED") == 0) {
        s |= ngx_http_quota_yajl_literal(g, "Account suspended.");

    } else if (ngx_strcmp(error, "UNKNOWN_TENANT") == 0) {
        s |= ngx_http_quota_yajl_literal(g, "Unknown tenant.");

    } else if (ngx_strcmp(error, "BAD_COST") == 0 && name) {
        p = ngx_snprintf(message, sizeof(message),
                         "Invalid cost for metric %V: expected an integer "
                         "from 0 to 9007199254740991.", name);

        s |= yajl_gen_string(g, message, p - message);
        s |= ngx_http_quota_yajl_literal(g, "metric");
        s |= yajl_gen_string(g, name->data, name->len);

    } else if (ngx_strcmp(error, "MISSING_TENANT") == 0) {
        s |= ngx_http_quota_yajl_literal(g,
                 "No tenant: send the credentials quota_tenant reads.");

    } else if (ngx_strcmp(error, "METHOD_NOT_ALLOWED") == 0) {
        s |= ngx_http_quota_yajl_literal(g, "Use GET.");

    } else if (ngx_strcmp(error, "BAD_TENANT") == 0) {
        s |= ngx_http_quota_yajl_literal(g,
                 "Invalid tenant id: at most 256 printable ASCII characters "
                 "without spaces or braces.");

    } else {
        s |= ngx_http_quota_yajl_literal(g,
                 "Quota service unavailable, please retry later.");
    }

    s |= yajl_gen_map_close(g);

    if (s != yajl_gen_status_ok) {
        yajl_gen_free(g);
        return NGX_ERROR;
    }

    return ngx_http_quota_gen_body(r, g, body);
}


/* copies the generated JSON into the request pool and frees the generator */
ngx_int_t
ngx_http_quota_gen_body(ngx_http_request_t *r, void *gen, ngx_str_t *body)
{
    yajl_gen  g = gen;

    size_t                len;
    const unsigned char  *buf;

    if (yajl_gen_get_buf(g, &buf, &len) != yajl_gen_status_ok) {
        yajl_gen_free(g);
        return NGX_ERROR;
    }

    /* the buffer belongs to g: copy it out before freeing */
    body->data = ngx_pnalloc(r->pool, len);
    if (body->data == NULL) {
        yajl_gen_free(g);
        return NGX_ERROR;
    }

    ngx_memcpy(body->data, buf, len);
    body->len = len;

    yajl_gen_free(g);

    return NGX_OK;
}


/*
 * Money is kept in integer micro-USD; JSON gets a decimal number written
 * here, never through a double (yajl_gen_double prints %.20g).
 */
size_t
ngx_http_quota_format_usd(u_char *buf, int64_t micro)
{
    u_char  *p;

    if (micro < 0) {
        micro = 0;
    }

    p = ngx_sprintf(buf, "%L.%06L", micro / 1000000, micro % 1000000);

    /* "12.500000" -> "12.5", "3.000000" -> "3" */
    while (p[-1] == '0') {
        p--;
    }

    if (p[-1] == '.') {
        p--;
    }

    return p - buf;
}


ngx_int_t
ngx_http_quota_send_json(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.status = status;
    r->headers_out.content_length_n = body->len;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = sizeof("application/json") - 1;
    r->headers_out.content_type_lowcase = NULL;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = body->data;
    b->last = body->data + body->len;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* like ngx_http_special_response_handler(): is error_page set for it? */
static ngx_int_t
ngx_http_quota_has_error_page(ngx_http_request_t *r, ngx_uint_t status)
{
    ngx_uint_t                 i;
    ngx_http_err_page_t       *err_page;
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (clcf->error_pages == NULL || r->uri_changes == 0
        || (r->error_page && !clcf->recursive_error_pages))
    {
        return 0;
    }

    err_page = clcf->error_pages->elts;

    for (i = 0; i < clcf->error_pages->nelts; i++) {
        if ((ngx_uint_t) err_page[i].status == status) {
            return 1;
        }
    }

    return 0;
}


static ngx_int_t
ngx_http_quota_retry_after(ngx_http_request_t *r, time_t seconds)
{
    u_char           *p;
    ngx_table_elt_t  *h;

    static ngx_str_t  name = ngx_string("Retry-After");

    p = ngx_pnalloc(r->pool, NGX_TIME_T_LEN);
    h = ngx_http_quota_push_header(r, &name);

    if (p == NULL || h == NULL) {
        return NGX_ERROR;
    }

    h->value.data = p;
    h->value.len = ngx_sprintf(p, "%T", seconds) - p;

    return NGX_OK;
}

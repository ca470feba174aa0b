
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
static int ngx_http_quota_exceeded_details(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, void *gen, ngx_http_quota_error_e error);
static int ngx_http_quota_cap_details(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, void *gen, ngx_http_quota_error_e error);
static int ngx_http_quota_retry_details(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, void *gen, ngx_http_quota_error_e error);
static int ngx_http_quota_cost_details(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, void *gen, ngx_http_quota_error_e error);
static yajl_gen_status ngx_http_quota_gen_str(yajl_gen g, const char *s);
static ngx_str_t *ngx_http_quota_error_metric(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx);


/*
 * Every error the module answers with (SPEC 5), in the order of
 * ngx_http_quota_error_e: name, default status (and the directive that
 * overrides it), the script code and $quota_status of a refusal, the
 * message, Retry-After, and a writer for the fields beyond the message.
 */
const ngx_http_quota_error_t  ngx_http_quota_errors[] = {

    { ngx_string("QUOTA_EXCEEDED"), 402, NGX_HTTP_QUOTA_STATUS_QUOTA,
      NGX_HTTP_QUOTA_CODE_QUOTA, NGX_HTTP_QUOTA_REJECTED_QUOTA,
      "Quota exhausted.", 0, ngx_http_quota_exceeded_details },

    { ngx_string("SPENDING_CAP_REACHED"), 402, NGX_HTTP_QUOTA_STATUS_QUOTA,
      NGX_HTTP_QUOTA_CODE_CAP, NGX_HTTP_QUOTA_REJECTED_CAP,
      "Spending cap reached for this billing period. Quota resets on %*s.",
      0, ngx_http_quota_cap_details },

    { ngx_string("ACCOUNT_SUSPENDED"), 402, NGX_HTTP_QUOTA_STATUS_QUOTA,
      NGX_HTTP_QUOTA_CODE_SUSPENDED, NGX_HTTP_QUOTA_REJECTED_SUSPENDED,
      "Account suspended.", 0, NULL },

    { ngx_string("UNKNOWN_TENANT"), NGX_HTTP_FORBIDDEN,
      NGX_HTTP_QUOTA_STATUS_FIXED,
      NGX_HTTP_QUOTA_CODE_UNKNOWN, NGX_HTTP_QUOTA_REJECTED_UNKNOWN,
      "Unknown tenant.", 0, NULL },

    { ngx_string("RATE_LIMITED"), 429, NGX_HTTP_QUOTA_STATUS_RATE,
      NGX_HTTP_QUOTA_CODE_RATE, NGX_HTTP_QUOTA_REJECTED_RATE,
      "Rate limit exceeded. Retry in %T s.", 1,
      ngx_http_quota_retry_details },

    { ngx_string("CONCURRENCY_LIMIT"), 429, NGX_HTTP_QUOTA_STATUS_RATE,
      NGX_HTTP_QUOTA_CODE_CONCURRENCY, NGX_HTTP_QUOTA_REJECTED_CONCURRENCY,
      "Too many concurrent requests. Retry in %T s.", 1,
      ngx_http_quota_retry_details },

    { ngx_string("BAD_TENANT"), NGX_HTTP_BAD_REQUEST,
      NGX_HTTP_QUOTA_STATUS_FIXED, 0, NGX_HTTP_QUOTA_BAD_REQUEST,
      "Invalid tenant id: at most 256 printable ASCII characters without "
      "spaces or braces.", 0, NULL },

    /* also the script's answer when a counter would pass 2^53 - 1 */
    { ngx_string("BAD_COST"), NGX_HTTP_BAD_REQUEST,
      NGX_HTTP_QUOTA_STATUS_FIXED, NGX_HTTP_QUOTA_CODE_RANGE,
      NGX_HTTP_QUOTA_BAD_REQUEST,
      "Invalid cost for metric %V: expected an integer from 0 to "
      "9007199254740991.", 0, ngx_http_quota_cost_details },

    { ngx_string("MISSING_TENANT"), NGX_HTTP_UNAUTHORIZED,
      NGX_HTTP_QUOTA_STATUS_FIXED, 0, NGX_HTTP_QUOTA_UNMETERED,
      "No tenant: send the credentials quota_tenant reads.", 0, NULL },

    { ngx_string("METHOD_NOT_ALLOWED"), NGX_HTTP_NOT_ALLOWED,
      NGX_HTTP_QUOTA_STATUS_FIXED, 0, NGX_HTTP_QUOTA_UNMETERED,
      "Use GET.", 0, NULL },

    { ngx_string("QUOTA_UNAVAILABLE"), NGX_HTTP_SERVICE_UNAVAILABLE,
      NGX_HTTP_QUOTA_STATUS_FIXED, 0, NGX_HTTP_QUOTA_FAIL_CLOSED_STATUS,
      "Quota service unavailable, please retry later.", 0, NULL }
};


/* the error a charge script code refuses with; NGX_HTTP_QUOTA_ERR_NONE:
   admitted */
ngx_http_quota_error_e
ngx_http_quota_code_error(ngx_uint_t code)
{
    ngx_uint_t  i;

    for (i = 0; i < NGX_HTTP_QUOTA_ERROR_COUNT; i++) {
        if (code != 0 && ngx_http_quota_errors[i].code == code) {
            return (ngx_http_quota_error_e) i;
        }
    }

    return NGX_HTTP_QUOTA_ERROR_NONE;
}


/* the status of an error in this location (quota_status, quota_rate_status) */
ngx_uint_t
ngx_http_quota_error_status(ngx_http_quota_loc_conf_t *qlcf,
    ngx_http_quota_error_e error)
{
    switch (ngx_http_quota_errors[error].status_conf) {

    case NGX_HTTP_QUOTA_STATUS_QUOTA:
        return qlcf->status;

    case NGX_HTTP_QUOTA_STATUS_RATE:
        return qlcf->rate_status;

    default:
        return ngx_http_quota_errors[error].status;
    }
}


/*
 * Answers a rejection in a phase handler.  Returns what the phase handler
 * must return: the status itself when an error_page takes it over, else
 * NGX_DONE after the request has been finalized here.
 */
ngx_int_t
ngx_http_quota_send_rejection(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx,
    ngx_http_quota_loc_conf_t *qlcf, ngx_http_quota_error_e error)
{
    ngx_int_t         rc;
    ngx_str_t         body;
    ngx_uint_t        status;
    const ngx_str_t  *name;

    name = &ngx_http_quota_errors[error].name;
    status = ngx_http_quota_error_status(qlcf, error);

    if (ctx->tenant.len) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "quota: %V for tenant \"%V\"", name, &ctx->tenant);

    } else {
        /* a rejected raw tenant value is not logged: it may be a secret */
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0, "quota: %V", name);
    }

    if (ngx_http_quota_errors[error].retry_after) {
        if (ngx_http_quota_retry_after(r, (ctx->retry_after + 999) / 1000)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (ngx_http_quota_has_error_page(r, status)) {
        return status;
    }

    if (ngx_http_quota_error_body(r, ctx, error, &status, &body) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_quota_send_json(r, status, &body);

    ngx_http_finalize_request(r, rc);

    return NGX_DONE;
}


/*
 * {"error": NAME, "message": ..., details}, or the location's
 * quota_rejection_body for this error; a template that renders invalid
 * JSON turns the answer into a 500 (*status) with a fixed body.
 */
ngx_int_t
ngx_http_quota_error_body(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx,
    ngx_http_quota_error_e error, ngx_uint_t *status, ngx_str_t *body)
{
    ngx_int_t                     rc;
    yajl_gen                      g;
    yajl_gen_status               s;
    ngx_http_quota_view_t         view;
    ngx_http_quota_loc_conf_t    *qlcf;
    const ngx_http_quota_error_t  *e;

    /* the location that charged, even after an internal redirect */
    qlcf = ctx->conf ? ctx->conf
                     : ngx_http_get_module_loc_conf(r, ngx_http_quota_module);

    if (qlcf->rejection[error]) {
        ngx_memzero(&view, sizeof(ngx_http_quota_view_t));
        view.ctx = ctx;

        rc = ngx_http_quota_render(r, qlcf->rejection[error], &view, body);

        if (rc == NGX_DECLINED) {
            *status = NGX_HTTP_INTERNAL_SERVER_ERROR;
            *body = ngx_http_quota_template_error_body;
            return NGX_OK;
        }

        return rc;
    }

    e = &ngx_http_quota_errors[error];

    g = yajl_gen_alloc(NULL);
    if (g == NULL) {
        return NGX_ERROR;
    }

    s = yajl_gen_map_open(g);
    s |= ngx_http_quota_yajl_literal(g, "error");
    s |= yajl_gen_string(g, e->name.data, e->name.len);
    s |= ngx_http_quota_yajl_literal(g, "message");

    if (e->details) {
        s |= e->details(r, ctx, g, error);

    } else {
        s |= ngx_http_quota_gen_str(g, e->message);
    }

    s |= yajl_gen_map_close(g);

    if (s != yajl_gen_status_ok) {
        yajl_gen_free(g);
        return NGX_ERROR;
    }

    return ngx_http_quota_gen_body(r, g, body);
}


/* the refused (or badly costed) metric's name; NULL without a rule */
static ngx_str_t *
ngx_http_quota_error_metric(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx)
{
    ngx_http_quota_metric_t     *m;
    ngx_http_quota_main_conf_t  *qmcf;

    if (ctx->rule == NULL || ctx->reject_index >= ctx->rule->ncharges) {
        return NULL;
    }

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    m = qmcf->metrics.elts;

    return &m[ctx->rule->charges[ctx->reject_index].metric].name;
}


static int
ngx_http_quota_exceeded_details(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, void *gen, ngx_http_quota_error_e error)
{
    yajl_gen  g = gen;

    u_char                      *p, reset[QUOTA_ISO8601_LEN];
    u_char                       message[NGX_MAX_ERROR_STR];
    ngx_str_t                   *name;
    ngx_uint_t                   i, daily;
    quota_period_t               period;
    yajl_gen_status              s;
    ngx_http_quota_metric_t     *m;
    ngx_http_quota_main_conf_t  *qmcf;

    name = ngx_http_quota_error_metric(r, ctx);

    if (name == NULL) {
        return ngx_http_quota_gen_str(g, ngx_http_quota_errors[error].message);
    }

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    m = qmcf->metrics.elts;
    i = ctx->reject_index;

    daily = (m[ctx->rule->charges[i].metric].period
             == NGX_HTTP_QUOTA_PERIOD_DAY);

    /* the refused metric may not be the first one: its own period */
    period = ngx_http_quota_metric_period(r, ctx, i);
    quota_format_iso8601(period.end, (char *) reset);

    p = ngx_snprintf(message, sizeof(message),
                     "%s %V quota exhausted. Quota resets on %*s.",
                     daily ? "Daily" : "Monthly", name,
                     (size_t) QUOTA_DATE_LEN, reset);

    s = yajl_gen_string(g, message, p - message);
    s |= ngx_http_quota_yajl_literal(g, "metric");
    s |= yajl_gen_string(g, name->data, name->len);
    s |= ngx_http_quota_yajl_literal(g, "current_usage");
    s |= yajl_gen_integer(g, ctx->used[i]);
    s |= ngx_http_quota_yajl_literal(g, "quota_limit");
    s |= yajl_gen_integer(g, ctx->limit[i]);
    s |= ngx_http_quota_yajl_literal(g, "quota_reset_date");
    s |= yajl_gen_string(g, reset, QUOTA_ISO8601_LEN);

    return s;
}


static int
ngx_http_quota_cap_details(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx,
    void *gen, ngx_http_quota_error_e error)
{
    yajl_gen  g = gen;

    u_char           *p, reset[QUOTA_ISO8601_LEN];
    u_char            message[NGX_MAX_ERROR_STR];
    ngx_str_t        *name;
    ngx_uint_t        i;
    yajl_gen_status   s;

    /* the cap is the account's: its billing period */
    quota_format_iso8601(ctx->billing.end, (char *) reset);

    p = ngx_snprintf(message, sizeof(message),
                     ngx_http_quota_errors[error].message,
                     (size_t) QUOTA_DATE_LEN, reset);

    s = yajl_gen_string(g, message, p - message);

    name = ngx_http_quota_error_metric(r, ctx);

    if (name) {
        i = ctx->reject_index;

        s |= ngx_http_quota_yajl_literal(g, "metric");
        s |= yajl_gen_string(g, name->data, name->len);
        s |= ngx_http_quota_yajl_literal(g, "current_usage");
        s |= yajl_gen_integer(g, ctx->used[i]);
        s |= ngx_http_quota_yajl_literal(g, "quota_limit");
        s |= yajl_gen_integer(g, ctx->limit[i]);
    }

    s |= ngx_http_quota_yajl_literal(g, "quota_reset_date");
    s |= yajl_gen_string(g, reset, QUOTA_ISO8601_LEN);

    return s;
}


static int
ngx_http_quota_retry_details(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx,
    void *gen, ngx_http_quota_error_e error)
{
    yajl_gen  g = gen;

    u_char           *p, message[NGX_MAX_ERROR_STR];
    time_t            retry;
    yajl_gen_status   s;

    retry = (time_t) ((ctx->retry_after + 999) / 1000);

    p = ngx_snprintf(message, sizeof(message),
                     ngx_http_quota_errors[error].message, retry);

    s = yajl_gen_string(g, message, p - message);
    s |= ngx_http_quota_yajl_literal(g, "retry_after");
    s |= yajl_gen_integer(g, retry);

    return s;
}


static int
ngx_http_quota_cost_details(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx,
    void *gen, ngx_http_quota_error_e error)
{
    yajl_gen  g = gen;

    u_char           *p, message[NGX_MAX_ERROR_STR];
    ngx_str_t        *name;
    yajl_gen_status   s;

    name = ngx_http_quota_error_metric(r, ctx);

    if (name == NULL) {
        return ngx_http_quota_gen_str(g, "Invalid cost.");
    }

    p = ngx_snprintf(message, sizeof(message),
                     ctx->code == NGX_HTTP_QUOTA_CODE_RANGE
                     ? "Cost for metric %V cannot be charged: the counter "
                       "would pass 9007199254740991."
                     : ngx_http_quota_errors[error].message, name);

    s = yajl_gen_string(g, message, p - message);
    s |= ngx_http_quota_yajl_literal(g, "metric");
    s |= yajl_gen_string(g, name->data, name->len);

    return s;
}


static yajl_gen_status
ngx_http_quota_gen_str(yajl_gen g, const char *s)
{
    return yajl_gen_string(g, (const unsigned char *) s, ngx_strlen(s));
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

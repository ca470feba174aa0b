
/*
 * Strict decoding of the charge script's reply into a decision.
 *
 * Anything that is not exactly the shape the script returns (an error, a
 * wrong count, a non-integer) is a Redis failure and follows
 * quota_failure_mode: a half-understood reply must never admit or reject.
 * A reply that is not understood leaves ctx->unknown set: the charge may
 * have run, and its void follows.  Corrupt data and script errors set
 * ctx->data_error: 503 in both failure modes, never a free admit.
 */


#include "ngx_http_quota_module.h"


static ngx_int_t ngx_http_quota_reply_failed(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, redisReply *reply);


ngx_int_t
ngx_http_quota_reply_is_noscript(redisReply *reply)
{
    return reply->type == REDIS_REPLY_ERROR
           && reply->len >= 8
           && ngx_strncmp(reply->str, "NOSCRIPT", 8) == 0;
}


/*
 * The account's billing anchor (1-31) when the charge script answered
 * CODE_ANCHOR (the period keys it was given are another anchor's: nothing
 * written), else 0.
 */
ngx_uint_t
ngx_http_quota_reply_anchor(redisReply *reply)
{
    redisReply  *code, *anchor;

    if (reply->type != REDIS_REPLY_ARRAY
        || reply->elements < NGX_HTTP_QUOTA_REPLY_METRICS - 1)
    {
        return 0;
    }

    code = ngx_http_quota_el(reply, NGX_HTTP_QUOTA_REPLY_CODE);
    anchor = ngx_http_quota_el(reply, NGX_HTTP_QUOTA_REPLY_INDEX);

    if (code->type != REDIS_REPLY_INTEGER
        || code->integer != NGX_HTTP_QUOTA_CODE_ANCHOR
        || anchor->type != REDIS_REPLY_INTEGER
        || anchor->integer < 1 || anchor->integer > 31)
    {
        return 0;
    }

    return (ngx_uint_t) anchor->integer;
}


/* the error of a script that ran ("... @user_script:N" since Redis 5), as
   opposed to a command refused before it started (BUSY, LOADING, OOM,
   READONLY, ...: nothing was written); also the fallback's FORCE reply */
ngx_int_t
ngx_http_quota_reply_script_error(redisReply *reply)
{
    return ngx_strnstr((u_char *) reply->str, "user_script", reply->len)
           != NULL;
}


/* no reply, an error, or corrupt data: NGX_ERROR, with what it means */
static ngx_int_t
ngx_http_quota_reply_failed(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx,
    redisReply *reply)
{
    size_t       k, n;
    redisReply  *what;

    if (reply == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "quota: redis connection failed before the reply");
        return NGX_ERROR;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "quota: redis error: %*s",
                      (size_t) reply->len, reply->str);

        if (!ngx_http_quota_reply_script_error(reply)) {
            /* refused before the script ran (BUSY, LOADING, OOM, READONLY,
               ...): nothing was written, an outage for the failure mode */
            ctx->unknown = 0;
            return NGX_ERROR;
        }

        /* a script that fails is not an outage: never admit for it; the
           void undoes whatever it wrote */
        ctx->data_error = 1;
        return NGX_ERROR;
    }

    k = ctx->ncharges;

    /* the k metrics' pairs, then "KEY FIELD" */
    n = NGX_HTTP_QUOTA_REPLY_METRICS + k * NGX_HTTP_QUOTA_REPLY_METRIC_ELTS;

    if (reply->type == REDIS_REPLY_ARRAY && !ctx->report
        && reply->elements == n
        && ngx_http_quota_el(reply, NGX_HTTP_QUOTA_REPLY_CODE)->type
           == REDIS_REPLY_INTEGER
        && ngx_http_quota_el(reply, NGX_HTTP_QUOTA_REPLY_CODE)->integer
           == NGX_HTTP_QUOTA_CODE_CORRUPT
        && ngx_http_quota_el(reply, n)->type == REDIS_REPLY_STRING)
    {
        what = ngx_http_quota_el(reply, n);

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "quota: redis holds a value that is not a number: "
                      "key and field \"%*s\"; nothing charged",
                      (size_t) what->len, what->str);

        ctx->unknown = 0;
        ctx->data_error = 1;
        return NGX_ERROR;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_quota_reply_decode(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx,
    redisReply *reply)
{
    size_t        n;
    int64_t       code, index, plan, granted;
    ngx_uint_t    i, k, at;
    redisReply  **e;

    if (ngx_http_quota_reply_failed(r, ctx, reply) != NGX_OK) {
        return NGX_ERROR;
    }

    k = ctx->ncharges;

    /* the REPLY_* of src/lua/protocol.def, every one an integer */
    n = NGX_HTTP_QUOTA_REPLY_METRICS - 1
        + k * NGX_HTTP_QUOTA_REPLY_METRIC_ELTS;

    /* a report (quota_usage) has more after these; its builder checks it */
    if (reply->type != REDIS_REPLY_ARRAY
        || (ctx->report ? reply->elements < n : reply->elements != n))
    {
        goto malformed;
    }

    e = reply->element;

    for (i = 0; i < n; i++) {
        if (e[i]->type != REDIS_REPLY_INTEGER) {
            goto malformed;
        }
    }

    code = ngx_http_quota_el(reply, NGX_HTTP_QUOTA_REPLY_CODE)->integer;
    index = ngx_http_quota_el(reply, NGX_HTTP_QUOTA_REPLY_INDEX)->integer;
    plan = ngx_http_quota_el(reply, NGX_HTTP_QUOTA_REPLY_PLAN)->integer;
    granted = ngx_http_quota_el(reply, NGX_HTTP_QUOTA_REPLY_GRANTED)->integer;

    if (code < NGX_HTTP_QUOTA_CODE_CHARGED
        || (code > NGX_HTTP_QUOTA_CODE_RANGE
            && code != NGX_HTTP_QUOTA_CODE_ANCHOR)
        || (code == NGX_HTTP_QUOTA_CODE_ANCHOR && (index < 1 || index > 31))
        || (code == NGX_HTTP_QUOTA_CODE_QUOTA
            && (index < 1 || (ngx_uint_t) index > k))
        || (code == NGX_HTTP_QUOTA_CODE_RANGE
            && (index < 0 || (ngx_uint_t) index > k))
        || ngx_http_quota_el(reply, NGX_HTTP_QUOTA_REPLY_RETRY)->integer < 0
        || granted < 1
        || (granted > 1 && (code != NGX_HTTP_QUOTA_CODE_CHARGED
                            || (uint64_t) granted > ctx->lease_n))
        || ngx_http_quota_el(reply, NGX_HTTP_QUOTA_REPLY_START)->integer
           > ngx_http_quota_el(reply, NGX_HTTP_QUOTA_REPLY_END)->integer)
    {
        goto malformed;
    }

    /* the reply is understood: the charge ran, or wrote nothing */
    ctx->unknown = 0;

    if (code == NGX_HTTP_QUOTA_CODE_ANCHOR) {
        /* again, after a resend with the anchor it named: the account's
           anchor changed in between (ngx_http_quota_script_reply) */
        ngx_http_quota_anchor_learn(&ctx->tenant, (ngx_uint_t) index,
                                    r->connection->log);

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "quota: the billing anchor of tenant \"%V\" changed "
                      "while charging; nothing charged", &ctx->tenant);
        return NGX_ERROR;
    }

    if (code == NGX_HTTP_QUOTA_CODE_VOIDED) {
        /* only a charge its gateway gave up on meets its void first */
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "quota: charge %V was voided before it ran",
                      &ctx->charge_id);
        return NGX_ERROR;
    }

    ctx->code = (ngx_uint_t) code;
    ctx->reject_index = index > 0 ? (ngx_uint_t) index - 1 : 0;
    ctx->plan = plan > 0 ? (ngx_uint_t) plan : 0;
    ctx->billing.start =
                 ngx_http_quota_el(reply, NGX_HTTP_QUOTA_REPLY_START)->integer;
    ctx->billing.end =
                   ngx_http_quota_el(reply, NGX_HTTP_QUOTA_REPLY_END)->integer;
    ctx->retry_after = (ngx_msec_t)
                 ngx_http_quota_el(reply, NGX_HTTP_QUOTA_REPLY_RETRY)->integer;
    ctx->slot_taken =
            (ngx_http_quota_el(reply, NGX_HTTP_QUOTA_REPLY_SLOT)->integer == 1);
    ctx->lease_granted = (ngx_uint_t) granted;

    for (i = 0; i < k; i++) {
        at = NGX_HTTP_QUOTA_REPLY_METRICS
             + i * NGX_HTTP_QUOTA_REPLY_METRIC_ELTS;

        ctx->used[i] = ngx_http_quota_el(reply, at
                                         + NGX_HTTP_QUOTA_REPLY_USED_OFF)
                       ->integer;
        ctx->limit[i] = ngx_http_quota_el(reply, at
                                          + NGX_HTTP_QUOTA_REPLY_LIMIT_OFF)
                        ->integer;
    }

    /* an unknown tenant has no period, no usage: nothing to report */
    ctx->have_usage = (k > 0 && code != NGX_HTTP_QUOTA_CODE_UNKNOWN);

    return NGX_OK;

malformed:

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "quota: unexpected reply from the charge script "
                  "(type %d, %uz elements)", reply->type,
                  (size_t) reply->elements);

    return NGX_ERROR;
}

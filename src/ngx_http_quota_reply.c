
/*
 * Strict decoding of the charge script's reply into a decision.
 *
 * Anything that is not exactly the shape the script returns (an error, a
 * wrong count, a non-integer) is a Redis failure and follows
 * quota_failure_mode: a half-understood reply must never admit or reject.
 */


#include "ngx_http_quota_module.h"


#define NGX_HTTP_QUOTA_REPLY_CHARGED    1
#define NGX_HTTP_QUOTA_REPLY_OVER       2


ngx_int_t
ngx_http_quota_reply_is_noscript(redisReply *reply)
{
    return reply->type == REDIS_REPLY_ERROR
           && reply->len >= 8
           && ngx_strncmp(reply->str, "NOSCRIPT", 8) == 0;
}


ngx_int_t
ngx_http_quota_reply_decode(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx,
    redisReply *reply)
{
    ngx_uint_t    i, k;
    redisReply  **e;

    if (reply == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "quota: redis connection failed before the reply");
        return NGX_ERROR;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "quota: redis error: %*s",
                      (size_t) reply->len, reply->str);
        return NGX_ERROR;
    }

    k = ctx->rule->ncharges;

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 + 2 * k) {
        goto malformed;
    }

    e = reply->element;

    for (i = 0; i < reply->elements; i++) {
        if (e[i]->type != REDIS_REPLY_INTEGER) {
            goto malformed;
        }
    }

    for (i = 0; i < k; i++) {
        ctx->used[i] = e[2 + 2 * i]->integer;
        ctx->limit[i] = e[3 + 2 * i]->integer;
    }

    ctx->have_usage = 1;

    switch (e[0]->integer) {

    case NGX_HTTP_QUOTA_REPLY_CHARGED:
        ctx->status = NGX_HTTP_QUOTA_ALLOWED;
        return NGX_OK;

    case NGX_HTTP_QUOTA_REPLY_OVER:
        if (e[1]->integer < 1 || (ngx_uint_t) e[1]->integer > k) {
            goto malformed;
        }

        ctx->reject_index = e[1]->integer - 1;
        ctx->status = NGX_HTTP_QUOTA_REJECTED_QUOTA;
        return NGX_OK;

    default:
        goto malformed;
    }

malformed:

    ctx->have_usage = 0;

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "quota: unexpected reply from the charge script "
                  "(type %d, %uz elements)", reply->type,
                  (size_t) reply->elements);

    return NGX_ERROR;
}


/*
 * The precontent-phase handler: SPEC section 4 in order, one Redis round
 * trip for a metered request, none for the rest.
 *
 * A metered request is suspended while its EVALSHA is in flight:
 *
 *   first entry   classify, send, arm the timeout, r->main->count++,
 *                 return NGX_DONE (the phase engine stops);
 *   reply in      the hiredis callback stores the decision and posts
 *                 ctx->wake (no request code runs inside hiredis' loop);
 *   wake          count--, restore the handlers, run the phases again;
 *   second entry  act on the stored decision: decline (let the request
 *                 go on) or answer 402/400/503 with JSON.
 *
 * The ctx lives in a pool cleanup as well as in r->ctx: an internal
 * redirect (error_page, try_files fallback) wipes r->ctx and runs this
 * handler again, and the cleanup lets us find the decision instead of
 * charging twice.  The same cleanup detaches a pending Redis operation and
 * deletes our timer and posted event when the request goes away early
 * (client closed the connection while Redis was answering).
 */


#include "ngx_http_quota_module.h"
#include "ngx_http_quota_zone.h"


static ngx_int_t ngx_http_quota_evaluate(ngx_http_request_t *r,
    ngx_http_quota_loc_conf_t *qlcf);
static ngx_int_t ngx_http_quota_decide(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_http_quota_loc_conf_t *qlcf);
static ngx_int_t ngx_http_quota_costs(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx);
static ngx_int_t ngx_http_quota_act(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_http_quota_loc_conf_t *qlcf);
static void ngx_http_quota_cleanup(void *data);
static void ngx_http_quota_wake_handler(ngx_event_t *ev);
static void ngx_http_quota_timeout_handler(ngx_event_t *ev);


ngx_int_t
ngx_http_quota_handler(ngx_http_request_t *r)
{
    ngx_http_quota_ctx_t       *ctx;
    ngx_http_quota_loc_conf_t  *qlcf;

    /* auth_request's subrequest and SSI includes are never metered */
    if (r != r->main) {
        return NGX_DECLINED;
    }

    qlcf = ngx_http_get_module_loc_conf(r, ngx_http_quota_module);

    ctx = ngx_http_quota_get_ctx(r);

    if (ctx != NULL) {
        switch (ctx->state) {

        case NGX_HTTP_QUOTA_CTX_DECIDED:
            ctx->state = NGX_HTTP_QUOTA_CTX_FINISHED;

            /* quota_zone: the tenant's snapshot from every reply */
            ngx_http_quota_zone_learn(r, ctx);
            ngx_http_quota_reject_learn(r, ctx);
            ngx_http_quota_lease_reply(r, ctx);
            ngx_http_quota_zone_release(ctx);

            return ngx_http_quota_act(r, ctx, ctx->conf);

        case NGX_HTTP_QUOTA_CTX_WAITING:
            /* nothing runs the phases while we wait; be safe anyway */
            return NGX_DONE;

        default:
            /* decided before an internal redirect: never charge twice */
            return NGX_DECLINED;
        }
    }

    if (!qlcf->enable || qlcf->endpoint) {
        return NGX_DECLINED;
    }

    return ngx_http_quota_evaluate(r, qlcf);
}


static ngx_int_t
ngx_http_quota_evaluate(ngx_http_request_t *r, ngx_http_quota_loc_conf_t *qlcf)
{
    ngx_int_t                    rc;
    ngx_str_t                    value;
    ngx_http_quota_ctx_t        *ctx;
    ngx_http_quota_rule_t       *rule;
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);

    if (qlcf->tenant == NULL
        || (qlcf->rules == NULL && !qmcf->rate_or_concurrency))
    {
        return NGX_DECLINED;
    }

    if (ngx_http_complex_value(r, qlcf->tenant, &value) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (value.len == 0) {
        return NGX_DECLINED;
    }

    rule = qlcf->rules ? ngx_http_quota_route_match(r, qlcf) : NULL;

    /*
     * No rule: nothing to charge, but when some plan limits rate or
     * concurrency the request still counts against those (SPEC 4a).
     */
    if (rule == NULL && !qmcf->rate_or_concurrency) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_quota_create_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->rule = rule;
    ctx->ncharges = rule ? rule->ncharges : 0;
    ctx->state = NGX_HTTP_QUOTA_CTX_FINISHED;

    rc = ngx_http_quota_tenant_id(r, qlcf, &value, &ctx->tenant);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_DECLINED) {
        ctx->status = NGX_HTTP_QUOTA_BAD_REQUEST;
        return ngx_http_quota_send_rejection(r, ctx, qlcf,
                                             NGX_HTTP_QUOTA_ERROR_BAD_TENANT);
    }

    rc = rule ? ngx_http_quota_costs(r, ctx) : NGX_OK;

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_DECLINED) {
        ctx->status = NGX_HTTP_QUOTA_BAD_REQUEST;
        return ngx_http_quota_send_rejection(r, ctx, qlcf,
                                             NGX_HTTP_QUOTA_ERROR_BAD_COST);
    }

    /* shadow traffic: look up the numbers for the headers, charge nothing */
    if (qlcf->bypass
        && ngx_http_test_predicates(r, qlcf->bypass) == NGX_DECLINED)
    {
        ctx->bypass = 1;
        ctx->status = NGX_HTTP_QUOTA_BYPASS;

        if (rule == NULL) {
            return NGX_DECLINED;
        }
    }

    return ngx_http_quota_decide(r, ctx, qlcf);
}


/*
 * Who decides a classified request: the node ledger when it can (a lease,
 * a cached refusal, an open circuit), else Redis (the request waits).
 */
static ngx_int_t
ngx_http_quota_decide(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx,
    ngx_http_quota_loc_conf_t *qlcf)
{
    ngx_int_t  rc;

    /*
     * quota_lease: one unit of a live lease, no Redis trip.  Before the
     * reject cache: a cached QUOTA_EXCEEDED or SPENDING_CAP_REACHED must
     * not refuse units this node holds reserved (a cached suspension or
     * unknown tenant still wins: lease_spend declines for those).
     */
    if (ngx_http_quota_lease_spend(r, ctx, qlcf) == NGX_OK) {
        ctx->local = 1;
        return ngx_http_quota_act(r, ctx, qlcf);
    }

    /* quota_reject_cache: the refusal Redis gave, again, from the zone */
    if (ngx_http_quota_reject_lookup(r, ctx, qlcf) == NGX_OK) {
        ngx_http_quota_lease_cancel(r, ctx);
        return ngx_http_quota_act(r, ctx, qlcf);
    }

    /* quota_fallback: the circuit is open, Redis is not called */
    if (ngx_http_quota_fallback_open(r)) {
        ngx_http_quota_lease_cancel(r, ctx);
        ctx->local = 1;
        ctx->redis_failed = 1;
        return ngx_http_quota_act(r, ctx, qlcf);
    }

    rc = ngx_http_quota_script_charge(r, ctx);

    if (rc != NGX_OK) {
        /* no grant went out */
        ngx_http_quota_lease_cancel(r, ctx);
    }

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_DECLINED) {
        /* no connection to Redis right now: no waiting, straight to policy */
        ctx->redis_failed = 1;
        return ngx_http_quota_act(r, ctx, qlcf);
    }

    /*
     * Until the reply is acted on: a client that goes away meanwhile is
     * neither unmetered nor decided (review D13); the log phase counts it
     * as ABORTED.  Shadow traffic stays BYPASS.
     */
    if (!ctx->bypass) {
        ctx->status = NGX_HTTP_QUOTA_ABORTED;
    }

    ngx_http_quota_suspend(r, ctx);

    return NGX_DONE;
}


/* the Redis operation is sent: hold the request until it is answered */
void
ngx_http_quota_suspend(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx)
{
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);

    ctx->state = NGX_HTTP_QUOTA_CTX_WAITING;
    ngx_add_timer(&ctx->timeout, qmcf->redis_timeout);

    /*
     * A client that hangs up meanwhile is noticed by ngx_http_test_reading()
     * and finalized with 499; the pool cleanup then detaches the operation.
     */

    r->main->count++;

    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_request_empty_handler;

    /* level-triggered methods (poll, select) report a hang-up only while
       the read event is active; block_reading may have removed it */
    if (ngx_handle_read_event(r->connection->read, 0) != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "quota: cannot watch the client connection");
    }
}


/* in the Redis callback: the reply has been used, wake the request */
void
ngx_http_quota_reply_done(ngx_http_quota_ctx_t *ctx)
{
    if (ctx->timeout.timer_set) {
        ngx_del_timer(&ctx->timeout);
    }

    ctx->state = NGX_HTTP_QUOTA_CTX_DECIDED;

    /* never run nginx request code from inside hiredis' callback loop */
    ngx_post_event(&ctx->wake, &ngx_posted_events);
}


static ngx_int_t
ngx_http_quota_costs(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx)
{
    ngx_str_t                 value;
    ngx_uint_t                i;
    ngx_http_quota_charge_t  *charge;

    charge = ctx->rule->charges;

    for (i = 0; i < ctx->rule->ncharges; i++) {

        if (charge[i].value == NULL) {
            ctx->costs[i] = charge[i].cost;
            continue;
        }

        /* a failed evaluation (no memory) leaves value.data unset: 500,
           and nothing of it is logged (review D8) */
        if (ngx_http_complex_value(r, charge[i].value, &value) != NGX_OK) {
            return NGX_ERROR;
        }

        if (quota_parse_cost((char *) value.data, value.len, &ctx->costs[i])
            != 0)
        {
            ctx->reject_index = i;

            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "quota: invalid cost \"%V\"", &value);
            return NGX_DECLINED;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_quota_act(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx,
    ngx_http_quota_loc_conf_t *qlcf)
{
    ngx_int_t               rc;
    ngx_http_quota_error_e  error;

    /* quota_fallback's circuit breaker counts what Redis did */
    if (!ctx->local) {
        ngx_http_quota_fallback_outcome(r, ctx);
    }

    if (ctx->bypass) {
        /* shadow traffic is never refused, not even by a Redis failure */
        ctx->status = NGX_HTTP_QUOTA_BYPASS;
        return NGX_DECLINED;
    }

    if (ctx->redis_failed) {
        /* quota_fallback: a tenant the zone knows spends its share */
        rc = ctx->data_error ? NGX_DECLINED
                             : ngx_http_quota_fallback_admit(r, ctx);

        if (rc == NGX_OK) {
            ctx->status = NGX_HTTP_QUOTA_FALLBACK;
            return NGX_DECLINED;
        }

        /* corrupt data or a failing script is no outage: never a free
           admit (the void undoes whatever the script wrote); nor is a
           tenant past its fallback share (NGX_ABORT) let through */
        if (qlcf->failure_mode == NGX_HTTP_QUOTA_FAIL_CLOSED
            || ctx->data_error || rc == NGX_ABORT)
        {
            ctx->status = NGX_HTTP_QUOTA_FAIL_CLOSED_STATUS;
            return ngx_http_quota_send_rejection(r, ctx, qlcf,
                                       NGX_HTTP_QUOTA_ERROR_UNAVAILABLE);
        }

        ctx->status = NGX_HTTP_QUOTA_FAIL_OPEN_STATUS;
        return NGX_DECLINED;
    }

    error = ngx_http_quota_code_error(ctx->code);

    if (error == NGX_HTTP_QUOTA_ERROR_NONE) {
        ctx->status = NGX_HTTP_QUOTA_ALLOWED;
        return NGX_DECLINED;
    }

    if (qlcf->dry_run) {
        /* what would be refused passes, uncharged (the script wrote nothing) */
        ctx->status = NGX_HTTP_QUOTA_DRY_RUN_REJECT;

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "quota: dry run, would answer %V",
                      &ngx_http_quota_errors[error].name);

        return NGX_DECLINED;
    }

    ctx->status = ngx_http_quota_errors[error].decision;

    return ngx_http_quota_send_rejection(r, ctx, qlcf, error);
}


/*
 * quota_reconcile, in the log phase: the response has been sent, so the
 * correction (actual - estimate) never delays it; nobody waits for Redis.
 */
ngx_int_t
ngx_http_quota_log_handler(ngx_http_request_t *r)
{
    int64_t                      actual;
    ngx_str_t                    value;
    ngx_uint_t                   i, j;
    ngx_http_quota_ctx_t        *ctx;
    ngx_http_quota_reconcile_t  *rc;
    ngx_http_quota_loc_conf_t   *qlcf;
    ngx_http_quota_main_conf_t  *qmcf;

    if (r != r->main) {
        return NGX_OK;
    }

    qlcf = ngx_http_get_module_loc_conf(r, ngx_http_quota_module);
    ctx = ngx_http_quota_get_ctx(r);

    /* every request of a "quota on" context counts once, as it ended */
    if (ctx || (qlcf->enable && !qlcf->endpoint)) {
        qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
        ngx_http_quota_count(qmcf,
                     decisions[ctx ? ctx->status : NGX_HTTP_QUOTA_UNMETERED]);
    }

    /*
     * Only admitted, charged requests (not shadow, not dry-run refusals),
     * with the reconcile of the location that charged (review D6): after
     * try_files or error_page, qlcf is another location's.
     */
    if (ctx == NULL || ctx->rule == NULL || ctx->reconciled
        || (ctx->status != NGX_HTTP_QUOTA_ALLOWED
            && ctx->status != NGX_HTTP_QUOTA_FALLBACK)
        || ctx->conf->reconcile == NULL)
    {
        return NGX_OK;
    }

    ctx->reconciled = 1;
    rc = ctx->conf->reconcile->elts;

    for (i = 0; i < ctx->conf->reconcile->nelts; i++) {

        for (j = 0; j < ctx->ncharges; j++) {
            if (ctx->rule->charges[j].metric == rc[i].metric) {
                break;
            }
        }

        if (j == ctx->ncharges) {
            continue;
        }

        if (ngx_http_complex_value(r, &rc[i].value, &value) != NGX_OK) {
            continue;
        }

        if (value.len == 0) {
            continue;
        }

        if (quota_parse_cost((char *) value.data, value.len, &actual) != 0) {
            ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                          "quota: ignored quota_reconcile value \"%V\", "
                          "not a non-negative integer", &value);
            continue;
        }

        if (actual == ctx->costs[j]) {
            continue;
        }

        /* admitted in fallback: charged by its FORCE, with the actual */
        if (ctx->status == NGX_HTTP_QUOTA_FALLBACK) {
            ngx_http_quota_fallback_reconcile(r, ctx, rc[i].metric,
                                              actual - ctx->costs[j]);
            continue;
        }

        if (ngx_http_quota_script_reconcile(r, ctx, j, actual - ctx->costs[j])
            != NGX_OK)
        {
            ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                          "quota: reconcile of %L not sent to redis",
                          actual - ctx->costs[j]);
        }
    }

    return NGX_OK;
}


ngx_http_quota_ctx_t *
ngx_http_quota_get_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t    *cln;
    ngx_http_quota_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_quota_module);

    if (ctx == NULL && (r->internal || r->filter_finalize)) {

        /* r->ctx was wiped by an internal redirect; the cleanup still has it */

        for (cln = r->pool->cleanup; cln; cln = cln->next) {
            if (cln->handler == ngx_http_quota_cleanup) {
                ctx = cln->data;
                ngx_http_set_ctx(r, ctx, ngx_http_quota_module);
                break;
            }
        }
    }

    return ctx;
}


ngx_http_quota_ctx_t *
ngx_http_quota_create_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t    *cln;
    ngx_http_quota_ctx_t  *ctx;

    cln = ngx_pool_cleanup_add(r->pool, sizeof(ngx_http_quota_ctx_t));
    if (cln == NULL) {
        return NULL;
    }

    ctx = cln->data;
    ngx_memzero(ctx, sizeof(ngx_http_quota_ctx_t));

    ctx->request = r;
    ctx->conf = ngx_http_get_module_loc_conf(r, ngx_http_quota_module);

    ctx->timeout.handler = ngx_http_quota_timeout_handler;
    ctx->timeout.data = ctx;
    ctx->timeout.log = r->connection->log;

    ctx->wake.handler = ngx_http_quota_wake_handler;
    ctx->wake.data = ctx;
    ctx->wake.log = r->connection->log;

    cln->handler = ngx_http_quota_cleanup;

    ngx_http_set_ctx(r, ctx, ngx_http_quota_module);

    return ctx;
}


/* the request is being freed, whatever the reason */
static void
ngx_http_quota_cleanup(void *data)
{
    ngx_http_quota_ctx_t  *ctx = data;

    /* the client went away while the charge was in flight: void it */
    if (ctx->op) {
        if (ctx->unknown) {
            ctx->unknown = 0;
            ngx_http_quota_script_void(ctx, ctx->op);

        } else {
            ngx_http_quota_redis_detach(ctx->op);
        }

        ctx->op = NULL;
    }

    if (ctx->timeout.timer_set) {
        ngx_del_timer(&ctx->timeout);
    }

    if (ctx->wake.posted) {
        ngx_delete_posted_event(&ctx->wake);
    }

    if (ctx->slot_taken) {
        ctx->slot_taken = 0;
        ngx_http_quota_script_release(ctx);
    }

    ngx_http_quota_lease_reply(ctx->request, ctx);
    ngx_http_quota_zone_release(ctx);
}


static void
ngx_http_quota_wake_handler(ngx_event_t *ev)
{
    ngx_connection_t      *c;
    ngx_http_request_t    *r;
    ngx_http_quota_ctx_t  *ctx;

    ctx = ev->data;
    r = ctx->request;
    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0, "quota: resuming request");

    r->main->count--;

    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_core_run_phases;

    ngx_http_core_run_phases(r);
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_quota_timeout_handler(ngx_event_t *ev)
{
    ngx_http_quota_ctx_t        *ctx;
    ngx_http_quota_main_conf_t  *qmcf;

    ctx = ev->data;

    qmcf = ngx_http_get_module_main_conf(ctx->request, ngx_http_quota_module);

    ngx_log_error(NGX_LOG_ERR, ev->log, 0,
                  "quota: redis did not answer within %Mms",
                  qmcf->redis_timeout);

    ngx_http_quota_count(qmcf, errors[NGX_HTTP_QUOTA_ERR_TIMEOUT]);

    /*
     * The script may still run in Redis: it is never sent again (that could
     * charge twice); its reply, if it comes, is dropped, and its void goes
     * right behind it, so the request is charged nothing (SPEC 4: a
     * rejected request charges nothing; a FAIL_OPEN one is not billed).
     */

    if (ctx->op) {
        if (ctx->unknown) {
            ctx->unknown = 0;
            ngx_http_quota_script_void(ctx, ctx->op);
        }

        ngx_http_quota_redis_timed_out(ctx->op);
        ctx->op = NULL;
    }

    ctx->redis_failed = 1;
    ctx->state = NGX_HTTP_QUOTA_CTX_DECIDED;

    ngx_http_quota_wake_handler(&ctx->wake);
}

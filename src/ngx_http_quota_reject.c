
/*
 * quota_reject_cache T (SPEC 9): after Redis refused a tenant with
 * QUOTA_EXCEEDED, SPENDING_CAP_REACHED, ACCOUNT_SUSPENDED or
 * UNKNOWN_TENANT, the tenant's requests that would meet the same refusal
 * get it from quota_zone for T, with no Redis trip.
 *
 * The answer is the one Redis would give: the tenant's snapshot (the
 * numbers of the latest reply, ngx_http_quota_zone_recall) fills the ctx
 * exactly as a decoded reply does, and the same code path writes the
 * status, headers and body.  "Would meet the same refusal" is decided
 * with the charge script's own arithmetic over that snapshot:
 *
 *   QUOTA_EXCEEDED (metric m)   the first of the request's metrics that
 *                               would pass its enforcement point is m
 *                               (any other one, or none: ask Redis);
 *   SPENDING_CAP_REACHED        a positive cost, no metric refused before
 *                               the cap is checked, and an overage cost at
 *                               least the refused one's (that refusal had
 *                               none: the cap is reached, any positive
 *                               cost is refused);
 *   ACCOUNT_SUSPENDED           any metered request;
 *   UNKNOWN_TENANT              any metered request of a location with
 *                               quota_require_account on.
 *
 * Redis checks rate and concurrency before the quota: a request that Redis
 * would refuse with 429 gets the cached 402 instead (refused either way,
 * nothing written either way).  An entry ends at T, at the end of its day
 * (the snapshot of a period=day metric is that day's), at the end of the
 * billing period, or at the first admitted charge that contradicts it.
 */


#include "ngx_http_quota_module.h"
#include "ngx_http_quota_zone.h"


static ngx_int_t ngx_http_quota_reject_match(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_http_quota_zone_reject_t *e);
static ngx_int_t ngx_http_quota_reject_exceeded(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_uint_t metric, ngx_uint_t *index);
static ngx_int_t ngx_http_quota_reject_overage(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_uint_t check, int64_t *cost);
static ngx_http_quota_plan_t *ngx_http_quota_reject_plan(
    ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx);
static ngx_uint_t ngx_http_quota_reject_contradicts(ngx_http_quota_ctx_t *ctx,
    ngx_http_quota_zone_reject_t *e);


char *
ngx_http_quota_reject_cache_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    char                        *rv;
    ngx_http_quota_loc_conf_t   *qlcf = conf;
    ngx_http_quota_main_conf_t  *qmcf;

    rv = ngx_conf_set_msec_slot(cf, cmd, conf);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    if (qlcf->reject_cache) {
        qmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_quota_module);
        qmcf->reject_cache = 1;
        ngx_http_quota_zone_need(cf, &cmd->name);
    }

    return NGX_CONF_OK;
}


/*
 * Before the Redis trip.  NGX_OK: the ctx holds a refusal taken from the
 * zone (the caller acts on it as on a reply); NGX_DECLINED: ask Redis.
 */
ngx_int_t
ngx_http_quota_reject_lookup(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx,
    ngx_http_quota_loc_conf_t *qlcf)
{
    ngx_int_t                      rc;
    ngx_http_quota_zone_t         *z;
    ngx_http_quota_zone_node_t    *qn;
    ngx_http_quota_main_conf_t    *qmcf;
    ngx_http_quota_zone_reject_t  *e;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    z = qmcf->zone;

    if (qlcf->reject_cache == 0 || z == NULL || z->sh == NULL || ctx->bypass) {
        return NGX_DECLINED;
    }

    rc = NGX_DECLINED;

    ngx_http_quota_zone_lock(z);

    qn = ngx_http_quota_zone_node(z, &ctx->tenant, 0);

    if (qn != NULL) {
        e = &qn->reject;

        if (e->until != 0
            && (ngx_msec_int_t) (e->until - ngx_current_msec) > 0
            && e->day == ngx_time() / 86400)
        {
            if (e->code != NGX_HTTP_QUOTA_CODE_UNKNOWN) {
                ngx_http_quota_zone_recall(ctx, qn);
            }

            rc = ngx_http_quota_reject_match(r, ctx, e);

        } else if (e->until != 0) {
            e->until = 0;
        }
    }

    ngx_http_quota_zone_unlock(z);

    if (rc != NGX_OK) {
        /* the reply will fill these again */
        ctx->have_usage = 0;
        return NGX_DECLINED;
    }

    ctx->local = 1;
    ctx->retry_after = 0;

    ngx_http_quota_count(qmcf, local[NGX_HTTP_QUOTA_LOCAL_REJECT]);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "quota: refusal %ui of tenant \"%V\" from the zone",
                   ctx->code, &ctx->tenant);

    return NGX_OK;
}


/* under the lock, the snapshot recalled: would Redis refuse the same way? */
static ngx_int_t
ngx_http_quota_reject_match(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx,
    ngx_http_quota_zone_reject_t *e)
{
    int64_t                     cost;
    ngx_uint_t                  i, index;
    ngx_http_quota_loc_conf_t  *qlcf;

    qlcf = ngx_http_get_module_loc_conf(r, ngx_http_quota_module);

    if (e->code != NGX_HTTP_QUOTA_CODE_UNKNOWN) {
        /* the body and headers need every metric's numbers, in period */
        if (ctx->ncharges > 0
            && (!ctx->have_usage || ngx_time() >= ctx->billing.end))
        {
            return NGX_DECLINED;
        }
    }

    index = 0;

    switch (e->code) {

    case NGX_HTTP_QUOTA_CODE_UNKNOWN:
        /* only where an account is required is a missing one refused */
        if (!qlcf->require_account) {
            return NGX_DECLINED;
        }

        ctx->have_usage = 0;
        break;

    case NGX_HTTP_QUOTA_CODE_SUSPENDED:
        break;

    case NGX_HTTP_QUOTA_CODE_QUOTA:
        if (ngx_http_quota_reject_exceeded(r, ctx, e->metric, &index)
            != NGX_OK)
        {
            return NGX_DECLINED;
        }

        break;

    case NGX_HTTP_QUOTA_CODE_CAP:
        for (i = 0; i < ctx->ncharges; i++) {
            if (ctx->costs[i] > 0) {
                break;
            }
        }

        /* a zero cost is never refused by the cap (SPEC 4a) */
        if (i == ctx->ncharges
            || ngx_http_quota_reject_overage(r, ctx, 1, &cost) != NGX_OK
            || (e->cost > 0 && cost < e->cost))
        {
            return NGX_DECLINED;
        }

        break;

    default:
        return NGX_DECLINED;
    }

    ctx->code = e->code;
    ctx->reject_index = index;

    return NGX_OK;
}


/*
 * QUOTA_EXCEEDED of "metric": the charge script checks the request's
 * metrics in order and refuses at the first one past its enforcement point
 * that overage does not cover.  A metric past it before "metric" might be
 * covered by overage (the snapshot does not say): ask Redis.
 */
static ngx_int_t
ngx_http_quota_reject_exceeded(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_uint_t metric, ngx_uint_t *index)
{
    int64_t                 enforce;
    ngx_uint_t              i, grace;
    ngx_http_quota_plan_t  *plan;

    plan = ngx_http_quota_reject_plan(r, ctx);
    grace = plan ? plan->grace : 0;

    for (i = 0; i < ctx->ncharges; i++) {

        if (ctx->costs[i] <= 0 || ctx->limit[i] < 0) {
            continue;
        }

        enforce = quota_enforce_point(ctx->limit[i], grace);

        /* both below 2^53: the sum cannot overflow */
        if (ctx->used[i] + ctx->costs[i] <= enforce) {
            continue;
        }

        if (ctx->rule->charges[i].metric != metric) {
            return NGX_DECLINED;
        }

        *index = i;
        return NGX_OK;
    }

    return NGX_DECLINED;
}


/*
 * The overage cost (micro-USD) the request would add, as the charge
 * script prices it with overage on: the units past the limit of each
 * monthly metric the plan prices.  With "check", a metric the script would
 * refuse before the cap (past its enforcement point, overage not priced)
 * makes it NGX_DECLINED.
 */
static ngx_int_t
ngx_http_quota_reject_overage(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_uint_t check, int64_t *cost)
{
    int64_t                        price, before, after, over;
    ngx_uint_t                     i, m, metric;
    ngx_http_quota_plan_t         *plan;
    ngx_http_quota_metric_t       *metrics;
    ngx_http_quota_main_conf_t    *qmcf;
    ngx_http_quota_plan_metric_t  *pm;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    metrics = qmcf->metrics.elts;
    plan = ngx_http_quota_reject_plan(r, ctx);

    *cost = 0;

    for (i = 0; i < ctx->ncharges; i++) {

        if (ctx->costs[i] <= 0 || ctx->limit[i] < 0) {
            continue;
        }

        metric = ctx->rule->charges[i].metric;
        price = -1;

        if (plan && metrics[metric].period == NGX_HTTP_QUOTA_PERIOD_MONTH) {
            pm = plan->metrics.elts;

            for (m = 0; m < plan->metrics.nelts; m++) {
                if (pm[m].metric == metric) {
                    price = pm[m].price;
                    break;
                }
            }
        }

        if (price < 0) {
            if (check
                && ctx->used[i] + ctx->costs[i]
                   > quota_enforce_point(ctx->limit[i], plan ? plan->grace : 0))
            {
                return NGX_DECLINED;
            }

            continue;
        }

        before = ngx_max(0, ctx->used[i] - ctx->limit[i]);
        after = ngx_max(0, ctx->used[i] + ctx->costs[i] - ctx->limit[i]);
        over = after - before;

        if (price > 0 && over > (QUOTA_COST_MAX - *cost) / price) {
            /* past 2^53: the script answers BAD_COST, ask it */
            return NGX_DECLINED;
        }

        *cost += over * price;
    }

    return NGX_OK;
}


static ngx_http_quota_plan_t *
ngx_http_quota_reject_plan(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx)
{
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);

    if (ctx->plan == 0 || ctx->plan > qmcf->plans.nelts) {
        return NULL;
    }

    return (ngx_http_quota_plan_t *) qmcf->plans.elts + ctx->plan - 1;
}


/*
 * Every understood charge reply: a refusal of the kinds above starts an
 * entry (where the location caches refusals); an admitted charge that
 * shows an entry wrong ends it.
 */
void
ngx_http_quota_reject_learn(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx)
{
    int64_t                        cost;
    ngx_uint_t                     code, refusal;
    ngx_http_quota_zone_t         *z;
    ngx_http_quota_zone_node_t    *qn;
    ngx_http_quota_main_conf_t    *qmcf;
    ngx_http_quota_zone_reject_t  *e;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    z = qmcf->zone;

    if (!qmcf->reject_cache || z == NULL || z->sh == NULL || ctx->redis_failed
        || ctx->local || ctx->report)
    {
        return;
    }

    code = ctx->code;
    refusal = (code >= NGX_HTTP_QUOTA_CODE_QUOTA
               && code <= NGX_HTTP_QUOTA_CODE_UNKNOWN);

    if (refusal) {
        if (ctx->conf->reject_cache == 0) {
            return;
        }

        cost = 0;

        if (code == NGX_HTTP_QUOTA_CODE_CAP
            && ngx_http_quota_reject_overage(r, ctx, 0, &cost) != NGX_OK)
        {
            return;
        }

    } else if (code != NGX_HTTP_QUOTA_CODE_CHARGED || ctx->bypass
               || (ctx->zone_node && ctx->zone_node->reject.until == 0))
    {
        /* nothing to end: a peek (bypass) charged nothing; a held node
           is read without the lock (a stale answer only lets an entry
           live until its T) */
        return;
    }

    ngx_http_quota_zone_lock(z);

    qn = ngx_http_quota_zone_node(z, &ctx->tenant, refusal);

    if (qn != NULL) {
        e = &qn->reject;

        if (refusal) {
            e->code = code;
            e->metric = (code == NGX_HTTP_QUOTA_CODE_QUOTA)
                        ? ctx->rule->charges[ctx->reject_index].metric : 0;
            e->cost = cost;
            e->day = ngx_time() / 86400;
            e->until = ngx_current_msec + ctx->conf->reject_cache;

            /* 0 means "none" */
            if (e->until == 0) {
                e->until = 1;
            }

        } else if (e->until != 0 && ngx_http_quota_reject_contradicts(ctx, e))
        {
            e->until = 0;
        }
    }

    ngx_http_quota_zone_unlock(z);
}


/* an admitted charge: does it prove the cached refusal wrong? */
static ngx_uint_t
ngx_http_quota_reject_contradicts(ngx_http_quota_ctx_t *ctx,
    ngx_http_quota_zone_reject_t *e)
{
    ngx_uint_t  i;

    switch (e->code) {

    case NGX_HTTP_QUOTA_CODE_SUSPENDED:
    case NGX_HTTP_QUOTA_CODE_UNKNOWN:
        /* the account is active (and exists, if this location requires
           it; one that does not proves nothing about existence) */
        return e->code == NGX_HTTP_QUOTA_CODE_SUSPENDED
               || ctx->conf->require_account;

    default:
        for (i = 0; i < ctx->ncharges; i++) {
            if (ctx->costs[i] > 0
                && (e->code == NGX_HTTP_QUOTA_CODE_CAP
                    || ctx->rule->charges[i].metric == e->metric))
            {
                return 1;
            }
        }

        return 0;
    }
}

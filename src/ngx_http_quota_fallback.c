
/*
 * quota_fallback off|local [nodes=N] (SPEC 9): what a gateway does while
 * Redis is unreachable.
 *
 * A circuit breaker in quota_zone (ngx_http_quota_breaker.c), shared by
 * the workers, counts consecutive Redis failures (no connection, timeout,
 * a connection lost before the reply, an error reply: not corrupt data or
 * a failing script, which are answers).  At NGX_HTTP_QUOTA_BREAKER_FAILURES
 * it opens: no request calls Redis any more, each is decided from the zone
 * in microseconds:
 *
 *   a tenant the zone knows (a snapshot of each metric the request
 *   charges, of this period and, for period=day metrics, of this day)
 *   spends up to (limit - used) / N of each metric since that snapshot
 *   ($quota_status FALLBACK): if each of N gateways keeps to its share of
 *   what it last knew, together they stay within the limit; past that
 *   share it gets 503
 *   QUOTA_UNAVAILABLE whatever quota_failure_mode says (an exhausted
 *   tenant must not become unlimited because Redis is down);
 *
 *   a tenant the zone does not know follows quota_failure_mode.
 *
 * Requests whose own Redis trip fails are decided the same way, before the
 * breaker opens as after.  Their charge, if it ran, is voided as always
 * (ngx_http_quota_script_void): what fallback admits is charged once, by
 * the flush below, never also by the timed-out charge.  Units admitted
 * while the circuit is closed (one failure) are charged at once: Redis
 * goes on deciding the tenant's other requests and must count them (and a
 * worker that quits must not take them along).  Tenants with units to
 * charge are queued in the zone, so whichever worker flushes next (a new
 * worker after a reload too) charges what another one left.
 *
 * While the circuit is open, the workers that see requests keep a probe
 * timer; one of them at a time (the breaker's probe lock) sends PING.  The
 * first success, a PONG or any reply to a request still in flight, closes
 * the circuit, and the worker that closed it charges what was admitted:
 * per tenant, the units admitted in fallback, with the charge script in
 * FORCE mode (no checks, never refused; its charge id makes a resend a
 * no-op), sent as a reliable command.  They stay spent against the share
 * until a newer snapshot (a reply) includes them.
 */


#include "ngx_http_quota_module.h"
#include "ngx_http_quota_zone.h"


/* consecutive failures that open the circuit */
#define NGX_HTTP_QUOTA_BREAKER_FAILURES  3

/* the probe interval: the Redis timeout, within these bounds */
#define NGX_HTTP_QUOTA_PROBE_MIN         100     /* ms */
#define NGX_HTTP_QUOTA_PROBE_MAX         1000    /* ms */

/* units admitted while the circuit is closed wait this long, batched */
#define NGX_HTTP_QUOTA_FLUSH_DELAY       100     /* ms */

/* tenants charged per flush (one lock); more: the flush runs again */
#define NGX_HTTP_QUOTA_FLUSH_BATCH       64


/* what the flush charges for one tenant, collected under the lock */
typedef struct {
    ngx_str_t                    tenant;
    int64_t                     *units;       /* per declared metric */
} ngx_http_quota_flush_t;


/* this worker's probe */
typedef struct {
    ngx_http_quota_main_conf_t  *qmcf;
    ngx_event_t                  timer;       /* the next probe */
    ngx_event_t                  timeout;     /* the PING's */
    ngx_http_quota_op_t         *op;          /* the PING in flight */
    ngx_event_t                  flush;       /* units admitted while the
                                                 circuit was closed */
    ngx_http_quota_flush_t      *batch;       /* FLUSH_BATCH tenants, with
                                                 room for their units and
                                                 ids: sized at init */
} ngx_http_quota_probe_t;


static ngx_uint_t ngx_http_quota_fallback_enabled(
    ngx_http_quota_main_conf_t *qmcf);
static ngx_int_t ngx_http_quota_fallback_share(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_http_quota_zone_node_t *qn);
static ngx_uint_t ngx_http_quota_fallback_known(
    ngx_http_quota_zone_metric_t *sm, ngx_uint_t period);
static ngx_msec_t ngx_http_quota_probe_interval(
    ngx_http_quota_main_conf_t *qmcf);
static void ngx_http_quota_fallback_arm(ngx_http_quota_main_conf_t *qmcf);
static void ngx_http_quota_probe_handler(ngx_event_t *ev);
static void ngx_http_quota_probe_reply(void *data, redisReply *reply);
static void ngx_http_quota_probe_timeout(ngx_event_t *ev);
static void ngx_http_quota_fallback_closed(ngx_http_quota_main_conf_t *qmcf,
    const char *by);
static void ngx_http_quota_fallback_flush_handler(ngx_event_t *ev);
static void ngx_http_quota_fallback_flush(ngx_http_quota_main_conf_t *qmcf);
static ngx_uint_t ngx_http_quota_fallback_collect(ngx_http_quota_zone_t *z,
    ngx_http_quota_flush_t *f, ngx_uint_t *more);
static void ngx_http_quota_fallback_pending(ngx_http_quota_zone_t *z,
    ngx_http_quota_zone_node_t *qn);
static ngx_int_t ngx_http_quota_fallback_evict(ngx_http_quota_zone_t *z,
    ngx_http_quota_zone_node_t *node);


static ngx_http_quota_probe_t  ngx_http_quota_probe;


char *
ngx_http_quota_fallback_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_quota_main_conf_t *qmcf = conf;

    ngx_int_t   n;
    ngx_str_t  *value;

    if (qmcf->fallback_nodes != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        if (cf->args->nelts > 2) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"quota_fallback off\" takes no parameter, "
                               "\"%V\" given", &value[2]);
            return NGX_CONF_ERROR;
        }

        qmcf->fallback_nodes = 0;
        return NGX_CONF_OK;
    }

    if (ngx_strcmp(value[1].data, "local") != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\", expected \"off\" or "
                           "\"local\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    n = 1;

    if (cf->args->nelts > 2) {
        if (ngx_strncmp(value[2].data, "nodes=", 6) != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\"", &value[2]);
            return NGX_CONF_ERROR;
        }

        n = ngx_atoi(value[2].data + 6, value[2].len - 6);

        /* the gateways that share one Redis */
        if (n < 1 || n > 100000) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid value \"%V\": nodes= is the number "
                               "of gateways sharing Redis, 1 to 100000",
                               &value[2]);
            return NGX_CONF_ERROR;
        }
    }

    qmcf->fallback_nodes = (ngx_uint_t) n;

    ngx_http_quota_zone_need(cf, &cmd->name);

    return NGX_CONF_OK;
}


/* init_main_conf, after quota_zone was read wherever it is written */
ngx_int_t
ngx_http_quota_fallback_init_conf(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf)
{
    if (qmcf->fallback_nodes == NGX_CONF_UNSET_UINT) {
        qmcf->fallback_nodes = 0;
    }

    if (qmcf->fallback_nodes == 0) {
        return NGX_OK;
    }

    /* a node with charges not flushed yet is never evicted */
    return ngx_http_quota_zone_add_hook(cf, ngx_http_quota_fallback_evict);
}


static ngx_uint_t
ngx_http_quota_fallback_enabled(ngx_http_quota_main_conf_t *qmcf)
{
    return qmcf->fallback_nodes != 0 && qmcf->zone != NULL
           && qmcf->zone->sh != NULL;
}


/* before a Redis trip: 1 if the circuit is open (do not call Redis) */
ngx_int_t
ngx_http_quota_fallback_open(ngx_http_request_t *r)
{
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);

    if (!ngx_http_quota_fallback_enabled(qmcf)
        || !quota_breaker_is_open(&qmcf->zone->sh->breaker))
    {
        return 0;
    }

    /* the worker that opened it may be gone: every worker that sees the
       circuit open keeps a probe timer */
    ngx_http_quota_fallback_arm(qmcf);

    return 1;
}


/* after a Redis trip: what it says about Redis */
void
ngx_http_quota_fallback_outcome(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx)
{
    quota_breaker_t             *b;
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);

    if (!ngx_http_quota_fallback_enabled(qmcf)) {
        return;
    }

    b = &qmcf->zone->sh->breaker;

    /* corrupt data and script errors are answers: Redis is there */
    if (!ctx->redis_failed || ctx->data_error) {
        if (quota_breaker_success(b)) {
            ngx_http_quota_fallback_closed(qmcf, "a reply");
        }

        return;
    }

    if (quota_breaker_failure(b, NGX_HTTP_QUOTA_BREAKER_FAILURES)) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "quota: redis circuit open after %d consecutive "
                      "failures, deciding from quota_zone \"%V\"",
                      NGX_HTTP_QUOTA_BREAKER_FAILURES,
                      &qmcf->zone->name);

        ngx_http_quota_fallback_arm(qmcf);
    }
}


/*
 * Redis did not decide this request.  NGX_OK: admitted in fallback (ctx
 * has the snapshot's numbers for the headers); NGX_DECLINED: the tenant
 * is unknown here, quota_failure_mode decides; NGX_ABORT: a known tenant
 * past its share, refused.
 */
ngx_int_t
ngx_http_quota_fallback_admit(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx)
{
    ngx_int_t                    rc;
    ngx_http_quota_zone_t       *z;
    ngx_http_quota_zone_node_t  *qn;
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);

    if (!ngx_http_quota_fallback_enabled(qmcf) || ctx->report) {
        return NGX_DECLINED;
    }

    z = qmcf->zone;

    ngx_http_quota_zone_lock(z);

    qn = ngx_http_quota_zone_node(z, &ctx->tenant, 0);

    rc = qn ? ngx_http_quota_fallback_share(r, ctx, qn) : NGX_DECLINED;

    ngx_http_quota_zone_unlock(z);

    if (rc == NGX_OK) {
        ngx_http_quota_count(qmcf, local[NGX_HTTP_QUOTA_LOCAL_FALLBACK]);

        /*
         * Read after the unlock: if it is open now, the close (whose flush
         * takes the lock after its flip) charges these units.  If it is
         * closed, Redis is deciding the tenant's other requests against a
         * usage without them: charge them at once (L7), not batched later,
         * and not lost if this worker quits meanwhile (L4).
         */
        if (!quota_breaker_is_open(&z->sh->breaker)) {
            ngx_http_quota_fallback_flush(qmcf);
        }

    } else if (rc == NGX_ABORT) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "quota: tenant \"%V\" spent its quota_fallback share",
                      &ctx->tenant);
    }

    return rc;
}


/*
 * The log phase of a request admitted in FALLBACK with quota_reconcile:
 * the difference between the actual and the estimate of a metric goes to
 * the tenant's units to charge (and its share), so that the FORCE charges
 * the actual once.  A negative one takes back at most what is not charged
 * yet.
 */
void
ngx_http_quota_fallback_reconcile(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_uint_t metric, int64_t delta)
{
    ngx_http_quota_zone_t         *z;
    ngx_http_quota_zone_node_t    *qn;
    ngx_http_quota_main_conf_t    *qmcf;
    ngx_http_quota_zone_metric_t  *sm;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);

    if (!ngx_http_quota_fallback_enabled(qmcf)) {
        return;
    }

    z = qmcf->zone;

    ngx_http_quota_zone_lock(z);

    qn = ngx_http_quota_zone_node(z, &ctx->tenant, 0);

    if (qn == NULL || qn->sig != z->sig || metric >= qn->nmetrics) {
        ngx_http_quota_zone_unlock(z);

        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "quota: reconcile of %L of a fallback admission of "
                      "tenant \"%V\" lost: the tenant left the zone",
                      delta, &ctx->tenant);
        return;
    }

    sm = &ngx_http_quota_zone_metrics(qn)[metric];

    if (delta < -sm->fb_pending) {
        delta = -sm->fb_pending;
    }

    sm->fb_pending += delta;
    sm->fb_spent += delta;

    if (sm->fb_pending > 0) {
        ngx_http_quota_fallback_pending(z, qn);
    }

    ngx_http_quota_zone_unlock(z);

    /* closed: nobody else charges it soon (see fallback_admit) */
    if (!quota_breaker_is_open(&z->sh->breaker)) {
        ngx_http_quota_fallback_flush(qmcf);
    }
}


/* under the lock: the tenant's share of each metric, spent if it fits */
static ngx_int_t
ngx_http_quota_fallback_share(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_http_quota_zone_node_t *qn)
{
    int64_t                        share;
    ngx_uint_t                     i, known;
    ngx_http_quota_metric_t       *metrics;
    ngx_http_quota_main_conf_t    *qmcf;
    ngx_http_quota_zone_metric_t  *m, *sm;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    metrics = qmcf->metrics.elts;
    m = ngx_http_quota_zone_metrics(qn);

    if (ctx->rule == NULL) {
        /* rate or concurrency only: known if anything of it is */
        for (i = 0; i < qn->nmetrics; i++) {
            if (ngx_http_quota_fallback_known(&m[i], metrics[i].period)) {
                return NGX_OK;
            }
        }

        return NGX_DECLINED;
    }

    known = 1;

    for (i = 0; i < ctx->ncharges; i++) {
        sm = &m[ctx->rule->charges[i].metric];

        if (!ngx_http_quota_fallback_known(sm,
                                metrics[ctx->rule->charges[i].metric].period))
        {
            known = 0;
            break;
        }
    }

    if (!known) {
        return NGX_DECLINED;
    }

    for (i = 0; i < ctx->ncharges; i++) {
        sm = &m[ctx->rule->charges[i].metric];

        /* a newer snapshot: what fallback charged before is in its
           numbers (or on its way there), the share starts again from
           them; units not charged yet are not in them and stay spent */
        if (sm->fb_learned != sm->learned) {
            sm->fb_learned = sm->learned;
            sm->fb_spent = sm->fb_pending;
        }

        if (ctx->costs[i] <= 0) {
            continue;
        }

        share = quota_fallback_share(sm->limit, sm->used,
                                     qmcf->fallback_nodes);

        if (share >= 0 && ctx->costs[i] > share - sm->fb_spent) {
            return NGX_ABORT;
        }
    }

    /* a metric charged twice by one rule is counted twice, as in Redis */
    for (i = 0; i < ctx->ncharges; i++) {
        sm = &m[ctx->rule->charges[i].metric];
        sm->fb_spent += ctx->costs[i];
        sm->fb_pending += ctx->costs[i];
    }

    ngx_http_quota_fallback_pending(qmcf->zone, qn);

    /* the headers: the snapshot plus what fallback admitted since */
    ngx_http_quota_zone_recall(ctx, qn);

    for (i = 0; i < ctx->ncharges; i++) {
        ctx->used[i] += m[ctx->rule->charges[i].metric].fb_spent;
    }

    ctx->code = NGX_HTTP_QUOTA_CODE_CHARGED;

    return NGX_OK;
}


/* a snapshot that still describes this period (and, for a daily metric,
   this day): learned, and not before the period or the day began */
static ngx_uint_t
ngx_http_quota_fallback_known(ngx_http_quota_zone_metric_t *sm,
    ngx_uint_t period)
{
    time_t      now;
    ngx_msec_t  age;

    if (sm->learned == 0) {
        return 0;
    }

    now = ngx_time();

    if (now >= sm->end) {
        return 0;
    }

    if (period == NGX_HTTP_QUOTA_PERIOD_DAY) {
        age = ngx_current_msec - sm->learned;

        if ((time_t) (age / 1000) >= now % 86400) {
            return 0;
        }
    }

    return 1;
}


ngx_uint_t
ngx_http_quota_fallback_circuit(ngx_http_quota_main_conf_t *qmcf)
{
    if (!ngx_http_quota_fallback_enabled(qmcf)) {
        return 0;
    }

    return quota_breaker_is_open(&qmcf->zone->sh->breaker) ? 1 : 0;
}


ngx_int_t
ngx_http_quota_fallback_init_worker(ngx_cycle_t *cycle,
    ngx_http_quota_main_conf_t *qmcf)
{
    ngx_http_quota_probe_t  *p;

    p = &ngx_http_quota_probe;

    ngx_memzero(p, sizeof(ngx_http_quota_probe_t));

    if (!ngx_http_quota_fallback_enabled(qmcf)) {
        return NGX_OK;
    }

    p->qmcf = qmcf;

    /* the flush's batch: tenants, their units, their ids (each at most
       QUOTA_TENANT_MAX): what one flush collects always fits */
    p->batch = ngx_palloc(cycle->pool, NGX_HTTP_QUOTA_FLUSH_BATCH
                          * (sizeof(ngx_http_quota_flush_t)
                             + qmcf->zone->nmetrics * sizeof(int64_t)
                             + QUOTA_TENANT_MAX));
    if (p->batch == NULL) {
        return NGX_ERROR;
    }

    /* the probe never keeps a worker from quitting */
    p->timer.handler = ngx_http_quota_probe_handler;
    p->timer.data = p;
    p->timer.log = cycle->log;
    p->timer.cancelable = 1;

    p->timeout.handler = ngx_http_quota_probe_timeout;
    p->timeout.data = p;
    p->timeout.log = cycle->log;
    p->timeout.cancelable = 1;

    /* not cancelable: a quitting worker sends what is queued first */
    p->flush.handler = ngx_http_quota_fallback_flush_handler;
    p->flush.data = p;
    p->flush.log = cycle->log;

    /* units a worker that quit (reload) left queued while the circuit was
       closed: nobody else would charge them before the next outage */
    ngx_add_timer(&p->flush, NGX_HTTP_QUOTA_FLUSH_DELAY);

    /* a reload while Redis is down: the new workers go on probing */
    if (quota_breaker_is_open(&qmcf->zone->sh->breaker)) {
        ngx_http_quota_fallback_arm(qmcf);
    }

    return NGX_OK;
}


static ngx_msec_t
ngx_http_quota_probe_interval(ngx_http_quota_main_conf_t *qmcf)
{
    return ngx_min(ngx_max(qmcf->redis_timeout, NGX_HTTP_QUOTA_PROBE_MIN),
                   NGX_HTTP_QUOTA_PROBE_MAX);
}


static void
ngx_http_quota_fallback_arm(ngx_http_quota_main_conf_t *qmcf)
{
    ngx_http_quota_probe_t  *p;

    p = &ngx_http_quota_probe;

    if (p->qmcf != qmcf || p->timer.timer_set || p->op != NULL
        || ngx_exiting || ngx_terminate || ngx_quit)
    {
        return;
    }

    ngx_add_timer(&p->timer, ngx_http_quota_probe_interval(qmcf));
}


static void
ngx_http_quota_probe_handler(ngx_event_t *ev)
{
    size_t                       len;
    quota_breaker_t             *b;
    const char                  *cmd;
    ngx_http_quota_probe_t      *p;
    ngx_http_quota_main_conf_t  *qmcf;

    p = ev->data;
    qmcf = p->qmcf;
    b = &qmcf->zone->sh->breaker;

    if (ngx_exiting || ngx_terminate || ngx_quit || !quota_breaker_is_open(b))
    {
        return;
    }

    /* one probe at a time for the whole node: the others wait for it */
    if (!quota_breaker_probe_take(b, ngx_current_msec,
                                  qmcf->redis_timeout
                                  + ngx_http_quota_probe_interval(qmcf)))
    {
        ngx_http_quota_fallback_arm(qmcf);
        return;
    }

    cmd = "PING";
    len = 4;

    p->op = ngx_http_quota_redis_send(qmcf, 1, &cmd, &len,
                                      ngx_http_quota_probe_reply, p);

    if (p->op == NULL) {
        /* no connection is ready yet: the pool keeps reconnecting */
        quota_breaker_probe_done(b);
        ngx_http_quota_fallback_arm(qmcf);
        return;
    }

    ngx_add_timer(&p->timeout, qmcf->redis_timeout);
}


static void
ngx_http_quota_probe_reply(void *data, redisReply *reply)
{
    ngx_http_quota_probe_t *p = data;

    quota_breaker_t  *b;

    b = &p->qmcf->zone->sh->breaker;
    p->op = NULL;

    if (p->timeout.timer_set) {
        ngx_del_timer(&p->timeout);
    }

    quota_breaker_probe_done(b);

    /* PONG; an error (LOADING, BUSY) or a lost connection: not yet */
    if (reply != NULL && reply->type == REDIS_REPLY_STATUS) {
        if (quota_breaker_success(b)) {
            ngx_http_quota_fallback_closed(p->qmcf, "the probe");
        }

        return;
    }

    ngx_http_quota_fallback_arm(p->qmcf);
}


static void
ngx_http_quota_probe_timeout(ngx_event_t *ev)
{
    ngx_http_quota_probe_t *p = ev->data;

    if (p->op) {
        /* its reply, if it comes, is dropped */
        ngx_http_quota_redis_timed_out(p->op);
        p->op = NULL;
    }

    quota_breaker_probe_done(&p->qmcf->zone->sh->breaker);

    ngx_http_quota_fallback_arm(p->qmcf);
}


static void
ngx_http_quota_fallback_closed(ngx_http_quota_main_conf_t *qmcf,
    const char *by)
{
    ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                  "quota: redis circuit closed by %s, charging what "
                  "quota_fallback admitted", by);

    ngx_http_quota_fallback_flush(qmcf);
}


/*
 * Charge every tenant's fallback units once: the circuit just closed (this
 * worker closed it), or units were admitted while it was closed (a request
 * whose own trip failed).  Tenants with units to charge are queued in the
 * zone (sh->fb_queue); at most NGX_HTTP_QUOTA_FLUSH_BATCH of them are
 * moved out under the lock into this worker's batch, sent after it, and
 * the flush runs again at once while some are left.
 */
static void
ngx_http_quota_fallback_flush(ngx_http_quota_main_conf_t *qmcf)
{
    ngx_uint_t               i, n, more;
    ngx_http_quota_zone_t   *z;
    ngx_http_quota_flush_t  *f;
    ngx_http_quota_probe_t  *p;

    p = &ngx_http_quota_probe;
    z = qmcf->zone;
    f = p->batch;

    if (p->qmcf != qmcf || f == NULL) {
        return;
    }

    ngx_http_quota_zone_lock(z);
    n = ngx_http_quota_fallback_collect(z, f, &more);
    ngx_http_quota_zone_unlock(z);

    for (i = 0; i < n; i++) {
        if (ngx_http_quota_script_force(qmcf, &f[i].tenant, f[i].units)
            != NGX_OK)
        {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "quota: the fallback charge of tenant \"%V\" "
                          "was not sent to redis", &f[i].tenant);
        }
    }

    if (n) {
        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      "quota: fallback charges of %ui tenants sent", n);
    }

    if (more && !p->flush.timer_set) {
        ngx_add_timer(&p->flush, 1);
    }
}


/* under the lock: the queue of nodes with units to charge */
static ngx_queue_t *
ngx_http_quota_fallback_queue(ngx_http_quota_zone_t *z)
{
    /* the shared header is zeroed when the zone is made */
    if (z->sh->fb_queue.next == NULL) {
        ngx_queue_init(&z->sh->fb_queue);
    }

    return &z->sh->fb_queue;
}


/* under the lock: qn has units to charge now, queue it (once) */
static void
ngx_http_quota_fallback_pending(ngx_http_quota_zone_t *z,
    ngx_http_quota_zone_node_t *qn)
{
    if (qn->fb_queue.next == NULL) {
        ngx_queue_insert_tail(ngx_http_quota_fallback_queue(z),
                              &qn->fb_queue);
    }
}


/*
 * Under the lock: moves the units of at most NGX_HTTP_QUOTA_FLUSH_BATCH
 * queued tenants into f (they stay spent against the share until a newer
 * snapshot) and unqueues them; *more: some are left.  Nodes of another
 * configuration's metric set (a reload) are left to its workers, moved
 * to the tail, and count against the batch so that a pass stays bounded.
 */
static ngx_uint_t
ngx_http_quota_fallback_collect(ngx_http_quota_zone_t *z,
    ngx_http_quota_flush_t *f, ngx_uint_t *more)
{
    u_char                        *ids;
    int64_t                       *units;
    ngx_uint_t                     i, n, seen;
    ngx_queue_t                   *q, *queue;
    ngx_http_quota_zone_node_t    *qn;
    ngx_http_quota_zone_metric_t  *m;

    units = (int64_t *) &f[NGX_HTTP_QUOTA_FLUSH_BATCH];
    ids = (u_char *) (units + NGX_HTTP_QUOTA_FLUSH_BATCH * z->nmetrics);

    queue = ngx_http_quota_fallback_queue(z);
    n = 0;

    for (seen = 0;
         seen < NGX_HTTP_QUOTA_FLUSH_BATCH && !ngx_queue_empty(queue);
         seen++)
    {
        q = ngx_queue_head(queue);
        qn = ngx_queue_data(q, ngx_http_quota_zone_node_t, fb_queue);

        ngx_queue_remove(q);

        if (qn->sig != z->sig || qn->len > QUOTA_TENANT_MAX) {
            ngx_queue_insert_tail(queue, q);
            continue;
        }

        q->next = NULL;
        q->prev = NULL;

        m = ngx_http_quota_zone_metrics(qn);

        f[n].units = units + n * z->nmetrics;

        for (i = 0; i < qn->nmetrics; i++) {
            f[n].units[i] = m[i].fb_pending;
            m[i].fb_pending = 0;
        }

        f[n].tenant.data = ids + n * QUOTA_TENANT_MAX;
        f[n].tenant.len = qn->len;
        ngx_memcpy(f[n].tenant.data, ngx_http_quota_zone_tenant(qn), qn->len);

        n++;
    }

    /* only nodes of another configuration left: their workers flush them */
    *more = (n != 0 && !ngx_queue_empty(queue));

    return n;
}


/* units left queued (a batch that was full, a worker that quit) */
static void
ngx_http_quota_fallback_flush_handler(ngx_event_t *ev)
{
    ngx_http_quota_probe_t *p = ev->data;

    /* while open, the close charges them */
    if (!quota_breaker_is_open(&p->qmcf->zone->sh->breaker)) {
        ngx_http_quota_fallback_flush(p->qmcf);
    }
}


/* the zone is full: a node whose fallback units are not charged stays */
static ngx_int_t
ngx_http_quota_fallback_evict(ngx_http_quota_zone_t *z,
    ngx_http_quota_zone_node_t *node)
{
    return node->fb_queue.next != NULL ? NGX_DECLINED : NGX_OK;
}


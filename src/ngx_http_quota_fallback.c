
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
 *   a tenant the zone does not know follows quota_failure_mode; so does,
 *   in a location with quota_require_account, a tenant no charge of such
 *   a location has found the account of.
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
 * per tenant and UTC day, the units admitted in fallback, with the charge
 * script in FORCE mode (no checks, never refused) at the clock of the
 * day's last admission, so that they land in the day and the billing
 * period they were admitted in (an outage over midnight or a period's
 * end).  Units of NGX_HTTP_QUOTA_FB_DAYS days wait at most: a tenant with
 * units of two other days waiting is refused (an outage over two
 * midnights).
 *
 * A FORCE is resent, under the same charge id (its record makes a resend
 * a no-op), until Redis answers it: while the record of a first run may
 * still exist, and by a quitting worker (graceful quit, reload) for at
 * most NGX_HTTP_QUOTA_FORCE_QUIT after the quit (a non-cancelable timer
 * keeps it meanwhile).  One that no connection ever took cannot have run:
 * when its worker gives up on it (the quit's horizon, exit) its units go
 * back to the zone, for the next flush of any worker (a reload's new
 * ones).  Forced units stay spent against the share until
 * a snapshot that surely includes them: the reply of a charge sent after
 * the FORCE was answered (ngx_http_quota_zone_learn).
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

/* a FORCE is resent every 100 ms, after 5 s every second: for as long as
   the record of its first run may live, counted from its first send (it
   ran after that; one no connection took yet has no record and waits for
   one, however long Redis is away), and by a quitting worker for at most
   FORCE_QUIT ms after the quit */
#define NGX_HTTP_QUOTA_FORCE_RETRY       100
#define NGX_HTTP_QUOTA_FORCE_SLOW        1000
#define NGX_HTTP_QUOTA_FORCE_FAST_FOR    5000
#define NGX_HTTP_QUOTA_FORCE_KEEP        ((NGX_HTTP_QUOTA_FORCE_RECORD_TTL    \
                                           - 60) * 1000)
#define NGX_HTTP_QUOTA_FORCE_QUIT        50000

#if (NGX_HTTP_QUOTA_FORCE_KEEP >= NGX_HTTP_QUOTA_FORCE_RECORD_TTL * 1000)
#error "a FORCE must not be resent once its record may be gone"
#endif

#define NGX_HTTP_QUOTA_DAY_MS            86400000


/* what the flush charges for one tenant and day, collected under the
   lock */
typedef struct {
    ngx_str_t                    tenant;
    int64_t                     *units;       /* per declared metric */
    int64_t                      at_ms;       /* the day's last admission */
} ngx_http_quota_flush_t;


/* a FORCE until Redis answers it (ngx_alloc'd with its units and id) */
typedef struct ngx_http_quota_force_s  ngx_http_quota_force_t;

struct ngx_http_quota_force_s {
    ngx_http_quota_force_t      *next;        /* the retry list */
    ngx_msec_t                   since;       /* made */
    ngx_msec_t                   sent;        /* first handed to a
                                                 connection */
    unsigned                     went:1;      /* sent is set: it may have
                                                 run */
    int64_t                      at_ms;
    ngx_str_t                    tenant;
    ngx_str_t                    id;          /* the same for every resend */
    int64_t                     *units;
    u_char                       idbuf[NGX_HTTP_QUOTA_CHARGE_ID_LEN];
};


/* this worker's probe */
typedef struct {
    ngx_http_quota_main_conf_t  *qmcf;
    ngx_event_t                  timer;       /* the next probe */
    ngx_event_t                  timeout;     /* the PING's */
    ngx_http_quota_op_t         *op;          /* the PING in flight */
    ngx_event_t                  flush;       /* units admitted while the
                                                 circuit was closed */
    ngx_http_quota_flush_t      *batch;       /* FLUSH_BATCH tenants x
                                                 FB_DAYS, with room for
                                                 their units and ids: sized
                                                 at init */
    ngx_event_t                  retry;       /* FORCEs not answered: not
                                                 cancelable */
    ngx_http_quota_force_t      *retries;     /* to resend */
    ngx_uint_t                   out;         /* FORCEs not answered */
    ngx_uint_t                   retrying;    /* in the retry handler: it
                                                 arms the timer itself */
    ngx_msec_t                   quit_at;
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
static void ngx_http_quota_fallback_queued(ngx_http_quota_main_conf_t *qmcf);
static void ngx_http_quota_fallback_flush(ngx_http_quota_main_conf_t *qmcf);
static ngx_uint_t ngx_http_quota_fallback_collect(ngx_http_quota_zone_t *z,
    ngx_http_quota_flush_t *f, ngx_uint_t *more);
static void ngx_http_quota_fallback_pending(ngx_http_quota_zone_t *z,
    ngx_http_quota_zone_node_t *qn);
static ngx_int_t ngx_http_quota_fallback_day(ngx_http_quota_zone_node_t *qn,
    int64_t ms);
static int64_t ngx_http_quota_fallback_now(void);
static void ngx_http_quota_fallback_send(ngx_http_quota_main_conf_t *qmcf,
    ngx_http_quota_force_t *fc);
static void ngx_http_quota_fallback_forced(void *data, redisReply *reply);
static void ngx_http_quota_fallback_refused(ngx_http_quota_force_t *fc,
    redisReply *reply);
static void ngx_http_quota_fallback_done(ngx_http_quota_main_conf_t *qmcf,
    ngx_http_quota_force_t *fc);
static void ngx_http_quota_fallback_undo(ngx_http_quota_main_conf_t *qmcf,
    ngx_http_quota_force_t *fc);
static void ngx_http_quota_fallback_drop(ngx_http_quota_main_conf_t *qmcf,
    ngx_http_quota_force_t *fc, const char *when);
static void ngx_http_quota_fallback_retry_handler(ngx_event_t *ev);
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

        } else {
            ngx_http_quota_fallback_queued(qmcf);
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

    /* quota_require_account: known only if a charge that asked found the
       account (a snapshot may come from a default-plan charge) */
    if (qn && ctx->conf->require_account && !qn->account) {
        qn = NULL;
    }

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
    int64_t                        at;
    ngx_int_t                      d;
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

    /* with the units of the day the request was admitted */
    at = (int64_t) r->start_sec * 1000 + r->start_msec;
    d = ngx_http_quota_fallback_day(qn, at);

    if (d == NGX_ERROR) {
        /* units of two other days wait: the latest ones take it, billed
           a day late rather than never */
        d = (qn->fb_ms[0] > qn->fb_ms[1]) ? 0 : 1;
        at = qn->fb_ms[d];
    }

    if (delta < -sm->fb_pending[d]) {
        delta = -sm->fb_pending[d];
    }

    if (delta == 0) {
        /* all of it charged already: no day slot, nothing to queue */
        ngx_http_quota_zone_unlock(z);
        return;
    }

    sm->fb_pending[d] += delta;
    sm->fb_spent += delta;

    if (qn->fb_ms[d] < at) {
        qn->fb_ms[d] = at;
    }

    ngx_http_quota_fallback_pending(z, qn);

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
    int64_t                        share, now;
    ngx_int_t                      d;
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

    /* the units wait with those of their UTC day */
    now = ngx_http_quota_fallback_now();
    d = ngx_http_quota_fallback_day(qn, now);

    if (d == NGX_ERROR) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "quota: tenant \"%V\" has fallback units of %d "
                      "other days to charge, refused", &ctx->tenant,
                      NGX_HTTP_QUOTA_FB_DAYS);
        return NGX_ABORT;
    }

    for (i = 0; i < ctx->ncharges; i++) {
        sm = &m[ctx->rule->charges[i].metric];

        /* a newer snapshot: the share starts again from its numbers, but
           units it may not include stay spent: those not charged yet,
           charged and not answered, answered after it went out */
        if (sm->fb_learned != sm->learned) {
            sm->fb_learned = sm->learned;
            sm->fb_spent = sm->fb_pending[0] + sm->fb_pending[1]
                           + sm->fb_forced + sm->fb_done;
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
        sm->fb_pending[d] += ctx->costs[i];
    }

    if (qn->fb_ms[d] < now) {
        qn->fb_ms[d] = now;
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

    /* the flush's batch: tenants x days, their units, their ids (each at
       most QUOTA_TENANT_MAX): what one flush collects always fits */
    p->batch = ngx_palloc(cycle->pool, NGX_HTTP_QUOTA_FLUSH_BATCH
                          * (NGX_HTTP_QUOTA_FB_DAYS
                             * (sizeof(ngx_http_quota_flush_t)
                                + qmcf->zone->nmetrics * sizeof(int64_t))
                             + QUOTA_TENANT_MAX));
    if (p->batch == NULL) {
        return NGX_ERROR;
    }

    /* not cancelable: a quitting worker waits for its FORCEs */
    p->retry.handler = ngx_http_quota_fallback_retry_handler;
    p->retry.data = p;
    p->retry.log = cycle->log;

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
    size_t                   size;
    ngx_uint_t               i, n, more;
    ngx_http_quota_zone_t   *z;
    ngx_http_quota_force_t  *fc;
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
        size = sizeof(ngx_http_quota_force_t)
               + z->nmetrics * sizeof(int64_t) + f[i].tenant.len;

        fc = ngx_alloc(size, ngx_cycle->log);

        if (fc == NULL) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "quota: the fallback charge of tenant \"%V\" "
                          "was not sent to redis", &f[i].tenant);
            continue;
        }

        fc->next = NULL;
        fc->since = ngx_current_msec;
        fc->went = 0;
        fc->at_ms = f[i].at_ms;
        fc->units = (int64_t *) &fc[1];
        ngx_memcpy(fc->units, f[i].units, z->nmetrics * sizeof(int64_t));
        fc->tenant.data = (u_char *) (fc->units + z->nmetrics);
        fc->tenant.len = f[i].tenant.len;
        ngx_memcpy(fc->tenant.data, f[i].tenant.data, f[i].tenant.len);
        fc->id.data = fc->idbuf;
        fc->id.len = 0;

        p->out++;

        ngx_http_quota_fallback_send(qmcf, fc);
    }

    if (n) {
        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      "quota: fallback charges of %ui tenant days sent", n);
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
 * queued tenants into f, one entry per day (they stay spent against the
 * share, now as forced units) and unqueues them; *more: some are left.
 * Nodes of another configuration's metric set (a reload) are left to its
 * workers, moved to the tail, and count against the batch so that a pass
 * stays bounded.
 */
static ngx_uint_t
ngx_http_quota_fallback_collect(ngx_http_quota_zone_t *z,
    ngx_http_quota_flush_t *f, ngx_uint_t *more)
{
    u_char                        *ids;
    int64_t                       *units, any;
    ngx_uint_t                     d, i, n, seen, taken;
    ngx_queue_t                   *q, *queue;
    ngx_http_quota_zone_node_t    *qn;
    ngx_http_quota_zone_metric_t  *m;

    units = (int64_t *) &f[NGX_HTTP_QUOTA_FLUSH_BATCH
                           * NGX_HTTP_QUOTA_FB_DAYS];
    ids = (u_char *) (units + NGX_HTTP_QUOTA_FLUSH_BATCH
                              * NGX_HTTP_QUOTA_FB_DAYS * z->nmetrics);

    queue = ngx_http_quota_fallback_queue(z);
    n = 0;
    taken = 0;

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
        taken++;

        m = ngx_http_quota_zone_metrics(qn);

        ngx_memcpy(ids + seen * QUOTA_TENANT_MAX,
                   ngx_http_quota_zone_tenant(qn), qn->len);

        for (d = 0; d < NGX_HTTP_QUOTA_FB_DAYS; d++) {
            if (qn->fb_ms[d] == 0) {
                continue;
            }

            f[n].units = units + n * z->nmetrics;
            f[n].at_ms = qn->fb_ms[d];
            qn->fb_ms[d] = 0;
            any = 0;

            for (i = 0; i < qn->nmetrics; i++) {
                f[n].units[i] = m[i].fb_pending[d];
                m[i].fb_pending[d] = 0;
                m[i].fb_forced += f[n].units[i];
                any |= f[n].units[i];
            }

            if (any == 0) {
                /* reconciled down to nothing */
                continue;
            }

            f[n].tenant.data = ids + seen * QUOTA_TENANT_MAX;
            f[n].tenant.len = qn->len;

            qn->fb_flight++;
            n++;
        }
    }

    /*
     * Go on while this pass unqueued nodes of this configuration, even if
     * all of them were reconciled down to nothing (n == 0: review 16 R6);
     * only nodes of another configuration left: their workers flush them.
     */
    *more = (taken != 0 && !ngx_queue_empty(queue));

    return n;
}


/*
 * Redis answered with the circuit closed: units queued in the zone that no
 * worker of this one's is about to flush (given back by a worker that quit
 * without sending them) are flushed by this one.  An unlocked read of the
 * queue's head, a hint (the flush takes the lock): the request path of a
 * healthy Redis writes nothing shared.  Nodes of another configuration
 * (a reload) may keep it non-empty: at most one flush per FLUSH_DELAY.
 */
static void
ngx_http_quota_fallback_queued(ngx_http_quota_main_conf_t *qmcf)
{
    ngx_queue_t             *head;
    ngx_http_quota_probe_t  *p;

    p = &ngx_http_quota_probe;

    if (p->qmcf != qmcf || p->flush.timer_set) {
        return;
    }

    head = ((volatile ngx_queue_t *) &qmcf->zone->sh->fb_queue)->next;

    if (head != NULL && head != &qmcf->zone->sh->fb_queue) {
        ngx_add_timer(&p->flush, NGX_HTTP_QUOTA_FLUSH_DELAY);
    }
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


/* the zone is full: a node whose fallback units are not charged (or
   answered) stays */
static ngx_int_t
ngx_http_quota_fallback_evict(ngx_http_quota_zone_t *z,
    ngx_http_quota_zone_node_t *node)
{
    return (node->fb_queue.next != NULL || node->fb_flight != 0)
           ? NGX_DECLINED : NGX_OK;
}



/* under the lock: the slot of qn's waiting units for the UTC day of ms
   (the day's own, else a free one); NGX_ERROR: two other days wait */
static ngx_int_t
ngx_http_quota_fallback_day(ngx_http_quota_zone_node_t *qn, int64_t ms)
{
    ngx_int_t  d, free;

    free = NGX_ERROR;

    for (d = 0; d < NGX_HTTP_QUOTA_FB_DAYS; d++) {
        if (qn->fb_ms[d] == 0) {
            if (free == NGX_ERROR) {
                free = d;
            }

            continue;
        }

        if (qn->fb_ms[d] / NGX_HTTP_QUOTA_DAY_MS == ms / NGX_HTTP_QUOTA_DAY_MS)
        {
            return d;
        }
    }

    return free;
}


/* the gateway's clock, epoch ms (the charge script's ARG_NOW_MS) */
static int64_t
ngx_http_quota_fallback_now(void)
{
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    return (int64_t) tp->sec * 1000 + tp->msec;
}


/* a FORCE out, or into the retry list while no connection is ready */
static void
ngx_http_quota_fallback_send(ngx_http_quota_main_conf_t *qmcf,
    ngx_http_quota_force_t *fc)
{
    ngx_int_t                rc;
    ngx_http_quota_probe_t  *p;

    p = &ngx_http_quota_probe;

    rc = ngx_http_quota_script_force(qmcf, &fc->tenant, fc->units,
                                     fc->at_ms, &fc->id,
                                     ngx_http_quota_fallback_forced, fc);

    if (rc == NGX_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "quota: the fallback charge of tenant \"%V\" was not "
                      "sent to redis", &fc->tenant);
        ngx_http_quota_fallback_done(qmcf, fc);
        return;
    }

    if (rc == NGX_DECLINED) {
        fc->next = p->retries;
        p->retries = fc;

    } else if (!fc->went) {
        /* the horizon runs from here: before, no record of it can exist
           and a resend can never charge twice */
        fc->went = 1;
        fc->sent = ngx_current_msec;
    }

    /* the retry handler arms it after its loop, at its own cadence
       (FORCE_SLOW after FORCE_FAST_FOR): nginx cleared timer_set before
       calling it, so arming here would resend every FORCE_RETRY */
    if (!p->retry.timer_set && !p->retrying) {
        ngx_add_timer(&p->retry, NGX_HTTP_QUOTA_FORCE_RETRY);
    }
}


static void
ngx_http_quota_fallback_forced(void *data, redisReply *reply)
{
    ngx_http_quota_force_t *fc = data;

    ngx_uint_t               anchor;
    ngx_http_quota_probe_t  *p;

    p = &ngx_http_quota_probe;

    if (reply == NULL
        || (reply->type == REDIS_REPLY_ERROR
            && !ngx_http_quota_reply_script_error(reply)))
    {
        /* the connection went away (it may or may not have run), or Redis
           refused it before it ran (BUSY, LOADING, OOM, READONLY, ...:
           nothing was written): the resend under the same id is a no-op
           if it did run */
        if (reply != NULL) {
            ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                          "quota: the fallback charge %V of tenant \"%V\" "
                          "was refused before it ran, sent again: %*s",
                          &fc->id, &fc->tenant,
                          (size_t) reply->len, reply->str);
        }

        fc->next = p->retries;
        p->retries = fc;

        if (!p->retry.timer_set && !p->retrying
            && p->qmcf->worker != NULL)
        {
            ngx_add_timer(&p->retry, NGX_HTTP_QUOTA_FORCE_RETRY);
        }

        return;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        /* the script failed: it checks everything before its first write,
           so it wrote nothing; a resend would fail the same way */
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "quota: the fallback charge %V of tenant \"%V\" "
                      "failed: %*s", &fc->id, &fc->tenant,
                      (size_t) reply->len, reply->str);
    }

    anchor = ngx_http_quota_reply_anchor(reply);

    if (anchor != 0) {
        /* its period keys were named for another billing anchor than the
           account's: nothing was written; sent again, named for it (once
           the worker knows it: a cache that cannot keep it gives up) */
        ngx_http_quota_anchor_learn(&fc->tenant, anchor, ngx_cycle->log);

        if (ngx_http_quota_anchor_guess(&fc->tenant) == anchor) {
            ngx_http_quota_count(p->qmcf, anchor_resends);
            ngx_http_quota_fallback_send(p->qmcf, fc);
            return;
        }

        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "quota: the fallback charge %V of tenant \"%V\" "
                      "was not charged: billing anchor %ui not kept",
                      &fc->id, &fc->tenant, anchor);

    } else if (reply->type == REDIS_REPLY_ARRAY) {
        ngx_http_quota_fallback_refused(fc, reply);
    }

    ngx_http_quota_fallback_done(p->qmcf, fc);
}


/* a FORCE answered with a code other than charged (or voided: a resend
   that found its first run's record) wrote nothing: its units are lost,
   so say so, with what stopped it (review R7) */
static void
ngx_http_quota_fallback_refused(ngx_http_quota_force_t *fc,
    redisReply *reply)
{
    int64_t      code;
    redisReply  *el, *what;

    if (reply->elements < NGX_HTTP_QUOTA_REPLY_METRICS) {
        code = -1;

    } else {
        el = ngx_http_quota_el(reply, NGX_HTTP_QUOTA_REPLY_CODE);
        code = (el->type == REDIS_REPLY_INTEGER) ? el->integer : -1;
    }

    if (code == NGX_HTTP_QUOTA_CODE_CHARGED
        || code == NGX_HTTP_QUOTA_CODE_VOIDED)
    {
        return;
    }

    what = reply->element[reply->elements - 1];

    if (code == NGX_HTTP_QUOTA_CODE_CORRUPT
        && what->type == REDIS_REPLY_STRING)
    {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "quota: the fallback charge %V of tenant \"%V\" "
                      "was not charged: redis holds a value that is not a "
                      "number: key and field \"%*s\"",
                      &fc->id, &fc->tenant, (size_t) what->len, what->str);
        return;
    }

    ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                  "quota: the fallback charge %V of tenant \"%V\" was not "
                  "charged: %s", &fc->id, &fc->tenant,
                  code == NGX_HTTP_QUOTA_CODE_RANGE
                  ? "a counter would pass 2^53 - 1" : "unexpected reply");
}


/*
 * A FORCE answered or given up: its units are no longer in flight.  They
 * stay spent against the share until a snapshot surely includes them: one
 * of a charge sent from now on (ngx_http_quota_zone_learn).  Frees fc.
 */
static void
ngx_http_quota_fallback_done(ngx_http_quota_main_conf_t *qmcf,
    ngx_http_quota_force_t *fc)
{
    ngx_uint_t                     i;
    ngx_http_quota_zone_t         *z;
    ngx_http_quota_zone_node_t    *qn;
    ngx_http_quota_zone_metric_t  *m;

    z = qmcf->zone;

    ngx_http_quota_zone_lock(z);

    qn = ngx_http_quota_zone_node(z, &fc->tenant, 0);

    if (qn && qn->sig == z->sig) {
        m = ngx_http_quota_zone_metrics(qn);

        for (i = 0; i < qn->nmetrics; i++) {
            m[i].fb_forced -= ngx_min(fc->units[i], m[i].fb_forced);
            m[i].fb_done += fc->units[i];
        }

        if (qn->fb_flight) {
            qn->fb_flight--;
        }

        qn->fb_done_ms = ngx_http_quota_fallback_now();
    }

    ngx_http_quota_zone_unlock(z);

    ngx_http_quota_probe.out--;
    ngx_free(fc);
}


/*
 * A FORCE this worker gives up on (a quit, exit, its record's horizon):
 * one no connection ever took cannot have run, its units go back to the
 * zone, charged by the next flush of any worker (the zone outlives a
 * reload); one that may have run is dropped: a resend could charge twice.
 */
static void
ngx_http_quota_fallback_drop(ngx_http_quota_main_conf_t *qmcf,
    ngx_http_quota_force_t *fc, const char *when)
{
    if (!fc->went) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "quota: the fallback charge %V of tenant \"%V\" "
                      "(admitted at %L) never sent to redis, %s: its units "
                      "go back to the zone", &fc->id, &fc->tenant,
                      fc->at_ms, when);
        ngx_http_quota_fallback_undo(qmcf, fc);
        return;
    }

    ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                  "quota: the fallback charge %V of tenant \"%V\" "
                  "(admitted at %L) not answered by redis, %s: its units "
                  "may not be charged", &fc->id, &fc->tenant, fc->at_ms,
                  when);
    ngx_http_quota_fallback_done(qmcf, fc);
}


/*
 * A FORCE that never ran: its units are pending again in the zone for the
 * day they were admitted in (as if collect() had not taken them) and the
 * node is queued for the next flush.  Frees fc.
 */
static void
ngx_http_quota_fallback_undo(ngx_http_quota_main_conf_t *qmcf,
    ngx_http_quota_force_t *fc)
{
    ngx_int_t                      d;
    ngx_uint_t                     i;
    ngx_http_quota_zone_t         *z;
    ngx_http_quota_zone_node_t    *qn;
    ngx_http_quota_zone_metric_t  *m;

    z = qmcf->zone;

    ngx_http_quota_zone_lock(z);

    qn = ngx_http_quota_zone_node(z, &fc->tenant, 0);
    d = NGX_ERROR;

    if (qn && qn->sig == z->sig) {
        d = ngx_http_quota_fallback_day(qn, fc->at_ms);
    }

    if (d == NGX_ERROR) {
        /* two other days wait (or the node is gone): dropped as before */
        ngx_http_quota_zone_unlock(z);

        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "quota: the fallback charge %V of tenant \"%V\" "
                      "(admitted at %L) has no day left in the zone: its "
                      "units are not charged", &fc->id, &fc->tenant,
                      fc->at_ms);
        ngx_http_quota_fallback_done(qmcf, fc);
        return;
    }

    m = ngx_http_quota_zone_metrics(qn);

    for (i = 0; i < qn->nmetrics; i++) {
        m[i].fb_pending[d] += fc->units[i];
        m[i].fb_forced -= ngx_min(fc->units[i], m[i].fb_forced);
    }

    if (qn->fb_ms[d] < fc->at_ms) {
        qn->fb_ms[d] = fc->at_ms;
    }

    if (qn->fb_flight) {
        qn->fb_flight--;
    }

    ngx_http_quota_fallback_pending(z, qn);

    ngx_http_quota_zone_unlock(z);

    ngx_http_quota_probe.out--;
    ngx_free(fc);
}


/* FORCEs without a connection are resent; in flight, waited for */
static void
ngx_http_quota_fallback_retry_handler(ngx_event_t *ev)
{
    ngx_msec_t               now, age, delay;
    ngx_http_quota_force_t  *fc, *list;
    ngx_http_quota_probe_t  *p;

    p = ev->data;
    now = ngx_current_msec;
    delay = NGX_HTTP_QUOTA_FORCE_SLOW;

    if ((ngx_exiting || ngx_terminate) && p->quit_at == 0) {
        p->quit_at = now | 1;
    }

    list = p->retries;
    p->retries = NULL;
    p->retrying = 1;

    while (list) {
        fc = list;
        list = fc->next;
        fc->next = NULL;

        age = now - fc->since;

        if (age < NGX_HTTP_QUOTA_FORCE_FAST_FOR) {
            delay = NGX_HTTP_QUOTA_FORCE_RETRY;
        }

        /* FORCE_KEEP after it was first sent its first run's record may be
           gone: a resend could charge twice */
        if ((fc->went && now - fc->sent > NGX_HTTP_QUOTA_FORCE_KEEP)
            || (p->quit_at
                && (ngx_msec_int_t) (now - p->quit_at)
                   > NGX_HTTP_QUOTA_FORCE_QUIT))
        {
            ngx_http_quota_fallback_drop(p->qmcf, fc, "giving up");
            continue;
        }

        ngx_http_quota_fallback_send(p->qmcf, fc);
    }

    p->retrying = 0;

    if (p->quit_at) {
        /* signed: quit_at may be one more than the clock (| 1) */
        if ((ngx_msec_int_t) (now - p->quit_at) > NGX_HTTP_QUOTA_FORCE_QUIT) {
            /* in flight for too long after the quit: exit without them */
            return;
        }

        delay = NGX_HTTP_QUOTA_FORCE_RETRY;
    }

    if (p->retries == NULL) {
        /* in flight: waited for every 100 ms */
        delay = NGX_HTTP_QUOTA_FORCE_RETRY;
    }

    if (p->out && !ev->timer_set) {
        ngx_add_timer(ev, delay);
    }
}


/* exit_process, after the Redis connections closed: what was not
   answered is lost, and said so */
void
ngx_http_quota_fallback_exit_worker(void)
{
    ngx_http_quota_force_t  *fc;
    ngx_http_quota_probe_t  *p;

    p = &ngx_http_quota_probe;

    if (p->retry.timer_set) {
        ngx_del_timer(&p->retry);
    }

    if (p->flush.timer_set) {
        ngx_del_timer(&p->flush);
    }

    while (p->retries) {
        fc = p->retries;
        p->retries = fc->next;

        ngx_http_quota_fallback_drop(p->qmcf, fc, "before exit");
    }
}

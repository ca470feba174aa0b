
/*
 * quota_live_body (SPEC section 13): live events in the API's own JSON.
 *
 * An event of the events channel names one metric; a template may name
 * every metric of the tenant and its account.  So when an event arrives
 * for a tenant that has templated clients in this worker, the event is
 * copied here and waits for the tenant's usage report: the charge script
 * in report mode, the Redis path of quota_usage (non-blocking, with the
 * quota_redis timeout= timer).  When the report is in, each waiting event
 * is rendered once per templated client (the client's location, template
 * and request variables; the report's numbers) and queued like any frame.
 *
 * Coalescing, per tenant and worker: at most one report in flight.  Events
 * that arrive meanwhile wait for the next one (the report in flight may
 * have run before their charge), which is sent when the first is in.  The
 * events waiting are bounded (NGX_HTTP_QUOTA_LIVE_EVENTS): past the bound
 * an event is merged into a waiting one of the same type, metric and alert
 * type (both would render the same report), else dropped and counted in
 * quota_live_dropped_total.
 *
 * The report runs on a request of its own: a zeroed ngx_http_request_t
 * and ngx_connection_t in the report's pool, with the configuration of a
 * templated client's location and the cycle's log.  It never refers to a
 * client, so a client that goes away while the report is in flight
 * changes nothing for the others; the last templated client to leave
 * frees the state here (the pending operation is detached, the timer and
 * the posted event removed, the pool destroyed).
 *
 * A template is rendered on a copy of the client's request with its own
 * pool and variables, destroyed after the frame is queued: rendering
 * never grows the pool of a connection that lives for hours.
 */


#include "ngx_http_quota_module.h"

#include <yajl/yajl_tree.h>


#define NGX_HTTP_QUOTA_LIVE_EVENTS  64        /* waiting, per tenant */
#define NGX_HTTP_QUOTA_LIVE_REPORT  32        /* served by one report */


struct ngx_http_quota_live_fetch_s {
    void                        *tenant;      /* live.c's, for the fan-out */
    ngx_str_t                    tenant_id;   /* the tenant node's bytes */

    /* a templated client's location: the report's configuration */
    void                       **main_conf;
    void                       **srv_conf;
    void                       **loc_conf;
    unsigned                     daily:1;     /* a client's template names
                                                 $quota_daily_* */

    ngx_pool_t                  *pool;        /* the report's; NULL: idle */
    ngx_http_quota_ctx_t         ctx;         /* its Redis part */

    ngx_uint_t                   nsent;       /* events[0, nsent): the
                                                 report in flight's */
    ngx_uint_t                   nevents;
    ngx_http_quota_event_t       events[NGX_HTTP_QUOTA_LIVE_EVENTS];
};


static ngx_int_t ngx_http_quota_live_body_parse(ngx_http_quota_main_conf_t
    *qmcf, yajl_val root, ngx_http_quota_event_t *e);
static void ngx_http_quota_live_body_add(ngx_http_quota_live_fetch_t *f,
    ngx_http_quota_main_conf_t *qmcf, ngx_http_quota_event_t *e);
static ngx_int_t ngx_http_quota_live_body_start(
    ngx_http_quota_live_fetch_t *f);
static ngx_http_request_t *ngx_http_quota_live_body_request(
    ngx_http_quota_live_fetch_t *f);
static ngx_int_t ngx_http_quota_live_body_build(ngx_http_request_t *r,
    void *data, redisReply *reply);
static void ngx_http_quota_live_body_wake(ngx_event_t *ev);
static void ngx_http_quota_live_body_timeout(ngx_event_t *ev);
static void ngx_http_quota_live_body_done(ngx_http_quota_live_fetch_t *f);
static void ngx_http_quota_live_body_lost(ngx_http_quota_live_fetch_t *f,
    ngx_uint_t n, const char *why);


/*
 * An event for a tenant with templated clients (r is one of them; daily:
 * one of their templates names $quota_daily_*): kept until a report is
 * in.  The caller's fetch pointer is the tenant's.
 */
ngx_int_t
ngx_http_quota_live_body_event(ngx_http_quota_live_fetch_t **fetch,
    void *tenant, ngx_str_t *tenant_id, ngx_http_request_t *r,
    ngx_uint_t daily, void *event)
{
    ngx_http_quota_event_t        e;
    ngx_http_quota_live_fetch_t  *f;
    ngx_http_quota_main_conf_t   *qmcf;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);

    if (ngx_http_quota_live_body_parse(qmcf, event, &e) != NGX_OK) {
        return NGX_DECLINED;
    }

    f = *fetch;

    if (f == NULL) {
        f = ngx_alloc(sizeof(ngx_http_quota_live_fetch_t), ngx_cycle->log);
        if (f == NULL) {
            return NGX_ERROR;
        }

        ngx_memzero(f, offsetof(ngx_http_quota_live_fetch_t, events));

        f->tenant = tenant;
        f->tenant_id = *tenant_id;
        f->main_conf = r->main_conf;
        f->srv_conf = r->srv_conf;
        f->loc_conf = r->loc_conf;

        *fetch = f;
    }

    /* the next report reads the daily counters if a client needs them */
    f->daily = daily;

    ngx_http_quota_live_body_add(f, qmcf, &e);

    if (f->pool == NULL) {
        return ngx_http_quota_live_body_start(f);
    }

    return NGX_OK;
}


/* the message's type, metric, numbers and words, checked */
static ngx_int_t
ngx_http_quota_live_body_parse(ngx_http_quota_main_conf_t *qmcf,
    yajl_val root, ngx_http_quota_event_t *e)
{
    size_t      len;
    yajl_val    v;
    ngx_str_t   s;
    const char *text;

    static const char  *type_path[] = { "type", NULL };
    static const char  *metric_path[] = { "metric", NULL };
    static const char  *used_path[] = { "used", NULL };
    static const char  *limit_path[] = { "limit", NULL };
    static const char  *alert_path[] = { "alert_type", NULL };
    static const char  *ts_path[] = { "timestamp", NULL };

    v = yajl_tree_get(root, type_path, yajl_t_string);
    text = v ? v->u.string : "";

    if (ngx_strcmp(text, "usage_update") == 0) {
        e->type = NGX_HTTP_QUOTA_EVENT_USAGE;

    } else if (ngx_strcmp(text, "alert") == 0) {
        e->type = NGX_HTTP_QUOTA_EVENT_ALERT;

    } else {
        return NGX_DECLINED;
    }

    e->metric = -1;

    v = yajl_tree_get(root, metric_path, yajl_t_string);
    if (v) {
        s.data = (u_char *) v->u.string;
        s.len = ngx_strlen(s.data);
        e->metric = ngx_http_quota_metric_index(qmcf, &s);
    }

    v = yajl_tree_get(root, used_path, yajl_t_number);
    e->used = (v && YAJL_IS_INTEGER(v)) ? YAJL_GET_INTEGER(v) : 0;

    v = yajl_tree_get(root, limit_path, yajl_t_number);
    e->limit = (v && YAJL_IS_INTEGER(v)) ? YAJL_GET_INTEGER(v) : -1;

    e->alert_type_len = 0;
    e->timestamp_len = 0;

    v = yajl_tree_get(root, alert_path, yajl_t_string);
    if (v) {
        len = ngx_strlen(v->u.string);
        if (len > NGX_HTTP_QUOTA_EVENT_WORD) {
            return NGX_DECLINED;
        }

        ngx_memcpy(e->alert_type, v->u.string, len);
        e->alert_type_len = len;
    }

    v = yajl_tree_get(root, ts_path, yajl_t_string);
    if (v) {
        len = ngx_strlen(v->u.string);
        if (len > NGX_HTTP_QUOTA_EVENT_WORD) {
            return NGX_DECLINED;
        }

        ngx_memcpy(e->timestamp, v->u.string, len);
        e->timestamp_len = len;
    }

    return NGX_OK;
}


/* appended, or merged into a waiting twin when full, or dropped */
static void
ngx_http_quota_live_body_add(ngx_http_quota_live_fetch_t *f,
    ngx_http_quota_main_conf_t *qmcf, ngx_http_quota_event_t *e)
{
    ngx_uint_t               i;
    ngx_http_quota_event_t  *w;

    if (f->nevents < NGX_HTTP_QUOTA_LIVE_EVENTS) {
        f->events[f->nevents++] = *e;
        return;
    }

    /* only among the waiting: the report in flight may predate e */
    for (i = f->nevents; i > f->nsent; i--) {
        w = &f->events[i - 1];

        if (w->type == e->type && w->metric == e->metric
            && w->alert_type_len == e->alert_type_len
            && ngx_memcmp(w->alert_type, e->alert_type, e->alert_type_len)
               == 0)
        {
            *w = *e;
            return;
        }
    }

    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                  "quota: %ui live events wait for a usage report, "
                  "one dropped", f->nevents);

    if (qmcf->stats) {
        (void) ngx_atomic_fetch_add(&qmcf->stats->live_dropped, 1);
    }
}


/* the report for the events waiting now (at most a batch of them) */
static ngx_int_t
ngx_http_quota_live_body_start(ngx_http_quota_live_fetch_t *f)
{
    ngx_int_t                    rc;
    ngx_http_request_t          *r;
    ngx_http_quota_ctx_t        *ctx;
    ngx_http_quota_main_conf_t  *qmcf;

    while (f->nevents) {

        r = ngx_http_quota_live_body_request(f);
        if (r == NULL) {
            ngx_http_quota_live_body_lost(f, f->nevents, "no memory");
            f->nevents = 0;
            return NGX_ERROR;
        }

        qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);

        ctx = &f->ctx;
        ngx_memzero(ctx, sizeof(ngx_http_quota_ctx_t));

        ctx->request = r;
        ctx->state = NGX_HTTP_QUOTA_CTX_FINISHED;
        ctx->tenant = f->tenant_id;
        ctx->rule = &qmcf->report_rule;
        ctx->ncharges = qmcf->report_rule.ncharges;
        ctx->report = f->daily ? 2 : 1;
        ctx->build = ngx_http_quota_live_body_build;

        ctx->timeout.handler = ngx_http_quota_live_body_timeout;
        ctx->timeout.data = f;
        ctx->timeout.log = ngx_cycle->log;

        ctx->wake.handler = ngx_http_quota_live_body_wake;
        ctx->wake.data = f;
        ctx->wake.log = ngx_cycle->log;

        f->nsent = ngx_min(f->nevents, NGX_HTTP_QUOTA_LIVE_REPORT);

        rc = ngx_http_quota_script_charge(r, ctx);

        if (rc == NGX_OK) {
            ctx->state = NGX_HTTP_QUOTA_CTX_WAITING;
            ngx_add_timer(&ctx->timeout, qmcf->redis_timeout);
            return NGX_OK;
        }

        /* no connection ready: these events are lost, try the rest */
        ngx_http_quota_live_body_lost(f, f->nsent, rc == NGX_DECLINED
                                      ? "redis unavailable"
                                      : "cannot send the report");
        ngx_destroy_pool(f->pool);
        f->pool = NULL;

        ngx_memmove(f->events, f->events + f->nsent,
                    (f->nevents - f->nsent) * sizeof(ngx_http_quota_event_t));
        f->nevents -= f->nsent;
        f->nsent = 0;
    }

    return NGX_OK;
}


/*
 * The report's own request: only its pool, its configuration and a log
 * are read by the script's argv building and the reply's decoding.
 */
static ngx_http_request_t *
ngx_http_quota_live_body_request(ngx_http_quota_live_fetch_t *f)
{
    ngx_pool_t                 *pool;
    ngx_connection_t           *c;
    ngx_http_request_t         *r;
    ngx_http_core_main_conf_t  *cmcf;

    pool = ngx_create_pool(2048, ngx_cycle->log);
    if (pool == NULL) {
        return NULL;
    }

    c = ngx_pcalloc(pool, sizeof(ngx_connection_t));
    r = ngx_pcalloc(pool, sizeof(ngx_http_request_t));
    if (c == NULL || r == NULL) {
        goto failed;
    }

    c->fd = (ngx_socket_t) -1;
    c->pool = pool;
    c->log = ngx_cycle->log;
    c->data = r;

    r->signature = NGX_HTTP_MODULE;
    r->connection = c;
    r->pool = pool;
    r->main = r;
    r->count = 1;
    r->main_conf = f->main_conf;
    r->srv_conf = f->srv_conf;
    r->loc_conf = f->loc_conf;

    r->ctx = ngx_pcalloc(pool, sizeof(void *) * ngx_http_max_module);

    cmcf = ngx_http_get_module_main_conf(r, ngx_http_core_module);
    r->variables = ngx_pcalloc(pool, cmcf->variables.nelts
                                     * sizeof(ngx_http_variable_value_t));

    if (r->ctx == NULL || r->variables == NULL) {
        goto failed;
    }

    f->pool = pool;

    return r;

failed:

    ngx_destroy_pool(pool);
    return NULL;
}


/*
 * In the Redis callback (the reply is freed after it): every event of the
 * batch, rendered for every templated client.  Frames are only queued.
 */
static ngx_int_t
ngx_http_quota_live_body_build(ngx_http_request_t *r, void *data,
    redisReply *reply)
{
    ngx_http_quota_ctx_t  *ctx = data;

    ngx_uint_t                    i;
    ngx_pool_t                   *pool;
    ngx_http_quota_view_t         view;
    ngx_http_quota_report_t       rep;
    ngx_http_quota_live_fetch_t  *f;

    f = (ngx_http_quota_live_fetch_t *)
            ((u_char *) ctx - offsetof(ngx_http_quota_live_fetch_t, ctx));

    if (ctx->code == NGX_HTTP_QUOTA_CODE_UNKNOWN) {
        /* quota_require_account and the account is gone: nothing to show */
        ngx_http_quota_live_body_lost(f, f->nsent, "unknown tenant");
        return NGX_OK;
    }

    if (ngx_http_quota_report_decode(r, ctx, reply, &rep) != NGX_OK) {
        return NGX_ERROR;
    }

    pool = ngx_create_pool(4096, ngx_cycle->log);
    if (pool == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(&view, sizeof(ngx_http_quota_view_t));
    view.ctx = ctx;
    view.report = &rep;

    for (i = 0; i < f->nsent; i++) {
        view.event = &f->events[i];

        ngx_http_quota_live_fanout(f->tenant, &view, pool);

        ngx_reset_pool(pool);
    }

    ngx_destroy_pool(pool);

    return NGX_OK;
}


static void
ngx_http_quota_live_body_wake(ngx_event_t *ev)
{
    ngx_http_quota_live_fetch_t  *f = ev->data;

    if (f->ctx.redis_failed) {
        ngx_http_quota_live_body_lost(f, f->nsent, "the report failed");
    }

    ngx_http_quota_live_body_done(f);
}


static void
ngx_http_quota_live_body_timeout(ngx_event_t *ev)
{
    ngx_http_quota_live_fetch_t  *f = ev->data;

    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = ngx_http_get_module_main_conf(f->ctx.request,
                                         ngx_http_quota_module);

    ngx_log_error(NGX_LOG_ERR, ev->log, 0,
                  "quota: redis did not answer within %Mms",
                  qmcf->redis_timeout);

    ngx_http_quota_count(qmcf, errors[NGX_HTTP_QUOTA_ERR_TIMEOUT]);

    /* read only: its reply, if it comes, is dropped */
    if (f->ctx.op) {
        ngx_http_quota_redis_timed_out(f->ctx.op);
        f->ctx.op = NULL;
    }

    ngx_http_quota_live_body_lost(f, f->nsent, "the report timed out");

    ngx_http_quota_live_body_done(f);
}


/* the batch is served: the report's request goes, the next one starts */
static void
ngx_http_quota_live_body_done(ngx_http_quota_live_fetch_t *f)
{
    if (f->pool) {
        ngx_destroy_pool(f->pool);
        f->pool = NULL;
    }

    f->ctx.request = NULL;

    ngx_memmove(f->events, f->events + f->nsent,
                (f->nevents - f->nsent) * sizeof(ngx_http_quota_event_t));
    f->nevents -= f->nsent;
    f->nsent = 0;

    (void) ngx_http_quota_live_body_start(f);
}


/* events that templated clients will not see: logged and counted */
static void
ngx_http_quota_live_body_lost(ngx_http_quota_live_fetch_t *f, ngx_uint_t n,
    const char *why)
{
    ngx_http_quota_main_conf_t  *qmcf;

    if (n == 0) {
        return;
    }

    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                  "quota: %ui live events not sent to quota_live_body "
                  "clients: %s", n, why);

    qmcf = f->main_conf[ngx_http_quota_module.ctx_index];

    if (qmcf->stats) {
        (void) ngx_atomic_fetch_add(&qmcf->stats->live_dropped, n);
    }
}


/* the tenant's last templated client left: nothing stays behind */
void
ngx_http_quota_live_body_free(ngx_http_quota_live_fetch_t *f)
{
    if (f->ctx.op) {
        ngx_http_quota_redis_detach(f->ctx.op);
        f->ctx.op = NULL;
    }

    if (f->ctx.timeout.timer_set) {
        ngx_del_timer(&f->ctx.timeout);
    }

    if (f->ctx.wake.posted) {
        ngx_delete_posted_event(&f->ctx.wake);
    }

    if (f->pool) {
        ngx_destroy_pool(f->pool);
    }

    ngx_free(f);
}


/*
 * One frame for one client: tpl rendered on a copy of its request whose
 * pool and variables are pool's (reset by the caller), so that rendering
 * leaves nothing in the request of a long-lived connection.  NGX_DECLINED:
 * not valid JSON (logged with the template's file:line), not to be sent.
 */
ngx_int_t
ngx_http_quota_live_body_render(ngx_http_request_t *r,
    ngx_http_quota_body_tpl_t *tpl, ngx_http_quota_view_t *view,
    ngx_pool_t *pool, ngx_str_t *body)
{
    u_char                     *p, *last;
    ngx_int_t                   rc;
    ngx_http_request_t         *rt;
    ngx_http_core_main_conf_t  *cmcf;

    rt = ngx_palloc(pool, sizeof(ngx_http_request_t));
    if (rt == NULL) {
        return NGX_ERROR;
    }

    *rt = *r;

    rt->pool = pool;
    rt->main = rt;

    cmcf = ngx_http_get_module_main_conf(r, ngx_http_core_module);

    rt->variables = ngx_pcalloc(pool, cmcf->variables.nelts
                                      * sizeof(ngx_http_variable_value_t));
    if (rt->variables == NULL) {
        return NGX_ERROR;
    }

    rc = ngx_http_quota_render(rt, tpl, view, body);

    if (rc != NGX_OK) {
        return rc;
    }

    /*
     * Valid JSON has CR and LF only between tokens (in strings they are
     * escaped): as spaces they keep the document and make it one line,
     * which an SSE "data:" line needs (a template may span lines).
     */
    if (tpl->value.lengths == NULL) {
        /* no variable: the text is the configuration's, copy it first */
        p = ngx_pnalloc(pool, body->len);
        if (p == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(p, body->data, body->len);
        body->data = p;
    }

    for (p = body->data, last = p + body->len; p < last; p++) {
        if (*p == LF || *p == CR) {
            *p = ' ';
        }
    }

    return NGX_OK;
}


/*
 * The per-worker pool of Redis connections and the calls the rest of the
 * module makes (ngx_http_quota_module.h).
 *
 * Each worker keeps quota_redis pool=N persistent connections, owned by
 * nginx (ngx_http_quota_redis_conn.c); hiredis only encodes commands
 * (redisFormatCommandArgv) and parses replies (redisReader).  Commands of
 * all requests are pipelined, round robin over the connections that are
 * ready; each connection keeps a FIFO of ops, and replies come back in that
 * order.
 *
 * A command is only ever given to a ready connection (its handshake done):
 * while none is ready, ngx_http_quota_redis_send() returns NULL and the
 * caller applies quota_failure_mode at once.  A connection that cannot take
 * a command (over its caps) is skipped for the next one.  The one exception
 * is a worker's first connection attempt (a reload must not refuse the
 * requests of the first milliseconds): until a connection is ready, an
 * attempt fails or connect_timeout= passes, commands are held in the
 * worker (never written anywhere) and go out when one is ready; a held
 * command whose request gave up (its own timeout=) is dropped unsent.
 *
 * Nothing is ever resent after a timeout or a disconnect: the script may
 * have run, and running it again would charge twice.  The exception is
 * what callers mark reliable (voids, slot releases): idempotent commands,
 * kept in a bounded per-worker queue while no connection is ready, and
 * resent when the connection that carried them is lost, for at most
 * NGX_HTTP_QUOTA_RELIABLE_HORIZON seconds (protocol.def): the record that
 * makes a void mean something (its charge's, RECORD_TTL) lives that long
 * and a minute more, so a later void could undo nothing.  Commands whose
 * records live longer resend themselves with a reply handler, each for
 * as long as its own record lives (a lease's settle, ngx_http_quota_lease.c;
 * a forced charge, ngx_http_quota_fallback.c).  A quitting worker waits
 * for its reliable commands (ngx_http_quota_redis_reliable_wait()).
 */


#include "ngx_http_quota_redis.h"


/* a void is resent only while its charge's record may exist */
#if (NGX_HTTP_QUOTA_RELIABLE_HORIZON >= NGX_HTTP_QUOTA_RECORD_TTL)
#error "RELIABLE_HORIZON must be shorter than RECORD_TTL"
#endif


static ngx_http_quota_redis_conn_t *ngx_http_quota_redis_pick(
    ngx_http_quota_worker_t *w, size_t len, ngx_uint_t affinity,
    ngx_uint_t route);
static void ngx_http_quota_redis_keep_copy(ngx_http_quota_worker_t *w,
    ngx_http_quota_op_t *op, ngx_str_t *cmd);
static ngx_int_t ngx_http_quota_redis_format(ngx_http_quota_worker_t *w,
    int argc, const char **argv, const size_t *argvlen, ngx_str_t *cmd);
static ngx_int_t ngx_http_quota_redis_reliable_on(
    ngx_http_quota_redis_conn_t *rc, u_char *cmd, size_t len,
    ngx_uint_t route, time_t since);
static ngx_int_t ngx_http_quota_redis_too_late(ngx_http_quota_worker_t *w,
    u_char *cmd, size_t len, time_t since);
static void ngx_http_quota_redis_flush_reliable(ngx_http_quota_worker_t *w);
static void ngx_http_quota_redis_wait_arm(ngx_http_quota_worker_t *w);
static void ngx_http_quota_redis_reliable_wait(ngx_event_t *ev);
static void ngx_http_quota_redis_oneway_reply(
    ngx_http_quota_redis_conn_t *rc, ngx_http_quota_op_t *op,
    redisReply *reply);
static ngx_http_quota_op_t *ngx_http_quota_redis_hold(
    ngx_http_quota_worker_t *w, ngx_str_t *cmd);
static void ngx_http_quota_redis_release_held(ngx_http_quota_worker_t *w);
static void ngx_http_quota_redis_fail_held(ngx_http_quota_worker_t *w);
static void ngx_http_quota_redis_hold_handler(ngx_event_t *ev);


ngx_int_t
ngx_http_quota_redis_init_worker(ngx_cycle_t *cycle,
    ngx_http_quota_main_conf_t *qmcf)
{
    ngx_uint_t                i;
    ngx_http_quota_worker_t  *w;

    w = ngx_pcalloc(cycle->pool, sizeof(ngx_http_quota_worker_t));
    if (w == NULL) {
        return NGX_ERROR;
    }

    w->qmcf = qmcf;
    w->log = cycle->log;
    w->nconns = qmcf->redis_pool;

    if (qmcf->redis_cluster) {
        /* a pool per master, used as the masters are learned */
        w->nconns *= NGX_HTTP_QUOTA_CLUSTER_MAX_NODES;
    }

    /* a reply later than this, with commands waiting, means a dead peer */
    w->dead_after = ngx_max(qmcf->redis_connect_timeout,
                            NGX_HTTP_QUOTA_DEAD_FACTOR * qmcf->redis_timeout);

    w->hold_until = ngx_current_msec + qmcf->redis_connect_timeout;
    w->hold_timer.handler = ngx_http_quota_redis_hold_handler;
    w->hold_timer.data = w;
    w->hold_timer.log = w->log;
    w->hold_timer.cancelable = 1;

    /* not cancelable: see ngx_http_quota_redis_reliable_wait() */
    w->reliable_wait.handler = ngx_http_quota_redis_reliable_wait;
    w->reliable_wait.data = w;
    w->reliable_wait.log = w->log;

    w->conns = ngx_pcalloc(cycle->pool,
                           w->nconns * sizeof(ngx_http_quota_redis_conn_t));
    if (w->conns == NULL) {
        return NGX_ERROR;
    }

    qmcf->worker = w;

    for (i = 0; i < w->nconns; i++) {
        ngx_http_quota_redis_conn_init(&w->conns[i], w, i);

        /* with sentinels: connects once the master is named; in a
           cluster, once CLUSTER SLOTS names the masters */
        w->conns[i].addr = (qmcf->redis_sentinels || qmcf->redis_cluster)
                           ? NULL : &qmcf->redis_addr;

        ngx_http_quota_redis_connect(&w->conns[i]);
    }

    if (qmcf->live && ngx_http_quota_redis_live_init(w) != NGX_OK) {
        return NGX_ERROR;
    }

    if (qmcf->redis_sentinels) {
        return ngx_http_quota_redis_sentinel_init(w);
    }

    if (qmcf->redis_cluster) {
        return ngx_http_quota_redis_cluster_init(w);
    }

    return NGX_OK;
}


void
ngx_http_quota_redis_exit_worker(ngx_http_quota_main_conf_t *qmcf)
{
    ngx_uint_t                   i;
    ngx_http_quota_op_t         *op;
    ngx_http_quota_worker_t     *w;
    ngx_http_quota_redis_cmd_t  *cmd;

    w = qmcf->worker;
    w->exiting = 1;

    if (w->reliable_wait.timer_set) {
        ngx_del_timer(&w->reliable_wait);
    }

    for (i = 0; i < w->nconns; i++) {
        /* waiting ops get a NULL reply and return to the free list */
        ngx_http_quota_redis_close(&w->conns[i], 0);
    }

    if (w->sentinel) {
        ngx_http_quota_redis_close(w->sentinel, 0);
    }

    if (w->live) {
        ngx_http_quota_redis_close(w->live, 0);
    }

    if (w->control) {
        ngx_http_quota_redis_close(w->control, 0);
    }

    ngx_http_quota_redis_fail_held(w);

    if (w->parked) {
        /* every connection is closed: each parked op fails */
        ngx_http_quota_redis_cluster_unpark(w);
    }

    if (w->again) {
        /* and so does each op waiting to be sent again (TRYAGAIN) */
        ngx_http_quota_redis_cluster_retry(w);
    }

    if (w->nreliable) {
        ngx_log_error(NGX_LOG_WARN, w->log, 0,
                      "quota: %ui redis commands not sent at exit",
                      w->nreliable);
    }

    while (w->reliable) {
        cmd = w->reliable;
        w->reliable = cmd->next;
        ngx_free(cmd);
    }

    while (w->free_ops) {
        op = w->free_ops;
        w->free_ops = op->next;
        ngx_free(op);
    }

    qmcf->worker = NULL;
}


ngx_http_quota_op_t *
ngx_http_quota_redis_send(ngx_http_quota_main_conf_t *qmcf, int argc,
    const char **argv, const size_t *argvlen, ngx_http_quota_reply_pt handler,
    void *data)
{
    ngx_str_t                     cmd;
    ngx_uint_t                    affinity, route;
    ngx_http_quota_op_t          *op;
    ngx_http_quota_worker_t      *w;
    ngx_http_quota_redis_conn_t  *rc;

    w = qmcf->worker;

    if (w == NULL || w->exiting) {
        return NULL;
    }

    if (ngx_http_quota_redis_format(w, argc, argv, argvlen, &cmd) != NGX_OK) {
        return NULL;
    }

    op = NULL;
    route = ngx_http_quota_redis_route(w, argc, argv, argvlen, &affinity);
    rc = ngx_http_quota_redis_pick(w, cmd.len, affinity, route);

    if (rc != NULL) {
        op = ngx_http_quota_redis_op_alloc(w);

    } else if (!w->ever_ready
               && (ngx_msec_int_t) (w->hold_until - ngx_current_msec) > 0)
    {
        op = ngx_http_quota_redis_hold(w, &cmd);

    } else {
        /* a cluster master just learned, still connecting */
        op = ngx_http_quota_redis_cluster_wait(w, &cmd, route);
    }

    if (rc == NULL && op != NULL) {
        /* held or parked: sent once a connection is ready */
        op->route = route;
        op->handler = handler;
        op->data = data;
        op->sent_us = qmcf->stats ? ngx_http_quota_now_us() : 0;

        redisFreeCommand((char *) cmd.data);
        ngx_http_quota_count(qmcf, inflight);
        return op;
    }

    if (op == NULL) {
        redisFreeCommand((char *) cmd.data);
        ngx_http_quota_count(qmcf, errors[NGX_HTTP_QUOTA_ERR_UNAVAILABLE]);
        return NULL;
    }

    op->kind = NGX_HTTP_QUOTA_OP_REPLY;
    op->route = route;
    op->handler = handler;
    op->data = data;
    op->sent_us = qmcf->stats ? ngx_http_quota_now_us() : 0;

    if (ngx_http_quota_redis_append(rc, op, cmd.data, cmd.len) != NGX_OK) {
        redisFreeCommand((char *) cmd.data);
        ngx_http_quota_redis_op_free(w, op);
        ngx_http_quota_count(qmcf, errors[NGX_HTTP_QUOTA_ERR_UNAVAILABLE]);
        return NULL;
    }

    ngx_http_quota_redis_keep_copy(w, op, &cmd);

    redisFreeCommand((char *) cmd.data);

    ngx_http_quota_count(qmcf, inflight);

    return op;
}


/* a command nobody waits for (reconciles): bounded, never resent */
ngx_int_t
ngx_http_quota_redis_send_oneway(ngx_http_quota_main_conf_t *qmcf, int argc,
    const char **argv, const size_t *argvlen)
{
    ngx_int_t                     rv;
    ngx_str_t                     cmd;
    ngx_uint_t                    affinity, route;
    ngx_http_quota_op_t          *op;
    ngx_http_quota_worker_t      *w;
    ngx_http_quota_redis_conn_t  *rc;

    w = qmcf->worker;

    if (w == NULL || w->exiting) {
        return NGX_ERROR;
    }

    if (ngx_http_quota_redis_format(w, argc, argv, argvlen, &cmd) != NGX_OK) {
        return NGX_ERROR;
    }

    rv = NGX_ERROR;
    route = ngx_http_quota_redis_route(w, argc, argv, argvlen, &affinity);
    rc = ngx_http_quota_redis_pick(w, cmd.len, affinity, route);

    if (rc != NULL) {
        op = ngx_http_quota_redis_op_alloc(w);

        if (op != NULL) {
            op->kind = NGX_HTTP_QUOTA_OP_ONEWAY;
            op->route = route;
            rv = ngx_http_quota_redis_append(rc, op, cmd.data, cmd.len);

            if (rv != NGX_OK) {
                ngx_http_quota_redis_op_free(w, op);

            } else {
                ngx_http_quota_redis_keep_copy(w, op, &cmd);
            }
        }
    }

    redisFreeCommand((char *) cmd.data);

    return rv;
}


/* an idempotent command that must reach Redis: now, or once one is ready */
ngx_int_t
ngx_http_quota_redis_send_reliable(ngx_http_quota_main_conf_t *qmcf,
    int argc, const char **argv, const size_t *argvlen)
{
    ngx_int_t                     rv;
    ngx_str_t                     cmd;
    ngx_uint_t                    affinity, route;
    ngx_http_quota_worker_t      *w;
    ngx_http_quota_redis_conn_t  *rc;

    w = qmcf->worker;

    if (w == NULL || w->exiting) {
        return NGX_ERROR;
    }

    if (ngx_http_quota_redis_format(w, argc, argv, argvlen, &cmd) != NGX_OK) {
        return NGX_ERROR;
    }

    route = ngx_http_quota_redis_route(w, argc, argv, argvlen, &affinity);
    rc = ngx_http_quota_redis_pick(w, cmd.len, affinity, route);

    if (rc == NULL
        || ngx_http_quota_redis_reliable_on(rc, cmd.data, cmd.len, route,
                                            ngx_time())
           != NGX_OK)
    {
        rv = ngx_http_quota_redis_keep(w, cmd.data, cmd.len, route,
                                       ngx_time());

    } else {
        ngx_http_quota_redis_write_now(rc);
        rv = NGX_OK;
    }

    redisFreeCommand((char *) cmd.data);

    return rv;
}


void
ngx_http_quota_redis_detach(ngx_http_quota_op_t *op)
{
    /* the reply, when it comes, only returns the op to the free list */
    op->handler = NULL;
    op->data = NULL;
}


/*
 * A request gave up waiting.  That alone says nothing about the connection:
 * one slow reply (a fork, a slow command, DEBUG SLEEP) must not fail every
 * other request in flight.  The dead-peer rule of the connection itself
 * (ngx_http_quota_redis_conn.c) decides when it is really gone.
 */
void
ngx_http_quota_redis_timed_out(ngx_http_quota_op_t *op)
{
    if (op->conn) {
        /* sent (not held): its server's; the caller counted the total */
        ngx_http_quota_redis_server_error(op->conn,
                                          NGX_HTTP_QUOTA_ERR_TIMEOUT);
    }

    ngx_http_quota_redis_detach(op);
}


/*
 * The request no longer waits for op, whose outcome is unknown: the undo
 * goes right behind it on the same connection while that one is up (Redis
 * runs them in this order), else into the queue of commands that must
 * reach Redis.
 */
void
ngx_http_quota_redis_cancel(ngx_http_quota_op_t *op, int argc,
    const char **argv, const size_t *argvlen)
{
    ngx_str_t                     cmd;
    ngx_uint_t                    affinity, route;
    ngx_http_quota_worker_t      *w;
    ngx_http_quota_redis_conn_t  *rc;

    rc = op->conn;

    ngx_http_quota_redis_detach(op);

    if (argc == 0 || rc == NULL) {
        /* rc == NULL: held, never sent, nothing to undo */
        return;
    }

    w = rc->worker;

    if (w->exiting) {
        return;
    }

    if (ngx_http_quota_redis_format(w, argc, argv, argvlen, &cmd) != NGX_OK) {
        return;
    }

    route = ngx_http_quota_redis_route(w, argc, argv, argvlen, &affinity);

    if (rc->state != NGX_HTTP_QUOTA_REDIS_READY
        || ngx_http_quota_redis_reliable_on(rc, cmd.data, cmd.len, route,
                                            ngx_time())
           != NGX_OK)
    {
        (void) ngx_http_quota_redis_keep(w, cmd.data, cmd.len, route,
                                         ngx_time());
    }

    redisFreeCommand((char *) cmd.data);
}


/* a reply (or NULL: the connection is gone) for an op out of the FIFO */
void
ngx_http_quota_redis_dispatch(ngx_http_quota_redis_conn_t *rc,
    ngx_http_quota_op_t *op, redisReply *reply)
{
    void                        *data;
    uint64_t                     us;
    ngx_http_quota_worker_t     *w;
    ngx_http_quota_reply_pt      handler;
    ngx_http_quota_main_conf_t  *qmcf;

    w = rc->worker;
    qmcf = w->qmcf;

    if (op->kind != NGX_HTTP_QUOTA_OP_REPLY) {
        ngx_http_quota_redis_oneway_reply(rc, op, reply);
        return;
    }

    if (qmcf->stats) {
        (void) ngx_atomic_fetch_add(&qmcf->stats->inflight, -1);

        if (reply != NULL) {
            us = ngx_http_quota_now_us() - op->sent_us;
            ngx_http_quota_stats_latency(qmcf->stats, us);
            ngx_http_quota_redis_stats_latency(rc, us);
        }
    }

    if (reply != NULL && reply->type == REDIS_REPLY_ERROR
        && !ngx_http_quota_reply_is_noscript(reply))
    {
        /* the caller counts the total (it also counts malformed replies);
           NOSCRIPT is answered by EVAL, not a failure */
        ngx_http_quota_redis_server_error(rc, NGX_HTTP_QUOTA_ERR_REPLY);
    }

    handler = op->handler;
    data = op->data;

    /* free first: the handler may send again and reuse it */
    ngx_http_quota_redis_op_free(w, op);

    if (handler) {
        handler(data, reply);
    }
}


static void
ngx_http_quota_redis_oneway_reply(ngx_http_quota_redis_conn_t *rc,
    ngx_http_quota_op_t *op, redisReply *reply)
{
    ngx_http_quota_worker_t  *w;

    w = rc->worker;

    if (reply != NULL && reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, w->log, 0,
                      "quota: redis refused a %s command: %*s",
                      op->kind == NGX_HTTP_QUOTA_OP_RELIABLE
                      ? "reliable" : "one-way",
                      (size_t) reply->len, reply->str);

        ngx_http_quota_redis_error(rc, NGX_HTTP_QUOTA_ERR_REPLY);
    }

    if (op->kind == NGX_HTTP_QUOTA_OP_RELIABLE && reply == NULL) {
        /* lost with its connection: it is idempotent, send it again */
        (void) ngx_http_quota_redis_keep(w, op->cmd.data, op->cmd.len,
                                         op->route, op->since);
    }

    ngx_http_quota_redis_op_free(w, op);
}


/* a connection finished its handshake, or one was lost: drain the queues */
void
ngx_http_quota_redis_on_ready(ngx_http_quota_redis_conn_t *rc)
{
    ngx_http_quota_worker_t  *w;

    w = rc->worker;

    if (!w->ever_ready) {
        if (rc->state == NGX_HTTP_QUOTA_REDIS_READY) {
            if (w->slots && !ngx_http_quota_redis_cluster_ready(w)) {
                /* held commands wait for every master of the map */
                goto flush;
            }

            w->ever_ready = 1;
            ngx_http_quota_redis_release_held(w);

        } else {
            /* the first attempt failed: hold nothing more, fail at once */
            w->hold_until = ngx_current_msec;
            ngx_http_quota_redis_fail_held(w);
        }
    }

flush:

    if (w->parked) {
        /* redirected ops wait for their node's connection */
        ngx_http_quota_redis_cluster_unpark(w);
    }

    ngx_http_quota_redis_flush_reliable(w);
}


/* a command kept in the worker until the first connection is ready */
static ngx_http_quota_op_t *
ngx_http_quota_redis_hold(ngx_http_quota_worker_t *w, ngx_str_t *cmd)
{
    ngx_http_quota_op_t  *op;

    if (w->nheld >= NGX_HTTP_QUOTA_MAX_PENDING) {
        return NULL;
    }

    op = ngx_http_quota_redis_op_copy(w, cmd);
    if (op == NULL) {
        return NULL;
    }

    if (w->held_tail) {
        w->held_tail->next = op;

    } else {
        w->held = op;
    }

    w->held_tail = op;
    w->nheld++;

    if (!w->hold_timer.timer_set) {
        ngx_add_timer(&w->hold_timer, w->hold_until - ngx_current_msec);
    }

    return op;
}


/* the first connection is ready: send what is held, drop what is given up */
static void
ngx_http_quota_redis_release_held(ngx_http_quota_worker_t *w)
{
    ngx_http_quota_op_t          *op, *next;
    ngx_http_quota_redis_conn_t  *rc;

    if (w->hold_timer.timer_set) {
        ngx_del_timer(&w->hold_timer);
    }

    op = w->held;
    w->held = NULL;
    w->held_tail = NULL;
    w->nheld = 0;

    for ( /* void */ ; op; op = next) {
        next = op->next;

        rc = op->handler ? ngx_http_quota_redis_pick(w, op->cmd.len, 0,
                                                     op->route)
                         : NULL;

        if (rc == NULL
            || ngx_http_quota_redis_append(rc, op, op->cmd.data, op->cmd.len)
               != NGX_OK)
        {
            /* given up (never sent), or no room: a NULL reply */
            op->conn = NULL;
            ngx_http_quota_redis_dispatch_lost(w, op);
            continue;
        }

        if (w->slots == NULL) {
            /* a cluster keeps it for a redirection */
            ngx_free(op->cmd.data);
            op->cmd.data = NULL;
        }
    }
}


static void
ngx_http_quota_redis_fail_held(ngx_http_quota_worker_t *w)
{
    ngx_http_quota_op_t  *op, *next;

    if (w->hold_timer.timer_set) {
        ngx_del_timer(&w->hold_timer);
    }

    op = w->held;
    w->held = NULL;
    w->held_tail = NULL;
    w->nheld = 0;

    for ( /* void */ ; op; op = next) {
        next = op->next;

        if (op->handler) {
            /* as if sent while no connection was ready */
            ngx_http_quota_count(w->qmcf,
                                 errors[NGX_HTTP_QUOTA_ERR_UNAVAILABLE]);
        }

        ngx_http_quota_redis_dispatch_lost(w, op);
    }
}


static void
ngx_http_quota_redis_hold_handler(ngx_event_t *ev)
{
    ngx_http_quota_worker_t  *w = ev->data;

    ngx_log_error(NGX_LOG_ERR, w->log, 0,
                  "quota: no redis connection ready %Mms after the worker "
                  "started", w->qmcf->redis_connect_timeout);

    ngx_http_quota_redis_fail_held(w);
}


/* an op out of every FIFO that will never be sent (held, parked): a REPLY
   op's caller gets a NULL reply, a reliable one is kept for a connection */
void
ngx_http_quota_redis_dispatch_lost(ngx_http_quota_worker_t *w,
    ngx_http_quota_op_t *op)
{
    void                     *data;
    ngx_http_quota_reply_pt   handler;

    if (op->kind != NGX_HTTP_QUOTA_OP_REPLY) {
        if (op->kind == NGX_HTTP_QUOTA_OP_RELIABLE && op->cmd.data) {
            (void) ngx_http_quota_redis_keep(w, op->cmd.data, op->cmd.len,
                                             op->route, op->since);
        }

        ngx_http_quota_redis_op_free(w, op);
        return;
    }

    if (w->qmcf->stats) {
        (void) ngx_atomic_fetch_add(&w->qmcf->stats->inflight, -1);
    }

    handler = op->handler;
    data = op->data;

    ngx_http_quota_redis_op_free(w, op);

    if (handler) {
        handler(data, NULL);
    }
}


static void
ngx_http_quota_redis_flush_reliable(ngx_http_quota_worker_t *w)
{
    ngx_http_quota_redis_cmd_t   *cmd;
    ngx_http_quota_redis_conn_t  *rc;

    while (w->reliable && !w->exiting) {
        cmd = w->reliable;

        if (ngx_http_quota_redis_too_late(w, cmd->data, cmd->len, cmd->since)
            == NGX_OK)
        {
            rc = ngx_http_quota_redis_pick(w, cmd->len, 0, cmd->route);
            if (rc == NULL
                || ngx_http_quota_redis_reliable_on(rc, cmd->data, cmd->len,
                                                    cmd->route, cmd->since)
                   != NGX_OK)
            {
                return;
            }
        }

        w->reliable = cmd->next;
        if (w->reliable == NULL) {
            w->reliable_tail = NULL;
        }

        w->nreliable--;
        ngx_free(cmd);
    }
}


/* keep a copy of a command for the next ready connection (bounded) */
ngx_int_t
ngx_http_quota_redis_keep(ngx_http_quota_worker_t *w, u_char *data,
    size_t len, ngx_uint_t route, time_t since)
{
    ngx_http_quota_redis_cmd_t  *cmd;

    if (w->exiting
        || ngx_http_quota_redis_too_late(w, data, len, since) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (w->nreliable >= NGX_HTTP_QUOTA_MAX_RELIABLE) {
        ngx_log_error(NGX_LOG_ERR, w->log, 0,
                      "quota: %ui redis commands wait for a connection, "
                      "one more dropped", w->nreliable);
        return NGX_ERROR;
    }

    cmd = ngx_alloc(offsetof(ngx_http_quota_redis_cmd_t, data) + len, w->log);
    if (cmd == NULL) {
        return NGX_ERROR;
    }

    cmd->next = NULL;
    cmd->route = route;
    cmd->since = since;
    cmd->len = len;
    ngx_memcpy(cmd->data, data, len);

    if (w->reliable_tail) {
        w->reliable_tail->next = cmd;

    } else {
        w->reliable = cmd;
    }

    w->reliable_tail = cmd;
    w->nreliable++;

    ngx_http_quota_redis_wait_arm(w);

    return NGX_OK;
}


/* a reliable command on rc; it keeps its own copy to be resent if lost */
static ngx_int_t
ngx_http_quota_redis_reliable_on(ngx_http_quota_redis_conn_t *rc,
    u_char *cmd, size_t len, ngx_uint_t route, time_t since)
{
    ngx_str_t                 copy;
    ngx_http_quota_op_t      *op;
    ngx_http_quota_worker_t  *w;

    w = rc->worker;

    copy.data = cmd;
    copy.len = len;

    op = ngx_http_quota_redis_op_copy(w, &copy);
    if (op == NULL) {
        return NGX_ERROR;
    }

    op->kind = NGX_HTTP_QUOTA_OP_RELIABLE;
    op->route = route;
    op->since = since;

    /* until its reply (or its loss: then it is kept again) */
    w->reliable_out++;

    if (ngx_http_quota_redis_append(rc, op, cmd, len) != NGX_OK) {
        ngx_http_quota_redis_op_free(w, op);
        return NGX_ERROR;
    }

    ngx_http_quota_redis_wait_arm(w);

    return NGX_OK;
}


static void
ngx_http_quota_redis_wait_arm(ngx_http_quota_worker_t *w)
{
    if (!w->exiting && !w->reliable_wait.timer_set) {
        ngx_add_timer(&w->reliable_wait, NGX_HTTP_QUOTA_QUIT_POLL);
    }
}


/*
 * Reliable commands (voids, slot releases) must reach Redis, also from a
 * worker that quits (graceful quit, reload): nginx ends it as soon as
 * only cancelable timers are left, closing its connections with whatever
 * was not written or answered yet.  While some are kept or in flight this
 * non-cancelable timer keeps the worker, for at most
 * NGX_HTTP_QUOTA_QUIT_WAIT after the quit; a running worker only pays a
 * timer every 100 ms while it has some.
 */
static void
ngx_http_quota_redis_reliable_wait(ngx_event_t *ev)
{
    ngx_http_quota_worker_t *w = ev->data;

    if (w->exiting || w->nreliable + w->reliable_out == 0) {
        return;
    }

    if (ngx_exiting || ngx_terminate) {
        if (w->quit_at == 0) {
            w->quit_at = ngx_current_msec | 1;
        }

        /* signed: quit_at may be one more than the clock (| 1) */
        if ((ngx_msec_int_t) (ngx_current_msec - w->quit_at)
            > NGX_HTTP_QUOTA_QUIT_WAIT)
        {
            ngx_log_error(NGX_LOG_ERR, w->log, 0,
                          "quota: %ui reliable redis commands not answered "
                          "%M ms after the quit, exiting without them",
                          w->nreliable + w->reliable_out,
                          (ngx_msec_t) NGX_HTTP_QUOTA_QUIT_WAIT);
            return;
        }
    }

    ngx_add_timer(ev, NGX_HTTP_QUOTA_QUIT_POLL);
}


/*
 * NGX_DECLINED (and an error log naming the command's first key, e.g. the
 * P{T}:c:ID of a void: that charge may stay counted) when a reliable
 * command was first sent longer than the horizon ago: what would make its
 * resend a no-op may be gone from Redis.
 */
static ngx_int_t
ngx_http_quota_redis_too_late(ngx_http_quota_worker_t *w, u_char *cmd,
    size_t len, time_t since)
{
    u_char      *p, *q, *last, *key;
    size_t       n;
    ngx_int_t    v;
    ngx_uint_t   i;

    if (ngx_time() - since < NGX_HTTP_QUOTA_RELIABLE_HORIZON) {
        return NGX_OK;
    }

    /* RESP "*N\r\n", then "$LEN\r\nDATA\r\n" per argument: the 4th
       of EVAL/EVALSHA SCRIPT NUMKEYS KEY ... is the key */
    key = NULL;
    n = 0;
    p = cmd;
    last = cmd + len;

    for (i = 0; i < 4; i++) {
        p = ngx_strlchr(p, last, '\n');
        if (p == NULL || ++p == last || *p != '$') {
            break;
        }

        q = ngx_strlchr(p, last, '\r');
        if (q == NULL || last - q < 2) {
            break;
        }

        v = ngx_atoi(p + 1, q - p - 1);
        p = q + 2;
        if (v == NGX_ERROR || last - p < v) {
            break;
        }

        n = v;

        if (i == 3) {
            key = p;
            break;
        }

        p += n;
    }

    ngx_log_error(NGX_LOG_ERR, w->log, 0,
                  "quota: a reliable redis command unsent for %T s is "
                  "dropped (past %d s), its effect may be missing or "
                  "applied twice: \"%*s\"",
                  ngx_time() - since, NGX_HTTP_QUOTA_RELIABLE_HORIZON,
                  key ? ngx_min(n, 256) : ngx_min(len, 64),
                  key ? key : cmd);

    return NGX_DECLINED;
}


/*
 * A ready connection that can take len more bytes: the tenant's own while
 * it can (affinity), else the next one; round robin for commands of no
 * tenant.
 */
static ngx_http_quota_redis_conn_t *
ngx_http_quota_redis_pick(ngx_http_quota_worker_t *w, size_t len,
    ngx_uint_t affinity, ngx_uint_t route)
{
    ngx_uint_t                    i, n, start;
    ngx_http_quota_redis_conn_t  *rc;

    if (w->slots) {
        return ngx_http_quota_redis_cluster_pick(w, len, affinity, route);
    }

    start = affinity ? affinity % w->nconns : w->next;

    for (n = 0; n < w->nconns; n++) {
        i = (start + n) % w->nconns;
        rc = &w->conns[i];

        if (ngx_http_quota_redis_can_take(rc, len) == NGX_OK) {
            if (!affinity) {
                w->next = i + 1;
            }

            return rc;
        }
    }

    return NULL;
}


/*
 * Redis runs the commands of one connection in order, but not those of
 * two: a tenant's commands go to one connection while it can take them, so
 * that a slot release is run before the same tenant's next charge (a
 * sequential client of a concurrency-1 tenant is never refused by its own
 * last request), and a void after its charge.  The tenant is the hash tag
 * {T} of the command's first key (*affinity; 0: no tenant).  In a cluster
 * that key also names the slot, hence the master (returned: slot + 1; 0:
 * no key, or not a cluster): the callers build every key of a command with
 * the same {T} tag, so the first one routes them all.
 */
ngx_uint_t
ngx_http_quota_redis_route(ngx_http_quota_worker_t *w, int argc,
    const char **argv, const size_t *argvlen, ngx_uint_t *affinity)
{
    int      i;
    u_char  *p, *last, *open, *close;

    *affinity = 0;

    /* EVAL and EVALSHA: SCRIPT NUMKEYS KEY...; others: KEY first */
    i = (argvlen[0] >= 4
         && ngx_strncasecmp((u_char *) argv[0], (u_char *) "EVAL", 4) == 0)
        ? 3 : 1;

    if (i >= argc || (i == 3 && argvlen[2] == 1 && argv[2][0] == '0')) {
        return 0;
    }

    p = (u_char *) argv[i];
    last = p + argvlen[i];

    open = ngx_strlchr(p, last, '{');
    close = open ? ngx_strlchr(open + 1, last, '}') : NULL;

    if (close) {
        *affinity = (ngx_uint_t) ngx_crc32_short(open + 1, close - open - 1)
                    + 1;
    }

    if (w->slots == NULL) {
        return 0;
    }

    return ngx_http_quota_redis_key_slot(p, argvlen[i]) + 1;
}


/* cluster: a REPLY or ONE-WAY op keeps its command for MOVED and ASK */
static void
ngx_http_quota_redis_keep_copy(ngx_http_quota_worker_t *w,
    ngx_http_quota_op_t *op, ngx_str_t *cmd)
{
    if (w->slots == NULL) {
        return;
    }

    op->cmd.data = ngx_alloc(cmd->len, w->log);

    if (op->cmd.data) {
        ngx_memcpy(op->cmd.data, cmd->data, cmd->len);
        op->cmd.len = cmd->len;
    }
}


static ngx_int_t
ngx_http_quota_redis_format(ngx_http_quota_worker_t *w, int argc,
    const char **argv, const size_t *argvlen, ngx_str_t *cmd)
{
    int    len;
    char  *p;

    len = redisFormatCommandArgv(&p, argc, argv, argvlen);

    if (len < 0) {
        ngx_log_error(NGX_LOG_ERR, w->log, 0,
                      "quota: redis command not formatted (out of memory)");
        return NGX_ERROR;
    }

    cmd->data = (u_char *) p;
    cmd->len = len;

    return NGX_OK;
}


ngx_http_quota_op_t *
ngx_http_quota_redis_op_alloc(ngx_http_quota_worker_t *w)
{
    ngx_http_quota_op_t  *op;

    op = w->free_ops;

    if (op) {
        w->free_ops = op->next;

    } else {
        op = ngx_alloc(sizeof(ngx_http_quota_op_t), w->log);
        if (op == NULL) {
            return NULL;
        }
    }

    ngx_memzero(op, sizeof(ngx_http_quota_op_t));

    return op;
}


/* an op that keeps its own copy of cmd (held, parked, reliable) */
ngx_http_quota_op_t *
ngx_http_quota_redis_op_copy(ngx_http_quota_worker_t *w, ngx_str_t *cmd)
{
    ngx_http_quota_op_t  *op;

    op = ngx_http_quota_redis_op_alloc(w);
    if (op == NULL) {
        return NULL;
    }

    op->cmd.data = ngx_alloc(cmd->len, w->log);
    if (op->cmd.data == NULL) {
        ngx_http_quota_redis_op_free(w, op);
        return NULL;
    }

    ngx_memcpy(op->cmd.data, cmd->data, cmd->len);
    op->cmd.len = cmd->len;
    op->kind = NGX_HTTP_QUOTA_OP_REPLY;

    return op;
}


void
ngx_http_quota_redis_op_free(ngx_http_quota_worker_t *w,
    ngx_http_quota_op_t *op)
{
    if (op->cmd.data) {
        ngx_free(op->cmd.data);
        op->cmd.data = NULL;
    }

    if (op->kind == NGX_HTTP_QUOTA_OP_RELIABLE) {
        w->reliable_out--;
        op->kind = NGX_HTTP_QUOTA_OP_REPLY;
    }

    /* op->conn stays: a late cancel() of a detached op still finds its
       worker */
    op->handler = NULL;
    op->data = NULL;
    op->next = w->free_ops;
    w->free_ops = op;
}

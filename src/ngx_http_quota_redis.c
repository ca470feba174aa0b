
/*
 * hiredis async contexts bound to nginx's event loop, one set per worker.
 *
 * Each worker keeps quota_redis pool=N persistent connections.  Commands
 * of all requests are pipelined on them (hiredis appends to its output
 * buffer; we write once per loop iteration), replies come back in order.
 *
 * What hiredis 0.14 does not do, we do here:
 *   - no DNS in the worker: quota_redis is resolved at configuration time;
 *   - no timeouts: a connect timer here, a per-request timer in the handler;
 *   - it reads at most 16 KB per call: events are level-triggered, so data
 *     left in the socket makes epoll report the fd again;
 *   - it owns the fd: our cleanup frees the nginx connection without
 *     closing the fd, hiredis closes it right after.
 *
 * Requests never wait on a connection that is down: while it is down (and
 * until the backoff timer reconnects) ngx_http_quota_redis_send() returns
 * NULL and the caller applies quota_failure_mode at once.  Commands sent
 * while connecting are queued behind the handshake (AUTH, SELECT, SCRIPT
 * LOAD), which hiredis writes first.
 *
 * Nothing is ever resent after a timeout or a disconnect: the script may
 * have run, and running it again would charge twice.
 */


#include "ngx_http_quota_module.h"


#define NGX_HTTP_QUOTA_REDIS_DOWN         0
#define NGX_HTTP_QUOTA_REDIS_CONNECTING   1
#define NGX_HTTP_QUOTA_REDIS_READY        2

#define NGX_HTTP_QUOTA_BACKOFF_MIN        50      /* ms */
#define NGX_HTTP_QUOTA_BACKOFF_MAX        1000    /* ms */

/* past this many unanswered commands a connection takes no more: a stalled
   Redis must not grow hiredis' output buffer without bound */
#define NGX_HTTP_QUOTA_MAX_PENDING        8192


typedef struct {
    ngx_http_quota_worker_t     *worker;
    redisAsyncContext           *ac;
    ngx_connection_t            *conn;        /* wraps ac->c.fd */
    ngx_uint_t                   state;
    ngx_msec_t                   backoff;
    ngx_event_t                  connect_timer;
    ngx_event_t                  reconnect_timer;
    ngx_uint_t                   index;
    ngx_uint_t                   pending;     /* replies hiredis still owes */
    ngx_msec_t                   last_reply;  /* when Redis last answered */
} ngx_http_quota_redis_conn_t;


/* privdata handed to hiredis: it must outlive the request, so it is ours */
struct ngx_http_quota_op_s {
    ngx_http_quota_reply_pt      handler;     /* NULL once detached */
    void                        *data;
    ngx_http_quota_op_t         *next;        /* free list */
    ngx_http_quota_redis_conn_t *conn;
    uint64_t                     sent_us;     /* for the latency histogram */
};


struct ngx_http_quota_worker_s {
    ngx_http_quota_main_conf_t  *qmcf;
    ngx_log_t                   *log;
    ngx_http_quota_redis_conn_t *conns;
    ngx_uint_t                   nconns;
    ngx_uint_t                   next;        /* round robin */
    ngx_http_quota_op_t         *free_ops;
    ngx_uint_t                   exiting;
};


static void ngx_http_quota_redis_connect(ngx_http_quota_redis_conn_t *rc);
static void ngx_http_quota_redis_schedule(ngx_http_quota_redis_conn_t *rc);
static void ngx_http_quota_redis_reconnect_handler(ngx_event_t *ev);
static void ngx_http_quota_redis_connect_timeout(ngx_event_t *ev);
static void ngx_http_quota_redis_on_connect(const redisAsyncContext *ac,
    int status);
static void ngx_http_quota_redis_on_disconnect(const redisAsyncContext *ac,
    int status);
static void ngx_http_quota_redis_handshake_reply(redisAsyncContext *ac,
    void *r, void *privdata);
static void ngx_http_quota_redis_reply(redisAsyncContext *ac, void *r,
    void *privdata);
static void ngx_http_quota_redis_lost(ngx_http_quota_redis_conn_t *rc);

static ngx_int_t ngx_http_quota_redis_attach(ngx_http_quota_redis_conn_t *rc);
static void ngx_http_quota_redis_add_read(void *privdata);
static void ngx_http_quota_redis_del_read(void *privdata);
static void ngx_http_quota_redis_add_write(void *privdata);
static void ngx_http_quota_redis_del_write(void *privdata);
static void ngx_http_quota_redis_cleanup(void *privdata);
static void ngx_http_quota_redis_read_handler(ngx_event_t *ev);
static void ngx_http_quota_redis_write_handler(ngx_event_t *ev);


ngx_int_t
ngx_http_quota_redis_init_worker(ngx_cycle_t *cycle,
    ngx_http_quota_main_conf_t *qmcf)
{
    ngx_uint_t                    i;
    ngx_http_quota_worker_t      *w;
    ngx_http_quota_redis_conn_t  *rc;

    w = ngx_pcalloc(cycle->pool, sizeof(ngx_http_quota_worker_t));
    if (w == NULL) {
        return NGX_ERROR;
    }

    w->qmcf = qmcf;
    w->log = cycle->log;
    w->nconns = qmcf->redis_pool;

    w->conns = ngx_pcalloc(cycle->pool,
                           w->nconns * sizeof(ngx_http_quota_redis_conn_t));
    if (w->conns == NULL) {
        return NGX_ERROR;
    }

    qmcf->worker = w;

    for (i = 0; i < w->nconns; i++) {
        rc = &w->conns[i];

        rc->worker = w;
        rc->index = i;
        rc->backoff = NGX_HTTP_QUOTA_BACKOFF_MIN;

        rc->connect_timer.handler = ngx_http_quota_redis_connect_timeout;
        rc->connect_timer.data = rc;
        rc->connect_timer.log = w->log;
        rc->connect_timer.cancelable = 1;

        rc->reconnect_timer.handler = ngx_http_quota_redis_reconnect_handler;
        rc->reconnect_timer.data = rc;
        rc->reconnect_timer.log = w->log;
        rc->reconnect_timer.cancelable = 1;

        ngx_http_quota_redis_connect(rc);
    }

    return NGX_OK;
}


void
ngx_http_quota_redis_exit_worker(ngx_http_quota_main_conf_t *qmcf)
{
    ngx_uint_t                    i;
    ngx_http_quota_op_t          *op;
    ngx_http_quota_worker_t      *w;
    ngx_http_quota_redis_conn_t  *rc;

    w = qmcf->worker;
    w->exiting = 1;

    for (i = 0; i < w->nconns; i++) {
        rc = &w->conns[i];

        if (rc->connect_timer.timer_set) {
            ngx_del_timer(&rc->connect_timer);
        }

        if (rc->reconnect_timer.timer_set) {
            ngx_del_timer(&rc->reconnect_timer);
        }

        if (rc->ac) {
            /* pending callbacks run with a NULL reply and free their ops */
            redisAsyncFree(rc->ac);
            rc->ac = NULL;
        }
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
    ngx_uint_t                    i, n;
    ngx_http_quota_op_t          *op;
    ngx_http_quota_worker_t      *w;
    ngx_http_quota_redis_conn_t  *rc;

    w = qmcf->worker;

    if (w == NULL || w->exiting) {
        return NULL;
    }

    /* round robin over the connections that can take a command */

    rc = NULL;

    for (n = 0; n < w->nconns; n++) {
        i = (w->next + n) % w->nconns;

        if (w->conns[i].state != NGX_HTTP_QUOTA_REDIS_DOWN
            && w->conns[i].pending < NGX_HTTP_QUOTA_MAX_PENDING)
        {
            rc = &w->conns[i];
            w->next = i + 1;
            break;
        }
    }

    if (rc == NULL) {
        ngx_http_quota_count(qmcf, errors[NGX_HTTP_QUOTA_ERR_UNAVAILABLE]);
        return NULL;
    }

    op = w->free_ops;

    if (op) {
        w->free_ops = op->next;

    } else {
        op = ngx_alloc(sizeof(ngx_http_quota_op_t), w->log);
        if (op == NULL) {
            return NULL;
        }
    }

    op->handler = handler;
    op->data = data;
    op->next = NULL;
    op->conn = rc;
    op->sent_us = qmcf->stats ? ngx_http_quota_now_us() : 0;

    if (redisAsyncCommandArgv(rc->ac, ngx_http_quota_redis_reply, op, argc,
                              argv, argvlen)
        != REDIS_OK)
    {
        ngx_log_error(NGX_LOG_ERR, w->log, 0,
                      "quota: redis command not queued: %s",
                      rc->ac->errstr[0] ? rc->ac->errstr : "disconnecting");

        op->next = w->free_ops;
        w->free_ops = op;

        ngx_http_quota_count(qmcf, errors[NGX_HTTP_QUOTA_ERR_UNAVAILABLE]);
        return NULL;
    }

    ngx_http_quota_count(qmcf, inflight);

    if (rc->pending++ == 0) {
        /* the silence that counts starts now, not at the last reply */
        rc->last_reply = ngx_current_msec;
    }

    return op;
}


/* a command nobody waits for: slot releases, reconciles */
ngx_int_t
ngx_http_quota_redis_send_oneway(ngx_http_quota_main_conf_t *qmcf, int argc,
    const char **argv, const size_t *argvlen)
{
    ngx_uint_t                    i, n;
    ngx_http_quota_worker_t      *w;
    ngx_http_quota_redis_conn_t  *rc;

    w = qmcf->worker;

    if (w == NULL || w->exiting) {
        return NGX_ERROR;
    }

    for (n = 0; n < w->nconns; n++) {
        i = (w->next + n) % w->nconns;
        rc = &w->conns[i];

        if (rc->state != NGX_HTTP_QUOTA_REDIS_DOWN
            && redisAsyncCommandArgv(rc->ac, NULL, NULL, argc, argv, argvlen)
               == REDIS_OK)
        {
            /*
             * Write it now rather than at the next loop iteration: a slot
             * release must reach Redis before the client, which got its
             * response, can come back with its next request.
             */
            if (rc->state == NGX_HTTP_QUOTA_REDIS_READY
                && !(rc->ac->c.flags & REDIS_IN_CALLBACK))
            {
                redisAsyncHandleWrite(rc->ac);
            }

            return NGX_OK;
        }
    }

    return NGX_ERROR;
}


void
ngx_http_quota_redis_detach(ngx_http_quota_op_t *op)
{
    /* the reply, when it comes, only returns the op to the free list */
    op->handler = NULL;
    op->data = NULL;
}


/*
 * A request gave up waiting.  If its connection has not answered anything
 * for a whole timeout while commands wait, it is stalled (a peer gone
 * without a reset, a partition): drop it, so that later requests fail at
 * once instead of each waiting its timeout, and reconnect.  Nothing is
 * resent; the requests still waiting on it follow quota_failure_mode.
 */
void
ngx_http_quota_redis_timed_out(ngx_http_quota_op_t *op)
{
    redisAsyncContext            *ac;
    ngx_http_quota_redis_conn_t  *rc;

    rc = op->conn;

    ngx_http_quota_redis_detach(op);

    if (rc->state != NGX_HTTP_QUOTA_REDIS_READY || rc->ac == NULL
        || rc->pending == 0
        || ngx_current_msec - rc->last_reply
           < rc->worker->qmcf->redis_timeout)
    {
        return;
    }

    ngx_log_error(NGX_LOG_ERR, rc->worker->log, 0,
                  "quota: redis connection #%ui stalled: no reply for %Mms "
                  "with %ui commands waiting, reconnecting", rc->index,
                  ngx_current_msec - rc->last_reply, rc->pending);

    ngx_http_quota_count(rc->worker->qmcf,
                         errors[NGX_HTTP_QUOTA_ERR_DISCONNECT]);

    /* the waiting callbacks run with a NULL reply, on_disconnect reconnects */
    ac = rc->ac;
    redisAsyncFree(ac);
}


static void
ngx_http_quota_redis_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    ngx_http_quota_op_t          *op = privdata;
    ngx_http_quota_redis_conn_t  *rc = ac->data;

    ngx_http_quota_reply_pt       handler;
    ngx_http_quota_main_conf_t   *qmcf;

    qmcf = rc->worker->qmcf;

    rc->pending--;
    rc->last_reply = ngx_current_msec;

    if (qmcf->stats) {
        (void) ngx_atomic_fetch_add(&qmcf->stats->inflight, -1);

        if (r != NULL) {
            ngx_http_quota_stats_latency(qmcf->stats,
                                         ngx_http_quota_now_us() - op->sent_us);
        }
    }

    handler = op->handler;

    op->handler = NULL;
    op->next = rc->worker->free_ops;
    rc->worker->free_ops = op;

    if (handler) {
        handler(op->data, r);
    }
}


static void
ngx_http_quota_redis_connect(ngx_http_quota_redis_conn_t *rc)
{
    int                          argc;
    u_char                       db[NGX_INT_T_LEN];
    const char                  *argv[3];
    size_t                       argvlen[3];
    redisAsyncContext           *ac;
    ngx_http_quota_worker_t     *w;
    ngx_http_quota_main_conf_t  *qmcf;

    w = rc->worker;
    qmcf = w->qmcf;

    if (qmcf->redis_unix.len) {
        ac = redisAsyncConnectUnix((char *) qmcf->redis_unix.data);

    } else {
        ac = redisAsyncConnect((char *) qmcf->redis_host.data,
                               (int) qmcf->redis_port);
    }

    if (ac == NULL) {
        ngx_log_error(NGX_LOG_ERR, w->log, 0,
                      "quota: redis context allocation failed");
        ngx_http_quota_redis_schedule(rc);
        return;
    }

    if (ac->err) {
        ngx_log_error(NGX_LOG_ERR, w->log, 0,
                      "quota: redis connect to %s%V:%i failed: %s",
                      qmcf->redis_unix.len ? "unix:" : "",
                      qmcf->redis_unix.len ? &qmcf->redis_unix
                                           : &qmcf->redis_host,
                      qmcf->redis_unix.len ? 0 : qmcf->redis_port,
                      ac->errstr);
        redisAsyncFree(ac);
        ngx_http_quota_count(qmcf, errors[NGX_HTTP_QUOTA_ERR_CONNECT]);
        ngx_http_quota_redis_schedule(rc);
        return;
    }

    ac->data = rc;
    rc->ac = ac;

    if (ngx_http_quota_redis_attach(rc) != NGX_OK) {
        rc->ac = NULL;
        redisAsyncFree(ac);
        ngx_http_quota_redis_schedule(rc);
        return;
    }

    rc->state = NGX_HTTP_QUOTA_REDIS_CONNECTING;

    /* set after attaching: it asks for a write event to see the connect */
    redisAsyncSetConnectCallback(ac, ngx_http_quota_redis_on_connect);
    redisAsyncSetDisconnectCallback(ac, ngx_http_quota_redis_on_disconnect);

    ngx_add_timer(&rc->connect_timer, qmcf->redis_connect_timeout);

    /* the handshake goes first in the pipeline; requests queue behind it */

    if (qmcf->redis_password.len) {
        argv[0] = "AUTH";
        argvlen[0] = 4;
        argv[1] = (char *) qmcf->redis_password.data;
        argvlen[1] = qmcf->redis_password.len;

        redisAsyncCommandArgv(ac, ngx_http_quota_redis_handshake_reply,
                              "AUTH", 2, argv, argvlen);
    }

    if (qmcf->redis_db) {
        argv[0] = "SELECT";
        argvlen[0] = 6;
        /* hiredis copies the arguments into its buffer right away */
        argv[1] = (char *) db;
        argvlen[1] = ngx_sprintf(db, "%i", qmcf->redis_db) - db;

        redisAsyncCommandArgv(ac, ngx_http_quota_redis_handshake_reply,
                              "SELECT", 2, argv, argvlen);
    }

    argc = 3;
    argv[0] = "SCRIPT";
    argvlen[0] = 6;
    argv[1] = "LOAD";
    argvlen[1] = 4;
    argv[2] = (char *) qmcf->script.data;
    argvlen[2] = qmcf->script.len;

    redisAsyncCommandArgv(ac, ngx_http_quota_redis_handshake_reply,
                          "SCRIPT LOAD", argc, argv, argvlen);
}


static void
ngx_http_quota_redis_on_connect(const redisAsyncContext *ac, int status)
{
    ngx_http_quota_redis_conn_t  *rc = ac->data;

    if (status == REDIS_OK) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, rc->worker->log, 0,
                       "quota: redis connection #%ui connected", rc->index);
        return;
    }

    ngx_log_error(NGX_LOG_ERR, rc->worker->log, 0,
                  "quota: redis connect failed: %s", ac->errstr);

    ngx_http_quota_count(rc->worker->qmcf,
                         errors[NGX_HTTP_QUOTA_ERR_CONNECT]);

    /* hiredis frees the context after this callback */
    ngx_http_quota_redis_lost(rc);
}


static void
ngx_http_quota_redis_on_disconnect(const redisAsyncContext *ac, int status)
{
    ngx_http_quota_redis_conn_t  *rc = ac->data;

    if (status != REDIS_OK && !rc->worker->exiting) {
        ngx_log_error(NGX_LOG_ERR, rc->worker->log, 0,
                      "quota: redis connection lost: %s", ac->errstr);

        ngx_http_quota_count(rc->worker->qmcf,
                             errors[NGX_HTTP_QUOTA_ERR_DISCONNECT]);
    }

    ngx_http_quota_redis_lost(rc);
}


static void
ngx_http_quota_redis_handshake_reply(redisAsyncContext *ac, void *r,
    void *privdata)
{
    redisReply                   *reply = r;
    ngx_http_quota_redis_conn_t  *rc = ac->data;

    if (reply == NULL) {
        return;     /* the connection is going away; on_disconnect logs */
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, rc->worker->log, 0,
                      "quota: redis %s failed: %*s", (char *) privdata,
                      (size_t) reply->len, reply->str);

        /* a bad password or db would fail every request: start over */
        redisAsyncDisconnect(ac);
        return;
    }

    if (ngx_strcmp(privdata, "SCRIPT LOAD") == 0) {
        if (rc->connect_timer.timer_set) {
            ngx_del_timer(&rc->connect_timer);
        }

        rc->state = NGX_HTTP_QUOTA_REDIS_READY;
        rc->backoff = NGX_HTTP_QUOTA_BACKOFF_MIN;
        rc->last_reply = ngx_current_msec;

        ngx_log_error(NGX_LOG_INFO, rc->worker->log, 0,
                      "quota: redis connection #%ui ready", rc->index);
    }
}


static void
ngx_http_quota_redis_connect_timeout(ngx_event_t *ev)
{
    redisAsyncContext            *ac;
    ngx_http_quota_redis_conn_t  *rc = ev->data;

    if (rc->state != NGX_HTTP_QUOTA_REDIS_CONNECTING || rc->ac == NULL) {
        return;
    }

    ngx_log_error(NGX_LOG_ERR, rc->worker->log, 0,
                  "quota: redis connect timed out");

    ngx_http_quota_count(rc->worker->qmcf,
                         errors[NGX_HTTP_QUOTA_ERR_CONNECT]);

    /*
     * redisAsyncFree() runs the queued callbacks with a NULL reply and
     * calls on_disconnect only if the connection had been established.
     */
    ac = rc->ac;
    rc->ac = NULL;
    ac->onDisconnect = NULL;
    redisAsyncFree(ac);

    rc->state = NGX_HTTP_QUOTA_REDIS_DOWN;
    ngx_http_quota_redis_schedule(rc);
}


/* the context is being freed by hiredis; reconnect later */
static void
ngx_http_quota_redis_lost(ngx_http_quota_redis_conn_t *rc)
{
    rc->ac = NULL;
    rc->state = NGX_HTTP_QUOTA_REDIS_DOWN;

    if (rc->connect_timer.timer_set) {
        ngx_del_timer(&rc->connect_timer);
    }

    if (!rc->worker->exiting) {
        ngx_http_quota_redis_schedule(rc);
    }
}


static void
ngx_http_quota_redis_schedule(ngx_http_quota_redis_conn_t *rc)
{
    rc->state = NGX_HTTP_QUOTA_REDIS_DOWN;

    if (rc->worker->exiting || rc->reconnect_timer.timer_set) {
        return;
    }

    ngx_add_timer(&rc->reconnect_timer, rc->backoff);

    rc->backoff *= 2;
    if (rc->backoff > NGX_HTTP_QUOTA_BACKOFF_MAX) {
        rc->backoff = NGX_HTTP_QUOTA_BACKOFF_MAX;
    }
}


static void
ngx_http_quota_redis_reconnect_handler(ngx_event_t *ev)
{
    ngx_http_quota_redis_conn_t  *rc = ev->data;

    if (rc->worker->exiting || rc->ac != NULL) {
        return;
    }

    ngx_http_quota_count(rc->worker->qmcf, reconnects);

    ngx_http_quota_redis_connect(rc);
}


/* the event adapter */

static ngx_int_t
ngx_http_quota_redis_attach(ngx_http_quota_redis_conn_t *rc)
{
    ngx_connection_t   *c;
    redisAsyncContext  *ac;

    ac = rc->ac;

    c = ngx_get_connection(ac->c.fd, rc->worker->log);
    if (c == NULL) {
        return NGX_ERROR;
    }

    c->data = rc;
    c->read->handler = ngx_http_quota_redis_read_handler;
    c->write->handler = ngx_http_quota_redis_write_handler;
    c->read->log = rc->worker->log;
    c->write->log = rc->worker->log;

    rc->conn = c;

    ac->ev.data = rc;
    ac->ev.addRead = ngx_http_quota_redis_add_read;
    ac->ev.delRead = ngx_http_quota_redis_del_read;
    ac->ev.addWrite = ngx_http_quota_redis_add_write;
    ac->ev.delWrite = ngx_http_quota_redis_del_write;
    ac->ev.cleanup = ngx_http_quota_redis_cleanup;

    return NGX_OK;
}


static void
ngx_http_quota_redis_add_read(void *privdata)
{
    ngx_http_quota_redis_conn_t  *rc = privdata;

    if (rc->conn && !rc->conn->read->active) {
        (void) ngx_add_event(rc->conn->read, NGX_READ_EVENT, NGX_LEVEL_EVENT);
    }
}


static void
ngx_http_quota_redis_del_read(void *privdata)
{
    ngx_http_quota_redis_conn_t  *rc = privdata;

    if (rc->conn && rc->conn->read->active) {
        (void) ngx_del_event(rc->conn->read, NGX_READ_EVENT, NGX_LEVEL_EVENT);
    }
}


static void
ngx_http_quota_redis_add_write(void *privdata)
{
    ngx_http_quota_redis_conn_t  *rc = privdata;

    if (rc->conn && !rc->conn->write->active) {
        (void) ngx_add_event(rc->conn->write, NGX_WRITE_EVENT,
                             NGX_LEVEL_EVENT);
    }
}


static void
ngx_http_quota_redis_del_write(void *privdata)
{
    ngx_http_quota_redis_conn_t  *rc = privdata;

    if (rc->conn && rc->conn->write->active) {
        (void) ngx_del_event(rc->conn->write, NGX_WRITE_EVENT,
                             NGX_LEVEL_EVENT);
    }
}


/* called by hiredis right before it closes the fd */
static void
ngx_http_quota_redis_cleanup(void *privdata)
{
    ngx_connection_t             *c;
    ngx_http_quota_redis_conn_t  *rc = privdata;

    c = rc->conn;
    if (c == NULL) {
        return;
    }

    rc->conn = NULL;

    /* the fd is about to be closed, which removes it from epoll */
    if (c->read->active) {
        (void) ngx_del_event(c->read, NGX_READ_EVENT, NGX_CLOSE_EVENT);
    }

    if (c->write->active) {
        (void) ngx_del_event(c->write, NGX_WRITE_EVENT, NGX_CLOSE_EVENT);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    c->fd = (ngx_socket_t) -1;
    ngx_free_connection(c);
}


static void
ngx_http_quota_redis_read_handler(ngx_event_t *ev)
{
    ngx_connection_t             *c = ev->data;
    ngx_http_quota_redis_conn_t  *rc = c->data;

    if (rc->ac) {
        redisAsyncHandleRead(rc->ac);
    }
}


static void
ngx_http_quota_redis_write_handler(ngx_event_t *ev)
{
    ngx_connection_t             *c = ev->data;
    ngx_http_quota_redis_conn_t  *rc = c->data;

    if (rc->ac) {
        redisAsyncHandleWrite(rc->ac);
    }
}

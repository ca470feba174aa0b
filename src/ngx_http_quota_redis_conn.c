
/*
 * One Redis connection, owned by nginx: ngx_event_connect_peer(), nginx's
 * read and write handlers, ngx_close_connection().  hiredis is used for the
 * protocol only: commands arrive here already encoded, replies are parsed
 * by a redisReader.
 *
 * States: DOWN -> CONNECTING -> (TLS) -> HANDSHAKE -> READY.  The handshake
 * (AUTH, SELECT, SCRIPT LOAD) is the first thing written; only a READY
 * connection takes commands, so no request ever waits behind a handshake
 * (a black-holed Redis accepts the connection and answers nothing).
 * connect_timeout= covers everything up to READY.
 *
 * Writes are coalesced: appending a command posts the write event, which
 * writes everything appended during this event loop iteration at once.
 *
 * The dead-peer rule: a connection is dropped only when Redis sent nothing
 * for dead_after (10 x timeout=, at least connect_timeout=) while commands
 * of any kind wait on it.  A reply slower than timeout= only fails the
 * request that waited for it.  TCP keepalive on the socket finds a peer
 * gone while nothing waits.
 *
 * Reconnects back off from 50 ms to 1 s, each delay drawn from its upper
 * half at random, so that the workers of a fleet do not reconnect in step.
 */


#include "ngx_http_quota_redis.h"


static void ngx_http_quota_redis_schedule(ngx_http_quota_redis_conn_t *rc);
static void ngx_http_quota_redis_keepalive(ngx_http_quota_redis_conn_t *rc);
static ngx_int_t ngx_http_quota_redis_test_connect(ngx_connection_t *c);
static void ngx_http_quota_redis_connected(ngx_http_quota_redis_conn_t *rc);
static ngx_int_t ngx_http_quota_redis_handshake(
    ngx_http_quota_redis_conn_t *rc);
static ngx_int_t ngx_http_quota_redis_handshake_reply(
    ngx_http_quota_redis_conn_t *rc, ngx_http_quota_op_t *op,
    redisReply *reply);
static ngx_int_t ngx_http_quota_redis_role(ngx_http_quota_redis_conn_t *rc,
    redisReply *reply);
static ngx_int_t ngx_http_quota_redis_reply(ngx_http_quota_redis_conn_t *rc,
    redisReply *reply);
static ngx_int_t ngx_http_quota_redis_reserve(ngx_http_quota_redis_conn_t *rc,
    size_t len);
static ngx_int_t ngx_http_quota_redis_flush(ngx_http_quota_redis_conn_t *rc);
static ngx_int_t ngx_http_quota_redis_replies(
    ngx_http_quota_redis_conn_t *rc);
static void ngx_http_quota_redis_fail_ops(ngx_http_quota_redis_conn_t *rc);
static void ngx_http_quota_redis_read_handler(ngx_event_t *ev);
static void ngx_http_quota_redis_write_handler(ngx_event_t *ev);
static void ngx_http_quota_redis_connect_timeout(ngx_event_t *ev);
static void ngx_http_quota_redis_dead_handler(ngx_event_t *ev);
static void ngx_http_quota_redis_reconnect_handler(ngx_event_t *ev);


void
ngx_http_quota_redis_conn_init(ngx_http_quota_redis_conn_t *rc,
    ngx_http_quota_worker_t *w, ngx_uint_t index)
{
    rc->worker = w;
    rc->index = index;
    rc->server = NGX_HTTP_QUOTA_REDIS_SERVERS;
    rc->backoff = NGX_HTTP_QUOTA_BACKOFF_MIN;

    rc->connect_timer.handler = ngx_http_quota_redis_connect_timeout;
    rc->connect_timer.data = rc;
    rc->connect_timer.log = w->log;
    rc->connect_timer.cancelable = 1;

    rc->dead_timer.handler = ngx_http_quota_redis_dead_handler;
    rc->dead_timer.data = rc;
    rc->dead_timer.log = w->log;
    rc->dead_timer.cancelable = 1;

    rc->reconnect_timer.handler = ngx_http_quota_redis_reconnect_handler;
    rc->reconnect_timer.data = rc;
    rc->reconnect_timer.log = w->log;
    rc->reconnect_timer.cancelable = 1;
}


void
ngx_http_quota_redis_connect(ngx_http_quota_redis_conn_t *rc)
{
    ngx_int_t                    rv;
    ngx_connection_t            *c;
    ngx_http_quota_worker_t     *w;
    ngx_http_quota_main_conf_t  *qmcf;

    w = rc->worker;
    qmcf = w->qmcf;

    if (rc->addr == NULL) {
        return;     /* the sentinel has not named the master yet */
    }

    /* the address may be new (a failover, a cluster node): its label */
    rc->server = ngx_http_quota_redis_stats_server(qmcf, rc->addr);

    rc->reader = redisReaderCreate();
    if (rc->reader == NULL) {
        ngx_log_error(NGX_LOG_ERR, w->log, 0,
                      "quota: redis reader allocation failed");
        ngx_http_quota_redis_schedule(rc);
        return;
    }

    ngx_memzero(&rc->peer, sizeof(ngx_peer_connection_t));

    rc->peer.sockaddr = rc->addr->sockaddr;
    rc->peer.socklen = rc->addr->socklen;
    rc->peer.name = &rc->addr->name;
    rc->peer.get = ngx_event_get_peer;
    rc->peer.log = w->log;
    rc->peer.log_error = NGX_ERROR_ERR;
    rc->peer.tries = 1;
    rc->peer.so_keepalive = (rc->addr->sockaddr->sa_family != AF_UNIX);

    rv = ngx_event_connect_peer(&rc->peer);

    if (rv == NGX_ERROR || rv == NGX_BUSY || rv == NGX_DECLINED) {
        ngx_log_error(NGX_LOG_ERR, w->log, 0,
                      "quota: redis connect failed: %V", &rc->addr->name);
        ngx_http_quota_redis_error(rc, NGX_HTTP_QUOTA_ERR_CONNECT);
        ngx_http_quota_redis_close(rc, 1);
        return;
    }

    c = rc->peer.connection;

    c->data = rc;
    c->read->handler = ngx_http_quota_redis_read_handler;
    c->write->handler = ngx_http_quota_redis_write_handler;

    /* TLS needs a pool; it lives as long as the connection */
    c->pool = ngx_create_pool(1024, w->log);
    if (c->pool == NULL) {
        ngx_http_quota_redis_close(rc, 1);
        return;
    }

    ngx_http_quota_redis_keepalive(rc);

    rc->state = NGX_HTTP_QUOTA_REDIS_CONNECTING;
    rc->last_read = ngx_current_msec;

    ngx_add_timer(&rc->connect_timer, qmcf->redis_connect_timeout);

    if (rv == NGX_OK) {
        /* a unix socket may connect at once */
        ngx_http_quota_redis_connected(rc);
    }
}


/* probes after 10 s idle, every 5 s, 3 unanswered: gone (peer vanished
   while nothing was in flight, which the dead-peer rule cannot see) */
static void
ngx_http_quota_redis_keepalive(ngx_http_quota_redis_conn_t *rc)
{
#if (NGX_HAVE_KEEPALIVE_TUNABLE)
    int                i;
    ngx_connection_t  *c;

    static const int   opts[3][2] = {
        { TCP_KEEPIDLE, 10 }, { TCP_KEEPINTVL, 5 }, { TCP_KEEPCNT, 3 }
    };

    if (!rc->peer.so_keepalive) {
        return;
    }

    c = rc->peer.connection;

    for (i = 0; i < 3; i++) {
        if (setsockopt(c->fd, IPPROTO_TCP, opts[i][0],
                       (const void *) &opts[i][1], sizeof(int))
            == -1)
        {
            ngx_log_error(NGX_LOG_WARN, rc->worker->log, ngx_socket_errno,
                          "quota: redis keepalive setsockopt() failed");
            return;
        }
    }
#endif
}


static ngx_int_t
ngx_http_quota_redis_test_connect(ngx_connection_t *c)
{
    int        err;
    socklen_t  len;

    err = 0;
    len = sizeof(int);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len) == -1) {
        err = ngx_socket_errno;
    }

    if (err) {
        ngx_log_error(NGX_LOG_ERR, c->log, err, "quota: redis connect failed");
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* TCP is up: TLS first if configured, then the Redis handshake */
static void
ngx_http_quota_redis_connected(ngx_http_quota_redis_conn_t *rc)
{
#if (NGX_SSL)
    if (rc->worker->qmcf->redis_ssl_ctx) {
        rc->state = NGX_HTTP_QUOTA_REDIS_TLS;

        if (ngx_http_quota_redis_ssl_start(rc) != NGX_OK) {
            ngx_http_quota_redis_error(rc, NGX_HTTP_QUOTA_ERR_CONNECT);
            ngx_http_quota_redis_close(rc, 1);
        }

        return;
    }
#endif

    ngx_http_quota_redis_transport_ready(rc);
}


/* the byte stream works (TCP, or TLS done): AUTH, SELECT, SCRIPT LOAD */
void
ngx_http_quota_redis_transport_ready(ngx_http_quota_redis_conn_t *rc)
{
    ngx_connection_t  *c;

    c = rc->peer.connection;

    c->read->handler = ngx_http_quota_redis_read_handler;
    c->write->handler = ngx_http_quota_redis_write_handler;

    rc->state = NGX_HTTP_QUOTA_REDIS_HANDSHAKE;

    if ((rc->sentinel ? ngx_http_quota_redis_sentinel_handshake(rc)
         : rc->live ? ngx_http_quota_redis_live_handshake(rc)
         : rc->control ? ngx_http_quota_redis_cluster_handshake(rc)
         : ngx_http_quota_redis_handshake(rc))
        != NGX_OK)
    {
        ngx_http_quota_redis_close(rc, 1);
    }
}


static ngx_int_t
ngx_http_quota_redis_handshake(ngx_http_quota_redis_conn_t *rc)
{
    u_char                       db[NGX_INT_T_LEN];
    size_t                       argvlen[3];
    const char                  *argv[3];
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = rc->worker->qmcf;

    if (ngx_http_quota_redis_handshake_auth(rc) != NGX_OK) {
        return NGX_ERROR;
    }

    if (qmcf->redis_db) {
        argv[0] = "SELECT";
        argvlen[0] = 6;
        argv[1] = (const char *) db;
        argvlen[1] = ngx_sprintf(db, "%i", qmcf->redis_db) - db;

        if (ngx_http_quota_redis_handshake_cmd(rc, "SELECT", 2, argv, argvlen)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (qmcf->redis_sentinels) {
        /* the sentinel may be behind: be sure this is the master */
        argv[0] = "ROLE";
        argvlen[0] = 4;

        if (ngx_http_quota_redis_handshake_cmd(rc, "ROLE", 1, argv, argvlen)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    argv[0] = "SCRIPT";
    argvlen[0] = 6;
    argv[1] = "LOAD";
    argvlen[1] = 4;
    argv[2] = (const char *) qmcf->script.data;
    argvlen[2] = qmcf->script.len;

    return ngx_http_quota_redis_handshake_cmd(rc, "SCRIPT LOAD", 3, argv,
                                              argvlen);
}


/* step NULL: a command whose reply comes without an op (SUBSCRIBE) */
/*
 * AUTH [user] password, when quota_redis has a password: the first step of
 * every handshake to a data node (commands, cluster control, live).
 */
ngx_int_t
ngx_http_quota_redis_handshake_auth(ngx_http_quota_redis_conn_t *rc)
{
    int                          n;
    size_t                       argvlen[3];
    const char                  *argv[3];
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = rc->worker->qmcf;

    if (qmcf->redis_password.len == 0) {
        return NGX_OK;
    }

    n = 0;
    argv[n] = "AUTH";
    argvlen[n++] = 4;

    if (qmcf->redis_user.len) {
        argv[n] = (const char *) qmcf->redis_user.data;
        argvlen[n++] = qmcf->redis_user.len;
    }

    argv[n] = (const char *) qmcf->redis_password.data;
    argvlen[n++] = qmcf->redis_password.len;

    return ngx_http_quota_redis_handshake_cmd(rc, "AUTH", n, argv, argvlen);
}


ngx_int_t
ngx_http_quota_redis_handshake_cmd(ngx_http_quota_redis_conn_t *rc,
    const char *step, int argc, const char **argv, const size_t *argvlen)
{
    int                   len;
    char                 *cmd;
    ngx_int_t             rv;
    ngx_http_quota_op_t  *op;

    len = redisFormatCommandArgv(&cmd, argc, argv, argvlen);
    if (len < 0) {
        return NGX_ERROR;
    }

    if (step == NULL) {
        rv = ngx_http_quota_redis_append(rc, NULL, (u_char *) cmd, len);
        redisFreeCommand(cmd);
        return rv;
    }

    op = ngx_http_quota_redis_op_alloc(rc->worker);
    if (op == NULL) {
        redisFreeCommand(cmd);
        return NGX_ERROR;
    }

    op->kind = NGX_HTTP_QUOTA_OP_HANDSHAKE;
    op->data = (void *) step;

    rv = ngx_http_quota_redis_append(rc, op, (u_char *) cmd, len);

    if (rv != NGX_OK) {
        ngx_http_quota_redis_op_free(rc->worker, op);
    }

    redisFreeCommand(cmd);

    return rv;
}


static ngx_int_t
ngx_http_quota_redis_handshake_reply(ngx_http_quota_redis_conn_t *rc,
    ngx_http_quota_op_t *op, redisReply *reply)
{
    const char                  *step;
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = rc->worker->qmcf;
    step = op->data;

    ngx_http_quota_redis_op_free(rc->worker, op);

    if (reply->type == REDIS_REPLY_ERROR) {
        /* a bad password or db would fail every request: start over */
        ngx_log_error(NGX_LOG_ERR, rc->worker->log, 0,
                      "quota: redis %s failed: %*s", step,
                      (size_t) reply->len, reply->str);
        ngx_http_quota_redis_error(rc, NGX_HTTP_QUOTA_ERR_CONNECT);
        return NGX_ERROR;
    }

    if (ngx_strcmp(step, "SENTINEL") == 0) {
        return ngx_http_quota_redis_sentinel_reply(rc, reply);
    }

    if (ngx_strcmp(step, "CLUSTER SLOTS") == 0) {
        return ngx_http_quota_redis_cluster_slots(rc, reply);
    }

    if (ngx_strcmp(step, "ROLE") == 0) {
        return ngx_http_quota_redis_role(rc, reply);
    }

    if (ngx_strcmp(step, "SCRIPT LOAD") != 0) {
        return NGX_OK;
    }

    if (reply->type != REDIS_REPLY_STRING || reply->len != 40
        || ngx_strncmp(reply->str, qmcf->script_sha1, 40) != 0)
    {
        ngx_log_error(NGX_LOG_ERR, rc->worker->log, 0,
                      "quota: redis SCRIPT LOAD answered an unexpected "
                      "reply");
        ngx_http_quota_redis_error(rc, NGX_HTTP_QUOTA_ERR_CONNECT);
        return NGX_ERROR;
    }

    if (rc->connect_timer.timer_set) {
        ngx_del_timer(&rc->connect_timer);
    }

    rc->state = NGX_HTTP_QUOTA_REDIS_READY;
    rc->backoff = NGX_HTTP_QUOTA_BACKOFF_MIN;

    ngx_log_error(NGX_LOG_INFO, rc->worker->log, 0,
                  "quota: redis connection #%ui ready", rc->index);

    ngx_http_quota_redis_on_ready(rc);

    return NGX_OK;
}


static ngx_int_t
ngx_http_quota_redis_role(ngx_http_quota_redis_conn_t *rc, redisReply *reply)
{
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements > 0
        && reply->element[0]->type == REDIS_REPLY_STRING
        && reply->element[0]->len == 6
        && ngx_strncmp(reply->element[0]->str, "master", 6) == 0)
    {
        return NGX_OK;
    }

    ngx_log_error(NGX_LOG_ERR, rc->worker->log, 0,
                  "quota: redis %V is not a master, asking the sentinels "
                  "again", &rc->addr->name);

    ngx_http_quota_redis_sentinel_refresh(rc->worker);

    return NGX_ERROR;
}


/* READY, and under the caps on unanswered commands and unwritten bytes */
ngx_int_t
ngx_http_quota_redis_can_take(ngx_http_quota_redis_conn_t *rc, size_t len)
{
    if (rc->state != NGX_HTTP_QUOTA_REDIS_READY
        || rc->pending >= NGX_HTTP_QUOTA_MAX_PENDING
        || rc->out_len - rc->out_pos + len > NGX_HTTP_QUOTA_MAX_OUTPUT)
    {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/* queue an encoded command and its op; the posted write event sends it */
ngx_int_t
ngx_http_quota_redis_append(ngx_http_quota_redis_conn_t *rc,
    ngx_http_quota_op_t *op, u_char *cmd, size_t len)
{
    ngx_connection_t  *c;

    c = rc->peer.connection;

    if (c == NULL || ngx_http_quota_redis_reserve(rc, len) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_memcpy(rc->out + rc->out_len, cmd, len);
    rc->out_len += len;

    if (op == NULL) {
        goto post;
    }

    op->conn = rc;
    op->next = NULL;

    if (rc->tail) {
        rc->tail->next = op;

    } else {
        rc->head = op;
    }

    rc->tail = op;

    if (rc->pending++ == 0) {
        /* the silence that counts starts now, not at the last reply */
        rc->busy_since = ngx_current_msec;

        if (!rc->dead_timer.timer_set) {
            ngx_add_timer(&rc->dead_timer, rc->worker->dead_after);
        }
    }

post:

    if (!c->write->posted) {
        ngx_post_event(c->write, &ngx_posted_events);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_quota_redis_reserve(ngx_http_quota_redis_conn_t *rc, size_t len)
{
    u_char  *p;
    size_t   size;

    if (rc->out_pos && rc->out_pos == rc->out_len) {
        rc->out_pos = 0;
        rc->out_len = 0;
    }

    if (rc->out_len + len <= rc->out_size) {
        return NGX_OK;
    }

    if (rc->out_pos) {
        ngx_memmove(rc->out, rc->out + rc->out_pos, rc->out_len - rc->out_pos);
        rc->out_len -= rc->out_pos;
        rc->out_pos = 0;

        if (rc->out_len + len <= rc->out_size) {
            return NGX_OK;
        }
    }

    size = ngx_max(rc->out_size * 2, 4096);

    while (size < rc->out_len + len) {
        size *= 2;
    }

    p = ngx_alloc(size, rc->worker->log);
    if (p == NULL) {
        return NGX_ERROR;
    }

    if (rc->out) {
        ngx_memcpy(p, rc->out, rc->out_len);
        ngx_free(rc->out);
    }

    rc->out = p;
    rc->out_size = size;

    return NGX_OK;
}


static ngx_int_t
ngx_http_quota_redis_flush(ngx_http_quota_redis_conn_t *rc)
{
    ssize_t            n;
    ngx_connection_t  *c;

    c = rc->peer.connection;

    while (rc->out_pos < rc->out_len) {
        n = c->send(c, rc->out + rc->out_pos, rc->out_len - rc->out_pos);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR || n == 0) {
            return NGX_ERROR;
        }

        rc->out_pos += n;
    }

    if (rc->out_pos == rc->out_len) {
        rc->out_pos = 0;
        rc->out_len = 0;
    }

    /* level-triggered methods (poll): watch the socket only while needed */
    if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * Write what is queued now instead of at the posted write event: a slot
 * release must reach Redis before the client, which is about to get its
 * response, can come back with its next request through another worker.
 */
void
ngx_http_quota_redis_write_now(ngx_http_quota_redis_conn_t *rc)
{
    if (rc->state == NGX_HTTP_QUOTA_REDIS_READY && rc->peer.connection
        && rc->out_pos < rc->out_len)
    {
        ngx_http_quota_redis_write_handler(rc->peer.connection->write);
    }
}


static void
ngx_http_quota_redis_write_handler(ngx_event_t *ev)
{
    ngx_connection_t             *c;
    ngx_http_quota_redis_conn_t  *rc;

    c = ev->data;
    rc = c->data;

    if (rc->state == NGX_HTTP_QUOTA_REDIS_CONNECTING) {
        if (ngx_http_quota_redis_test_connect(c) != NGX_OK) {
            ngx_http_quota_redis_error(rc, NGX_HTTP_QUOTA_ERR_CONNECT);
            ngx_http_quota_redis_close(rc, 1);
            return;
        }

        ngx_http_quota_redis_connected(rc);
        return;
    }

    if (ngx_http_quota_redis_flush(rc) != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, rc->worker->log, ngx_socket_errno,
                      "quota: redis connection lost while writing");
        ngx_http_quota_redis_error(rc, NGX_HTTP_QUOTA_ERR_DISCONNECT);
        ngx_http_quota_redis_close(rc, 1);
    }
}


static void
ngx_http_quota_redis_read_handler(ngx_event_t *ev)
{
    ssize_t                       n;
    ngx_connection_t             *c;
    ngx_http_quota_redis_conn_t  *rc;
    u_char                        buf[NGX_HTTP_QUOTA_READ_SIZE];

    c = ev->data;
    rc = c->data;

    if (rc->state == NGX_HTTP_QUOTA_REDIS_CONNECTING) {
        /* epoll reports a failed connect on both events */
        ngx_http_quota_redis_write_handler(c->write);
        return;
    }

    for ( ;; ) {
        n = c->recv(c, buf, sizeof(buf));

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR || n == 0) {
            ngx_log_error(NGX_LOG_ERR, rc->worker->log, 0,
                          "quota: redis connection lost: %s",
                          n == 0 ? "closed by the server" : "read error");
            ngx_http_quota_redis_error(rc, NGX_HTTP_QUOTA_ERR_DISCONNECT);
            ngx_http_quota_redis_close(rc, 1);
            return;
        }

        rc->last_read = ngx_current_msec;

        if (redisReaderFeed(rc->reader, (const char *) buf, n) != REDIS_OK) {
            ngx_log_error(NGX_LOG_ERR, rc->worker->log, 0,
                          "quota: redis reply buffer allocation failed");
            ngx_http_quota_redis_close(rc, 1);
            return;
        }

        if (ngx_http_quota_redis_replies(rc) != NGX_OK) {
            return;
        }

        if (rc->peer.connection != c) {
            return;     /* closed by what a reply did */
        }
    }

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_http_quota_redis_close(rc, 1);
    }
}


/* every complete reply, to the op at the head of the FIFO */
static ngx_int_t
ngx_http_quota_redis_replies(ngx_http_quota_redis_conn_t *rc)
{
    void              *reply;
    ngx_int_t          rv;
    ngx_connection_t  *c;

    c = rc->peer.connection;

    for ( ;; ) {
        reply = NULL;

        if (redisReaderGetReply(rc->reader, &reply) != REDIS_OK) {
            ngx_log_error(NGX_LOG_ERR, rc->worker->log, 0,
                          "quota: redis protocol error: %s",
                          rc->reader->errstr);
            goto failed;
        }

        if (reply == NULL) {
            return NGX_OK;
        }

        if (rc->head == NULL && !rc->subscribed) {
            freeReplyObject(reply);
            ngx_log_error(NGX_LOG_ERR, rc->worker->log, 0,
                          "quota: redis sent a reply nobody asked for");
            goto failed;
        }

        rv = ngx_http_quota_redis_reply(rc, reply);

        freeReplyObject(reply);

        if (rv != NGX_OK) {
            ngx_http_quota_redis_close(rc, 1);
            return NGX_ERROR;
        }

        if (rc->peer.connection != c) {
            return NGX_ERROR;
        }
    }

failed:

    ngx_http_quota_redis_error(rc, NGX_HTTP_QUOTA_ERR_REPLY);
    ngx_http_quota_redis_close(rc, 1);

    return NGX_ERROR;
}


/* one reply: to the op at the head, or a message of a subscription */
static ngx_int_t
ngx_http_quota_redis_reply(ngx_http_quota_redis_conn_t *rc, redisReply *reply)
{
    ngx_http_quota_op_t  *op;

    op = rc->head;

    if (op == NULL) {
        if (rc->live) {
            ngx_http_quota_redis_live_push(rc, reply);

        } else {
            ngx_http_quota_redis_sentinel_push(rc, reply);
        }

        return NGX_OK;
    }

    rc->head = op->next;
    if (rc->head == NULL) {
        rc->tail = NULL;
    }

    rc->pending--;

    if (op->kind == NGX_HTTP_QUOTA_OP_HANDSHAKE) {
        return ngx_http_quota_redis_handshake_reply(rc, op, reply);
    }

    if (rc->worker->slots && reply->type == REDIS_REPLY_ERROR
        && ngx_http_quota_redis_cluster_redirect(rc, op, reply) == NGX_OK)
    {
        return NGX_OK;      /* MOVED or ASK: op went to the node named */
    }

    if (rc->worker->qmcf->redis_sentinels
        && ngx_http_quota_redis_failover_sign(reply))
    {
        /* not the master any more: a failure for the caller, and move */
        ngx_log_error(NGX_LOG_ERR, rc->worker->log, 0,
                      "quota: redis %V answered \"%*s\", asking the "
                      "sentinels again", &rc->addr->name,
                      (size_t) ngx_min(reply->len, 64), reply->str);

        ngx_http_quota_redis_dispatch(rc, op, NULL);
        ngx_http_quota_redis_sentinel_refresh(rc->worker);

        return NGX_ERROR;
    }

    ngx_http_quota_redis_dispatch(rc, op, reply);

    return NGX_OK;
}


static void
ngx_http_quota_redis_connect_timeout(ngx_event_t *ev)
{
    ngx_http_quota_redis_conn_t  *rc = ev->data;

    if (rc->state == NGX_HTTP_QUOTA_REDIS_DOWN
        || rc->state == NGX_HTTP_QUOTA_REDIS_READY)
    {
        return;
    }

    ngx_log_error(NGX_LOG_ERR, rc->worker->log, 0,
                  "quota: redis connect timed out: connection #%ui not "
                  "ready after %Mms", rc->index,
                  rc->worker->qmcf->redis_connect_timeout);

    ngx_http_quota_redis_error(rc, NGX_HTTP_QUOTA_ERR_CONNECT);

    ngx_http_quota_redis_close(rc, 1);
}


/* the dead-peer rule: silent for dead_after with commands waiting */
static void
ngx_http_quota_redis_dead_handler(ngx_event_t *ev)
{
    ngx_msec_t                    since, silent;
    ngx_http_quota_worker_t      *w;
    ngx_http_quota_redis_conn_t  *rc = ev->data;

    w = rc->worker;

    if (rc->state == NGX_HTTP_QUOTA_REDIS_DOWN || rc->pending == 0) {
        return;
    }

    since = rc->last_read;

    if ((ngx_msec_int_t) (rc->busy_since - since) > 0) {
        since = rc->busy_since;
    }

    silent = ngx_current_msec - since;

    if (silent < w->dead_after) {
        ngx_add_timer(&rc->dead_timer, w->dead_after - silent);
        return;
    }

    ngx_log_error(NGX_LOG_ERR, w->log, 0,
                  "quota: redis connection #%ui dead peer: nothing received "
                  "for %Mms with %ui command(s) waiting, reconnecting",
                  rc->index, silent, rc->pending);

    ngx_http_quota_redis_error(rc, NGX_HTTP_QUOTA_ERR_DISCONNECT);

    ngx_http_quota_redis_close(rc, 1);
}


/*
 * Close the socket the way nginx does (ngx_close_connection() frees the
 * connection before the fd is closed, so poll's fd-indexed table stays
 * right), then give every waiting op its NULL reply.
 */
void
ngx_http_quota_redis_close(ngx_http_quota_redis_conn_t *rc,
    ngx_uint_t reconnect)
{
    ngx_pool_t        *pool;
    ngx_connection_t  *c;

    rc->state = NGX_HTTP_QUOTA_REDIS_DOWN;

    if (rc->connect_timer.timer_set) {
        ngx_del_timer(&rc->connect_timer);
    }

    if (rc->dead_timer.timer_set) {
        ngx_del_timer(&rc->dead_timer);
    }

    if (!reconnect && rc->reconnect_timer.timer_set) {
        ngx_del_timer(&rc->reconnect_timer);
    }

    c = rc->peer.connection;

    if (c) {
        rc->peer.connection = NULL;
        pool = c->pool;

#if (NGX_SSL)
        if (c->ssl) {
            /* the peer may be gone: do not wait for, nor send, a close */
            c->ssl->no_wait_shutdown = 1;
            c->ssl->no_send_shutdown = 1;
            (void) ngx_ssl_shutdown(c);
        }
#endif

        ngx_close_connection(c);

        if (pool) {
            ngx_destroy_pool(pool);
        }
    }

    if (rc->reader) {
        redisReaderFree(rc->reader);
        rc->reader = NULL;
    }

    rc->out_pos = 0;
    rc->out_len = 0;

    if (rc->out_size > 65536 || rc->worker->exiting) {
        ngx_free(rc->out);
        rc->out = NULL;
        rc->out_size = 0;
    }

#if (NGX_SSL)
    if (rc->worker->exiting) {
        ngx_http_quota_redis_ssl_forget(rc);
    }
#endif

    ngx_http_quota_redis_fail_ops(rc);

    if (rc->live) {
        /* the next handshake SUBSCRIBEs again */
        if (reconnect) {
            ngx_http_quota_redis_live_lost(rc);
            ngx_http_quota_redis_schedule(rc);
        }

        return;
    }

    if (rc->sentinel || rc->control) {
        if (rc->sentinel) {
            ngx_http_quota_redis_sentinel_lost(rc);

        } else {
            ngx_http_quota_redis_cluster_lost(rc);
        }

        if (reconnect) {
            ngx_http_quota_redis_schedule(rc);
        }

        return;
    }

    if (reconnect) {
        ngx_http_quota_redis_schedule(rc);

        /* a lost master may be a failover, or a changed cluster */
        ngx_http_quota_redis_sentinel_refresh(rc->worker);
        ngx_http_quota_redis_cluster_refresh(rc->worker);
    }

    /* reliable commands lost with it may go out on another connection */
    ngx_http_quota_redis_on_ready(rc);
}


static void
ngx_http_quota_redis_fail_ops(ngx_http_quota_redis_conn_t *rc)
{
    ngx_http_quota_op_t  *op, *next;

    op = rc->head;

    rc->head = NULL;
    rc->tail = NULL;
    rc->pending = 0;

    for ( /* void */ ; op; op = next) {
        next = op->next;

        if (op->kind == NGX_HTTP_QUOTA_OP_HANDSHAKE) {
            ngx_http_quota_redis_op_free(rc->worker, op);
            continue;
        }

        ngx_http_quota_redis_dispatch(rc, op, NULL);
    }
}


static void
ngx_http_quota_redis_schedule(ngx_http_quota_redis_conn_t *rc)
{
    ngx_msec_t  delay;

    if (rc->worker->exiting || rc->reconnect_timer.timer_set) {
        return;
    }

    /* "equal jitter": half the backoff, plus up to the other half */
    delay = rc->backoff / 2 + (ngx_msec_t) ngx_random() % (rc->backoff / 2 + 1);

    ngx_log_debug3(NGX_LOG_DEBUG_EVENT, rc->worker->log, 0,
                   "quota: redis connection #%ui reconnects in %Mms "
                   "(backoff %Mms)", rc->index, delay, rc->backoff);

    ngx_add_timer(&rc->reconnect_timer, delay);

    rc->backoff *= 2;
    if (rc->backoff > NGX_HTTP_QUOTA_BACKOFF_MAX) {
        rc->backoff = NGX_HTTP_QUOTA_BACKOFF_MAX;
    }
}


static void
ngx_http_quota_redis_reconnect_handler(ngx_event_t *ev)
{
    ngx_http_quota_redis_conn_t  *rc = ev->data;

    if (rc->worker->exiting || rc->state != NGX_HTTP_QUOTA_REDIS_DOWN) {
        return;
    }

    ngx_http_quota_redis_stats_reconnect(rc);

    ngx_http_quota_redis_connect(rc);
}


/*
 * quota_redis_sentinel: the master's address comes from Redis Sentinel.
 *
 * Each worker keeps one connection to one of the listed sentinels (the
 * next one when it fails: any of them may be down).  Its handshake asks
 * SENTINEL get-master-addr-by-name, then SUBSCRIBEs to +switch-master, so
 * the connection then only receives messages (no ops in its FIFO).
 *
 * The data connections (the pool) connect to the master the sentinel
 * named, and check with ROLE that it is one.  When the master moves
 * (+switch-master, a fresh answer that differs), every data connection is
 * closed (requests in flight follow quota_failure_mode, nothing is resent,
 * so nothing is charged twice) and reconnects to the new address at once.
 * Signs that the master may have moved (a lost data connection, ROLE not
 * master, a READONLY or LOADING reply) make the worker ask a sentinel
 * again.
 */


#include "ngx_http_quota_redis.h"


static ngx_int_t ngx_http_quota_redis_sentinel_master(
    ngx_http_quota_worker_t *w, u_char *ip, size_t iplen, u_char *port,
    size_t portlen);
static void ngx_http_quota_redis_sentinel_switch(ngx_http_quota_worker_t *w,
    redisReply *msg);


ngx_int_t
ngx_http_quota_redis_sentinel_init(ngx_http_quota_worker_t *w)
{
    ngx_addr_t                   *addrs;
    ngx_http_quota_redis_conn_t  *rc;

    rc = ngx_pcalloc(ngx_cycle->pool, sizeof(ngx_http_quota_redis_conn_t));
    if (rc == NULL) {
        return NGX_ERROR;
    }

    ngx_http_quota_redis_conn_init(rc, w, 0);

    addrs = w->qmcf->redis_sentinels->elts;

    rc->sentinel = 1;
    rc->addr = &addrs[0];

    w->sentinel = rc;
    w->master.sockaddr = &w->master_sa.sockaddr;
    w->master.name.data = w->master_text;

    ngx_http_quota_redis_connect(rc);

    return NGX_OK;
}


/* the sentinel's handshake: [AUTH], the master's address, SUBSCRIBE */
ngx_int_t
ngx_http_quota_redis_sentinel_handshake(ngx_http_quota_redis_conn_t *rc)
{
    int                          n;
    size_t                       argvlen[3];
    const char                  *argv[3];
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = rc->worker->qmcf;

    if (qmcf->redis_sentinel_password.len) {
        argv[0] = "AUTH";
        argvlen[0] = 4;
        argv[1] = (const char *) qmcf->redis_sentinel_password.data;
        argvlen[1] = qmcf->redis_sentinel_password.len;

        if (ngx_http_quota_redis_handshake_cmd(rc, "sentinel AUTH", 2, argv,
                                               argvlen)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    n = 0;
    argv[n] = "SENTINEL";
    argvlen[n++] = 8;
    argv[n] = "get-master-addr-by-name";
    argvlen[n++] = 23;
    argv[n] = (const char *) qmcf->redis_master_name.data;
    argvlen[n++] = qmcf->redis_master_name.len;

    if (ngx_http_quota_redis_handshake_cmd(rc, "SENTINEL", n, argv, argvlen)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* its confirmation and every message come without an op */
    argv[0] = "SUBSCRIBE";
    argvlen[0] = 9;
    argv[1] = "+switch-master";
    argvlen[1] = 14;

    rc->subscribed = 1;

    return ngx_http_quota_redis_handshake_cmd(rc, NULL, 2, argv, argvlen);
}


/* SENTINEL get-master-addr-by-name: [ip, port], or nil */
ngx_int_t
ngx_http_quota_redis_sentinel_reply(ngx_http_quota_redis_conn_t *rc,
    redisReply *reply)
{
    redisReply               *ip, *port;
    ngx_http_quota_worker_t  *w;

    w = rc->worker;

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2
        || reply->element[0]->type != REDIS_REPLY_STRING
        || reply->element[1]->type != REDIS_REPLY_STRING)
    {
        ngx_log_error(NGX_LOG_ERR, w->log, 0,
                      "quota: redis sentinel %V does not know master \"%V\"",
                      &rc->addr->name, &w->qmcf->redis_master_name);
        return NGX_ERROR;
    }

    ip = reply->element[0];
    port = reply->element[1];

    if (rc->connect_timer.timer_set) {
        ngx_del_timer(&rc->connect_timer);
    }

    rc->state = NGX_HTTP_QUOTA_REDIS_READY;
    rc->backoff = NGX_HTTP_QUOTA_BACKOFF_MIN;

    return ngx_http_quota_redis_sentinel_master(w, (u_char *) ip->str,
                                                ip->len, (u_char *) port->str,
                                                port->len);
}


/* a message on the subscribed connection */
void
ngx_http_quota_redis_sentinel_push(ngx_http_quota_redis_conn_t *rc,
    redisReply *reply)
{
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 3
        && reply->element[0]->type == REDIS_REPLY_STRING
        && reply->element[0]->len == 7
        && ngx_strncmp(reply->element[0]->str, "message", 7) == 0
        && reply->element[2]->type == REDIS_REPLY_STRING)
    {
        ngx_http_quota_redis_sentinel_switch(rc->worker, reply->element[2]);
    }

    /* "subscribe" confirmations and anything else: nothing to do */
}


/* "+switch-master": "NAME OLD-IP OLD-PORT NEW-IP NEW-PORT" */
static void
ngx_http_quota_redis_sentinel_switch(ngx_http_quota_worker_t *w,
    redisReply *msg)
{
    u_char      *p, *last, *tok[5];
    size_t       len[5];
    ngx_uint_t   n;

    p = (u_char *) msg->str;
    last = p + msg->len;

    for (n = 0; n < 5 && p < last; n++) {
        tok[n] = p;

        while (p < last && *p != ' ') {
            p++;
        }

        len[n] = p - tok[n];
        p++;
    }

    if (n != 5
        || len[0] != w->qmcf->redis_master_name.len
        || ngx_strncmp(tok[0], w->qmcf->redis_master_name.data, len[0]) != 0)
    {
        return;     /* another master of these sentinels */
    }

    (void) ngx_http_quota_redis_sentinel_master(w, tok[3], len[3], tok[4],
                                                len[4]);
}


/* the master is at ip:port: move the pool there if it is new */
static ngx_int_t
ngx_http_quota_redis_sentinel_master(ngx_http_quota_worker_t *w, u_char *ip,
    size_t iplen, u_char *port, size_t portlen)
{
    ngx_int_t                     n;
    ngx_uint_t                    i, last;
    socklen_t                     socklen;
    ngx_sockaddr_t                sa;
    ngx_http_quota_redis_conn_t  *rc;

    n = ngx_atoi(port, portlen);
    last = w->nconns + (w->live != NULL);

    if (n < 1 || n > 65535
        || ngx_http_quota_redis_parse_addr(&sa, &socklen, ip, iplen, n)
           != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, w->log, 0,
                      "quota: redis sentinel named master \"%V\" at an "
                      "address that is not IP:PORT: \"%*s\" \"%*s\"",
                      &w->qmcf->redis_master_name, iplen, ip, portlen, port);
        return NGX_ERROR;
    }

    if (w->master.socklen
        && ngx_cmp_sockaddr(&sa.sockaddr, socklen, w->master.sockaddr,
                            w->master.socklen, 1)
           == NGX_OK)
    {
        /* the same: connections that wait for it go now */
        for (i = 0; i < last; i++) {
            rc = (i < w->nconns) ? &w->conns[i] : w->live;

            if (rc->state == NGX_HTTP_QUOTA_REDIS_DOWN
                && !rc->reconnect_timer.timer_set)
            {
                ngx_http_quota_redis_connect(rc);
            }
        }

        return NGX_OK;
    }

    ngx_memcpy(&w->master_sa, &sa, socklen);
    w->master.socklen = socklen;
    w->master.name.len = ngx_sock_ntop(w->master.sockaddr, socklen,
                                       w->master_text, NGX_SOCKADDR_STRLEN, 1);

    ngx_log_error(NGX_LOG_NOTICE, w->log, 0,
                  "quota: redis sentinel: master \"%V\" is %V",
                  &w->qmcf->redis_master_name, &w->master.name);

    /* a failover if any worker knew another master: counted once */
    ngx_http_quota_redis_stats_master(w);

    /* the pool, and quota_live's subscription */
    for (i = 0; i < last; i++) {
        rc = (i < w->nconns) ? &w->conns[i] : w->live;
        rc->addr = &w->master;

        /* in flight: quota_failure_mode, never resent */
        ngx_http_quota_redis_close(rc, 0);
        ngx_http_quota_redis_connect(rc);
    }

    return NGX_OK;
}


/* an IP and a port as Redis names them (also used by the cluster) */
ngx_int_t
ngx_http_quota_redis_parse_addr(ngx_sockaddr_t *sa, socklen_t *socklen,
    u_char *ip, size_t iplen, ngx_int_t port)
{
    in_addr_t  inaddr;

    ngx_memzero(sa, sizeof(ngx_sockaddr_t));

    inaddr = ngx_inet_addr(ip, iplen);

    if (inaddr != INADDR_NONE) {
        sa->sockaddr_in.sin_family = AF_INET;
        sa->sockaddr_in.sin_addr.s_addr = inaddr;
        sa->sockaddr_in.sin_port = htons((in_port_t) port);
        *socklen = sizeof(struct sockaddr_in);
        return NGX_OK;
    }

#if (NGX_HAVE_INET6)
    if (ngx_inet6_addr(ip, iplen, sa->sockaddr_in6.sin6_addr.s6_addr)
        == NGX_OK)
    {
        sa->sockaddr_in6.sin6_family = AF_INET6;
        sa->sockaddr_in6.sin6_port = htons((in_port_t) port);
        *socklen = sizeof(struct sockaddr_in6);
        return NGX_OK;
    }
#endif

    return NGX_ERROR;
}


/* the sentinel connection failed: the next sentinel, after the backoff */
void
ngx_http_quota_redis_sentinel_lost(ngx_http_quota_redis_conn_t *rc)
{
    ngx_addr_t               *addrs;
    ngx_http_quota_worker_t  *w;

    w = rc->worker;
    addrs = w->qmcf->redis_sentinels->elts;

    rc->subscribed = 0;

    w->sentinel_index = (w->sentinel_index + 1)
                        % w->qmcf->redis_sentinels->nelts;
    rc->addr = &addrs[w->sentinel_index];
}


/* a sign the master may have moved: ask (a subscribed connection cannot
   ask, so the sentinel connection starts over) */
void
ngx_http_quota_redis_sentinel_refresh(ngx_http_quota_worker_t *w)
{
    if (w->sentinel == NULL || w->exiting
        || w->sentinel->state != NGX_HTTP_QUOTA_REDIS_READY)
    {
        return;     /* none, or already asking */
    }

    ngx_http_quota_redis_close(w->sentinel, 1);
}


/* READONLY (a replica now) or LOADING (restarted): the master may move */
ngx_int_t
ngx_http_quota_redis_failover_sign(redisReply *reply)
{
    if (reply->type != REDIS_REPLY_ERROR) {
        return 0;
    }

    return (reply->len >= 8 && ngx_strncmp(reply->str, "READONLY", 8) == 0)
           || (reply->len >= 7 && ngx_strncmp(reply->str, "LOADING", 7) == 0);
}


/*
 * quota_live's subscription: one connection per worker, apart from the
 * pool, that SUBSCRIBEs to the events channel (section 4a) and hands every
 * message to ngx_http_quota_live_publish() for the worker's clients.
 *
 * It is an ordinary connection of this layer (connect, TLS, AUTH, the read
 * loop, backoff), with its own handshake: [AUTH], then SUBSCRIBE, whose
 * confirmation and messages come without ops.  A lost connection (Redis
 * restarted, a network error) reconnects with the usual jittered backoff
 * and subscribes again; events published while it was down are lost (Redis
 * Pub/Sub keeps nothing), which the snapshot a reconnecting client gets
 * covers.  It never takes commands from the pool.
 *
 * Where it connects: the quota_redis server; with quota_redis_sentinel the
 * master the sentinels name (it moves with the pool at a failover, and a
 * lost subscription makes the worker ask the sentinels again: the master
 * may have moved); with quota_redis_cluster a seed (the next one when it
 * fails), since PUBLISH and SUBSCRIBE (not the sharded SPUBLISH) reach
 * every node of a cluster.
 */


#include "ngx_http_quota_redis.h"


ngx_int_t
ngx_http_quota_redis_live_init(ngx_http_quota_worker_t *w)
{
    ngx_http_quota_redis_conn_t  *rc;

    rc = ngx_pcalloc(ngx_cycle->pool, sizeof(ngx_http_quota_redis_conn_t));
    if (rc == NULL) {
        return NGX_ERROR;
    }

    ngx_http_quota_redis_conn_init(rc, w, 0);

    rc->live = 1;

    if (w->qmcf->redis_cluster) {
        rc->addr = w->qmcf->redis_cluster->elts;

    } else if (w->qmcf->redis_sentinels) {
        rc->addr = NULL;    /* connects once the master is named */

    } else {
        rc->addr = &w->qmcf->redis_addr;
    }

    w->live = rc;

    ngx_http_quota_redis_connect(rc);

    return NGX_OK;
}


/* [AUTH [user] password], SUBSCRIBE channel */
ngx_int_t
ngx_http_quota_redis_live_handshake(ngx_http_quota_redis_conn_t *rc)
{
    size_t                       argvlen[3];
    const char                  *argv[3];
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = rc->worker->qmcf;

    if (ngx_http_quota_redis_handshake_auth(rc) != NGX_OK) {
        return NGX_ERROR;
    }

    argv[0] = "SUBSCRIBE";
    argvlen[0] = 9;
    argv[1] = (const char *) qmcf->events_channel.data;
    argvlen[1] = qmcf->events_channel.len;

    rc->subscribed = 1;

    return ngx_http_quota_redis_handshake_cmd(rc, NULL, 2, argv, argvlen);
}


/* the subscription was lost: a cluster's next seed; the sentinels asked
   again (the reconnect goes to the master they name) */
void
ngx_http_quota_redis_live_lost(ngx_http_quota_redis_conn_t *rc)
{
    ngx_addr_t               *seeds;
    ngx_http_quota_worker_t  *w;

    w = rc->worker;
    rc->subscribed = 0;

    if (w->qmcf->redis_cluster) {
        seeds = w->qmcf->redis_cluster->elts;
        w->live_seed = (w->live_seed + 1) % w->qmcf->redis_cluster->nelts;
        rc->addr = &seeds[w->live_seed];
        return;
    }

    ngx_http_quota_redis_sentinel_refresh(w);
}


/* ["subscribe", channel, n] once, then ["message", channel, payload] */
void
ngx_http_quota_redis_live_push(ngx_http_quota_redis_conn_t *rc,
    redisReply *reply)
{
    redisReply  *kind, *payload;

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3
        || reply->element[0]->type != REDIS_REPLY_STRING)
    {
        return;
    }

    kind = reply->element[0];
    payload = reply->element[2];

    if (kind->len == 9 && ngx_strncmp(kind->str, "subscribe", 9) == 0) {

        if (rc->connect_timer.timer_set) {
            ngx_del_timer(&rc->connect_timer);
        }

        rc->state = NGX_HTTP_QUOTA_REDIS_READY;
        rc->backoff = NGX_HTTP_QUOTA_BACKOFF_MIN;

        ngx_log_error(NGX_LOG_INFO, rc->worker->log, 0,
                      "quota: live subscription ready");
        return;
    }

    if (kind->len == 7 && ngx_strncmp(kind->str, "message", 7) == 0
        && payload->type == REDIS_REPLY_STRING)
    {
        ngx_http_quota_live_publish(rc->worker->qmcf, (u_char *) payload->str,
                                    payload->len);
    }
}


/*
 * quota_lease off|auto|N [ttl=T] (SPEC section 9): a charge reserves a
 * block of request units in Redis, with the same script and the same
 * checks, and this node's next requests of that tenant and rule spend it
 * from quota_zone with no Redis trip.
 *
 * A lease is keyed by the tenant and the rule's cost vector (a "lease
 * key"): a grant of n units reserves n x c_i of each charged metric, so
 * every request that spends one unit is charged exactly its costs.
 *
 *   spend      a request finds a live lease of its key (units left, ttl
 *              and day not over): one unit, the headers from the tenant's
 *              snapshot; else it goes to Redis asking for LEASE_N units
 *              (quota_lease N: N / c_1; auto: this node's requests of the
 *              key in the last ttl, or its recent pace x ttl, 2 to 1000),
 *              and the script grants n
 *              (1: exact, near the enforcement point or for plans with a
 *              rate or a concurrency limit);
 *   grant      the reply's request spends the first unit, the other n - 1
 *              are the lease;
 *   settle     what was not spent when the ttl passes, at the first
 *              request of a new day, when the tenant is evicted, or when
 *              the worker quits (graceful quit, reload), goes back to
 *              Redis (settle script: idempotent, the record's tombstone).
 *
 * Claiming a lease (to spend a unit or to settle it) happens under the
 * zone lock, so a unit is spent once and a lease is settled once, and
 * never spent after.
 *
 * Graceful quit and reload: nginx ends a quitting worker as soon as only
 * cancelable timers are left, without running them, but first it closes
 * the idle connections, calling their read handlers.  So each worker has
 * a "watcher": a fake idle connection (fd -2, as lua-nginx-module does for
 * its timers) whose handler settles every lease of the zone (whichever
 * worker took it: a reload's new workers take new ones); a settle in
 * flight keeps a non-cancelable timer until Redis has answered.  A grant
 * answered after that pass is settled at once.
 */


#include "ngx_http_quota_zone.h"


/* auto: at least and at most this many units per lease */
#define NGX_HTTP_QUOTA_LEASE_AUTO_MIN   2
#define NGX_HTTP_QUOTA_LEASE_AUTO_MAX   1000

/* live or pending leases per key; more concurrent requests go exact */
#define NGX_HTTP_QUOTA_LEASE_SLOTS      2

/* lease keys per tenant (distinct cost vectors) */
#define NGX_HTTP_QUOTA_LEASE_KEYS       8

/*
 * Settles are resent until Redis answers (the settle is idempotent): by a
 * running worker for as long as the lease's record may exist, less a
 * minute (it lives the ttl + LEASE_RECORD_EXTRA s after the grant, and a
 * settle is first sent after the grant, so a Redis outage shorter than
 * that loses nothing; a resend that finds no record does nothing), every
 * 100 ms at first, then every second; by a quitting worker for at most
 * 50 s after the quit (it must end some day).  Never through the reliable
 * queue of ngx_http_quota_redis.c, whose horizon is a void's.  At most
 * SETTLE_MAX settles wait per worker: more are dropped, and said so.
 */
#define NGX_HTTP_QUOTA_SETTLE_RETRY     100
#define NGX_HTTP_QUOTA_SETTLE_SLOW      1000
#define NGX_HTTP_QUOTA_SETTLE_FAST_FOR  5000
#define NGX_HTTP_QUOTA_SETTLE_KEEP      ((NGX_HTTP_QUOTA_LEASE_RECORD_EXTRA \
                                          - 60) * 1000)
#define NGX_HTTP_QUOTA_SETTLE_GIVE_UP   50000
#define NGX_HTTP_QUOTA_SETTLE_MAX       100000

#define NGX_HTTP_QUOTA_ID_LEN           40


typedef struct {
    ngx_uint_t                   n;           /* 0: slot empty */
    ngx_uint_t                   spent;
    ngx_msec_t                   expires;     /* ngx_current_msec based:
                                                 the grant's own ttl */
    time_t                       day_end;     /* never spans a day */
    time_t                       start;       /* the grant's period: its
                                                 settle's keys */
    ngx_uint_t                   idlen;
    u_char                       id[NGX_HTTP_QUOTA_ID_LEN];
} ngx_http_quota_lease_t;


typedef struct {
    ngx_uint_t                   metric;      /* qmcf->metrics index */
    int64_t                      cost;
} ngx_http_quota_lease_cost_t;


struct ngx_http_quota_lkey_s {
    ngx_http_quota_lkey_t       *next;        /* the node's keys */
    ngx_queue_t                  active;      /* sh->active, with leases */
    ngx_http_quota_zone_node_t  *node;
    uint32_t                     hash;        /* of the cost vector */
    ngx_uint_t                   ncharges;
    ngx_flag_t                   require;     /* quota_require_account */
    ngx_msec_t                   ttl;
    ngx_msec_t                   window;      /* start of this ttl window */
    ngx_uint_t                   hits;        /* requests in it */
    ngx_uint_t                   prev;        /* in the window before */
    ngx_uint_t                   pending;     /* grants in flight */
    ngx_uint_t                   nleases;     /* live slots */
    ngx_http_quota_lease_t       lease[NGX_HTTP_QUOTA_LEASE_SLOTS];
    ngx_http_quota_lease_cost_t  cost[1];     /* ncharges */
};


static ngx_http_quota_lkey_t *ngx_http_quota_lease_key(
    ngx_http_quota_zone_t *z, ngx_http_quota_zone_node_t *node,
    ngx_http_quota_ctx_t *ctx, ngx_http_quota_loc_conf_t *qlcf);
static void ngx_http_quota_lease_count(ngx_http_quota_lkey_t *key,
    ngx_msec_t now);
static ngx_http_quota_lease_t *ngx_http_quota_lease_live(
    ngx_http_quota_zone_t *z, ngx_http_quota_lkey_t *key, ngx_msec_t now);
static void ngx_http_quota_lease_claim(ngx_http_quota_zone_t *z,
    ngx_http_quota_lkey_t *key, ngx_http_quota_lease_t *lease);
static void ngx_http_quota_lease_headers(ngx_http_quota_ctx_t *ctx,
    ngx_http_quota_zone_node_t *node);
static ngx_int_t ngx_http_quota_lease_refused(ngx_http_quota_zone_node_t *node,
    ngx_http_quota_loc_conf_t *qlcf);
static ngx_uint_t ngx_http_quota_lease_quiet(ngx_http_quota_zone_node_t *node,
    ngx_http_quota_ctx_t *ctx, ngx_msec_t ttl, ngx_msec_t now);
static ngx_uint_t ngx_http_quota_lease_units(ngx_http_quota_ctx_t *ctx,
    ngx_http_quota_loc_conf_t *qlcf, ngx_http_quota_lkey_t *key);
static void ngx_http_quota_lease_insert(ngx_http_quota_zone_t *z,
    ngx_http_quota_ctx_t *ctx);
static void ngx_http_quota_lease_settle(ngx_http_quota_zone_t *z,
    ngx_http_quota_zone_node_t *node, u_char *id, size_t idlen, time_t start,
    ngx_uint_t units);
static void ngx_http_quota_lease_send(ngx_http_quota_main_conf_t *qmcf,
    ngx_http_quota_zone_cmd_t *cmd);
static ngx_int_t ngx_http_quota_lease_send_now(
    ngx_http_quota_main_conf_t *qmcf, ngx_http_quota_zone_cmd_t *cmd);
static void ngx_http_quota_lease_settled(void *data, redisReply *reply);
static void ngx_http_quota_lease_retry_handler(ngx_event_t *ev);
static ngx_int_t ngx_http_quota_lease_evict(ngx_http_quota_zone_t *z,
    ngx_http_quota_zone_node_t *node);
static void ngx_http_quota_lease_sweep_handler(ngx_event_t *ev);
static ngx_int_t ngx_http_quota_lease_watch(ngx_cycle_t *cycle);
static void ngx_http_quota_lease_unwatch(void);
static void ngx_http_quota_lease_quit_handler(ngx_event_t *ev);


/* per worker */
static ngx_event_t                 ngx_http_quota_lease_sweep_ev;
static ngx_event_t                 ngx_http_quota_lease_retry_ev;
static ngx_connection_t            ngx_http_quota_lease_dummy;
static ngx_connection_t           *ngx_http_quota_lease_watcher;
static ngx_http_quota_main_conf_t *ngx_http_quota_lease_qmcf;
static ngx_http_quota_zone_cmd_t  *ngx_http_quota_lease_retries;
static ngx_uint_t                  ngx_http_quota_lease_out;
static ngx_msec_t                  ngx_http_quota_lease_quit_at;


char *
ngx_http_quota_lease_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_quota_loc_conf_t *qlcf = conf;

    ngx_int_t    n;
    ngx_str_t   *value, s;
    ngx_msec_t   ttl;
    ngx_uint_t   i;

    if (qlcf->lease_mode != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    ttl = 1000;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "ttl=", 4) == 0) {
            s.data = value[i].data + 4;
            s.len = value[i].len - 4;

            ttl = ngx_parse_time(&s, 0);

            /* the charge record lives ttl + 60 s; a day is the most a
               lease may cover anyway */
            if (ttl == (ngx_msec_t) NGX_ERROR || ttl < 10 || ttl > 3600000) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid ttl \"%V\", expected 10ms to 1h",
                                   &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    qlcf->lease_ttl = ttl;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        qlcf->lease_mode = NGX_HTTP_QUOTA_LEASE_OFF;
        qlcf->lease_units = 0;
        return NGX_CONF_OK;
    }

    if (ngx_strcmp(value[1].data, "auto") == 0) {
        qlcf->lease_mode = NGX_HTTP_QUOTA_LEASE_AUTO;
        qlcf->lease_units = 0;

    } else {
        n = ngx_atoi(value[1].data, value[1].len);

        if (n < 1 || n > 1000000000) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid value \"%V\", expected off, auto or "
                               "a number of units", &value[1]);
            return NGX_CONF_ERROR;
        }

        qlcf->lease_mode = NGX_HTTP_QUOTA_LEASE_UNITS;
        qlcf->lease_units = (ngx_uint_t) n;
    }

    ngx_http_quota_zone_need(cf, &cmd->name);

    return NGX_CONF_OK;
}


char *
ngx_http_quota_lease_merge(ngx_conf_t *cf, ngx_http_quota_loc_conf_t *prev,
    ngx_http_quota_loc_conf_t *conf)
{
    ngx_msec_t                   sweep;
    ngx_http_quota_main_conf_t  *qmcf;

    if (conf->lease_mode == NGX_CONF_UNSET_UINT) {
        conf->lease_mode = prev->lease_mode;
        conf->lease_units = prev->lease_units;
        conf->lease_ttl = prev->lease_ttl;
    }

    if (conf->lease_mode == NGX_CONF_UNSET_UINT) {
        conf->lease_mode = NGX_HTTP_QUOTA_LEASE_OFF;
        conf->lease_units = 0;
        conf->lease_ttl = 1000;
    }

    if (conf->lease_mode == NGX_HTTP_QUOTA_LEASE_OFF) {
        return NGX_CONF_OK;
    }

    /* every worker sweeps expired leases 4 times per (shortest) ttl */
    qmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_quota_module);

    sweep = ngx_max(conf->lease_ttl / 4, 50);

    if (qmcf->lease_sweep == 0 || sweep < qmcf->lease_sweep) {
        qmcf->lease_sweep = sweep;
    }

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_quota_lease_init_conf(ngx_conf_t *cf)
{
    return ngx_http_quota_zone_add_hook(cf, ngx_http_quota_lease_evict);
}


ngx_int_t
ngx_http_quota_lease_init_worker(ngx_cycle_t *cycle,
    ngx_http_quota_main_conf_t *qmcf)
{
    ngx_http_quota_lease_qmcf = qmcf;

    ngx_http_quota_lease_dummy.fd = (ngx_socket_t) -1;

    ngx_http_quota_lease_retry_ev.handler =
                                        ngx_http_quota_lease_retry_handler;
    ngx_http_quota_lease_retry_ev.data = &ngx_http_quota_lease_dummy;
    ngx_http_quota_lease_retry_ev.log = cycle->log;

    if (qmcf->zone == NULL || qmcf->lease_sweep == 0) {
        return NGX_OK;
    }

    ngx_http_quota_lease_sweep_ev.handler =
                                        ngx_http_quota_lease_sweep_handler;
    ngx_http_quota_lease_sweep_ev.data = &ngx_http_quota_lease_dummy;
    ngx_http_quota_lease_sweep_ev.log = cycle->log;
    ngx_http_quota_lease_sweep_ev.cancelable = 1;

    ngx_add_timer(&ngx_http_quota_lease_sweep_ev, qmcf->lease_sweep);

    return ngx_http_quota_lease_watch(cycle);
}


/* the fake idle connection whose read handler runs at a graceful quit */
static ngx_int_t
ngx_http_quota_lease_watch(ngx_cycle_t *cycle)
{
    ngx_connection_t  *c, *saved;

    /* ngx_get_connection() would take files[0] for the fake socket 0 */
    saved = cycle->files ? cycle->files[0] : NULL;

    c = ngx_get_connection(0, cycle->log);

    if (cycle->files) {
        cycle->files[0] = saved;
    }

    if (c == NULL) {
        return NGX_ERROR;
    }

    /* not -1, so that ngx_close_idle_connections() sees it */
    c->fd = (ngx_socket_t) -2;
    c->idle = 1;
    c->read->handler = ngx_http_quota_lease_quit_handler;
    c->data = NULL;

    ngx_http_quota_lease_watcher = c;

    return NGX_OK;
}


static void
ngx_http_quota_lease_unwatch(void)
{
    ngx_connection_t  *c;

    c = ngx_http_quota_lease_watcher;

    if (c == NULL) {
        return;
    }

    ngx_http_quota_lease_watcher = NULL;

    /* freed with the fd it was taken with: ngx_free_connection() reads
       files[c->fd] when the event method keeps a files array (poll,
       select; files[0] was never set to this connection), then marked
       closed for the exit's "open socket left" check */
    c->fd = 0;
    ngx_free_connection(c);
    c->fd = (ngx_socket_t) -1;
}


/* graceful quit or reload: every lease of the zone goes back now */
static void
ngx_http_quota_lease_quit_handler(ngx_event_t *ev)
{
    ngx_http_quota_lease_quit_at = ngx_current_msec | 1;

    ngx_http_quota_lease_unwatch();

    if (ngx_http_quota_lease_sweep_ev.timer_set) {
        ngx_del_timer(&ngx_http_quota_lease_sweep_ev);
    }

    ngx_http_quota_lease_sweep_handler(&ngx_http_quota_lease_sweep_ev);
}


/* exit_process, after the Redis connections closed: what was not
   answered is lost (the units stay charged), and said so */
void
ngx_http_quota_lease_exit_worker(void)
{
    ngx_http_quota_zone_cmd_t  *cmd;

    ngx_http_quota_lease_unwatch();

    if (ngx_http_quota_lease_sweep_ev.timer_set) {
        ngx_del_timer(&ngx_http_quota_lease_sweep_ev);
    }

    if (ngx_http_quota_lease_retry_ev.timer_set) {
        ngx_del_timer(&ngx_http_quota_lease_retry_ev);
    }

    while (ngx_http_quota_lease_retries) {
        cmd = ngx_http_quota_lease_retries;
        ngx_http_quota_lease_retries = cmd->next;

        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "quota: lease %*s of tenant \"%*s\": %ui units not "
                      "returned to redis before exit", cmd->argvlen[1],
                      cmd->argv[1], cmd->argvlen[0], cmd->argv[0],
                      (ngx_uint_t) (uintptr_t) cmd->data);

        ngx_free(cmd);
    }
}


/*
 * The precontent handler, for a metered request that would go to Redis.
 * NGX_OK: decided from the zone (one unit of a lease: ctx says CHARGED);
 * NGX_DECLINED: go to Redis, asking for ctx->lease_n units.
 */
ngx_int_t
ngx_http_quota_lease_spend(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx,
    ngx_http_quota_loc_conf_t *qlcf)
{
    ngx_msec_t                   now;
    ngx_http_quota_zone_t       *z;
    ngx_http_quota_lkey_t       *key;
    ngx_http_quota_lease_t      *lease;
    ngx_http_quota_zone_node_t  *node;
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    z = qmcf->zone;

    /* shadow traffic, dry run and rule-less requests stay exact; so does
       a quitting worker (its leases are being returned) */
    if (qlcf->lease_mode == NGX_HTTP_QUOTA_LEASE_OFF || z == NULL
        || z->sh == NULL || ctx->rule == NULL || ctx->bypass
        || qlcf->dry_run || ngx_exiting || ngx_terminate)
    {
        return NGX_DECLINED;
    }

    now = ngx_current_msec;

    ngx_http_quota_zone_lock(z);

    node = ngx_http_quota_zone_node(z, &ctx->tenant, 1);
    key = node ? ngx_http_quota_lease_key(z, node, ctx, qlcf) : NULL;

    if (key == NULL || ngx_http_quota_lease_refused(node, qlcf)) {
        /* no room in the zone: exact, as without it; a cached suspension
           or unknown tenant: the reject cache answers */
        ngx_http_quota_zone_unlock(z);
        return NGX_DECLINED;
    }

    ngx_http_quota_lease_count(key, now);

    lease = ngx_http_quota_lease_live(z, key, now);

    if (lease) {
        lease->spent++;

        ngx_http_quota_zone_recall(ctx, node);
        ngx_http_quota_lease_headers(ctx, node);

        if (lease->spent == lease->n) {
            /* all spent: nothing to return, the record just expires */
            ngx_http_quota_lease_claim(z, key, lease);
        }

        ngx_http_quota_zone_unlock(z);

        ctx->leased = 1;
        ctx->code = NGX_HTTP_QUOTA_CODE_CHARGED;
        ngx_http_quota_count(qmcf, local[NGX_HTTP_QUOTA_LOCAL_LEASE]);

        return NGX_OK;
    }

    ctx->lease_ttl = qlcf->lease_ttl;
    ctx->lease_n = ngx_http_quota_lease_units(ctx, qlcf, key);

    /* the second the charge is built in (script_charge runs next, with
       the same cached clock): the day its ARG_TODAY names */
    ctx->lease_sec = ngx_time();

    ctx->lease_quiet = ngx_http_quota_lease_quiet(node, ctx,
                                                  qlcf->lease_ttl, now);

    if (ctx->lease_n >= 2) {
        /* the grant's reply makes the lease: hold the node (and so the
           key) until then */
        key->pending++;
        ctx->lease_key = key;

        if (ctx->zone_node == NULL) {
            node->busy++;
            ctx->zone_node = node;
        }
    }

    ngx_http_quota_zone_unlock(z);

    return NGX_DECLINED;
}


/*
 * The key of the request's cost vector, made when missing.  Locations
 * with quota_require_account on have keys of their own: a lease granted
 * on the default plan to a tenant with no account (where it is off) must
 * not admit where Redis would answer UNKNOWN_TENANT.
 */
static ngx_http_quota_lkey_t *
ngx_http_quota_lease_key(ngx_http_quota_zone_t *z,
    ngx_http_quota_zone_node_t *node, ngx_http_quota_ctx_t *ctx,
    ngx_http_quota_loc_conf_t *qlcf)
{
    ngx_flag_t               require;

    size_t                   size;
    uint32_t                 hash;
    ngx_uint_t               i, n;
    ngx_http_quota_lkey_t   *key, *victim, **victim_at, **at;

    require = qlcf->require_account ? 1 : 0;

    ngx_crc32_init(hash);
    ngx_crc32_update(&hash, (u_char *) &require, sizeof(ngx_flag_t));

    for (i = 0; i < ctx->ncharges; i++) {
        ngx_crc32_update(&hash, (u_char *) &ctx->rule->charges[i].metric,
                         sizeof(ngx_uint_t));
        ngx_crc32_update(&hash, (u_char *) &ctx->costs[i], sizeof(int64_t));
    }

    ngx_crc32_final(hash);

    n = 0;
    victim = NULL;
    victim_at = NULL;

    for (at = &node->lkeys; *at; at = &(*at)->next) {
        key = *at;
        n++;

        if (key->hash == hash && key->ncharges == ctx->ncharges
            && key->require == require)
        {
            for (i = 0; i < ctx->ncharges; i++) {
                if (key->cost[i].metric != ctx->rule->charges[i].metric
                    || key->cost[i].cost != ctx->costs[i])
                {
                    break;
                }
            }

            if (i == ctx->ncharges) {
                key->ttl = qlcf->lease_ttl;
                return key;
            }
        }

        if (key->nleases == 0 && key->pending == 0) {
            victim = key;
            victim_at = at;
        }
    }

    /* many cost vectors (variable costs): reuse an idle key's place */
    if (n >= NGX_HTTP_QUOTA_LEASE_KEYS) {
        if (victim == NULL) {
            return NULL;
        }

        *victim_at = victim->next;
        ngx_http_quota_zone_free(z, victim);
    }

    size = sizeof(ngx_http_quota_lkey_t)
           + (ctx->ncharges ? ctx->ncharges - 1 : 0)
             * sizeof(ngx_http_quota_lease_cost_t);

    key = ngx_http_quota_zone_alloc(z, size, node);
    if (key == NULL) {
        return NULL;
    }

    ngx_memzero(key, size);

    key->node = node;
    key->hash = hash;
    key->ncharges = ctx->ncharges;
    key->require = require;
    key->ttl = qlcf->lease_ttl;
    key->window = ngx_current_msec;

    for (i = 0; i < ctx->ncharges; i++) {
        key->cost[i].metric = ctx->rule->charges[i].metric;
        key->cost[i].cost = ctx->costs[i];
    }

    /* the zone allocation may have evicted keys of other nodes only */
    key->next = node->lkeys;
    node->lkeys = key;

    return key;
}


/*
 * Under the lock: quota_reject_cache holds a live ACCOUNT_SUSPENDED or
 * UNKNOWN_TENANT for the tenant.  Those come before a lease (every metered
 * request of the tenant meets them); a cached QUOTA_EXCEEDED or
 * SPENDING_CAP_REACHED does not: the units of a live lease are reserved
 * in Redis already (and the overage in them paid), so they are spent.
 */
static ngx_int_t
ngx_http_quota_lease_refused(ngx_http_quota_zone_node_t *node,
    ngx_http_quota_loc_conf_t *qlcf)
{
    ngx_http_quota_zone_reject_t  *e;

    e = &node->reject;

    return qlcf->reject_cache && e->until != 0
           && (ngx_msec_int_t) (e->until - ngx_current_msec) > 0
           && e->day == ngx_time() / 86400
           && (e->code == NGX_HTTP_QUOTA_CODE_SUSPENDED
               || e->code == NGX_HTTP_QUOTA_CODE_UNKNOWN);
}


/*
 * A grant was prepared (lease_spend declined) but the request is decided
 * without a Redis reply (the reject cache, quota_fallback's open circuit,
 * no connection): the key's pending slot and the node's hold go now, not
 * when the request ends.
 */
void
ngx_http_quota_lease_cancel(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx)
{
    ngx_http_quota_lease_reply(r, ctx);
    ngx_http_quota_zone_release(ctx);
}


/* this node's requests of the key, per ttl window (auto's rate) */
static void
ngx_http_quota_lease_count(ngx_http_quota_lkey_t *key, ngx_msec_t now)
{
    ngx_msec_int_t  elapsed;

    elapsed = (ngx_msec_int_t) (now - key->window);

    if (elapsed >= (ngx_msec_int_t) key->ttl) {
        key->prev = (elapsed < 2 * (ngx_msec_int_t) key->ttl) ? key->hits : 0;
        key->hits = 0;
        key->window = now;
    }

    key->hits++;
}


/*
 * The lease to spend from: units left, its ttl and day not over.  Leases
 * past their ttl or day are claimed on the way (their rest is settled), so
 * the first request of a new day never spends yesterday's units.
 */
static ngx_http_quota_lease_t *
ngx_http_quota_lease_live(ngx_http_quota_zone_t *z,
    ngx_http_quota_lkey_t *key, ngx_msec_t now)
{
    time_t                   sec;
    ngx_uint_t               i;
    ngx_http_quota_lease_t  *lease, *best;

    sec = ngx_time();
    best = NULL;

    for (i = 0; i < NGX_HTTP_QUOTA_LEASE_SLOTS; i++) {
        lease = &key->lease[i];

        if (lease->n == 0) {
            continue;
        }

        if ((ngx_msec_int_t) (lease->expires - now) <= 0
            || sec >= lease->day_end)
        {
            ngx_http_quota_lease_claim(z, key, lease);
            continue;
        }

        if (best == NULL
            || (ngx_msec_int_t) (lease->expires - best->expires) < 0)
        {
            best = lease;
        }
    }

    return best;
}


/* under the lock: the lease is done; its unspent units go back */
static void
ngx_http_quota_lease_claim(ngx_http_quota_zone_t *z,
    ngx_http_quota_lkey_t *key, ngx_http_quota_lease_t *lease)
{
    if (lease->n > lease->spent) {
        ngx_http_quota_lease_settle(z, key->node, lease->id, lease->idlen,
                                    lease->start,
                                    lease->n - lease->spent);
    }

    lease->n = 0;
    lease->spent = 0;

    key->nleases--;
    z->sh->leases--;

    if (key->nleases == 0) {
        ngx_queue_remove(&key->active);
    }
}


/*
 * Lease-mode headers: the snapshot's used (which counts every unit leased
 * so far) minus what this node's leases of the tenant have not spent; it
 * may lag by other nodes' leases (SPEC 9, bounded staleness).
 */
static void
ngx_http_quota_lease_headers(ngx_http_quota_ctx_t *ctx,
    ngx_http_quota_zone_node_t *node)
{
    int64_t                  unspent;
    ngx_uint_t               i, j, s;
    ngx_http_quota_lkey_t   *key;
    ngx_http_quota_lease_t  *lease;

    if (!ctx->have_usage) {
        return;
    }

    for (i = 0; i < ctx->ncharges; i++) {
        unspent = 0;

        for (key = node->lkeys; key; key = key->next) {
            for (s = 0; s < NGX_HTTP_QUOTA_LEASE_SLOTS; s++) {
                lease = &key->lease[s];

                if (lease->n == 0) {
                    continue;
                }

                for (j = 0; j < key->ncharges; j++) {
                    if (key->cost[j].metric == ctx->rule->charges[i].metric) {
                        unspent += (int64_t) (lease->n - lease->spent)
                                   * key->cost[j].cost;
                    }
                }
            }
        }

        ctx->used[i] = ctx->used[i] > unspent ? ctx->used[i] - unspent : 0;
    }
}


/*
 * quota_events on: at most one usage_update per tenant and metric and ttl
 * (SPEC 9), whatever the rule or cost vector.  1: every charged metric
 * had one asked within the ttl, so this charge sends none.
 */
static ngx_uint_t
ngx_http_quota_lease_quiet(ngx_http_quota_zone_node_t *node,
    ngx_http_quota_ctx_t *ctx, ngx_msec_t ttl, ngx_msec_t now)
{
    ngx_uint_t                     i, quiet;
    ngx_http_quota_zone_metric_t  *m, *metrics;

    metrics = ngx_http_quota_zone_metrics(node);
    quiet = (ctx->ncharges > 0);

    for (i = 0; i < ctx->ncharges; i++) {
        m = &metrics[ctx->rule->charges[i].metric];

        if (m->event == 0 || now - m->event >= ttl) {
            quiet = 0;
        }
    }

    if (quiet) {
        return 1;
    }

    for (i = 0; i < ctx->ncharges; i++) {
        metrics[ctx->rule->charges[i].metric].event = now ? now : 1;
    }

    return 0;
}


/* LEASE_N for a request that found no live lease (1: exact) */
static ngx_uint_t
ngx_http_quota_lease_units(ngx_http_quota_ctx_t *ctx,
    ngx_http_quota_loc_conf_t *qlcf, ngx_http_quota_lkey_t *key)
{
    ngx_uint_t      n;
    ngx_msec_int_t  elapsed;

    /* as many grants in flight and leases live as slots: exact */
    if (key->pending + key->nleases >= NGX_HTTP_QUOTA_LEASE_SLOTS) {
        return 1;
    }

    if (qlcf->lease_mode == NGX_HTTP_QUOTA_LEASE_UNITS) {
        n = qlcf->lease_units;

        if (ctx->ncharges && ctx->costs[0] > 0) {
            n = (ngx_uint_t) ((int64_t) n / ctx->costs[0]);
        }

        return n >= 2 ? n : 1;
    }

    /*
     * A key with no history (its first request in the last two ttls) is
     * charged exactly: with a variable cost nearly every request is a new
     * key, and a lease per request would run the script twice (grant and
     * settle) and reserve a multiple of its cost meanwhile.
     */
    if (key->prev == 0 && key->hits < 2) {
        return 1;
    }

    /*
     * The requests of the last ttl: the window before, or this one's
     * pace when it is faster (a tenant that just started, or sped up):
     * extrapolated over at least a quarter of the ttl, so that a few
     * requests in a row do not look like a flood.
     */
    elapsed = (ngx_msec_int_t) (ngx_current_msec - key->window);
    elapsed = ngx_max(elapsed, (ngx_msec_int_t) (key->ttl / 4));
    elapsed = ngx_max(elapsed, 1);

    n = ngx_max(key->prev, (ngx_uint_t) ((uint64_t) key->hits * key->ttl
                                         / (ngx_msec_t) elapsed));

    if (n < NGX_HTTP_QUOTA_LEASE_AUTO_MIN) {
        n = NGX_HTTP_QUOTA_LEASE_AUTO_MIN;
    }

    if (n > NGX_HTTP_QUOTA_LEASE_AUTO_MAX) {
        n = NGX_HTTP_QUOTA_LEASE_AUTO_MAX;
    }

    return n;
}


/*
 * The handler at CTX_DECIDED, and the request's cleanup: a grant that was
 * asked for is answered (or never will be).  A granted lease is kept
 * whatever happens to the request: it is Redis' reservation.
 */
void
ngx_http_quota_lease_reply(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx)
{
    ngx_http_quota_zone_t       *z;
    ngx_http_quota_main_conf_t  *qmcf;

    if (ctx->lease_key == NULL) {
        return;
    }

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    z = qmcf->zone;

    ngx_http_quota_zone_lock(z);

    ctx->lease_key->pending--;

    /* only a reply that was understood says what Redis reserved; a charge
       whose outcome is unknown is voided, leases and all */
    if (ctx->state == NGX_HTTP_QUOTA_CTX_DECIDED
        || ctx->state == NGX_HTTP_QUOTA_CTX_FINISHED)
    {
        if (!ctx->redis_failed && ctx->code == NGX_HTTP_QUOTA_CODE_CHARGED
            && ctx->lease_granted >= 2)
        {
            ngx_http_quota_lease_insert(z, ctx);
        }
    }

    ngx_http_quota_zone_unlock(z);

    ctx->lease_key = NULL;
    ctx->lease_granted = 0;
}


/* under the lock: the request spent the grant's first unit */
static void
ngx_http_quota_lease_insert(ngx_http_quota_zone_t *z,
    ngx_http_quota_ctx_t *ctx)
{
    time_t                   end;
    ngx_uint_t               i;
    quota_period_t           day;
    ngx_http_quota_lkey_t   *key;
    ngx_http_quota_lease_t  *lease;

    key = ctx->lease_key;
    lease = NULL;

    for (i = 0; i < NGX_HTTP_QUOTA_LEASE_SLOTS; i++) {
        if (key->lease[i].n == 0) {
            lease = &key->lease[i];
            break;
        }
    }

    if (z->qmcf->stats) {
        (void) ngx_atomic_fetch_add(&z->qmcf->stats->leases, 1);
    }

    /*
     * The grant was charged in the day (and period) of the second the
     * charge was built, not of the reply: a lease ends with that day.  A
     * quitting worker, no free slot, an id that does not fit, or a day
     * already over (a grant sent before midnight, answered after): the
     * units go straight back.
     */
    end = 0;

    if (quota_period_day(ctx->lease_sec, &day) == 0) {
        end = day.end;

        if (ctx->billing.end > 0 && ctx->billing.end < end) {
            end = ctx->billing.end;
        }
    }

    if (lease == NULL || ngx_exiting || ngx_terminate
        || ctx->charge_id.len > NGX_HTTP_QUOTA_ID_LEN
        || ngx_time() >= end)
    {
        ngx_http_quota_lease_settle(z, key->node, ctx->charge_id.data,
                                    ctx->charge_id.len, ctx->billing.start,
                                    ctx->lease_granted - 1);
        return;
    }

    lease->n = ctx->lease_granted;
    lease->spent = 1;
    lease->expires = ngx_current_msec + ctx->lease_ttl;
    lease->day_end = end;
    lease->start = ctx->billing.start;
    lease->idlen = ctx->charge_id.len;
    ngx_memcpy(lease->id, ctx->charge_id.data, ctx->charge_id.len);

    if (key->nleases++ == 0) {
        ngx_queue_insert_tail(&z->sh->active, &key->active);
    }

    z->sh->leases++;

    /* the reply's used counts the units just reserved: the headers say
       what was spent, as for the lease's other requests */
    ngx_http_quota_lease_headers(ctx, key->node);
}


/*
 * Under the lock: the settle of "units" of lease "id" is sent by the
 * unlock (ngx_http_quota_lease_send); its cmd holds the tenant, the id and
 * the grant's period start date (which names the keys the settle declares)
 * as its three arguments, and the units in its data.
 */
static void
ngx_http_quota_lease_settle(ngx_http_quota_zone_t *z,
    ngx_http_quota_zone_node_t *node, u_char *id, size_t idlen, time_t start,
    ngx_uint_t units)
{
    size_t                      argvlen[3];
    const char                 *argv[3];
    ngx_http_quota_zone_cmd_t  *cmd;
    u_char                      date[QUOTA_DATE_LEN];

    quota_format_date(start, (char *) date);

    argv[0] = (const char *) ngx_http_quota_zone_tenant(node);
    argvlen[0] = node->len;
    argv[1] = (const char *) id;
    argvlen[1] = idlen;
    argv[2] = (const char *) date;
    argvlen[2] = QUOTA_DATE_LEN;

    cmd = NULL;

    if (ngx_http_quota_lease_out < NGX_HTTP_QUOTA_SETTLE_MAX) {
        cmd = ngx_http_quota_zone_defer(z, 3, argv, argvlen,
                                        ngx_http_quota_lease_send);
    }

    if (cmd == NULL) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "quota: lease %*s of tenant \"%*s\": %ui units not "
                      "returned to redis", idlen, id, (size_t) node->len,
                      ngx_http_quota_zone_tenant(node), units);
        return;
    }

    cmd->data = (void *) (uintptr_t) units;
    ngx_http_quota_lease_out++;
}


/* outside the lock: send, or keep for the retry timer */
static void
ngx_http_quota_lease_send(ngx_http_quota_main_conf_t *qmcf,
    ngx_http_quota_zone_cmd_t *cmd)
{
    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "quota: settle %*s, %ui units", cmd->argvlen[1],
                   cmd->argv[1], (ngx_uint_t) (uintptr_t) cmd->data);

    if (cmd->since == 0) {
        cmd->since = ngx_current_msec | 1;
    }

    if (ngx_http_quota_lease_send_now(qmcf, cmd) != NGX_OK) {
        cmd->next = ngx_http_quota_lease_retries;
        ngx_http_quota_lease_retries = cmd;
    }

    /* a settle in flight keeps a quitting worker alive until answered */
    if (!ngx_http_quota_lease_retry_ev.timer_set) {
        ngx_add_timer(&ngx_http_quota_lease_retry_ev,
                      NGX_HTTP_QUOTA_SETTLE_RETRY);
    }
}


static ngx_int_t
ngx_http_quota_lease_send_now(ngx_http_quota_main_conf_t *qmcf,
    ngx_http_quota_zone_cmd_t *cmd)
{
    ngx_str_t  tenant, id, start;

    tenant.data = (u_char *) cmd->argv[0];
    tenant.len = cmd->argvlen[0];
    id.data = (u_char *) cmd->argv[1];
    id.len = cmd->argvlen[1];
    start.data = (u_char *) cmd->argv[2];
    start.len = cmd->argvlen[2];

    return ngx_http_quota_script_settle(qmcf, &tenant, &id, &start,
                                        (ngx_uint_t) (uintptr_t) cmd->data,
                                        ngx_http_quota_lease_settled, cmd);
}


static void
ngx_http_quota_lease_settled(void *data, redisReply *reply)
{
    ngx_http_quota_zone_cmd_t *cmd = data;

    if (reply == NULL) {
        /* the connection went away: the settle may or may not have run;
           it is idempotent, so it is sent again */
        cmd->next = ngx_http_quota_lease_retries;
        ngx_http_quota_lease_retries = cmd;
        return;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "quota: settle of lease %*s failed: %*s",
                      cmd->argvlen[1], cmd->argv[1],
                      (size_t) reply->len, reply->str);

    } else if (reply->type == REDIS_REPLY_INTEGER && reply->integer < 0) {
        /* the keys named from the grant's reply are not its record's */
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "quota: settle of lease %*s: its record is not of the "
                      "period %*s, nothing given back",
                      cmd->argvlen[1], cmd->argv[1], cmd->argvlen[2],
                      cmd->argv[2]);
    }

    ngx_http_quota_lease_out--;
    ngx_free(cmd);
}


static void
ngx_http_quota_lease_retry_handler(ngx_event_t *ev)
{
    ngx_msec_t                  now, age, delay;
    ngx_http_quota_zone_cmd_t  *cmd, *list;

    list = ngx_http_quota_lease_retries;
    ngx_http_quota_lease_retries = NULL;

    now = ngx_current_msec;
    delay = NGX_HTTP_QUOTA_SETTLE_SLOW;

    while (list) {
        cmd = list;
        list = cmd->next;
        cmd->next = NULL;

        age = now - cmd->since;

        if (age < NGX_HTTP_QUOTA_SETTLE_FAST_FOR) {
            delay = NGX_HTTP_QUOTA_SETTLE_RETRY;
        }

        /* signed: since and quit_at may be one more than the clock */
        if ((ngx_msec_int_t) age > NGX_HTTP_QUOTA_SETTLE_KEEP
            || ((ngx_exiting || ngx_terminate)
                && (ngx_msec_int_t) (now - ngx_max(cmd->since,
                                              ngx_http_quota_lease_quit_at))
                   > NGX_HTTP_QUOTA_SETTLE_GIVE_UP))
        {
            ngx_log_error(NGX_LOG_ERR, ev->log, 0,
                          "quota: lease %*s of tenant \"%*s\": %ui units "
                          "not returned to redis, giving up",
                          cmd->argvlen[1], cmd->argv[1], cmd->argvlen[0],
                          cmd->argv[0], (ngx_uint_t) (uintptr_t) cmd->data);
            ngx_http_quota_lease_out--;
            ngx_free(cmd);
            continue;
        }

        if (ngx_http_quota_lease_send_now(ngx_http_quota_lease_qmcf, cmd)
            != NGX_OK)
        {
            cmd->next = ngx_http_quota_lease_retries;
            ngx_http_quota_lease_retries = cmd;
        }
    }

    if (ngx_exiting || ngx_terminate) {
        delay = NGX_HTTP_QUOTA_SETTLE_RETRY;
    }

    /* settles in flight (not in the list) are waited for every 100 ms */
    if (ngx_http_quota_lease_retries == NULL) {
        delay = NGX_HTTP_QUOTA_SETTLE_RETRY;
    }

    if (ngx_http_quota_lease_out) {
        ngx_add_timer(ev, delay);
    }
}


/* eviction hook: the tenant's leases go back first */
static ngx_int_t
ngx_http_quota_lease_evict(ngx_http_quota_zone_t *z,
    ngx_http_quota_zone_node_t *node)
{
    ngx_uint_t              i;
    ngx_http_quota_lkey_t  *key, *next;

    for (key = node->lkeys; key; key = key->next) {
        if (key->pending) {
            return NGX_DECLINED;
        }
    }

    for (key = node->lkeys; key; key = next) {
        next = key->next;

        for (i = 0; i < NGX_HTTP_QUOTA_LEASE_SLOTS; i++) {
            if (key->lease[i].n) {
                ngx_http_quota_lease_claim(z, key, &key->lease[i]);
            }
        }

        ngx_http_quota_zone_free(z, key);
    }

    node->lkeys = NULL;

    return NGX_OK;
}


/*
 * Every worker: claim the leases whose ttl or day is over and settle
 * them; when quitting (graceful quit, reload), every lease of the zone.
 */
static void
ngx_http_quota_lease_sweep_handler(ngx_event_t *ev)
{
    time_t                   sec;
    ngx_uint_t               i;
    ngx_msec_t               now;
    ngx_queue_t             *q, *next;
    ngx_http_quota_zone_t   *z;
    ngx_http_quota_lkey_t   *key;
    ngx_http_quota_lease_t  *lease;

    z = ngx_http_quota_lease_qmcf->zone;
    now = ngx_current_msec;
    sec = ngx_time();

    ngx_http_quota_zone_lock(z);

    for (q = ngx_queue_head(&z->sh->active);
         q != ngx_queue_sentinel(&z->sh->active);
         q = next)
    {
        next = ngx_queue_next(q);
        key = ngx_queue_data(q, ngx_http_quota_lkey_t, active);

        for (i = 0; i < NGX_HTTP_QUOTA_LEASE_SLOTS; i++) {
            lease = &key->lease[i];

            if (lease->n
                && (ngx_exiting
                    || (ngx_msec_int_t) (lease->expires - now) <= 0
                    || sec >= lease->day_end))
            {
                ngx_http_quota_lease_claim(z, key, lease);
            }
        }
    }

    ngx_http_quota_zone_unlock(z);

    if (!ngx_exiting) {
        ngx_add_timer(ev, ngx_http_quota_lease_qmcf->lease_sweep);
    }
}

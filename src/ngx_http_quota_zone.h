
/*
 * The node ledger's shared zone (quota_zone NAME:SIZE, SPEC section 9):
 * one node per tenant in shared memory, shared by the workers of this
 * gateway, like limit_req_zone.  Lease mode (ngx_http_quota_lease.c), the
 * rejection cache (ngx_http_quota_reject.c) and the Redis-down fallback
 * (ngx_http_quota_fallback.c) keep their per-tenant state here.
 *
 * Locking: every read or write of the zone happens between
 * ngx_http_quota_zone_lock() and ngx_http_quota_zone_unlock(), and no node
 * pointer is used after the unlock unless the node is held (see "busy"
 * below).  The lock is the slab pool's mutex, as in limit_req.  Nothing
 * that can wait (Redis, allocation from the system) happens under it:
 * commands that must go to Redis because of something done under the lock
 * (a lease returned by an eviction) are deferred with
 * ngx_http_quota_zone_defer() and sent by the unlock.
 *
 * A node:
 *
 *   ngx_http_quota_zone_node_t    the header below
 *   ngx_http_quota_zone_metric_t  x nmetrics: the snapshot, per declared
 *                                 metric (index into qmcf->metrics)
 *   u_char                        x len: the tenant (as in Redis keys)
 *
 * Nodes of a configuration that declares other metrics (a reload that adds,
 * removes or reorders quota_metric) carry another signature ("sig") and are
 * never found by this configuration: both generations live side by side
 * until the old one is evicted as idle.
 *
 * The zone is full: the least recently used nodes that are idle (busy == 0
 * and no hook objects) are evicted; each eviction hook runs first (lease
 * mode returns the node's unspent leases).  If nothing can be evicted,
 * lookups return NULL and callers behave as without a zone: never an
 * error for the request.
 */

#ifndef _NGX_HTTP_QUOTA_ZONE_H_INCLUDED_
#define _NGX_HTTP_QUOTA_ZONE_H_INCLUDED_


#include "ngx_http_quota_module.h"


/* ngx_http_quota_zone_t and ngx_http_quota_zone_node_t: module.h */

/* quota_fallback: the UTC days whose units may wait at once (an outage
   over one midnight) */
#define NGX_HTTP_QUOTA_FB_DAYS  2

typedef struct ngx_http_quota_lkey_s       ngx_http_quota_lkey_t;


/*
 * What the latest charge reply said about one metric of the tenant (lease
 * mode or not): the headers of lease-mode requests, the rejection cache's
 * body and headers and the fallback's remaining are made from it.
 */
typedef struct {
    int64_t                      used;        /* after that charge */
    int64_t                      limit;       /* what the headers report,
                                                 -1: none */
    time_t                       start;       /* the reply's billing */
    time_t                       end;         /* period (ctx->billing) */
    ngx_msec_t                   learned;     /* ngx_current_msec, 0: never */
    ngx_uint_t                   plan;        /* 1-based, 0: none */
    ngx_msec_t                   event;       /* quota_lease: last
                                                 usage_update asked, 0:
                                                 none */

    /* quota_fallback (ngx_http_quota_fallback.c): units admitted while
       Redis was down since the snapshot was learned at fb_learned (they
       count against the share); those not charged yet, per UTC day
       (node->fb_ms); those charged (FORCE) and not answered yet; those
       answered that a snapshot may not include yet (node->fb_done_ms) */
    int64_t                      fb_spent;
    int64_t                      fb_pending[NGX_HTTP_QUOTA_FB_DAYS];
    int64_t                      fb_forced;
    int64_t                      fb_done;
    ngx_msec_t                   fb_learned;
} ngx_http_quota_zone_metric_t;


/* quota_reject_cache's entry of a tenant (ngx_http_quota_reject.c) */
typedef struct {
    ngx_msec_t                   until;       /* 0: none */
    ngx_uint_t                   code;        /* NGX_HTTP_QUOTA_CODE_* */
    ngx_uint_t                   metric;      /* qmcf->metrics index */
    time_t                       day;         /* UTC day it was learned */
    int64_t                      cost;        /* CAP: the refused overage
                                                 cost (micro-USD), 0: the
                                                 cap was reached */
} ngx_http_quota_zone_reject_t;


struct ngx_http_quota_zone_node_s {
    ngx_rbtree_node_t            node;        /* key: crc32 of the tenant */
    ngx_queue_t                  queue;       /* LRU, most recent first */
    uint32_t                     sig;         /* metric set, see above */
    u_short                      nmetrics;
    u_short                      len;         /* of the tenant */
    ngx_uint_t                   busy;        /* holds: requests in flight */
    ngx_msec_t                   last;        /* last lookup */

    ngx_http_quota_lkey_t       *lkeys;       /* lease keys (_lease.c) */
    ngx_http_quota_zone_reject_t reject;      /* _reject.c */
    ngx_queue_t                  fb_queue;    /* in sh->fb_queue while it
                                                 has fallback units not
                                                 charged; next NULL: not */
    int64_t                      fb_ms[NGX_HTTP_QUOTA_FB_DAYS];
                                              /* the day of fb_pending[d]:
                                                 its last admission, epoch
                                                 ms; 0: none */
    int64_t                      fb_done_ms;  /* the last FORCE answered,
                                                 epoch ms */
    ngx_uint_t                   fb_flight;   /* FORCEs not answered */
    ngx_uint_t                   account;     /* 1: a charge under
                                                 quota_require_account
                                                 found the account; 0: not
                                                 known (or none) */
};


/* the shared part */
typedef struct {
    ngx_rbtree_t                 rbtree;
    ngx_rbtree_node_t            sentinel;
    ngx_queue_t                  lru;
    ngx_queue_t                  active;      /* lease keys with leases */
    ngx_uint_t                   tenants;     /* nodes, all generations */
    ngx_uint_t                   leases;      /* unspent leases */
    quota_breaker_t              breaker;     /* quota_fallback's */
    ngx_queue_t                  fb_queue;    /* nodes with fallback units
                                                 to charge (_fallback.c;
                                                 next NULL: not set up) */
} ngx_http_quota_zone_sh_t;


/*
 * An eviction hook: called under the lock for a node about to be evicted.
 * NGX_DECLINED keeps the node (it holds something that cannot be given up
 * now, e.g. fallback charges not flushed yet); NGX_OK lets it go (the hook
 * has released what it kept there, deferring any Redis command).
 */
typedef ngx_int_t (*ngx_http_quota_zone_evict_pt)(ngx_http_quota_zone_t *z,
    ngx_http_quota_zone_node_t *node);

#define NGX_HTTP_QUOTA_ZONE_HOOKS  4


/* per configuration (qmcf->zone) */
struct ngx_http_quota_zone_s {
    ngx_shm_zone_t              *shm_zone;
    ngx_slab_pool_t             *shpool;      /* set by init_zone */
    ngx_http_quota_zone_sh_t    *sh;
    ngx_http_quota_main_conf_t  *qmcf;
    uint32_t                     sig;         /* of qmcf->metrics */
    ngx_uint_t                   nmetrics;
    ngx_str_t                    name;        /* for logs */
    ngx_http_quota_zone_evict_pt hooks[NGX_HTTP_QUOTA_ZONE_HOOKS];
    ngx_uint_t                   nhooks;
};


#define ngx_http_quota_zone_metrics(n)                                       \
    ((ngx_http_quota_zone_metric_t *) ((ngx_http_quota_zone_node_t *) (n)    \
                                       + 1))

#define ngx_http_quota_zone_tenant(n)                                        \
    ((u_char *) (ngx_http_quota_zone_metrics(n) + (n)->nmetrics))


/* quota_zone NAME:SIZE */
char *ngx_http_quota_zone_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/*
 * A directive that needs quota_zone (quota_lease, quota_reject_cache,
 * quota_fallback) calls this from its parser when it is not "off": the
 * first one is remembered (name, file, line) and
 * ngx_http_quota_zone_check() fails "nginx -t" with it at init_main_conf
 * when there is no quota_zone, wherever quota_zone is written.
 */
void ngx_http_quota_zone_need(ngx_conf_t *cf, ngx_str_t *directive);
ngx_int_t ngx_http_quota_zone_check(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf);

/* at configuration time (postconfiguration, or a directive's parser) */
ngx_int_t ngx_http_quota_zone_add_hook(ngx_conf_t *cf,
    ngx_http_quota_zone_evict_pt hook);

void ngx_http_quota_zone_lock(ngx_http_quota_zone_t *z);

/* unlocks, then sends what was deferred under the lock */
void ngx_http_quota_zone_unlock(ngx_http_quota_zone_t *z);

/*
 * Under the lock.  The tenant's node, moved to the front of the LRU; with
 * create, made when missing (evicting idle ones if the zone is full).
 * NULL: not there (or no room: the caller goes on without the zone).
 */
ngx_http_quota_zone_node_t *ngx_http_quota_zone_node(ngx_http_quota_zone_t *z,
    ngx_str_t *tenant, ngx_uint_t create);

/*
 * Under the lock: memory from the zone, evicting idle nodes when it is
 * full (never "node" itself, which the caller is using).  NULL: no room.
 */
void *ngx_http_quota_zone_alloc(ngx_http_quota_zone_t *z, size_t size,
    ngx_http_quota_zone_node_t *node);
void ngx_http_quota_zone_free(ngx_http_quota_zone_t *z, void *p);

/*
 * Under the lock: a Redis command to send once the lock is released.  The
 * arguments are copied (one ngx_alloc block, the cmd itself); without a
 * handler the unlock sends it with ngx_http_quota_redis_send_reliable()
 * and frees it; a handler is called instead and owns the cmd (ngx_free).
 */
typedef struct ngx_http_quota_zone_cmd_s  ngx_http_quota_zone_cmd_t;

typedef void (*ngx_http_quota_zone_send_pt)(ngx_http_quota_main_conf_t *qmcf,
    ngx_http_quota_zone_cmd_t *cmd);

struct ngx_http_quota_zone_cmd_s {
    ngx_http_quota_zone_cmd_t   *next;
    ngx_http_quota_zone_send_pt  handler;
    ngx_uint_t                   argc;
    const char                 **argv;
    size_t                      *argvlen;
    void                        *data;        /* the handler's */
    ngx_msec_t                   since;       /* the handler's */
};

ngx_http_quota_zone_cmd_t *ngx_http_quota_zone_defer(
    ngx_http_quota_zone_t *z, ngx_uint_t argc, const char **argv,
    const size_t *argvlen, ngx_http_quota_zone_send_pt handler);

/*
 * A request holds its tenant's node across its Redis trip (node->busy,
 * ctx->zone_node), so that the node is not evicted meanwhile and the
 * pointer stays good; the handler releases the hold at CTX_DECIDED, after
 * ngx_http_quota_zone_learn() and the features' reply hooks, and the
 * request's cleanup releases it if the request ends before.  Both take the
 * lock themselves.
 */
ngx_http_quota_zone_node_t *ngx_http_quota_zone_hold(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx);
void ngx_http_quota_zone_release(ngx_http_quota_ctx_t *ctx);

/*
 * The handler, for every decoded charge reply with usage (lease mode or
 * not, admitted or refused): the node's snapshot of each charged metric
 * becomes the reply's numbers.  Takes the lock.
 */
void ngx_http_quota_zone_learn(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx);

/* the snapshot of the request's metrics into ctx, under the lock */
void ngx_http_quota_zone_recall(ngx_http_quota_ctx_t *ctx,
    ngx_http_quota_zone_node_t *node);

/* for quota_metrics: nodes in the zone (0 without one) */
ngx_uint_t ngx_http_quota_zone_tenants(ngx_http_quota_main_conf_t *qmcf);


#endif /* _NGX_HTTP_QUOTA_ZONE_H_INCLUDED_ */


/*
 * ngx_http_quota_module: types shared by the files under src/.
 *
 * The module is split by concern:
 *
 *   ngx_http_quota_module.c      module definition, command table, conf
 *                                create/merge, postconfiguration, worker
 *                                init/exit
 *   ngx_http_quota_conf.c        directive parsers: quota_redis, metrics,
 *                                plans, tenant, warning, reconcile
 *   ngx_http_quota_route.c       the classifier: quota_route parsing and
 *                                sorting, matching with auth/version
 *   ngx_http_quota_handler.c     the precontent-phase handler: decision
 *                                order, suspend/resume, failure mode, log
 *                                phase (reconcile, decision counters)
 *   ngx_http_quota_zone.c        quota_zone: the node ledger's shared
 *                                zone (one node per tenant, snapshot, LRU
 *                                eviction); API in ngx_http_quota_zone.h
 *   ngx_http_quota_reject.c      quota_reject_cache: refusals answered
 *                                again from the zone, learned from replies
 *   ngx_http_quota_fallback.c    quota_fallback: circuit breaker, probe,
 *                                local admission while Redis is down and
 *                                the charge of it when Redis is back
 *   ngx_http_quota_breaker.c     the breaker's state machine, fallback
 *                                share, enforcement point (pure,
 *                                unit-tested)
 *   ngx_http_quota_lease.c       quota_lease: spending leased units from
 *                                the zone, grants, expiry sweep, settles
 *                                (quit and reload included)
 *   ngx_http_quota_redis.c       per-worker Redis pool, ops, send calls
 *   ngx_http_quota_redis_conn.c  one Redis connection on nginx's events
 *                                (hiredis only encodes and parses)
 *   ngx_http_quota_redis_ssl.c   TLS to Redis (quota_redis_ssl_*)
 *   ngx_http_quota_redis_sentinel.c
 *                                the master from Redis Sentinel
 *   ngx_http_quota_redis_cluster.c
 *                                Redis Cluster: slot map, routing, MOVED/ASK
 *   ngx_http_quota_redis_conf.c  quota_redis, _sentinel, _cluster and
 *                                quota_redis_ssl_* parsers
 *   ngx_http_quota_redis_live.c  quota_live's subscription: one connection
 *                                per worker SUBSCRIBEd to the events channel
 *   ngx_http_quota_redis_stats.c per-server Redis counters (bounded label
 *                                set in a shared zone), failovers counted
 *                                once across workers
 *   ngx_http_quota_redis.h       what the Redis files share
 *   ngx_http_quota_script.c      the charge script's argv, EVALSHA, release,
 *                                void and reconcile commands; the embedded
 *                                scripts
 *   lua/NAME.lua                 the Redis scripts (charge, reconcile, void,
 *                                settle),
 *                                embedded at build time (config.make)
 *   lua/protocol.def             their C<->Lua protocol, defined once: the
 *                                generated ngx_http_quota_protocol.h (C)
 *                                and each script's Lua prelude (lua/gen.sh)
 *   ngx_http_quota_reply.c       strict decoding of the script's reply
 *   ngx_http_quota_numbers.c     what a decoded reply says: a metric's
 *                                period, the first metric's numbers
 *   ngx_http_quota_headers.c     X-Quota-* and RateLimit headers (header
 *                                filter), slot release at the last buffer
 *   ngx_http_quota_json.c        every JSON error body, through yajl_gen
 *   ngx_http_quota_usage.c       quota_usage and quota_alerts content
 *                                handlers and their JSON
 *   ngx_http_quota_live.c        quota_live: WebSocket (wslay) and SSE
 *                                clients, fan-out of events by tenant
 *   ngx_http_quota_live_body.c   quota_live_body: a tenant's events wait
 *                                for one usage report (coalesced), then
 *                                are rendered per templated client
 *   ngx_http_quota_metrics.c     shared-memory counters, quota_metrics
 *   ngx_http_quota_variables.c   $quota_* variables
 *   ngx_http_quota_template_body.c
 *                                quota_usage_body, quota_alerts_item,
 *                                quota_rejection_body: parsing, the
 *                                undeclared-metric check, rendering and
 *                                the JSON validation of a rendered body
 *   ngx_http_quota_template_vars.c
 *                                the variables of those templates: the
 *                                per-metric families, account, alert and
 *                                $quota_json_* variables
 *   ngx_http_quota_tenant.c      tenant value, SHA-256, key names
 *   ngx_http_quota_anchor.c      the billing anchor of a tenant as this
 *                                worker last learned it (names the
 *                                period keys the charge declares)
 *   ngx_http_quota_{template,period,parse}.c
 *                                nginx-independent helpers (unit-tested)
 *   ngx_http_quota_keys.c        the names of a tenant's keys, as the
 *                                scripts declare them in KEYS (pure,
 *                                unit-tested)
 */

#ifndef _NGX_HTTP_QUOTA_MODULE_H_INCLUDED_
#define _NGX_HTTP_QUOTA_MODULE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <hiredis/hiredis.h>

#include "ngx_http_quota_pure.h"
#include "ngx_http_quota_protocol.h"    /* generated: src/lua/protocol.def */


/* the one version string: debian/changelog, README.md and CHANGELOG.md
   name the same (t/160-package.t checks) */
#define NGX_HTTP_QUOTA_VERSION           "0.2.0"

#define NGX_HTTP_QUOTA_PERIOD_MONTH      0
#define NGX_HTTP_QUOTA_PERIOD_DAY        1

#define NGX_HTTP_QUOTA_FAIL_OPEN         0
#define NGX_HTTP_QUOTA_FAIL_CLOSED       1

#define NGX_HTTP_QUOTA_LEASE_OFF         0
#define NGX_HTTP_QUOTA_LEASE_AUTO        1
#define NGX_HTTP_QUOTA_LEASE_UNITS       2    /* quota_lease N */

#define NGX_HTTP_QUOTA_AUTH_ANY          0
#define NGX_HTTP_QUOTA_AUTH_HEADER       1
#define NGX_HTTP_QUOTA_AUTH_COOKIE       2
#define NGX_HTTP_QUOTA_AUTH_APIKEY       3
#define NGX_HTTP_QUOTA_AUTH_NONE         4

/* at most this many metrics are declared, and so charged by one rule or
   reported by quota_usage (per-request arrays are sized by it) */
#define NGX_HTTP_QUOTA_MAX_CHARGES       16

/* the number of kinds of ngx_http_quota_error_e */
#define NGX_HTTP_QUOTA_ERRORS            11

/* no limit for a metric in a plan */
#define NGX_HTTP_QUOTA_UNLIMITED         (-1)



/* $quota_status values, in the order of ngx_http_quota_status_names[] */
typedef enum {
    NGX_HTTP_QUOTA_UNMETERED = 0,
    NGX_HTTP_QUOTA_ALLOWED,
    NGX_HTTP_QUOTA_REJECTED_QUOTA,
    NGX_HTTP_QUOTA_REJECTED_RATE,
    NGX_HTTP_QUOTA_REJECTED_CONCURRENCY,
    NGX_HTTP_QUOTA_REJECTED_CAP,
    NGX_HTTP_QUOTA_REJECTED_SUSPENDED,
    NGX_HTTP_QUOTA_REJECTED_UNKNOWN,
    NGX_HTTP_QUOTA_BAD_REQUEST,
    NGX_HTTP_QUOTA_BYPASS,
    NGX_HTTP_QUOTA_DRY_RUN_REJECT,
    NGX_HTTP_QUOTA_FAIL_OPEN_STATUS,
    NGX_HTTP_QUOTA_FAIL_CLOSED_STATUS,
    NGX_HTTP_QUOTA_ABORTED,           /* client gone before the decision */
    NGX_HTTP_QUOTA_FALLBACK,          /* Redis down: admitted from the zone */
    NGX_HTTP_QUOTA_STATUS_COUNT
} ngx_http_quota_status_e;

extern ngx_str_t  ngx_http_quota_status_names[];


typedef struct {
    ngx_str_t                    name;
    ngx_uint_t                   period;      /* NGX_HTTP_QUOTA_PERIOD_* */
} ngx_http_quota_metric_t;


/* what a plan says about one metric */
typedef struct {
    ngx_uint_t                   metric;      /* index into qmcf->metrics */
    int64_t                      limit;       /* NGX_HTTP_QUOTA_UNLIMITED */
    ngx_flag_t                   per_seat;    /* limit x account seats */
    int64_t                      price;       /* micro-USD per overage unit,
                                                 -1: no overage */
} ngx_http_quota_plan_metric_t;


typedef struct {
    ngx_str_t                    name;
    ngx_array_t                  metrics;     /* ngx_http_quota_plan_metric_t */
    ngx_uint_t                   grace;       /* percent over the limit */
    ngx_uint_t                   rate;        /* requests per rate_period */
    ngx_msec_t                   rate_period; /* 1000 or 60000 */
    ngx_uint_t                   burst;
    ngx_uint_t                   concurrency;
    ngx_msec_t                   lease;       /* in-flight slot lifetime */
} ngx_http_quota_plan_t;


/*
 * The per-plan part of the charge script's arguments for one rule: it
 * depends only on configuration, so it is built once (init_main_conf).
 */
typedef struct {
    ngx_str_t                   *args;
    ngx_uint_t                   nargs;
} ngx_http_quota_plan_table_t;


/* one METRIC=COST of a rule */
typedef struct {
    ngx_uint_t                   metric;
    int64_t                      cost;        /* literal cost */
    ngx_http_complex_value_t    *value;       /* or evaluated per request */
} ngx_http_quota_charge_t;


/* one quota_route */
typedef struct {
    ngx_str_t                   *methods;     /* NULL: "*" */
    ngx_uint_t                   nmethods;
    quota_tpl_seg_t             *segs;
    ngx_uint_t                   nsegs;
    ngx_uint_t                   auth;        /* NGX_HTTP_QUOTA_AUTH_* */
    ngx_str_t                    version;     /* empty: any */
    ngx_http_quota_charge_t     *charges;
    ngx_uint_t                   ncharges;
    ngx_str_t                    template;    /* as written, for logs */
    ngx_http_quota_plan_table_t  table;
} ngx_http_quota_rule_t;


/* quota_reconcile METRIC VALUE */
typedef struct {
    ngx_uint_t                   metric;
    ngx_http_complex_value_t     value;
    ngx_str_t                    file;        /* where it is, for errors */
    ngx_uint_t                   line;        /* found at merge time */
} ngx_http_quota_reconcile_t;


/* quota_redis_errors_total{kind=...} */
#define NGX_HTTP_QUOTA_ERR_CONNECT       0
#define NGX_HTTP_QUOTA_ERR_DISCONNECT    1
#define NGX_HTTP_QUOTA_ERR_TIMEOUT       2
#define NGX_HTTP_QUOTA_ERR_REPLY         3
#define NGX_HTTP_QUOTA_ERR_UNAVAILABLE   4
#define NGX_HTTP_QUOTA_ERR_COUNT         5

#define NGX_HTTP_QUOTA_LATENCY_BUCKETS   12

/* quota_local_decisions_total{kind=...}: answered from the zone */
#define NGX_HTTP_QUOTA_LOCAL_LEASE       0
#define NGX_HTTP_QUOTA_LOCAL_REJECT      1
#define NGX_HTTP_QUOTA_LOCAL_FALLBACK    2
#define NGX_HTTP_QUOTA_LOCAL_COUNT       3


typedef struct ngx_http_quota_redis_stats_s  ngx_http_quota_redis_stats_t;

/* upper bounds of the latency histograms' buckets, microseconds */
extern ngx_uint_t  ngx_http_quota_latency_le[NGX_HTTP_QUOTA_LATENCY_BUCKETS];


/* in the shared zone: every worker adds to the same counters */
typedef struct {
    ngx_atomic_t                 decisions[NGX_HTTP_QUOTA_STATUS_COUNT];
    ngx_atomic_t                 latency[NGX_HTTP_QUOTA_LATENCY_BUCKETS];
    ngx_atomic_t                 latency_count;
    ngx_atomic_t                 latency_sum_us;
    ngx_atomic_t                 errors[NGX_HTTP_QUOTA_ERR_COUNT];
    ngx_atomic_t                 reconnects;
    ngx_atomic_t                 noscript;
    ngx_atomic_t                 anchor_resends;  /* CODE_ANCHOR answered */
    ngx_atomic_t                 inflight;
    ngx_atomic_t                 failovers;   /* sentinel: master moved */
    ngx_atomic_t                 live_clients;    /* gauge */
    ngx_atomic_t                 live_frames;     /* frames queued */
    ngx_atomic_t                 live_dropped;    /* events not delivered */
    ngx_atomic_t                 local[NGX_HTTP_QUOTA_LOCAL_COUNT];
    ngx_atomic_t                 leases;          /* granted */
    ngx_atomic_t                 zone_evictions;
} ngx_http_quota_stats_t;

#define ngx_http_quota_count(qmcf, field)                                    \
    do {                                                                     \
        if ((qmcf)->stats) {                                                 \
            (void) ngx_atomic_fetch_add(&(qmcf)->stats->field, 1);           \
        }                                                                    \
    } while (0)


/*
 * The calendar arguments of the charge script depend only on the second:
 * each worker formats them once a second, not once a request.
 */
typedef struct {
    time_t                       sec;         /* 0: not built yet */
    ngx_str_t                    cur_start;   /* this month's 1st, epoch s */
    ngx_str_t                    next_start;
    ngx_str_t                    ym_cur;      /* "YYYY-MM" */
    ngx_str_t                    ym_next;
    ngx_str_t                    today;       /* "YYYY-MM-DD" */
    ngx_str_t                    calendar;    /* the script's ARGV[14] */
    ngx_str_t                    now_iso;
    ngx_str_t                    tomorrow;    /* "YYYY-MM-DD" */
    u_char                       buf[256];
} ngx_http_quota_clock_t;


typedef struct ngx_http_quota_worker_s  ngx_http_quota_worker_t;

/* the node ledger's zone (ngx_http_quota_zone.h) */
typedef struct ngx_http_quota_zone_s       ngx_http_quota_zone_t;
typedef struct ngx_http_quota_zone_node_s  ngx_http_quota_zone_node_t;


/* a file named by a directive, loaded after the configuration is read */
typedef struct {
    ngx_str_t                    path;
    ngx_str_t                    file;        /* where the directive is */
    ngx_uint_t                   line;
} ngx_http_quota_conf_file_t;


/* a JSON body template (SPEC 13), with where it is for the logs */
typedef struct {
    ngx_http_complex_value_t     value;
    ngx_str_t                    file;
    ngx_uint_t                   line;
    unsigned                     daily:1;     /* names $quota_daily_* */
    unsigned                     frame:1;     /* quota_live_body's */
} ngx_http_quota_body_tpl_t;


typedef struct {
    /* quota_redis */
    ngx_addr_t                   redis_addr;  /* resolved at conf time */
    ngx_str_t                    redis_host;  /* as written; empty: unix */
    ngx_str_t                    redis_user;  /* ACL user, or empty */
    ngx_str_t                    redis_password;
    ngx_int_t                    redis_db;
    ngx_msec_t                   redis_timeout;
    ngx_msec_t                   redis_connect_timeout;
    ngx_uint_t                   redis_pool;
    ngx_flag_t                   redis_configured;

    /* quota_redis_sentinel (then redis_addr is unset) */
    ngx_array_t                 *redis_sentinels;     /* ngx_addr_t */
    ngx_str_t                    redis_master_name;
    ngx_str_t                    redis_sentinel_password;

    /* quota_redis_cluster: the seeds (then redis_addr is unset) */
    ngx_array_t                 *redis_cluster;       /* ngx_addr_t */

    /* quota_redis_ssl* */
    ngx_flag_t                   redis_ssl;
    ngx_flag_t                   redis_ssl_verify;
    ngx_int_t                    redis_ssl_verify_depth;
    ngx_str_t                    redis_ssl_name;
    ngx_http_quota_conf_file_t   redis_ssl_trusted_certificate;
    ngx_http_quota_conf_file_t   redis_ssl_certificate;
    ngx_http_quota_conf_file_t   redis_ssl_certificate_key;
    ngx_http_quota_conf_file_t   redis_ssl_verify_at;
    ngx_str_t                    redis_ssl_host;  /* SNI, checked name */
    ngx_flag_t                   redis_ssl_host_is_addr;
#if (NGX_SSL)
    ngx_ssl_t                   *redis_ssl_ctx;   /* NULL: plain TCP */
#endif

    ngx_str_t                    prefix;      /* quota_redis_prefix */

    ngx_array_t                  metrics;     /* ngx_http_quota_metric_t */
    ngx_array_t                  plans;       /* ngx_http_quota_plan_t */
    ngx_int_t                    default_plan;  /* index or -1 */

    ngx_flag_t                   enabled_somewhere;  /* "quota on" seen */

    ngx_array_t                 *templates;   /* ngx_http_quota_body_tpl_t *,
                                                 checked at init_main_conf */

    /* the first quota_usage/quota_alerts: they need quota_redis and a
       worker connection even where no "quota on" is */
    ngx_str_t                    endpoint_name;
    ngx_str_t                    endpoint_file;
    ngx_uint_t                   endpoint_line;

    /* some plan has a rate or concurrency limit: rule-less requests of a
       tenant still need a Redis trip (SPEC 4a, "Unmetered") */
    ngx_flag_t                   rate_or_concurrency;
    ngx_flag_t                   concurrency;
    ngx_http_quota_plan_table_t  no_rule_table;
    ngx_array_t                  rule_sets;   /* ngx_array_t * of rules */

    /* script source and its SHA1 (hex), for EVALSHA and the EVAL fallback */
    ngx_str_t                    script;
    u_char                       script_sha1[40];

    ngx_uint_t                   events;      /* NGX_HTTP_QUOTA_EVENTS_* */
    ngx_str_t                    events_channel;   /* "Pevents" */
    ngx_flag_t                   live;        /* some location has quota_live */
    ngx_str_t                    live_file;   /* the first quota_live */
    ngx_uint_t                   live_line;

    /* quota_usage reports every metric: a rule that charges all of them 0 */
    ngx_http_quota_rule_t        report_rule;
    /* quota_warning_threshold of http{}, for the forced charges of
       quota_fallback (no location) */
    ngx_uint_t                   force_threshold;

    ngx_http_quota_clock_t       clock;       /* per process, see above */

    ngx_http_quota_worker_t     *worker;      /* per-process Redis state */
    ngx_http_quota_stats_t      *stats;       /* shared, see _metrics.c */
    ngx_http_quota_redis_stats_t *redis_stats;    /* shared, _redis_stats.c */

    /* quota_lease: the sweep's period (the shortest ttl / 4), 0: none */
    ngx_msec_t                   lease_sweep;

    /* quota_zone, and the first directive that needs it (_zone.c) */
    ngx_http_quota_zone_t       *zone;
    ngx_str_t                    zone_need;
    ngx_str_t                    zone_need_file;
    ngx_uint_t                   zone_need_line;

    /* some location has quota_reject_cache (_reject.c) */
    ngx_flag_t                   reject_cache;

    /* quota_fallback local [nodes=N] (_fallback.c); 0: off */
    ngx_uint_t                   fallback_nodes;
} ngx_http_quota_main_conf_t;


typedef struct {
    ngx_flag_t                   enable;
    ngx_uint_t                   failure_mode;
    ngx_http_complex_value_t    *tenant;
    ngx_flag_t                   tenant_hash;
    ngx_array_t                 *rules;       /* ngx_http_quota_rule_t,
                                                 sorted */
    ngx_str_t                    apikey_header;
    ngx_http_complex_value_t    *api_version;
    ngx_uint_t                   status;
    ngx_uint_t                   rate_status;
    ngx_flag_t                   headers;
    ngx_str_t                    header_prefix;

    ngx_flag_t                   endpoint;    /* quota_usage/alerts/metrics:
                                                 never metered itself */
    ngx_flag_t                   require_account;
    ngx_array_t                 *bypass;      /* ngx_http_complex_value_t */
    ngx_flag_t                   dry_run;
    ngx_uint_t                   warning_threshold;  /* percent */
    ngx_str_t                    warning_name;
    ngx_http_complex_value_t    *warning_value;
    ngx_flag_t                   ratelimit_headers;
    ngx_array_t                 *reconcile;   /* ngx_http_quota_reconcile_t */
    ngx_msec_t                   live_ping;   /* quota_live ping=, 30 s */
    ngx_msec_t                   reject_cache;    /* 0: off */

    /* quota_lease (_lease.c) */
    ngx_uint_t                   lease_mode;  /* NGX_HTTP_QUOTA_LEASE_* */
    ngx_uint_t                   lease_units; /* N */
    ngx_msec_t                   lease_ttl;

    /* SPEC 13: the API's own JSON (NULL: the default body) */
    ngx_http_quota_body_tpl_t   *usage_body;
    ngx_http_quota_body_tpl_t   *alerts_item;
    ngx_http_quota_body_tpl_t   *live_body;
    ngx_http_quota_body_tpl_t   *rejection[NGX_HTTP_QUOTA_ERRORS];

    /* header names built from header_prefix at merge time */
    ngx_str_t                    hdr_limit;
    ngx_str_t                    hdr_remaining;
    ngx_str_t                    hdr_reset;
    ngx_str_t                    hdr_used;
} ngx_http_quota_loc_conf_t;


typedef enum {
    NGX_HTTP_QUOTA_CTX_NEW = 0,
    NGX_HTTP_QUOTA_CTX_WAITING,       /* EVALSHA sent, request suspended  */
    NGX_HTTP_QUOTA_CTX_DECIDED,       /* reply in, handler must act on it */
    NGX_HTTP_QUOTA_CTX_FINISHED       /* acted on; later entries decline  */
} ngx_http_quota_ctx_state_e;


typedef struct ngx_http_quota_op_s  ngx_http_quota_op_t;


/*
 * Per-request metering state; survives internal redirects via its pool
 * cleanup.  quota_usage/quota_alerts requests never have one as the module
 * ctx: they keep their own (_usage.c).
 */
typedef struct {
    ngx_http_request_t          *request;
    /* the location that charged: its reconcile, headers, failure mode and
       statuses hold even after try_files/error_page moved the request */
    ngx_http_quota_loc_conf_t   *conf;
    ngx_http_quota_ctx_state_e   state;
    ngx_http_quota_status_e      status;

    ngx_str_t                    tenant;      /* id used in Redis (maybe
                                                 hashed) */
    ngx_http_quota_rule_t       *rule;        /* NULL: rate/concurrency only */
    ngx_uint_t                   ncharges;
    int64_t                      costs[NGX_HTTP_QUOTA_MAX_CHARGES];

    unsigned                     have_usage:1;    /* the fields below are set */
    unsigned                     eval_retried:1;  /* NOSCRIPT answered once */
    unsigned                     anchor_retried:1;  /* CODE_ANCHOR, once */
    unsigned                     redis_failed:1;
    unsigned                     bypass:1;
    unsigned                     slot_taken:1;    /* concurrency slot held */
    unsigned                     unknown:1;       /* a charge was sent and
                                                     its outcome is unknown:
                                                     void it */
    unsigned                     data_error:1;    /* corrupt data or a script
                                                     error: 503 whatever the
                                                     failure mode */
    unsigned                     reconciled:1;
    unsigned                     local:1;         /* decided from the zone,
                                                     no Redis trip */
    unsigned                     report:2;        /* quota_usage: 1,
                                                     +daily: 2 */
    unsigned                     lease_quiet:1;   /* a lease's grant sends
                                                     no usage_update */

    /* a lease (quota_lease): request units asked (0 or 1: exact) and its
       ttl, set before the charge; units granted, from the reply (1: an
       exact charge) */
    ngx_uint_t                   lease_n;
    ngx_msec_t                   lease_ttl;
    ngx_uint_t                   lease_granted;
    time_t                       lease_sec;       /* the charge's clock
                                                     (its ARG_TODAY) */

    /* the decoded reply of the charge script */
    ngx_uint_t                   code;
    ngx_uint_t                   reject_index;    /* charge that failed */
    ngx_uint_t                   plan;            /* 1-based, 0: none */
    quota_period_t               billing;         /* the account's month */
    ngx_msec_t                   retry_after;     /* ms, rate/concurrency */
    int64_t                      used[NGX_HTTP_QUOTA_MAX_CHARGES];
    int64_t                      limit[NGX_HTTP_QUOTA_MAX_CHARGES];

    /* the charge's id, unique across workers and nodes (the void names
       it); the in-flight slot has the same id */
    ngx_str_t                    charge_id;
    ngx_str_t                    slot_id;
    ngx_str_t                    slot_key;

    /* the script's argv, kept for the one EVAL fallback on NOSCRIPT */
    ngx_uint_t                   argc;
    const char                 **argv;
    size_t                      *argvlen;

    ngx_http_quota_op_t         *op;          /* pending Redis operation */
    ngx_http_quota_zone_node_t  *zone_node;   /* held across the trip */

    /* quota_lease: the lease key a grant is for (held with zone_node) */
    struct ngx_http_quota_lkey_s *lease_key;
    unsigned                     leased:1;        /* spent from a lease */
    ngx_event_t                  timeout;     /* quota_redis timeout= */
    ngx_event_t                  wake;        /* posted when the reply is in */

    /*
     * Report mode (quota_usage, whose endpoint ctx embeds this one): the
     * reply has a tail after the decision, turned into JSON by this hook
     * inside the Redis callback (the reply is freed after it).
     */
    ngx_int_t                  (*build)(ngx_http_request_t *r,
                                        void *ctx, redisReply *reply);
} ngx_http_quota_ctx_t;


/*
 * The scripts' argument and reply positions, modes, codes (the charge
 * script's answers, NGX_HTTP_QUOTA_CODE_*) and events levels
 * (NGX_HTTP_QUOTA_EVENTS_*) are generated from src/lua/protocol.def.
 * Positions are 1-based, as in Lua: ARGV[pos] of the charge script is
 * argv[NGX_HTTP_QUOTA_ARGV_AT(pos)] of EVAL/EVALSHA, script, numkeys,
 * its CHARGE_NKEYS KEYS; reply element pos is ngx_http_quota_el(reply,
 * pos).
 */
#define NGX_HTTP_QUOTA_ARGV_AT(pos)                                          \
    NGX_HTTP_QUOTA_ARGV_OF(NGX_HTTP_QUOTA_CHARGE_NKEYS, pos)

/*
 * A script with nkeys KEYS (protocol.def *_NKEYS): KEYS[pos] is
 * argv[NGX_HTTP_QUOTA_KEY_AT(pos)], ARGV[pos] argv[..._ARGV_OF(nkeys, pos)];
 * NGX_HTTP_QUOTA_NUMKEYS(nkeys) is nkeys as the numkeys argument.
 */
#define NGX_HTTP_QUOTA_KEY_AT(pos)       ((pos) + 2)
#define NGX_HTTP_QUOTA_ARGV_OF(nkeys, pos)  ((pos) + 2 + (nkeys))
#define NGX_HTTP_QUOTA_STR(x)            #x
#define NGX_HTTP_QUOTA_NUMKEYS(nkeys)    NGX_HTTP_QUOTA_STR(nkeys)
#define ngx_http_quota_el(reply, pos)    ((reply)->element[(pos) - 1])


/* the module's error answers, in the order of ngx_http_quota_errors[] */
typedef enum {
    NGX_HTTP_QUOTA_ERROR_QUOTA_EXCEEDED = 0,
    NGX_HTTP_QUOTA_ERROR_SPENDING_CAP,
    NGX_HTTP_QUOTA_ERROR_SUSPENDED,
    NGX_HTTP_QUOTA_ERROR_UNKNOWN_TENANT,
    NGX_HTTP_QUOTA_ERROR_RATE_LIMITED,
    NGX_HTTP_QUOTA_ERROR_CONCURRENCY,
    NGX_HTTP_QUOTA_ERROR_BAD_TENANT,
    NGX_HTTP_QUOTA_ERROR_BAD_COST,
    NGX_HTTP_QUOTA_ERROR_MISSING_TENANT,
    NGX_HTTP_QUOTA_ERROR_METHOD,
    NGX_HTTP_QUOTA_ERROR_UNAVAILABLE,
    NGX_HTTP_QUOTA_ERROR_COUNT,       /* == NGX_HTTP_QUOTA_ERRORS */
    NGX_HTTP_QUOTA_ERROR_NONE = NGX_HTTP_QUOTA_ERROR_COUNT
} ngx_http_quota_error_e;

/* which directive overrides an error's default status */
#define NGX_HTTP_QUOTA_STATUS_FIXED      0
#define NGX_HTTP_QUOTA_STATUS_QUOTA      1    /* quota_status */
#define NGX_HTTP_QUOTA_STATUS_RATE       2    /* quota_rate_status */

typedef struct {
    ngx_str_t                    name;        /* "error" in the JSON */
    ngx_uint_t                   status;      /* default HTTP status */
    ngx_uint_t                   status_conf; /* NGX_HTTP_QUOTA_STATUS_* */
    ngx_uint_t                   code;        /* script code, 0: none */
    ngx_http_quota_status_e      decision;    /* $quota_status */
    const char                  *message;     /* or the details' format */
    unsigned                     retry_after:1;
    /* writes "message" and the fields after it */
    int                        (*details)(ngx_http_request_t *r,
                                          ngx_http_quota_ctx_t *ctx,
                                          void *g,
                                          ngx_http_quota_error_e error);
} ngx_http_quota_error_t;

extern const ngx_http_quota_error_t  ngx_http_quota_errors[];


/* called with reply NULL when the connection failed or closed */
typedef void (*ngx_http_quota_reply_pt)(void *data, redisReply *reply);


extern ngx_module_t  ngx_http_quota_module;


/* the report part of a quota_usage reply (_usage.c decodes it) */
typedef struct {
    ngx_str_t                    status;      /* account status, "" */
    int64_t                      seats;
    int64_t                      cap;         /* micro-USD, < 0: none */
    int64_t                      cost;        /* the period's overage cost */
    ngx_uint_t                   overage;     /* overage enabled */
    redisReply                 **units;       /* k overage unit counts */
    redisReply                 **daily;       /* NULL, or ndaily pairs */
    size_t                       ndaily;
    ngx_http_quota_plan_t       *plan;
} ngx_http_quota_report_t;


/* one entry of the tenant's alert stream */
typedef struct {
    ngx_str_t                    id;
    ngx_str_t                    kind;        /* "type" */
    ngx_str_t                    metric;
    ngx_str_t                    at;
    int64_t                      used;
    int64_t                      limit;       /* -1: none */
    ngx_str_t                    message;     /* written by _usage.c */
} ngx_http_quota_alert_t;


/* the kinds of events quota_live_body renders */
typedef enum {
    NGX_HTTP_QUOTA_EVENT_USAGE = 0,           /* "usage_update" */
    NGX_HTTP_QUOTA_EVENT_ALERT                /* "alert" */
} ngx_http_quota_event_e;

#define NGX_HTTP_QUOTA_EVENT_WORD        40   /* alert_type, timestamp */

/* one event of the events channel, as quota_live_body's variables see it
   (copied out of the message: it waits for the usage report) */
typedef struct {
    ngx_http_quota_event_e       type;
    ngx_int_t                    metric;      /* index, -1: none */
    int64_t                      used;
    int64_t                      limit;       /* -1: none */
    size_t                       alert_type_len;
    size_t                       timestamp_len;
    u_char                       alert_type[NGX_HTTP_QUOTA_EVENT_WORD];
    u_char                       timestamp[NGX_HTTP_QUOTA_EVENT_WORD];
} ngx_http_quota_event_t;


/*
 * What a template's variables read while it is rendered: the decoded
 * reply, and the usage report or the alert being written.  Outside a
 * rendering the variables read the request's metering ctx.
 */
typedef struct {
    ngx_http_request_t          *request;
    ngx_http_quota_ctx_t        *ctx;
    ngx_http_quota_report_t     *report;      /* quota_usage, quota_live */
    ngx_http_quota_alert_t      *alert;       /* quota_alerts_item only */
    ngx_http_quota_event_t      *event;       /* quota_live_body only */
} ngx_http_quota_view_t;


/* ngx_http_quota_redis_conf.c */
char *ngx_http_quota_redis_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_quota_redis_sentinel_directive(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
char *ngx_http_quota_redis_cluster_directive(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
char *ngx_http_quota_redis_ssl_file_slot(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_quota_redis_ssl_verify_slot(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);

/* ngx_http_quota_redis_ssl.c */
ngx_int_t ngx_http_quota_redis_ssl_init(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf);

/* ngx_http_quota_conf.c */
char *ngx_http_quota_metric_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_quota_plan_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_quota_default_plan_directive(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
char *ngx_http_quota_tenant_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_quota_warning_header_directive(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
char *ngx_http_quota_reconcile_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_quota_percent_slot(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_quota_header_prefix_check(ngx_conf_t *cf, void *post,
    void *data);
ngx_int_t ngx_http_quota_reconcile_check(ngx_conf_t *cf,
    ngx_http_quota_loc_conf_t *qlcf);
ngx_int_t ngx_http_quota_metric_index(ngx_http_quota_main_conf_t *qmcf,
    ngx_str_t *name);

/* ngx_http_quota_route.c */
char *ngx_http_quota_route_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_http_quota_rule_t *ngx_http_quota_route_match(ngx_http_request_t *r,
    ngx_http_quota_loc_conf_t *qlcf);

/* ngx_http_quota_handler.c */
ngx_int_t ngx_http_quota_handler(ngx_http_request_t *r);
ngx_http_quota_ctx_t *ngx_http_quota_create_ctx(ngx_http_request_t *r);
void ngx_http_quota_suspend(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx);
void ngx_http_quota_reply_done(ngx_http_quota_ctx_t *ctx);
ngx_int_t ngx_http_quota_log_handler(ngx_http_request_t *r);
ngx_http_quota_ctx_t *ngx_http_quota_get_ctx(ngx_http_request_t *r);

/* ngx_http_quota_reject.c */
char *ngx_http_quota_reject_cache_directive(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_quota_reject_lookup(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_http_quota_loc_conf_t *qlcf);
void ngx_http_quota_reject_learn(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx);

/* ngx_http_quota_lease.c */
char *ngx_http_quota_lease_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_quota_lease_merge(ngx_conf_t *cf,
    ngx_http_quota_loc_conf_t *prev, ngx_http_quota_loc_conf_t *conf);
ngx_int_t ngx_http_quota_lease_init_conf(ngx_conf_t *cf);
ngx_int_t ngx_http_quota_lease_init_worker(ngx_cycle_t *cycle,
    ngx_http_quota_main_conf_t *qmcf);
void ngx_http_quota_lease_exit_worker(void);
ngx_int_t ngx_http_quota_lease_spend(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_http_quota_loc_conf_t *qlcf);
void ngx_http_quota_lease_reply(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx);
void ngx_http_quota_lease_cancel(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx);

/* ngx_http_quota_fallback.c */
char *ngx_http_quota_fallback_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_quota_fallback_init_conf(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf);
ngx_int_t ngx_http_quota_fallback_open(ngx_http_request_t *r);
void ngx_http_quota_fallback_outcome(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx);
ngx_int_t ngx_http_quota_fallback_admit(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx);
void ngx_http_quota_fallback_exit_worker(void);
ngx_int_t ngx_http_quota_fallback_init_worker(ngx_cycle_t *cycle,
    ngx_http_quota_main_conf_t *qmcf);
ngx_uint_t ngx_http_quota_fallback_circuit(ngx_http_quota_main_conf_t *qmcf);
void ngx_http_quota_fallback_reconcile(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_uint_t metric, int64_t delta);

/* ngx_http_quota_redis.c */
ngx_int_t ngx_http_quota_redis_init_worker(ngx_cycle_t *cycle,
    ngx_http_quota_main_conf_t *qmcf);
void ngx_http_quota_redis_exit_worker(ngx_http_quota_main_conf_t *qmcf);
ngx_http_quota_op_t *ngx_http_quota_redis_send(
    ngx_http_quota_main_conf_t *qmcf, int argc, const char **argv,
    const size_t *argvlen, ngx_http_quota_reply_pt handler, void *data);
void ngx_http_quota_redis_detach(ngx_http_quota_op_t *op);
void ngx_http_quota_redis_timed_out(ngx_http_quota_op_t *op);
ngx_int_t ngx_http_quota_redis_send_oneway(ngx_http_quota_main_conf_t *qmcf,
    int argc, const char **argv, const size_t *argvlen);
void ngx_http_quota_redis_cancel(ngx_http_quota_op_t *op, int argc,
    const char **argv, const size_t *argvlen);
ngx_int_t ngx_http_quota_redis_send_reliable(
    ngx_http_quota_main_conf_t *qmcf, int argc, const char **argv,
    const size_t *argvlen);

/* ngx_http_quota_script.c */
ngx_int_t ngx_http_quota_script_init(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf);
ngx_int_t ngx_http_quota_script_charge(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx);
void ngx_http_quota_script_release(ngx_http_quota_ctx_t *ctx);
ngx_int_t ngx_http_quota_script_settle(ngx_http_quota_main_conf_t *qmcf,
    ngx_str_t *tenant, ngx_str_t *charge_id, ngx_str_t *start,
    ngx_uint_t units, ngx_http_quota_reply_pt handler, void *data);
ngx_int_t ngx_http_quota_script_force(ngx_http_quota_main_conf_t *qmcf,
    ngx_str_t *tenant, int64_t *units, int64_t at_ms, ngx_str_t *id,
    ngx_http_quota_reply_pt handler, void *data);

/* a charge id: the worker's 16 hex digits and a 64-bit sequence */
#define NGX_HTTP_QUOTA_CHARGE_ID_LEN  32
ngx_int_t ngx_http_quota_script_init_worker(ngx_log_t *log);
void ngx_http_quota_script_void(ngx_http_quota_ctx_t *ctx,
    ngx_http_quota_op_t *op);
ngx_int_t ngx_http_quota_script_reconcile(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_uint_t index, int64_t delta);

/* ngx_http_quota_reply.c */
ngx_int_t ngx_http_quota_reply_is_noscript(redisReply *reply);
ngx_uint_t ngx_http_quota_reply_anchor(redisReply *reply);
ngx_int_t ngx_http_quota_reply_script_error(redisReply *reply);
ngx_int_t ngx_http_quota_reply_decode(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, redisReply *reply);

/* ngx_http_quota_headers.c */
ngx_int_t ngx_http_quota_headers_init(ngx_conf_t *cf);
ngx_table_elt_t *ngx_http_quota_push_header(ngx_http_request_t *r,
    ngx_str_t *name);

/* ngx_http_quota_json.c */
ngx_http_quota_error_e ngx_http_quota_code_error(ngx_uint_t code);
ngx_uint_t ngx_http_quota_error_status(ngx_http_quota_loc_conf_t *qlcf,
    ngx_http_quota_error_e error);
ngx_int_t ngx_http_quota_send_rejection(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_http_quota_loc_conf_t *qlcf,
    ngx_http_quota_error_e error);
ngx_int_t ngx_http_quota_error_body(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_http_quota_error_e error,
    ngx_uint_t *status, ngx_str_t *body);
ngx_int_t ngx_http_quota_send_json(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body);
ngx_int_t ngx_http_quota_gen_body(ngx_http_request_t *r, void *g,
    ngx_str_t *body);
size_t ngx_http_quota_format_usd(u_char *buf, int64_t micro);

/* ngx_http_quota_usage.c */
char *ngx_http_quota_endpoint_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_quota_usage_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_quota_alerts_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_quota_report_rule(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf);
ngx_uint_t ngx_http_quota_report_approaching(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx);
int64_t ngx_http_quota_report_projected(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_http_quota_report_t *rep);
ngx_uint_t ngx_http_quota_is_date(u_char *p);
typedef void (*ngx_http_quota_report_done_pt)(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *body);
ngx_int_t ngx_http_quota_usage_report(ngx_http_request_t *r,
    ngx_str_t *tenant, ngx_http_quota_report_done_pt done);
ngx_int_t ngx_http_quota_endpoint_refuse(ngx_http_request_t *r,
    ngx_int_t status);
ngx_int_t ngx_http_quota_report_decode(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, redisReply *reply,
    ngx_http_quota_report_t *rep);

/* ngx_http_quota_live.c */
char *ngx_http_quota_live_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_quota_live_handler(ngx_http_request_t *r);
void ngx_http_quota_live_publish(ngx_http_quota_main_conf_t *qmcf,
    u_char *msg, size_t len);
void ngx_http_quota_live_exit_worker(void);
void ngx_http_quota_live_fanout(void *tenant, ngx_http_quota_view_t *view,
    ngx_pool_t *pool);

/* ngx_http_quota_live_body.c */
typedef struct ngx_http_quota_live_fetch_s  ngx_http_quota_live_fetch_t;

ngx_int_t ngx_http_quota_live_body_event(ngx_http_quota_live_fetch_t **fetch,
    void *tenant, ngx_str_t *tenant_id, ngx_http_request_t *r,
    ngx_uint_t daily, void *event);
void ngx_http_quota_live_body_free(ngx_http_quota_live_fetch_t *fetch);
ngx_int_t ngx_http_quota_live_body_render(ngx_http_request_t *r,
    ngx_http_quota_body_tpl_t *tpl, ngx_http_quota_view_t *view,
    ngx_pool_t *pool, ngx_str_t *body);

/* ngx_http_quota_numbers.c: the first metric's numbers, for the headers
   and the variables */
typedef struct {
    int64_t                      used;
    int64_t                      limit;       /* < 0: unlimited */
    int64_t                      remaining;
    int64_t                      percent;
    quota_period_t               period;
} ngx_http_quota_numbers_t;

ngx_int_t ngx_http_quota_first_numbers(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_http_quota_numbers_t *n);
quota_period_t ngx_http_quota_metric_period(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_uint_t index);
int64_t ngx_http_quota_percent(int64_t used, int64_t limit);

/* ngx_http_quota_template_body.c */
char *ngx_http_quota_body_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_quota_rejection_body_directive(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_quota_templates_check(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf);
ngx_int_t ngx_http_quota_live_body_check(ngx_conf_t *cf,
    ngx_http_quota_loc_conf_t *qlcf);
ngx_int_t ngx_http_quota_render(ngx_http_request_t *r,
    ngx_http_quota_body_tpl_t *tpl, ngx_http_quota_view_t *view,
    ngx_str_t *body);
ngx_int_t ngx_http_quota_alerts_envelope(ngx_http_request_t *r,
    ngx_array_t *items, ngx_uint_t total, ngx_uint_t page,
    ngx_uint_t per_page, ngx_str_t *body);
ngx_http_quota_view_t *ngx_http_quota_view(ngx_http_request_t *r,
    ngx_http_quota_view_t *tmp);
extern ngx_str_t  ngx_http_quota_template_error_body;

/* ngx_http_quota_template_vars.c */
ngx_int_t ngx_http_quota_add_template_variables(ngx_conf_t *cf);

/* ngx_http_quota_metrics.c */
ngx_int_t ngx_http_quota_stats_zone(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf);
uint64_t ngx_http_quota_now_us(void);
void ngx_http_quota_stats_latency(ngx_http_quota_stats_t *stats, uint64_t us);
ngx_int_t ngx_http_quota_metrics_handler(ngx_http_request_t *r);

/* ngx_http_quota_redis_stats.c: the per-server families */
size_t ngx_http_quota_redis_stats_size(ngx_http_quota_main_conf_t *qmcf,
    ngx_uint_t *n);
u_char *ngx_http_quota_redis_stats_text(u_char *p,
    ngx_http_quota_main_conf_t *qmcf, ngx_uint_t n);

/* ngx_http_quota_variables.c */
ngx_int_t ngx_http_quota_add_variables(ngx_conf_t *cf);

/* ngx_http_quota_anchor.c */
ngx_uint_t ngx_http_quota_anchor_guess(ngx_str_t *tenant);
void ngx_http_quota_anchor_learn(ngx_str_t *tenant, ngx_uint_t anchor,
    ngx_log_t *log);
ngx_int_t ngx_http_quota_anchor_keys(ngx_pool_t *pool, const char **argv,
    size_t *argvlen, ngx_uint_t anchor);
void ngx_http_quota_anchor_exit_worker(void);

/* ngx_http_quota_tenant.c */
ngx_int_t ngx_http_quota_tenant_id(ngx_http_request_t *r,
    ngx_http_quota_loc_conf_t *qlcf, ngx_str_t *value, ngx_str_t *id);
u_char *ngx_http_quota_key(ngx_pool_t *pool, ngx_str_t *prefix,
    ngx_str_t *tenant, const char *suffix, size_t suffix_len,
    const u_char *tail, size_t tail_len, size_t *len);


#endif /* _NGX_HTTP_QUOTA_MODULE_H_INCLUDED_ */


/*
 * Counters about the module itself, summed over all workers through a
 * shared memory zone, and the quota_metrics content handler that serves
 * them in the Prometheus text exposition format.
 *
 * Every counter is an ngx_atomic_t updated with ngx_atomic_fetch_add: no
 * lock on the request path.  The zone survives reloads (same name and size),
 * so counters are monotonic for the life of the master process, as
 * Prometheus expects of *_total.
 */


#include "ngx_http_quota_module.h"
#include "ngx_http_quota_zone.h"


#define NGX_HTTP_QUOTA_STATS_SIZE  (64 * 1024)


/* upper bounds of the latency histograms, microseconds */
ngx_uint_t  ngx_http_quota_latency_le[NGX_HTTP_QUOTA_LATENCY_BUCKETS] = {
    100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000,
    1000000
};

static const char  *ngx_http_quota_error_kinds[NGX_HTTP_QUOTA_ERR_COUNT] = {
    "connect", "disconnect", "timeout", "reply", "unavailable"
};

static const char  *ngx_http_quota_local_kinds[NGX_HTTP_QUOTA_LOCAL_COUNT] = {
    "lease", "reject_cache", "fallback"
};


static u_char *ngx_http_quota_metrics_text(u_char *p,
    ngx_http_quota_stats_t *st);
static u_char *ngx_http_quota_metrics_ledger(u_char *p,
    ngx_http_quota_stats_t *st, ngx_http_quota_main_conf_t *qmcf);
static ngx_int_t ngx_http_quota_stats_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);


ngx_int_t
ngx_http_quota_stats_zone(ngx_conf_t *cf, ngx_http_quota_main_conf_t *qmcf)
{
    ngx_shm_zone_t  *zone;

    static ngx_str_t  name = ngx_string("ngx_http_quota_stats");

    zone = ngx_shared_memory_add(cf, &name, NGX_HTTP_QUOTA_STATS_SIZE,
                                 &ngx_http_quota_module);
    if (zone == NULL) {
        return NGX_ERROR;
    }

    zone->init = ngx_http_quota_stats_init_zone;
    zone->data = qmcf;

    return NGX_OK;
}


static ngx_int_t
ngx_http_quota_stats_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_quota_main_conf_t  *qmcf = shm_zone->data;

    ngx_slab_pool_t  *shpool;

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (data) {
        /* a reload: keep counting where the old cycle was */
        qmcf->stats = ((ngx_http_quota_main_conf_t *) data)->stats;
        shm_zone->data = qmcf;
        return NGX_OK;
    }

    if (shm_zone->shm.exists) {
        qmcf->stats = shpool->data;
        return NGX_OK;
    }

    qmcf->stats = ngx_slab_calloc(shpool, sizeof(ngx_http_quota_stats_t));
    if (qmcf->stats == NULL) {
        return NGX_ERROR;
    }

    shpool->data = qmcf->stats;

    return NGX_OK;
}


/* a monotonic clock in microseconds, for Redis round trips */
uint64_t
ngx_http_quota_now_us(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}


void
ngx_http_quota_stats_latency(ngx_http_quota_stats_t *stats, uint64_t us)
{
    ngx_uint_t  i;

    for (i = 0; i < NGX_HTTP_QUOTA_LATENCY_BUCKETS; i++) {
        if (us <= ngx_http_quota_latency_le[i]) {
            break;
        }
    }

    /* i == NGX_HTTP_QUOTA_LATENCY_BUCKETS: only +Inf, i.e. _count */
    if (i < NGX_HTTP_QUOTA_LATENCY_BUCKETS) {
        (void) ngx_atomic_fetch_add(&stats->latency[i], 1);
    }

    (void) ngx_atomic_fetch_add(&stats->latency_count, 1);
    (void) ngx_atomic_fetch_add(&stats->latency_sum_us, us);
}


ngx_int_t
ngx_http_quota_metrics_handler(ngx_http_request_t *r)
{
    size_t                       len;
    ngx_int_t                    rc;
    ngx_buf_t                   *b;
    ngx_uint_t                   servers;
    ngx_chain_t                  out;
    ngx_table_elt_t             *h;
    ngx_http_quota_stats_t      *st;
    ngx_http_quota_main_conf_t  *qmcf;

    static ngx_str_t  allow = ngx_string("Allow");

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        /* RFC 9110 15.5.6: a 405 says what is allowed */
        h = ngx_http_quota_push_header(r, &allow);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_str_set(&h->value, "GET, HEAD");

        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    st = qmcf->stats;

    if (st == NULL) {
        /* no quota_redis: nothing is ever measured */
        return NGX_HTTP_NOT_FOUND;
    }

    len = 4096 + 1280 + NGX_HTTP_QUOTA_STATUS_COUNT * (64 + NGX_ATOMIC_T_LEN)
          + NGX_HTTP_QUOTA_LATENCY_BUCKETS * (64 + NGX_ATOMIC_T_LEN)
          + NGX_HTTP_QUOTA_ERR_COUNT * (64 + NGX_ATOMIC_T_LEN)
          + 1536 + NGX_HTTP_QUOTA_LOCAL_COUNT * (64 + NGX_ATOMIC_T_LEN)
          + ngx_http_quota_redis_stats_size(qmcf, &servers);

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_http_quota_metrics_text(b->last, st);
    b->last = ngx_http_quota_metrics_ledger(b->last, st, qmcf);
    b->last = ngx_http_quota_redis_stats_text(b->last, qmcf, servers);
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type,
                "text/plain; version=0.0.4; charset=utf-8");
    r->headers_out.content_type_len = sizeof("text/plain") - 1;
    r->headers_out.content_type_lowcase = NULL;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* the exposition text; the caller sized the buffer */
static u_char *
ngx_http_quota_metrics_text(u_char *p, ngx_http_quota_stats_t *st)
{
    ngx_uint_t         i;
    ngx_atomic_uint_t  cumulative;

    p = ngx_cpymem(p, "# HELP quota_decisions_total Requests decided by "
                      "ngx_http_quota_module, by $quota_status.\n"
                      "# TYPE quota_decisions_total counter\n",
                   sizeof("# HELP quota_decisions_total Requests decided by "
                          "ngx_http_quota_module, by $quota_status.\n"
                          "# TYPE quota_decisions_total counter\n") - 1);

    for (i = 0; i < NGX_HTTP_QUOTA_STATUS_COUNT; i++) {
        p = ngx_sprintf(p, "quota_decisions_total{status=\"%V\"} %uA\n",
                        &ngx_http_quota_status_names[i], st->decisions[i]);
    }

    p = ngx_sprintf(p, "# HELP quota_redis_latency_seconds Round trip of "
                       "the charge script, sent to answered.\n"
                       "# TYPE quota_redis_latency_seconds histogram\n");

    cumulative = 0;

    for (i = 0; i < NGX_HTTP_QUOTA_LATENCY_BUCKETS; i++) {
        cumulative += st->latency[i];
        p = ngx_sprintf(p, "quota_redis_latency_seconds_bucket"
                           "{le=\"%ui.%06ui\"} %uA\n",
                        ngx_http_quota_latency_le[i] / 1000000,
                        ngx_http_quota_latency_le[i] % 1000000, cumulative);
    }

    p = ngx_sprintf(p, "quota_redis_latency_seconds_bucket{le=\"+Inf\"} %uA\n"
                       "quota_redis_latency_seconds_sum %uA.%06uA\n"
                       "quota_redis_latency_seconds_count %uA\n",
                    st->latency_count, st->latency_sum_us / 1000000,
                    st->latency_sum_us % 1000000, st->latency_count);

    p = ngx_sprintf(p, "# HELP quota_redis_errors_total Redis failures, "
                       "each followed by quota_failure_mode.\n"
                       "# TYPE quota_redis_errors_total counter\n");

    for (i = 0; i < NGX_HTTP_QUOTA_ERR_COUNT; i++) {
        p = ngx_sprintf(p, "quota_redis_errors_total{kind=\"%s\"} %uA\n",
                        ngx_http_quota_error_kinds[i], st->errors[i]);
    }

    p = ngx_sprintf(p, "# HELP quota_redis_reconnects_total Connection "
                       "attempts after a lost or failed connection.\n"
                       "# TYPE quota_redis_reconnects_total counter\n"
                       "quota_redis_reconnects_total %uA\n"
                       "# HELP quota_redis_noscript_total NOSCRIPT replies "
                       "answered by EVAL.\n"
                       "# TYPE quota_redis_noscript_total counter\n"
                       "quota_redis_noscript_total %uA\n"
                       "# HELP quota_redis_anchor_resends_total Charges "
                       "sent again with the period keys of the "
                       "account's billing anchor.\n"
                       "# TYPE quota_redis_anchor_resends_total counter\n"
                       "quota_redis_anchor_resends_total %uA\n"
                       "# HELP quota_redis_inflight Redis operations sent "
                       "and not answered yet.\n"
                       "# TYPE quota_redis_inflight gauge\n"
                       "quota_redis_inflight %uA\n"
                       "# HELP quota_redis_failovers_total Failovers "
                       "seen: a new master named by the sentinels, a "
                       "cluster slot map with a slot on a new owner.\n"
                       "# TYPE quota_redis_failovers_total counter\n"
                       "quota_redis_failovers_total %uA\n",
                    st->reconnects, st->noscript, st->anchor_resends,
                    st->inflight,
                    st->failovers);

    p = ngx_sprintf(p, "# HELP quota_live_clients quota_live clients "
                       "connected (WebSocket and SSE).\n"
                       "# TYPE quota_live_clients gauge\n"
                       "quota_live_clients %uA\n"
                       "# HELP quota_live_frames_total Messages queued for "
                       "quota_live clients.\n"
                       "# TYPE quota_live_frames_total counter\n"
                       "quota_live_frames_total %uA\n"
                       "# HELP quota_live_dropped_total Events not delivered: "
                       "the client did not read and was closed (1008).\n"
                       "# TYPE quota_live_dropped_total counter\n"
                       "quota_live_dropped_total %uA\n",
                    st->live_clients, st->live_frames, st->live_dropped);

    return p;
}


/* the node ledger (SPEC 9): quota_zone, leases, local decisions */
static u_char *
ngx_http_quota_metrics_ledger(u_char *p, ngx_http_quota_stats_t *st,
    ngx_http_quota_main_conf_t *qmcf)
{
    ngx_uint_t  i;

    p = ngx_sprintf(p, "# HELP quota_zone_tenants Tenants quota_zone "
                       "holds.\n"
                       "# TYPE quota_zone_tenants gauge\n"
                       "quota_zone_tenants %ui\n"
                       "# HELP quota_zone_evictions_total Idle tenants "
                       "evicted from a full quota_zone.\n"
                       "# TYPE quota_zone_evictions_total counter\n"
                       "quota_zone_evictions_total %uA\n"
                       "# HELP quota_leases_total Leases granted by redis "
                       "(quota_lease).\n"
                       "# TYPE quota_leases_total counter\n"
                       "quota_leases_total %uA\n"
                       "# HELP quota_local_decisions_total Requests decided "
                       "from quota_zone, with no redis trip.\n"
                       "# TYPE quota_local_decisions_total counter\n",
                    ngx_http_quota_zone_tenants(qmcf), st->zone_evictions,
                    st->leases);

    for (i = 0; i < NGX_HTTP_QUOTA_LOCAL_COUNT; i++) {
        p = ngx_sprintf(p, "quota_local_decisions_total{kind=\"%s\"} %uA\n",
                        ngx_http_quota_local_kinds[i], st->local[i]);
    }

    p = ngx_sprintf(p, "# HELP quota_redis_circuit_open 1 while "
                       "quota_fallback's circuit breaker keeps requests "
                       "away from redis.\n"
                       "# TYPE quota_redis_circuit_open gauge\n"
                       "quota_redis_circuit_open %ui\n",
                    ngx_http_quota_fallback_circuit(qmcf));

    return p;
}

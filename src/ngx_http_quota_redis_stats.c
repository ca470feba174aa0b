
/*
 * Per-server Redis counters, labelled server="IP:PORT":
 * quota_redis_server_errors_total{server,kind},
 * quota_redis_server_reconnects_total{server} and the histogram
 * quota_redis_server_latency_seconds{server}; and the cross-worker record
 * that makes quota_redis_failovers_total count a failover once, not once
 * per worker.
 *
 * The servers are known at configuration time for quota_redis, the
 * sentinels and the cluster seeds (registered when the zone is set up, so
 * they are listed from the start), but learned at run time for a
 * sentinel's master and a cluster's nodes.  The label set is bounded: a
 * fixed table of NGX_HTTP_QUOTA_REDIS_SERVERS entries in a shared zone,
 * filled in the order servers are first met and never emptied (the zone
 * survives reloads, so counters stay monotonic); once it is full, any
 * further server counts under server="other".
 *
 * An entry's name is written before the number of entries is raised
 * (after a barrier) and never changes, so lookups read without the lock;
 * only adding takes it.  A connection looks its server up when it
 * connects, never per command; counting is ngx_atomic_fetch_add.
 *
 * Failovers: the zone records the sentinels' master and a cluster's slot
 * owners (CRC32 of the owner's address per slot) as last seen by any
 * worker.  The worker that first sees a different master, a slot map in
 * which some slot has another owner, or a MOVED naming another owner,
 * counts one failover and records what it saw; the other workers then see
 * nothing new.  A slot map missing a slot (a failover in progress) changes
 * nothing for that slot.  A MOVED is the word of the node that owned the
 * slot, and the only one while the seeds still answer the map from before
 * (a seed cut off from the other nodes keeps its old view): the owner the
 * last map gave is kept next to the one MOVED named, and a map that still
 * names it is taken as older than the MOVED: neither counted nor recorded,
 * until a map names the new owner.
 */


#include "ngx_http_quota_redis.h"


#define NGX_HTTP_QUOTA_REDIS_ZONE_SIZE                                        \
    (ngx_align(sizeof(ngx_http_quota_redis_stats_t), ngx_pagesize)           \
     + 8 * ngx_pagesize)

/* {server="NAME", NAME escaped */
#define NGX_HTTP_QUOTA_REDIS_LABEL_LEN  (2 * NGX_SOCKADDR_STRLEN + 16)

/* the per-server kinds: "unavailable" belongs to no server */
#define NGX_HTTP_QUOTA_REDIS_SERVER_KINDS  4

/* distinct owner changes learnt from MOVED a slot map may confirm */
#define NGX_HTTP_QUOTA_MOVED_SEEN  8


typedef struct {
    uint32_t                     from;
    uint32_t                     to;
} ngx_http_quota_redis_moved_t;


typedef struct {
    ngx_atomic_t                 errors[NGX_HTTP_QUOTA_REDIS_SERVER_KINDS];
    ngx_atomic_t                 reconnects;
    ngx_atomic_t                 latency[NGX_HTTP_QUOTA_LATENCY_BUCKETS];
    ngx_atomic_t                 latency_count;
    ngx_atomic_t                 latency_sum_us;
    size_t                       len;
    u_char                       name[NGX_SOCKADDR_STRLEN];
} ngx_http_quota_redis_server_t;


struct ngx_http_quota_redis_stats_s {
    ngx_slab_pool_t             *shpool;      /* its mutex guards adding */
    ngx_atomic_t                 nservers;
    /* the last one is server="other" */
    ngx_http_quota_redis_server_t  server[NGX_HTTP_QUOTA_REDIS_SERVERS + 1];

    size_t                       master_len;  /* 0: none seen yet */
    u_char                       master[NGX_SOCKADDR_STRLEN];
    uint32_t                     owner[NGX_HTTP_QUOTA_CLUSTER_SLOTS];
    /* the owner a map gave before MOVED named owner[]; 0: none */
    uint32_t                     mapped[NGX_HTTP_QUOTA_CLUSTER_SLOTS];
};


static ngx_int_t ngx_http_quota_redis_stats_init_zone(
    ngx_shm_zone_t *shm_zone, void *data);
static void ngx_http_quota_redis_stats_known(
    ngx_http_quota_main_conf_t *qmcf);
static ngx_uint_t ngx_http_quota_redis_stats_find(
    ngx_http_quota_redis_stats_t *rs, u_char *name, size_t len,
    ngx_uint_t from);
static u_char *ngx_http_quota_redis_stats_histogram(u_char *p,
    ngx_http_quota_redis_server_t *s, ngx_str_t *name);
static u_char *ngx_http_quota_redis_stats_escape(u_char *p, u_char *s,
    size_t len);
static ngx_uint_t ngx_http_quota_redis_stats_seen(
    ngx_http_quota_redis_stats_t *rs, ngx_http_quota_redis_moved_t *seen);
static ngx_uint_t ngx_http_quota_redis_stats_known_move(
    ngx_http_quota_redis_moved_t *seen, ngx_uint_t n, uint32_t from,
    uint32_t to);
static uint32_t ngx_http_quota_redis_stats_owner(
    ngx_http_quota_redis_node_t *node);


static const char  *ngx_http_quota_redis_server_kinds[] = {
    "connect", "disconnect", "timeout", "reply"
};


ngx_int_t
ngx_http_quota_redis_stats_zone(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf)
{
    ngx_shm_zone_t  *zone;

    static ngx_str_t  name = ngx_string("ngx_http_quota_redis_stats");

    zone = ngx_shared_memory_add(cf, &name, NGX_HTTP_QUOTA_REDIS_ZONE_SIZE,
                                 &ngx_http_quota_module);
    if (zone == NULL) {
        return NGX_ERROR;
    }

    zone->init = ngx_http_quota_redis_stats_init_zone;
    zone->data = qmcf;

    return NGX_OK;
}


static ngx_int_t
ngx_http_quota_redis_stats_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_quota_main_conf_t  *qmcf = shm_zone->data;

    ngx_slab_pool_t  *shpool;

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (data) {
        /* a reload: the same table, and this configuration's servers */
        qmcf->redis_stats =
                       ((ngx_http_quota_main_conf_t *) data)->redis_stats;
        shm_zone->data = qmcf;
        ngx_http_quota_redis_stats_known(qmcf);
        return NGX_OK;
    }

    if (shm_zone->shm.exists) {
        qmcf->redis_stats = shpool->data;
        return NGX_OK;
    }

    qmcf->redis_stats = ngx_slab_calloc(shpool,
                                        sizeof(ngx_http_quota_redis_stats_t));
    if (qmcf->redis_stats == NULL) {
        return NGX_ERROR;
    }

    qmcf->redis_stats->shpool = shpool;
    shpool->data = qmcf->redis_stats;

    ngx_http_quota_redis_stats_known(qmcf);

    return NGX_OK;
}


/* the servers the configuration names, listed before any traffic */
static void
ngx_http_quota_redis_stats_known(ngx_http_quota_main_conf_t *qmcf)
{
    ngx_uint_t    i;
    ngx_addr_t   *addrs;
    ngx_array_t  *list;

    if (qmcf->redis_addr.sockaddr) {
        (void) ngx_http_quota_redis_stats_server(qmcf, &qmcf->redis_addr);
    }

    list = qmcf->redis_sentinels ? qmcf->redis_sentinels
                                 : qmcf->redis_cluster;

    if (list == NULL) {
        return;
    }

    addrs = list->elts;

    for (i = 0; i < list->nelts; i++) {
        (void) ngx_http_quota_redis_stats_server(qmcf, &addrs[i]);
    }
}


/* the table index of a server, added if new and there is room */
ngx_uint_t
ngx_http_quota_redis_stats_server(ngx_http_quota_main_conf_t *qmcf,
    ngx_addr_t *addr)
{
    size_t                          len;
    ngx_uint_t                      n, i;
    ngx_http_quota_redis_stats_t   *rs;
    ngx_http_quota_redis_server_t  *s;
    u_char                          name[NGX_SOCKADDR_STRLEN];

    rs = qmcf->redis_stats;

    if (rs == NULL) {
        return NGX_HTTP_QUOTA_REDIS_SERVERS;
    }

    len = ngx_sock_ntop(addr->sockaddr, addr->socklen, name,
                        NGX_SOCKADDR_STRLEN, 1);

    n = rs->nservers;

    i = ngx_http_quota_redis_stats_find(rs, name, len, 0);
    if (i < n) {
        return i;
    }

    ngx_shmtx_lock(&rs->shpool->mutex);

    /* another process may have added it meanwhile */
    i = ngx_http_quota_redis_stats_find(rs, name, len, n);

    if (i == rs->nservers && i < NGX_HTTP_QUOTA_REDIS_SERVERS) {
        s = &rs->server[i];
        ngx_memcpy(s->name, name, len);
        s->len = len;

        ngx_memory_barrier();

        rs->nservers = i + 1;
    }

    ngx_shmtx_unlock(&rs->shpool->mutex);

    return ngx_min(i, NGX_HTTP_QUOTA_REDIS_SERVERS);
}


/* the entry named so among [from, nservers), else nservers */
static ngx_uint_t
ngx_http_quota_redis_stats_find(ngx_http_quota_redis_stats_t *rs,
    u_char *name, size_t len, ngx_uint_t from)
{
    ngx_uint_t                      i, n;
    ngx_http_quota_redis_server_t  *s;

    n = rs->nservers;

    ngx_memory_barrier();

    for (i = from; i < n; i++) {
        s = &rs->server[i];

        if (s->len == len && ngx_memcmp(s->name, name, len) == 0) {
            return i;
        }
    }

    return n;
}


/* a failure on rc: the total by kind and its server's */
void
ngx_http_quota_redis_error(ngx_http_quota_redis_conn_t *rc, ngx_uint_t kind)
{
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = rc->worker->qmcf;

    ngx_http_quota_count(qmcf, errors[kind]);
    ngx_http_quota_redis_server_error(rc, kind);
}


/* only its server's (the caller counted the total) */
void
ngx_http_quota_redis_server_error(ngx_http_quota_redis_conn_t *rc,
    ngx_uint_t kind)
{
    ngx_http_quota_redis_stats_t  *rs;

    rs = rc->worker->qmcf->redis_stats;

    if (rs && kind < NGX_HTTP_QUOTA_REDIS_SERVER_KINDS) {
        (void) ngx_atomic_fetch_add(&rs->server[rc->server].errors[kind], 1);
    }
}


void
ngx_http_quota_redis_stats_reconnect(ngx_http_quota_redis_conn_t *rc)
{
    ngx_http_quota_redis_stats_t  *rs;

    ngx_http_quota_count(rc->worker->qmcf, reconnects);

    rs = rc->worker->qmcf->redis_stats;

    if (rs) {
        (void) ngx_atomic_fetch_add(&rs->server[rc->server].reconnects, 1);
    }
}


void
ngx_http_quota_redis_stats_latency(ngx_http_quota_redis_conn_t *rc,
    uint64_t us)
{
    ngx_uint_t                      i;
    ngx_http_quota_redis_stats_t   *rs;
    ngx_http_quota_redis_server_t  *s;

    rs = rc->worker->qmcf->redis_stats;

    if (rs == NULL) {
        return;
    }

    s = &rs->server[rc->server];

    for (i = 0; i < NGX_HTTP_QUOTA_LATENCY_BUCKETS; i++) {
        if (us <= ngx_http_quota_latency_le[i]) {
            (void) ngx_atomic_fetch_add(&s->latency[i], 1);
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&s->latency_count, 1);
    (void) ngx_atomic_fetch_add(&s->latency_sum_us, us);
}


/* the sentinels named w->master: a failover if another was recorded */
void
ngx_http_quota_redis_stats_master(ngx_http_quota_worker_t *w)
{
    size_t                         len;
    ngx_uint_t                     moved;
    ngx_http_quota_redis_stats_t  *rs;

    rs = w->qmcf->redis_stats;

    if (rs == NULL) {
        return;
    }

    len = w->master.name.len;
    moved = 0;

    ngx_shmtx_lock(&rs->shpool->mutex);

    if (rs->master_len != len
        || ngx_memcmp(rs->master, w->master.name.data, len) != 0)
    {
        moved = (rs->master_len != 0);
        ngx_memcpy(rs->master, w->master.name.data, len);
        rs->master_len = len;
    }

    ngx_shmtx_unlock(&rs->shpool->mutex);

    if (moved) {
        ngx_http_quota_count(w->qmcf, failovers);
    }
}


/*
 * A new slot map in w->slots: a failover if a slot has another owner,
 * unless a MOVED already counted that change (the other slots of the
 * failed master move with the one MOVED named).
 */
void
ngx_http_quota_redis_stats_slots(ngx_http_quota_worker_t *w)
{
    uint32_t                       crc, node[NGX_HTTP_QUOTA_CLUSTER_MAX_NODES];
    ngx_uint_t                     i, moved, nseen;
    ngx_http_quota_redis_stats_t  *rs;
    ngx_http_quota_redis_moved_t   seen[NGX_HTTP_QUOTA_MOVED_SEEN];

    rs = w->qmcf->redis_stats;

    if (rs == NULL) {
        return;
    }

    for (i = 0; i < w->nnodes; i++) {
        node[i] = ngx_http_quota_redis_stats_owner(&w->nodes[i]);
    }

    moved = 0;

    ngx_shmtx_lock(&rs->shpool->mutex);

    nseen = ngx_http_quota_redis_stats_seen(rs, seen);

    for (i = 0; i < NGX_HTTP_QUOTA_CLUSTER_SLOTS; i++) {
        if (w->slots[i] == NGX_HTTP_QUOTA_NO_NODE) {
            continue;
        }

        crc = node[w->slots[i]];

        if (rs->owner[i] == crc) {
            /* the owner a MOVED named, if it was one: confirmed */
            rs->mapped[i] = 0;
            continue;
        }

        if (rs->mapped[i] == crc) {
            continue;       /* a map from before the MOVED */
        }

        if (rs->owner[i] != 0
            && !ngx_http_quota_redis_stats_known_move(seen, nseen,
                                                      rs->owner[i], crc))
        {
            moved = 1;
        }

        rs->owner[i] = crc;
        rs->mapped[i] = 0;
    }

    ngx_shmtx_unlock(&rs->shpool->mutex);

    if (moved) {
        ngx_http_quota_count(w->qmcf, failovers);
    }
}


/* the owner changes MOVED counted that no map confirmed yet, distinct */
static ngx_uint_t
ngx_http_quota_redis_stats_seen(ngx_http_quota_redis_stats_t *rs,
    ngx_http_quota_redis_moved_t *seen)
{
    ngx_uint_t  i, n;

    n = 0;

    for (i = 0; i < NGX_HTTP_QUOTA_CLUSTER_SLOTS; i++) {
        if (rs->mapped[i] == 0
            || ngx_http_quota_redis_stats_known_move(seen, n, rs->mapped[i],
                                                     rs->owner[i]))
        {
            continue;
        }

        if (n == NGX_HTTP_QUOTA_MOVED_SEEN) {
            break;          /* then a change beyond these counts again */
        }

        seen[n].from = rs->mapped[i];
        seen[n].to = rs->owner[i];
        n++;
    }

    return n;
}


static ngx_uint_t
ngx_http_quota_redis_stats_known_move(ngx_http_quota_redis_moved_t *seen,
    ngx_uint_t n, uint32_t from, uint32_t to)
{
    ngx_uint_t  i;

    for (i = 0; i < n; i++) {
        if (seen[i].from == from && seen[i].to == to) {
            return 1;
        }
    }

    return 0;
}


/* "MOVED slot node": a failover if the slot had another owner */
void
ngx_http_quota_redis_stats_moved(ngx_http_quota_worker_t *w,
    ngx_uint_t slot, ngx_uint_t node)
{
    uint32_t                       crc;
    ngx_uint_t                     moved, nseen;
    ngx_http_quota_redis_stats_t  *rs;
    ngx_http_quota_redis_moved_t   seen[NGX_HTTP_QUOTA_MOVED_SEEN];

    rs = w->qmcf->redis_stats;

    if (rs == NULL) {
        return;
    }

    crc = ngx_http_quota_redis_stats_owner(&w->nodes[node]);
    moved = 0;

    ngx_shmtx_lock(&rs->shpool->mutex);

    if (rs->owner[slot] != crc) {
        /*
         * the failed master's other slots move with it: their MOVED, while
         * no map confirmed the first one, is the same failover (a MOVED is
         * rare: the scan of the slots is cheap enough here)
         */
        if (rs->owner[slot] != 0) {
            nseen = ngx_http_quota_redis_stats_seen(rs, seen);
            moved = !ngx_http_quota_redis_stats_known_move(seen, nseen,
                                                           rs->owner[slot],
                                                           crc);
        }

        /* the owner the last map gave stays the one to ignore */
        if (rs->mapped[slot] == 0) {
            rs->mapped[slot] = rs->owner[slot];
        }

        rs->owner[slot] = crc;
    }

    ngx_shmtx_unlock(&rs->shpool->mutex);

    if (moved) {
        ngx_http_quota_count(w->qmcf, failovers);
    }
}


/* a slot owner's record: CRC32 of its address, never 0 ("none") */
static uint32_t
ngx_http_quota_redis_stats_owner(ngx_http_quota_redis_node_t *node)
{
    return ngx_crc32_short(node->text, node->addr.name.len) | 1;
}


/*
 * The room ngx_http_quota_redis_stats_text() needs for the first *n
 * servers (the servers known now: another process may add some before the
 * text is written, which then lists *n only).
 */
size_t
ngx_http_quota_redis_stats_size(ngx_http_quota_main_conf_t *qmcf,
    ngx_uint_t *n)
{
    size_t                         line;
    ngx_http_quota_redis_stats_t  *rs;

    rs = qmcf->redis_stats;

    if (rs == NULL) {
        *n = 0;
        return 0;
    }

    *n = rs->nservers;

    /* "other" once the table is full */
    if (*n == NGX_HTTP_QUOTA_REDIS_SERVERS) {
        (*n)++;
    }

    /* a line: the name, escaped, the longest other label, the numbers */
    line = sizeof("quota_redis_server_latency_seconds_bucket{server=\"\","
                  "le=\"1.000000\"} ") + 2 * NGX_SOCKADDR_STRLEN
           + 2 * NGX_ATOMIC_T_LEN;

    return 1024 + *n * (NGX_HTTP_QUOTA_REDIS_SERVER_KINDS + 1
                        + NGX_HTTP_QUOTA_LATENCY_BUCKETS + 3)
                     * line;
}


/* the per-server families for the first n servers (see _size()) */
u_char *
ngx_http_quota_redis_stats_text(u_char *p, ngx_http_quota_main_conf_t *qmcf,
    ngx_uint_t n)
{
    ngx_uint_t                     i, k;
    ngx_str_t                      name[NGX_HTTP_QUOTA_REDIS_SERVERS + 1];
    ngx_http_quota_redis_stats_t  *rs;

    rs = qmcf->redis_stats;

    if (rs == NULL) {
        return p;
    }

    ngx_memory_barrier();

    for (i = 0; i < n; i++) {
        if (i == NGX_HTTP_QUOTA_REDIS_SERVERS) {
            ngx_str_set(&name[i], "other");
            continue;
        }

        name[i].data = rs->server[i].name;
        name[i].len = rs->server[i].len;
    }

    p = ngx_sprintf(p, "# HELP quota_redis_server_errors_total Redis "
                       "failures by server (at most %d, then "
                       "server=\"other\").\n"
                       "# TYPE quota_redis_server_errors_total counter\n",
                    NGX_HTTP_QUOTA_REDIS_SERVERS);

    for (i = 0; i < n; i++) {
        for (k = 0; k < NGX_HTTP_QUOTA_REDIS_SERVER_KINDS; k++) {
            p = ngx_cpymem(p, "quota_redis_server_errors_total{server=\"",
                           sizeof("quota_redis_server_errors_total"
                                  "{server=\"") - 1);
            p = ngx_http_quota_redis_stats_escape(p, name[i].data,
                                                  name[i].len);
            p = ngx_sprintf(p, "\",kind=\"%s\"} %uA\n",
                            ngx_http_quota_redis_server_kinds[k],
                            rs->server[i].errors[k]);
        }
    }

    p = ngx_sprintf(p, "# HELP quota_redis_server_reconnects_total "
                       "Connection attempts after a failure, by server.\n"
                       "# TYPE quota_redis_server_reconnects_total counter\n");

    for (i = 0; i < n; i++) {
        p = ngx_cpymem(p, "quota_redis_server_reconnects_total{server=\"",
                       sizeof("quota_redis_server_reconnects_total"
                              "{server=\"") - 1);
        p = ngx_http_quota_redis_stats_escape(p, name[i].data, name[i].len);
        p = ngx_sprintf(p, "\"} %uA\n", rs->server[i].reconnects);
    }

    p = ngx_sprintf(p, "# HELP quota_redis_server_latency_seconds Round "
                       "trip of the commands requests wait for, by "
                       "server.\n"
                       "# TYPE quota_redis_server_latency_seconds "
                       "histogram\n");

    for (i = 0; i < n; i++) {
        p = ngx_http_quota_redis_stats_histogram(p, &rs->server[i],
                                                 &name[i]);
    }

    return p;
}


static u_char *
ngx_http_quota_redis_stats_histogram(u_char *p,
    ngx_http_quota_redis_server_t *s, ngx_str_t *name)
{
    u_char             *last;
    ngx_uint_t          k;
    ngx_atomic_uint_t   cumulative, count, sum;
    u_char              label[NGX_HTTP_QUOTA_REDIS_LABEL_LEN];

    /* {server="NAME" once, copied into every line */
    last = ngx_http_quota_redis_stats_escape(ngx_cpymem(label, "{server=\"",
                                                        9),
                                             name->data, name->len);
    *last++ = '"';

    count = s->latency_count;
    sum = s->latency_sum_us;
    cumulative = 0;

    for (k = 0; k < NGX_HTTP_QUOTA_LATENCY_BUCKETS; k++) {
        cumulative += s->latency[k];
        p = ngx_sprintf(p, "quota_redis_server_latency_seconds_bucket%*s"
                           ",le=\"%ui.%06ui\"} %uA\n",
                        last - label, label,
                        ngx_http_quota_latency_le[k] / 1000000,
                        ngx_http_quota_latency_le[k] % 1000000,
                        cumulative);
    }

    return ngx_sprintf(p, "quota_redis_server_latency_seconds_bucket%*s"
                          ",le=\"+Inf\"} %uA\n"
                          "quota_redis_server_latency_seconds_sum%*s} "
                          "%uA.%06uA\n"
                          "quota_redis_server_latency_seconds_count%*s} "
                          "%uA\n",
                       last - label, label, ngx_max(count, cumulative),
                       last - label, label, sum / 1000000, sum % 1000000,
                       last - label, label, ngx_max(count, cumulative));
}


/* a label value: backslash, double quote and newline escaped */
static u_char *
ngx_http_quota_redis_stats_escape(u_char *p, u_char *s, size_t len)
{
    while (len--) {
        switch (*s) {

        case '\\':
        case '"':
            *p++ = '\\';
            *p++ = *s;
            break;

        case '\n':
            *p++ = '\\';
            *p++ = 'n';
            break;

        default:
            *p++ = *s;
        }

        s++;
    }

    return p;
}

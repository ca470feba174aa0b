
/*
 * quota_zone: the node ledger's shared zone (see ngx_http_quota_zone.h for
 * the layout, the locking rules and the API).
 *
 * Like limit_req_zone: a slab pool in shared memory, an rbtree keyed by
 * the crc32 of the tenant (colliding keys compare the bytes), an LRU queue,
 * and the slab pool's mutex as the lock.  A reload with the same name and
 * size keeps the zone and what it knows.
 */


#include "ngx_http_quota_zone.h"


/* at most this many nodes are evicted for one allocation */
#define NGX_HTTP_QUOTA_ZONE_EVICT  16


static ngx_int_t ngx_http_quota_zone_init(ngx_shm_zone_t *shm_zone,
    void *data);
static void ngx_http_quota_zone_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static ngx_int_t ngx_http_quota_zone_cmp(ngx_http_quota_zone_node_t *a,
    ngx_http_quota_zone_node_t *b);
static ngx_http_quota_zone_node_t *ngx_http_quota_zone_create(
    ngx_http_quota_zone_t *z, ngx_str_t *tenant, uint32_t hash);
static ngx_uint_t ngx_http_quota_zone_evict(ngx_http_quota_zone_t *z,
    ngx_http_quota_zone_node_t *keep);
static ngx_int_t ngx_http_quota_zone_account(ngx_http_quota_ctx_t *ctx);


/* commands deferred under the lock, sent by the unlock (per worker) */
static ngx_http_quota_zone_cmd_t   *ngx_http_quota_zone_deferred;
static ngx_http_quota_zone_cmd_t  **ngx_http_quota_zone_deferred_last
    = &ngx_http_quota_zone_deferred;


char *
ngx_http_quota_zone_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_quota_main_conf_t *qmcf = conf;

    u_char                 *p;
    ssize_t                 size;
    ngx_str_t              *value, name, s;
    ngx_shm_zone_t         *shm_zone;
    ngx_http_quota_zone_t  *z;

    if (qmcf->zone != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;

    p = (u_char *) ngx_strlchr(value[1].data, value[1].data + value[1].len,
                               ':');
    if (p == NULL || p == value[1].data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone \"%V\", expected NAME:SIZE",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    name.data = value[1].data;
    name.len = p - name.data;

    s.data = p + 1;
    s.len = value[1].data + value[1].len - s.data;

    size = ngx_parse_size(&s);

    if (size == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone size \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (size < (ssize_t) (8 * ngx_pagesize)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zone \"%V\" is too small, at least %uzk",
                           &value[1], 8 * ngx_pagesize / 1024);
        return NGX_CONF_ERROR;
    }

    z = ngx_pcalloc(cf->pool, sizeof(ngx_http_quota_zone_t));
    if (z == NULL) {
        return NGX_CONF_ERROR;
    }

    shm_zone = ngx_shared_memory_add(cf, &name, size, &ngx_http_quota_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zone \"%V\" is already used", &name);
        return NGX_CONF_ERROR;
    }

    z->shm_zone = shm_zone;
    z->qmcf = qmcf;
    z->name = name;

    shm_zone->init = ngx_http_quota_zone_init;
    shm_zone->data = z;

    qmcf->zone = z;

    return NGX_CONF_OK;
}


void
ngx_http_quota_zone_need(ngx_conf_t *cf, ngx_str_t *directive)
{
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_quota_module);

    if (qmcf->zone_need_line == 0) {
        qmcf->zone_need = *directive;
        qmcf->zone_need_file = cf->conf_file->file.name;
        qmcf->zone_need_line = cf->conf_file->line;
    }
}


/* init_main_conf: every directive has been read */
ngx_int_t
ngx_http_quota_zone_check(ngx_conf_t *cf, ngx_http_quota_main_conf_t *qmcf)
{
    ngx_uint_t                i;
    ngx_http_quota_zone_t    *z;
    ngx_http_quota_metric_t  *m;

    z = qmcf->zone;

    if (z == NULL) {
        if (qmcf->zone_need_line) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"%V\" in %V:%ui needs \"quota_zone\" "
                          "in the http block", &qmcf->zone_need,
                          &qmcf->zone_need_file, qmcf->zone_need_line);
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    /* the signature of the metric set: a node made by a configuration
       with other metrics has another snapshot layout */
    ngx_crc32_init(z->sig);

    m = qmcf->metrics.elts;

    for (i = 0; i < qmcf->metrics.nelts; i++) {
        ngx_crc32_update(&z->sig, m[i].name.data, m[i].name.len);
        ngx_crc32_update(&z->sig, (u_char *) (m[i].period
                                              == NGX_HTTP_QUOTA_PERIOD_DAY
                                              ? "/d;" : "/m;"), 3);
    }

    ngx_crc32_final(z->sig);

    z->nmetrics = qmcf->metrics.nelts;

    return NGX_OK;
}


ngx_int_t
ngx_http_quota_zone_add_hook(ngx_conf_t *cf, ngx_http_quota_zone_evict_pt hook)
{
    ngx_uint_t                   i;
    ngx_http_quota_zone_t       *z;
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_quota_module);
    z = qmcf->zone;

    if (z == NULL) {
        return NGX_OK;
    }

    for (i = 0; i < z->nhooks; i++) {
        if (z->hooks[i] == hook) {
            return NGX_OK;
        }
    }

    if (z->nhooks == NGX_HTTP_QUOTA_ZONE_HOOKS) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "quota: too many quota_zone eviction hooks");
        return NGX_ERROR;
    }

    z->hooks[z->nhooks++] = hook;

    return NGX_OK;
}


static ngx_int_t
ngx_http_quota_zone_init(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_quota_zone_t  *oz = data;

    size_t                  len;
    ngx_http_quota_zone_t  *z;

    z = shm_zone->data;

    if (oz) {
        /* a reload with the same name and size: keep what the zone knows
           (nodes of another metric set are told apart by their sig) */
        z->sh = oz->sh;
        z->shpool = oz->shpool;
        return NGX_OK;
    }

    z->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        z->sh = z->shpool->data;
        return NGX_OK;
    }

    z->sh = ngx_slab_calloc(z->shpool, sizeof(ngx_http_quota_zone_sh_t));
    if (z->sh == NULL) {
        return NGX_ERROR;
    }

    z->shpool->data = z->sh;

    ngx_rbtree_init(&z->sh->rbtree, &z->sh->sentinel,
                    ngx_http_quota_zone_insert);
    ngx_queue_init(&z->sh->lru);
    ngx_queue_init(&z->sh->active);

    len = sizeof(" in quota_zone \"\"") + shm_zone->shm.name.len;

    z->shpool->log_ctx = ngx_slab_alloc(z->shpool, len);
    if (z->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(z->shpool->log_ctx, " in quota_zone \"%V\"%Z",
                &shm_zone->shm.name);

    /* a full zone is expected: it evicts, it does not alert */
    z->shpool->log_nomem = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_quota_zone_cmp(ngx_http_quota_zone_node_t *a,
    ngx_http_quota_zone_node_t *b)
{
    if (a->sig != b->sig) {
        return a->sig < b->sig ? -1 : 1;
    }

    if (a->len != b->len) {
        return a->len < b->len ? -1 : 1;
    }

    return ngx_memcmp(ngx_http_quota_zone_tenant(a),
                      ngx_http_quota_zone_tenant(b), a->len);
}


static void
ngx_http_quota_zone_insert(ngx_rbtree_node_t *temp, ngx_rbtree_node_t *node,
    ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t  **p;

    for ( ;; ) {

        if (node->key != temp->key) {
            p = (node->key < temp->key) ? &temp->left : &temp->right;

        } else {
            p = (ngx_http_quota_zone_cmp((ngx_http_quota_zone_node_t *) node,
                                         (ngx_http_quota_zone_node_t *) temp)
                 < 0)
                ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


void
ngx_http_quota_zone_lock(ngx_http_quota_zone_t *z)
{
    ngx_shmtx_lock(&z->shpool->mutex);
}


void
ngx_http_quota_zone_unlock(ngx_http_quota_zone_t *z)
{
    ngx_http_quota_zone_cmd_t  *cmd;

    ngx_shmtx_unlock(&z->shpool->mutex);

    while (ngx_http_quota_zone_deferred) {
        cmd = ngx_http_quota_zone_deferred;
        ngx_http_quota_zone_deferred = cmd->next;

        if (ngx_http_quota_zone_deferred == NULL) {
            ngx_http_quota_zone_deferred_last = &ngx_http_quota_zone_deferred;
        }

        cmd->next = NULL;

        if (cmd->handler) {
            cmd->handler(z->qmcf, cmd);
            continue;
        }

        if (ngx_http_quota_redis_send_reliable(z->qmcf, cmd->argc, cmd->argv,
                                               cmd->argvlen)
            != NGX_OK)
        {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "quota: a command of quota_zone \"%V\" was not "
                          "sent to redis", &z->name);
        }

        ngx_free(cmd);
    }
}


ngx_http_quota_zone_cmd_t *
ngx_http_quota_zone_defer(ngx_http_quota_zone_t *z, ngx_uint_t argc,
    const char **argv, const size_t *argvlen,
    ngx_http_quota_zone_send_pt handler)
{
    u_char                     *p;
    size_t                      size;
    ngx_uint_t                  i;
    ngx_http_quota_zone_cmd_t  *cmd;

    size = sizeof(ngx_http_quota_zone_cmd_t)
           + argc * (sizeof(char *) + sizeof(size_t));

    for (i = 0; i < argc; i++) {
        size += argvlen[i];
    }

    /* the system allocator under the zone lock: the worker's own heap,
       it never waits for another process */
    cmd = ngx_alloc(size, ngx_cycle->log);
    if (cmd == NULL) {
        return NULL;
    }

    cmd->next = NULL;
    cmd->handler = handler;
    cmd->argc = argc;
    cmd->data = NULL;
    cmd->since = 0;
    cmd->argv = (const char **) (cmd + 1);
    cmd->argvlen = (size_t *) (cmd->argv + argc);

    p = (u_char *) (cmd->argvlen + argc);

    for (i = 0; i < argc; i++) {
        cmd->argv[i] = (const char *) p;
        cmd->argvlen[i] = argvlen[i];
        p = ngx_cpymem(p, argv[i], argvlen[i]);
    }

    *ngx_http_quota_zone_deferred_last = cmd;
    ngx_http_quota_zone_deferred_last = &cmd->next;

    return cmd;
}


ngx_http_quota_zone_node_t *
ngx_http_quota_zone_node(ngx_http_quota_zone_t *z, ngx_str_t *tenant,
    ngx_uint_t create)
{
    uint32_t                     hash;
    ngx_int_t                    rc;
    ngx_rbtree_node_t           *node, *sentinel;
    ngx_http_quota_zone_node_t  *qn;

    if (tenant->len == 0 || tenant->len > 65535) {
        return NULL;
    }

    hash = ngx_crc32_short(tenant->data, tenant->len);

    node = z->sh->rbtree.root;
    sentinel = z->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash != node->key) {
            node = (hash < node->key) ? node->left : node->right;
            continue;
        }

        qn = (ngx_http_quota_zone_node_t *) node;

        if (z->sig != qn->sig) {
            rc = z->sig < qn->sig ? -1 : 1;

        } else if (tenant->len != qn->len) {
            rc = tenant->len < qn->len ? -1 : 1;

        } else {
            rc = ngx_memcmp(tenant->data, ngx_http_quota_zone_tenant(qn),
                            tenant->len);
        }

        if (rc == 0) {
            ngx_queue_remove(&qn->queue);
            ngx_queue_insert_head(&z->sh->lru, &qn->queue);
            qn->last = ngx_current_msec;
            return qn;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return create ? ngx_http_quota_zone_create(z, tenant, hash) : NULL;
}


static ngx_http_quota_zone_node_t *
ngx_http_quota_zone_create(ngx_http_quota_zone_t *z, ngx_str_t *tenant,
    uint32_t hash)
{
    size_t                         size;
    ngx_uint_t                     i;
    ngx_http_quota_zone_node_t    *qn;
    ngx_http_quota_zone_metric_t  *m;

    size = sizeof(ngx_http_quota_zone_node_t)
           + z->nmetrics * sizeof(ngx_http_quota_zone_metric_t)
           + tenant->len;

    qn = ngx_http_quota_zone_alloc(z, size, NULL);
    if (qn == NULL) {
        return NULL;
    }

    ngx_memzero(qn, sizeof(ngx_http_quota_zone_node_t));

    qn->node.key = hash;
    qn->sig = z->sig;
    qn->nmetrics = (u_short) z->nmetrics;
    qn->len = (u_short) tenant->len;
    qn->last = ngx_current_msec;

    m = ngx_http_quota_zone_metrics(qn);

    for (i = 0; i < z->nmetrics; i++) {
        ngx_memzero(&m[i], sizeof(ngx_http_quota_zone_metric_t));
        m[i].limit = NGX_HTTP_QUOTA_UNLIMITED;
    }

    ngx_memcpy(ngx_http_quota_zone_tenant(qn), tenant->data, tenant->len);

    ngx_rbtree_insert(&z->sh->rbtree, &qn->node);
    ngx_queue_insert_head(&z->sh->lru, &qn->queue);
    z->sh->tenants++;

    return qn;
}


void *
ngx_http_quota_zone_alloc(ngx_http_quota_zone_t *z, size_t size,
    ngx_http_quota_zone_node_t *node)
{
    void  *p;

    p = ngx_slab_alloc_locked(z->shpool, size);

    /* full: make room from the idle end of the LRU, once */
    if (p == NULL && ngx_http_quota_zone_evict(z, node) > 0) {
        p = ngx_slab_alloc_locked(z->shpool, size);
    }

    return p;
}


void
ngx_http_quota_zone_free(ngx_http_quota_zone_t *z, void *p)
{
    ngx_slab_free_locked(z->shpool, p);
}


/* evicts up to NGX_HTTP_QUOTA_ZONE_EVICT idle nodes, least recent first */
static ngx_uint_t
ngx_http_quota_zone_evict(ngx_http_quota_zone_t *z,
    ngx_http_quota_zone_node_t *keep)
{
    ngx_uint_t                   i, n, tried;
    ngx_queue_t                 *q, *prev;
    ngx_http_quota_zone_node_t  *qn;

    n = 0;
    tried = 0;

    for (q = ngx_queue_last(&z->sh->lru);
         q != ngx_queue_sentinel(&z->sh->lru)
         && n < NGX_HTTP_QUOTA_ZONE_EVICT
         && tried < 4 * NGX_HTTP_QUOTA_ZONE_EVICT;
         q = prev)
    {
        prev = ngx_queue_prev(q);
        tried++;

        qn = ngx_queue_data(q, ngx_http_quota_zone_node_t, queue);

        if (qn == keep || qn->busy) {
            continue;
        }

        for (i = 0; i < z->nhooks; i++) {
            if (z->hooks[i](z, qn) == NGX_DECLINED) {
                break;
            }
        }

        if (i < z->nhooks) {
            continue;
        }

        ngx_queue_remove(q);
        ngx_rbtree_delete(&z->sh->rbtree, &qn->node);
        ngx_slab_free_locked(z->shpool, qn);
        z->sh->tenants--;
        n++;
    }

    if (n && z->qmcf->stats) {
        (void) ngx_atomic_fetch_add(&z->qmcf->stats->zone_evictions, n);
    }

    return n;
}


ngx_http_quota_zone_node_t *
ngx_http_quota_zone_hold(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx)
{
    ngx_http_quota_zone_t       *z;
    ngx_http_quota_zone_node_t  *qn;
    ngx_http_quota_main_conf_t  *qmcf;

    if (ctx->zone_node) {
        return ctx->zone_node;
    }

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    z = qmcf->zone;

    if (z == NULL || z->sh == NULL) {
        return NULL;
    }

    ngx_http_quota_zone_lock(z);

    qn = ngx_http_quota_zone_node(z, &ctx->tenant, 1);

    if (qn) {
        qn->busy++;
        ctx->zone_node = qn;
    }

    ngx_http_quota_zone_unlock(z);

    return qn;
}


void
ngx_http_quota_zone_release(ngx_http_quota_ctx_t *ctx)
{
    ngx_http_quota_zone_t       *z;
    ngx_http_quota_main_conf_t  *qmcf;

    if (ctx->zone_node == NULL) {
        return;
    }

    qmcf = ngx_http_get_module_main_conf(ctx->request, ngx_http_quota_module);
    z = qmcf->zone;

    ngx_http_quota_zone_lock(z);

    if (ctx->zone_node->busy) {
        ctx->zone_node->busy--;
    }

    ngx_http_quota_zone_unlock(z);

    ctx->zone_node = NULL;
}


void
ngx_http_quota_zone_learn(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx)
{
    int64_t                        start;
    ngx_int_t                      account;
    ngx_uint_t                     i, usage;
    ngx_http_quota_zone_t         *z;
    ngx_http_quota_zone_node_t    *qn;
    ngx_http_quota_main_conf_t    *qmcf;
    ngx_http_quota_zone_metric_t  *m, *sm;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    z = qmcf->zone;

    if (z == NULL || z->sh == NULL || ctx->redis_failed) {
        return;
    }

    usage = ctx->have_usage && ctx->rule != NULL;
    account = ngx_http_quota_zone_account(ctx);

    if (!usage && account == NGX_DECLINED) {
        return;
    }

    ngx_http_quota_zone_lock(z);

    qn = ctx->zone_node ? ctx->zone_node
                        : ngx_http_quota_zone_node(z, &ctx->tenant, usage);

    /* the charge went out after the request started: later than the
       last fallback charge (FORCE) answered, its numbers include it */
    start = (int64_t) r->start_sec * 1000 + r->start_msec;

    if (qn && qn->sig == z->sig) {
        if (account != NGX_DECLINED) {
            qn->account = account;
        }

        m = ngx_http_quota_zone_metrics(qn);

        for (i = 0; usage && i < ctx->ncharges; i++) {
            sm = &m[ctx->rule->charges[i].metric];

            if (start > qn->fb_done_ms) {
                sm->fb_done = 0;
            }

            sm->used = ctx->used[i];
            sm->limit = ctx->limit[i];
            sm->start = ctx->billing.start;
            sm->end = ctx->billing.end;
            sm->plan = ctx->plan;
            sm->learned = ngx_current_msec;
        }
    }

    ngx_http_quota_zone_unlock(z);
}


/*
 * What a reply says about the tenant's account, for quota_fallback in a
 * location with quota_require_account: only a charge that asked knows
 * (1: any decision past that check, 0: UNKNOWN_TENANT); NGX_DECLINED:
 * nothing.
 */
static ngx_int_t
ngx_http_quota_zone_account(ngx_http_quota_ctx_t *ctx)
{
    if (ctx->local || ctx->conf == NULL || !ctx->conf->require_account) {
        return NGX_DECLINED;
    }

    switch (ctx->code) {

    case NGX_HTTP_QUOTA_CODE_UNKNOWN:
        return 0;

    case NGX_HTTP_QUOTA_CODE_CHARGED:
    case NGX_HTTP_QUOTA_CODE_QUOTA:
    case NGX_HTTP_QUOTA_CODE_CAP:
    case NGX_HTTP_QUOTA_CODE_SUSPENDED:
    case NGX_HTTP_QUOTA_CODE_RATE:
    case NGX_HTTP_QUOTA_CODE_CONCURRENCY:
        return 1;

    default:
        return NGX_DECLINED;
    }
}


void
ngx_http_quota_zone_recall(ngx_http_quota_ctx_t *ctx,
    ngx_http_quota_zone_node_t *node)
{
    ngx_uint_t                     i;
    ngx_http_quota_zone_metric_t  *m, *sm;

    if (ctx->rule == NULL) {
        return;
    }

    m = ngx_http_quota_zone_metrics(node);

    for (i = 0; i < ctx->ncharges; i++) {
        sm = &m[ctx->rule->charges[i].metric];

        if (sm->learned == 0) {
            ctx->have_usage = 0;
            return;
        }

        ctx->used[i] = sm->used;
        ctx->limit[i] = sm->limit;
        ctx->billing.start = sm->start;
        ctx->billing.end = sm->end;
        ctx->plan = sm->plan;
    }

    ctx->have_usage = (ctx->ncharges > 0);
}


ngx_uint_t
ngx_http_quota_zone_tenants(ngx_http_quota_main_conf_t *qmcf)
{
    if (qmcf->zone == NULL || qmcf->zone->sh == NULL) {
        return 0;
    }

    return qmcf->zone->sh->tenants;
}

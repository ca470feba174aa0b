
/*
 * The billing anchor of a tenant, as this worker last learned it.
 *
 * The scripts declare every key they touch (ngx_http_quota_keys.c), and
 * the period keys are named by the start of the billing month of the
 * account's anchor (SPEC 6), which lives in Redis.  The charge is built
 * with this guess; when the account says otherwise the script writes
 * nothing and answers CODE_ANCHOR with the anchor, which is learned here,
 * and the same request is sent once more with the right keys
 * (ngx_http_quota_script.c).
 *
 * Most accounts bill by the calendar month (anchor 1, the guess for a
 * tenant not here), so only the others are kept: at most
 * NGX_HTTP_QUOTA_ANCHORS tenants per worker, least recently used first
 * out.  A tenant with another anchor costs one more round trip the first
 * time a worker meets it, after it was dropped from here, and after its
 * anchor changes.
 */


#include "ngx_http_quota_module.h"


#define NGX_HTTP_QUOTA_ANCHORS  4096


typedef struct {
    ngx_str_node_t               sn;          /* key: crc32 of the tenant */
    ngx_queue_t                  queue;       /* LRU, most recent first */
    ngx_uint_t                   anchor;      /* 2-31 */
    u_char                       tenant[1];
} ngx_http_quota_anchor_t;


static ngx_http_quota_anchor_t *ngx_http_quota_anchor_find(ngx_str_t *tenant,
    uint32_t hash);


/* the charge's KEY_* are quota_keys()'s names, in their order */
typedef char  ngx_http_quota_keys_in_order[
    (NGX_HTTP_QUOTA_KEY_ACCOUNT == QUOTA_KEY_ACCOUNT + 1
     && NGX_HTTP_QUOTA_KEY_RECORD == QUOTA_KEY_RECORD + 1
     && NGX_HTTP_QUOTA_KEY_BUCKET == QUOTA_KEY_BUCKET + 1
     && NGX_HTTP_QUOTA_KEY_USAGE == QUOTA_KEY_USAGE + 1
     && NGX_HTTP_QUOTA_KEY_DAILY == QUOTA_KEY_DAILY + 1
     && NGX_HTTP_QUOTA_KEY_ALERTED == QUOTA_KEY_ALERTED + 1
     && NGX_HTTP_QUOTA_KEY_BEFORE == QUOTA_KEY_BEFORE + 1
     && NGX_HTTP_QUOTA_KEY_ALERTS == QUOTA_KEY_ALERTS + 1
     && NGX_HTTP_QUOTA_KEY_RATE == QUOTA_KEY_RATE + 1
     && NGX_HTTP_QUOTA_KEY_INFLIGHT == QUOTA_KEY_INFLIGHT + 1
     && NGX_HTTP_QUOTA_CHARGE_NKEYS == QUOTA_KEYS) ? 1 : -1];


static ngx_rbtree_t       ngx_http_quota_anchor_tree;
static ngx_rbtree_node_t  ngx_http_quota_anchor_sentinel;
static ngx_queue_t        ngx_http_quota_anchor_lru;
static ngx_uint_t         ngx_http_quota_anchor_n;
static ngx_uint_t         ngx_http_quota_anchor_ready;


ngx_uint_t
ngx_http_quota_anchor_guess(ngx_str_t *tenant)
{
    ngx_http_quota_anchor_t  *a;

    if (ngx_http_quota_anchor_n == 0) {
        return 1;
    }

    a = ngx_http_quota_anchor_find(tenant, ngx_crc32_short(tenant->data,
                                                           tenant->len));
    if (a == NULL) {
        return 1;
    }

    ngx_queue_remove(&a->queue);
    ngx_queue_insert_head(&ngx_http_quota_anchor_lru, &a->queue);

    return a->anchor;
}


/* Redis said the tenant's anchor is "anchor" (1-31) */
void
ngx_http_quota_anchor_learn(ngx_str_t *tenant, ngx_uint_t anchor,
    ngx_log_t *log)
{
    uint32_t                  hash;
    ngx_queue_t              *q;
    ngx_http_quota_anchor_t  *a;

    if (!ngx_http_quota_anchor_ready) {
        ngx_rbtree_init(&ngx_http_quota_anchor_tree,
                        &ngx_http_quota_anchor_sentinel,
                        ngx_str_rbtree_insert_value);
        ngx_queue_init(&ngx_http_quota_anchor_lru);
        ngx_http_quota_anchor_ready = 1;
    }

    hash = ngx_crc32_short(tenant->data, tenant->len);
    a = ngx_http_quota_anchor_find(tenant, hash);

    if (a != NULL) {
        ngx_queue_remove(&a->queue);

        if (anchor != 1) {
            a->anchor = anchor;
            ngx_queue_insert_head(&ngx_http_quota_anchor_lru, &a->queue);
            return;
        }

        /* the calendar month again: the guess without an entry */
        ngx_rbtree_delete(&ngx_http_quota_anchor_tree, &a->sn.node);
        ngx_http_quota_anchor_n--;
        ngx_free(a);
        return;
    }

    if (anchor == 1) {
        return;
    }

    if (ngx_http_quota_anchor_n == NGX_HTTP_QUOTA_ANCHORS) {
        q = ngx_queue_last(&ngx_http_quota_anchor_lru);
        a = ngx_queue_data(q, ngx_http_quota_anchor_t, queue);

        ngx_queue_remove(q);
        ngx_rbtree_delete(&ngx_http_quota_anchor_tree, &a->sn.node);
        ngx_http_quota_anchor_n--;
        ngx_free(a);
    }

    a = ngx_alloc(offsetof(ngx_http_quota_anchor_t, tenant) + tenant->len,
                  log);
    if (a == NULL) {
        /* the guess stays 1: the next charge is sent twice again */
        return;
    }

    ngx_memcpy(a->tenant, tenant->data, tenant->len);
    a->sn.str.data = a->tenant;
    a->sn.str.len = tenant->len;
    a->sn.node.key = hash;
    a->anchor = anchor;

    ngx_rbtree_insert(&ngx_http_quota_anchor_tree, &a->sn.node);
    ngx_queue_insert_head(&ngx_http_quota_anchor_lru, &a->queue);
    ngx_http_quota_anchor_n++;
}


/*
 * The entries are the worker's own memory, freed at its exit: the tree's
 * root is a static of this module, which nginx unloads then.
 */
void
ngx_http_quota_anchor_exit_worker(void)
{
    ngx_queue_t              *q;
    ngx_http_quota_anchor_t  *a;

    if (!ngx_http_quota_anchor_ready) {
        return;
    }

    while (!ngx_queue_empty(&ngx_http_quota_anchor_lru)) {
        q = ngx_queue_head(&ngx_http_quota_anchor_lru);
        a = ngx_queue_data(q, ngx_http_quota_anchor_t, queue);

        ngx_queue_remove(q);
        ngx_rbtree_delete(&ngx_http_quota_anchor_tree, &a->sn.node);
        ngx_free(a);
    }

    ngx_http_quota_anchor_n = 0;
}


static ngx_http_quota_anchor_t *
ngx_http_quota_anchor_find(ngx_str_t *tenant, uint32_t hash)
{
    ngx_str_node_t  *sn;

    sn = ngx_str_rbtree_lookup(&ngx_http_quota_anchor_tree, tenant, hash);

    return sn ? (ngx_http_quota_anchor_t *) sn : NULL;
}


/*
 * The charge script's KEYS in its argv, named for "anchor" from what its
 * ARGV says: ARG_BASE "P{T}:", ARG_CHARGE_ID and the clock ARG_NOW_MS (the
 * script finds its period at that instant, and its record's bucket).
 */
ngx_int_t
ngx_http_quota_anchor_keys(ngx_pool_t *pool, const char **argv,
    size_t *argvlen, ngx_uint_t anchor)
{
    char         *buf;
    off_t         now_ms;
    ngx_uint_t    i, base, id, now;
    quota_key_t   keys[QUOTA_KEYS];

    base = NGX_HTTP_QUOTA_ARGV_AT(NGX_HTTP_QUOTA_ARG_BASE);
    id = NGX_HTTP_QUOTA_ARGV_AT(NGX_HTTP_QUOTA_ARG_CHARGE_ID);
    now = NGX_HTTP_QUOTA_ARGV_AT(NGX_HTTP_QUOTA_ARG_NOW_MS);

    now_ms = ngx_atoof((u_char *) argv[now], argvlen[now]);

    buf = ngx_pnalloc(pool, quota_keys_size(argvlen[base], argvlen[id]));

    if (now_ms == NGX_ERROR || buf == NULL
        || quota_keys(buf, argv[base], argvlen[base], argv[id], argvlen[id],
                      now_ms / NGX_HTTP_QUOTA_RECORD_BUCKET_MS,
                      now_ms / 1000, (int) anchor, keys)
           != 0)
    {
        return NGX_ERROR;
    }

    for (i = 0; i < QUOTA_KEYS; i++) {
        argv[NGX_HTTP_QUOTA_KEY_AT(i + 1)] = keys[i].data;
        argvlen[NGX_HTTP_QUOTA_KEY_AT(i + 1)] = keys[i].len;
    }

    return NGX_OK;
}

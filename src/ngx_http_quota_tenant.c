
/*
 * The tenant id used in Redis, and the key names built from it.
 *
 * With "quota_tenant VALUE hash" the id is the lower-case hex SHA-256 of
 * the value, computed here, so an API key never reaches Redis, a log or an
 * event.  Without "hash" the value is used as is, and must be short
 * printable ASCII without spaces or braces: a "}" would end the Redis
 * Cluster hash tag early and put a tenant's keys on different slots.
 */


#include "ngx_http_quota_module.h"

#include <openssl/sha.h>


ngx_int_t
ngx_http_quota_tenant_id(ngx_http_request_t *r,
    ngx_http_quota_loc_conf_t *qlcf, ngx_str_t *value, ngx_str_t *id)
{
    u_char  digest[SHA256_DIGEST_LENGTH];

    if (!qlcf->tenant_hash) {
        if (!quota_tenant_valid((char *) value->data, value->len)) {
            return NGX_DECLINED;
        }

        *id = *value;
        return NGX_OK;
    }

    if (SHA256(value->data, value->len, digest) == NULL) {
        return NGX_ERROR;
    }

    id->data = ngx_pnalloc(r->pool, 2 * SHA256_DIGEST_LENGTH);
    if (id->data == NULL) {
        return NGX_ERROR;
    }

    id->len = ngx_hex_dump(id->data, digest, SHA256_DIGEST_LENGTH) - id->data;

    return NGX_OK;
}


/* "P{T}:" suffix tail, e.g. "quota:{acme}:usage:2026-11-01" */
u_char *
ngx_http_quota_key(ngx_pool_t *pool, ngx_str_t *prefix, ngx_str_t *tenant,
    const char *suffix, size_t suffix_len, const u_char *tail, size_t tail_len,
    size_t *len)
{
    u_char  *key, *p;

    *len = prefix->len + 1 + tenant->len + 2 + suffix_len + tail_len;

    key = ngx_pnalloc(pool, *len);
    if (key == NULL) {
        return NULL;
    }

    p = ngx_cpymem(key, prefix->data, prefix->len);
    *p++ = '{';
    p = ngx_cpymem(p, tenant->data, tenant->len);
    *p++ = '}';
    *p++ = ':';
    p = ngx_cpymem(p, suffix, suffix_len);

    if (tail_len) {
        ngx_memcpy(p, tail, tail_len);
    }

    return key;
}

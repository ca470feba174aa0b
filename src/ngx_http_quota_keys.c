
/*
 * The names of a tenant's Redis keys (SPEC 6), as the scripts declare them
 * in KEYS: Redis Cluster routes a script by its declared keys and checks
 * that every key it touches is one of them in the same slot, and an ACL
 * user's key patterns are checked against them.  Every name starts with
 * the tenant's "P{T}:", so all of them hash to the tenant's slot.
 *
 * The period keys (usage:, daily:, alerted: and the previous period's
 * usage:) are named by the start of the billing month of the account's
 * anchor, which only Redis knows: the caller guesses it
 * (ngx_http_quota_anchor.c) and the charge script refuses keys that do not
 * match the anchor it reads (CODE_ANCHOR).
 *
 * Pure code: no nginx headers, no allocation (unit-tested, t/unit).
 */


#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ngx_http_quota_pure.h"


static char *quota_keys_put(char *p, quota_key_t *key, const char *base,
    size_t base_len, const char *suffix, const char *tail, size_t tail_len);


size_t
quota_keys_size(size_t base_len, size_t id_len)
{
    /* the suffixes of quota_keys(), their tails and a bucket number */
    return QUOTA_KEYS * base_len
           + sizeof("account") - 1
           + sizeof("c:") - 1 + id_len
           + sizeof("r:") - 1 + 20
           + sizeof("usage:") - 1 + QUOTA_DATE_LEN
           + sizeof("daily:") - 1 + QUOTA_DATE_LEN
           + sizeof("alerted:") - 1 + QUOTA_DATE_LEN
           + sizeof("usage:") - 1 + QUOTA_DATE_LEN
           + sizeof("alerts") - 1
           + sizeof("rate") - 1
           + sizeof("inflight") - 1;
}


int
quota_keys(char *buf, const char *base, size_t base_len, const char *id,
    size_t id_len, int64_t bucket, int64_t now, int anchor, quota_key_t *keys)
{
    char            *p, num[20];
    size_t           n;
    int64_t          b;
    quota_period_t   cur, before;
    char             start[QUOTA_DATE_LEN], prev[QUOTA_DATE_LEN];

    /* the billing month of "now" and the one before it (the charge
       script's quota_reset alert reads its usage) */
    if (bucket < 0
        || quota_period_month(now, anchor, &cur) != 0
        || quota_period_month(cur.start - 1, anchor, &before) != 0)
    {
        return -1;
    }

    quota_format_date(cur.start, start);
    quota_format_date(before.start, prev);

    n = sizeof(num);
    b = bucket;

    do {
        num[--n] = (char) ('0' + b % 10);
        b /= 10;
    } while (b);

    p = buf;
    p = quota_keys_put(p, &keys[QUOTA_KEY_ACCOUNT], base, base_len,
                       "account", NULL, 0);
    p = quota_keys_put(p, &keys[QUOTA_KEY_RECORD], base, base_len, "c:",
                       id, id_len);
    p = quota_keys_put(p, &keys[QUOTA_KEY_BUCKET], base, base_len, "r:",
                       num + n, sizeof(num) - n);
    p = quota_keys_put(p, &keys[QUOTA_KEY_USAGE], base, base_len, "usage:",
                       start, QUOTA_DATE_LEN);
    p = quota_keys_put(p, &keys[QUOTA_KEY_DAILY], base, base_len, "daily:",
                       start, QUOTA_DATE_LEN);
    p = quota_keys_put(p, &keys[QUOTA_KEY_ALERTED], base, base_len,
                       "alerted:", start, QUOTA_DATE_LEN);
    p = quota_keys_put(p, &keys[QUOTA_KEY_BEFORE], base, base_len, "usage:",
                       prev, QUOTA_DATE_LEN);
    p = quota_keys_put(p, &keys[QUOTA_KEY_ALERTS], base, base_len, "alerts",
                       NULL, 0);
    p = quota_keys_put(p, &keys[QUOTA_KEY_RATE], base, base_len, "rate",
                       NULL, 0);
    (void) quota_keys_put(p, &keys[QUOTA_KEY_INFLIGHT], base, base_len,
                          "inflight", NULL, 0);

    return 0;
}


/* "P{T}:" suffix tail at p; returns the end */
static char *
quota_keys_put(char *p, quota_key_t *key, const char *base, size_t base_len,
    const char *suffix, const char *tail, size_t tail_len)
{
    size_t  len;

    len = strlen(suffix);

    key->data = p;

    memcpy(p, base, base_len);
    p += base_len;
    memcpy(p, suffix, len);
    p += len;

    if (tail_len) {
        memcpy(p, tail, tail_len);
        p += tail_len;
    }

    key->len = (size_t) (p - key->data);

    return p;
}


/*
 * Unit tests of the names of a tenant's keys (src/ngx_http_quota_keys.c):
 * the KEYS the scripts declare.  The period keys follow the billing
 * anchor (SPEC 6); every name starts with the tenant's "P{T}:".
 */

#define _DEFAULT_SOURCE

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ngx_http_quota_pure.h"
#include "unit.h"


#define BASE  "quota:{t1}:"


typedef struct {
    const char  *now;
    int          anchor;
    const char  *usage;       /* the period's start */
    const char  *before;      /* the previous period's start */
} keys_case_t;


static int64_t
ts(const char *iso)
{
    struct tm  tm;

    memset(&tm, 0, sizeof(tm));

    if (sscanf(iso, "%d-%d-%dT%d:%d:%dZ", &tm.tm_year, &tm.tm_mon,
               &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec) != 6)
    {
        abort();
    }

    tm.tm_year -= 1900;
    tm.tm_mon -= 1;

    return (int64_t) timegm(&tm);
}


static int
key_is(quota_key_t *k, const char *want)
{
    return k->len == strlen(want) && memcmp(k->data, want, k->len) == 0;
}


static void
test_names(void)
{
    char         buf[512];
    quota_key_t  k[QUOTA_KEYS];

    CHECK(quota_keys(buf, BASE, sizeof(BASE) - 1, "abc", 3, 178000000,
                     ts("2026-11-15T12:00:00Z"), 1, k) == 0,
          "anchor 1: keys named");

    CHECK(key_is(&k[QUOTA_KEY_ACCOUNT], BASE "account"), "account");
    CHECK(key_is(&k[QUOTA_KEY_RECORD], BASE "c:abc"), "record: c:ID");
    CHECK(key_is(&k[QUOTA_KEY_BUCKET], BASE "r:178000000"),
          "bucket: r:BUCKET");
    CHECK(key_is(&k[QUOTA_KEY_USAGE], BASE "usage:2026-11-01"),
          "usage: the calendar month");
    CHECK(key_is(&k[QUOTA_KEY_DAILY], BASE "daily:2026-11-01"),
          "daily: named by the period, not the day");
    CHECK(key_is(&k[QUOTA_KEY_ALERTED], BASE "alerted:2026-11-01"),
          "alerted: the period's");
    CHECK(key_is(&k[QUOTA_KEY_BEFORE], BASE "usage:2026-10-01"),
          "before: the previous month's usage");
    CHECK(key_is(&k[QUOTA_KEY_ALERTS], BASE "alerts"), "alerts");
    CHECK(key_is(&k[QUOTA_KEY_RATE], BASE "rate"), "rate");
    CHECK(key_is(&k[QUOTA_KEY_INFLIGHT], BASE "inflight"), "inflight");

    CHECK(quota_keys(buf, BASE, sizeof(BASE) - 1, "", 0, 0,
                     ts("2026-11-15T12:00:00Z"), 1, k) == 0
          && key_is(&k[QUOTA_KEY_RECORD], BASE "c:")
          && key_is(&k[QUOTA_KEY_BUCKET], BASE "r:0"),
          "no charge id (a report): c: alone; bucket 0");
}


static void
test_anchors(void)
{
    char         buf[512], want[128];
    size_t       i;
    quota_key_t  k[QUOTA_KEYS];

    static const keys_case_t  cases[] = {
        { "2026-11-10T08:00:00Z", 15, "2026-10-15", "2026-09-15" },
        { "2026-11-14T23:59:59Z", 15, "2026-10-15", "2026-09-15" },
        { "2026-11-15T00:00:00Z", 15, "2026-11-15", "2026-10-15" },
        { "2026-01-10T00:00:00Z", 15, "2025-12-15", "2025-11-15" },
        { "2026-03-05T00:00:00Z", 31, "2026-02-28", "2026-01-31" },
        { "2026-03-30T23:59:59Z", 31, "2026-02-28", "2026-01-31" },
        { "2026-03-31T00:00:00Z", 31, "2026-03-31", "2026-02-28" },
        { "2024-03-01T00:00:00Z", 30, "2024-02-29", "2024-01-30" },
        { "2026-12-31T23:59:59Z", 1, "2026-12-01", "2026-11-01" },
        { "2027-01-01T00:00:00Z", 1, "2027-01-01", "2026-12-01" },
        { "2026-05-01T00:00:00Z", 31, "2026-04-30", "2026-03-31" },
    };

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        CHECK(quota_keys(buf, BASE, sizeof(BASE) - 1, "x", 1, 1,
                         ts(cases[i].now), cases[i].anchor, k) == 0,
              "%s anchor %d: named", cases[i].now, cases[i].anchor);

        snprintf(want, sizeof(want), BASE "usage:%s", cases[i].usage);
        CHECK(key_is(&k[QUOTA_KEY_USAGE], want), "%s anchor %d: %s",
              cases[i].now, cases[i].anchor, want);

        snprintf(want, sizeof(want), BASE "daily:%s", cases[i].usage);
        CHECK(key_is(&k[QUOTA_KEY_DAILY], want), "%s anchor %d: %s",
              cases[i].now, cases[i].anchor, want);

        snprintf(want, sizeof(want), BASE "alerted:%s", cases[i].usage);
        CHECK(key_is(&k[QUOTA_KEY_ALERTED], want), "%s anchor %d: %s",
              cases[i].now, cases[i].anchor, want);

        snprintf(want, sizeof(want), BASE "usage:%s", cases[i].before);
        CHECK(key_is(&k[QUOTA_KEY_BEFORE], want), "%s anchor %d: before %s",
              cases[i].now, cases[i].anchor, want);
    }

    CHECK(quota_keys(buf, BASE, sizeof(BASE) - 1, "x", 1, 1,
                     ts("2026-11-15T12:00:00Z"), 0, k) == -1,
          "anchor 0: refused");
    CHECK(quota_keys(buf, BASE, sizeof(BASE) - 1, "x", 1, 1,
                     ts("2026-11-15T12:00:00Z"), 32, k) == -1,
          "anchor 32: refused");
    CHECK(quota_keys(buf, BASE, sizeof(BASE) - 1, "x", 1, -1,
                     ts("2026-11-15T12:00:00Z"), 1, k) == -1,
          "a negative bucket: refused");
}


/* the names fill exactly quota_keys_size() at most, back to back */
static void
test_size(void)
{
    char         *buf;
    size_t        size, used, i;
    quota_key_t   k[QUOTA_KEYS];
    const char    id[] = "0123456789abcdef0123456789abcdef";

    size = quota_keys_size(sizeof(BASE) - 1, sizeof(id) - 1);

    /* exactly the size: ASan sees a byte past it */
    buf = malloc(size);
    if (buf == NULL) {
        abort();
    }

    CHECK(quota_keys(buf, BASE, sizeof(BASE) - 1, id, sizeof(id) - 1,
                     INT64_MAX, ts("2026-11-15T12:00:00Z"), 31, k) == 0,
          "the longest bucket and a 32-byte id: named");

    used = 0;

    for (i = 0; i < QUOTA_KEYS; i++) {
        CHECK(k[i].data == buf + used, "key %zu follows the one before", i);
        CHECK(k[i].len > sizeof(BASE) - 1
              && memcmp(k[i].data, BASE, sizeof(BASE) - 1) == 0,
              "key %zu starts with the tenant's P{T}:", i);
        used += k[i].len;
    }

    CHECK(key_is(&k[QUOTA_KEY_BUCKET], BASE "r:9223372036854775807"),
          "the longest bucket");
    CHECK(used <= size, "%zu bytes used of quota_keys_size() %zu", used,
          size);

    free(buf);
}


int
main(void)
{
    test_names();
    test_anchors();
    test_size();

    return unit_done();
}

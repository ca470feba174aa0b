
/*
 * Unit tests of the billing period math and the ISO 8601 formatting,
 * with fixed instants and cross-checks against the C library's
 * timegm()/gmtime_r() (used here only, as an independent reference).
 */

#define _DEFAULT_SOURCE

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ngx_http_quota_pure.h"
#include "unit.h"


#define T_MIN   (-62167219200LL)        /* 0000-01-01T00:00:00Z */
#define T_MAX   253402300799LL          /* 9999-12-31T23:59:59Z */


typedef struct {
    const char  *now;
    int          anchor;
    const char  *start;
    const char  *end;
} month_case_t;


static uint64_t
rnd(uint64_t *s)
{
    /* xorshift64*: deterministic, so a failure is reproducible */

    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;

    return *s * 2685821657736338717ULL;
}


static int64_t
rnd_range(uint64_t *s, int64_t lo, int64_t hi)
{
    return lo + (int64_t) (rnd(s) % (uint64_t) (hi - lo + 1));
}


/* "2026-11-22T07:00:00Z" to seconds, through timegm() */

static int64_t
ts(const char *iso)
{
    struct tm  tm;

    memset(&tm, 0, sizeof(tm));

    if (sscanf(iso, "%d-%d-%dT%d:%d:%dZ", &tm.tm_year, &tm.tm_mon,
               &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec) != 6)
    {
        printf("# bad instant \"%s\"\n", iso);
        return 0;
    }

    tm.tm_year -= 1900;
    tm.tm_mon -= 1;

    return (int64_t) timegm(&tm);
}


static const char *
iso(int64_t t, char *buf)
{
    quota_format_iso8601(t, buf);
    buf[QUOTA_ISO8601_LEN] = '\0';

    return buf;
}


static int64_t
ref_mk(int y, int m, int d)
{
    struct tm  tm;

    memset(&tm, 0, sizeof(tm));
    tm.tm_year = y;
    tm.tm_mon = m;
    tm.tm_mday = d;

    return (int64_t) timegm(&tm);
}


/* start of the billing month of (tm_year y, tm_mon m), via timegm() */

static int64_t
ref_start(int y, int m, int anchor)
{
    int  dim;

    dim = (int) ((ref_mk(y, m + 1, 1) - ref_mk(y, m, 1)) / 86400);

    return ref_mk(y, m, anchor < dim ? anchor : dim);
}


/*
 * By definition: the latest month start <= now and the earliest one
 * after it, among the months around now's month.
 */

static void
ref_month(int64_t now, int anchor, int64_t *start, int64_t *end)
{
    int        i;
    time_t     t;
    int64_t    s;
    struct tm  tm;

    t = (time_t) now;
    gmtime_r(&t, &tm);

    *start = INT64_MIN;
    *end = INT64_MAX;

    for (i = -2; i <= 2; i++) {
        s = ref_start(tm.tm_year, tm.tm_mon + i, anchor);

        if (s <= now && s > *start) {
            *start = s;
        }

        if (s > now && s < *end) {
            *end = s;
        }
    }
}


static void
ref_iso(int64_t now, char *buf)
{
    char       tmp[96];
    time_t     t;
    struct tm  tm;

    t = (time_t) now;
    gmtime_r(&t, &tm);

    snprintf(tmp, sizeof(tmp), "%04d-%02d-%02dT%02d:%02d:%02dZ",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec);

    memcpy(buf, tmp, QUOTA_ISO8601_LEN);
    buf[QUOTA_ISO8601_LEN] = '\0';
}


static void
test_fixed(void)
{
    int             rc;
    char            b1[32], b2[32];
    size_t          i;
    quota_period_t  p;

    static const month_case_t  cases[] = {
        { "2026-11-22T07:00:00Z", 1, "2026-11-01T00:00:00Z",
          "2026-12-01T00:00:00Z" },
        { "2026-11-01T00:00:00Z", 1, "2026-11-01T00:00:00Z",
          "2026-12-01T00:00:00Z" },
        { "2026-10-31T23:59:59Z", 1, "2026-10-01T00:00:00Z",
          "2026-11-01T00:00:00Z" },
        { "2026-12-31T23:59:59Z", 1, "2026-12-01T00:00:00Z",
          "2027-01-01T00:00:00Z" },
        { "2027-01-01T00:00:00Z", 1, "2027-01-01T00:00:00Z",
          "2027-02-01T00:00:00Z" },
        { "2026-11-14T23:59:59Z", 15, "2026-10-15T00:00:00Z",
          "2026-11-15T00:00:00Z" },
        { "2026-11-15T00:00:00Z", 15, "2026-11-15T00:00:00Z",
          "2026-12-15T00:00:00Z" },
        { "2027-01-10T00:00:00Z", 15, "2026-12-15T00:00:00Z",
          "2027-01-15T00:00:00Z" },
        { "2026-12-20T00:00:00Z", 15, "2026-12-15T00:00:00Z",
          "2027-01-15T00:00:00Z" },
        { "2027-02-28T00:00:00Z", 31, "2027-02-28T00:00:00Z",
          "2027-03-31T00:00:00Z" },
        { "2027-02-27T12:00:00Z", 31, "2027-01-31T00:00:00Z",
          "2027-02-28T00:00:00Z" },
        { "2027-03-30T23:59:59Z", 31, "2027-02-28T00:00:00Z",
          "2027-03-31T00:00:00Z" },
        { "2027-04-30T00:00:00Z", 31, "2027-04-30T00:00:00Z",
          "2027-05-31T00:00:00Z" },
        { "2028-02-29T10:00:00Z", 30, "2028-02-29T00:00:00Z",
          "2028-03-30T00:00:00Z" },
        { "2028-02-28T10:00:00Z", 30, "2028-01-30T00:00:00Z",
          "2028-02-29T00:00:00Z" },
        { "2027-03-29T00:00:00Z", 30, "2027-02-28T00:00:00Z",
          "2027-03-30T00:00:00Z" },
        { "2028-02-29T23:59:59Z", 31, "2028-02-29T00:00:00Z",
          "2028-03-31T00:00:00Z" },
        { "2100-02-28T00:00:00Z", 29, "2100-02-28T00:00:00Z",
          "2100-03-29T00:00:00Z" },
        { "2100-03-01T00:00:00Z", 31, "2100-02-28T00:00:00Z",
          "2100-03-31T00:00:00Z" },
        { "2000-02-29T00:00:00Z", 30, "2000-02-29T00:00:00Z",
          "2000-03-30T00:00:00Z" },
        { "2000-02-28T23:59:59Z", 29, "2000-01-29T00:00:00Z",
          "2000-02-29T00:00:00Z" },
        { "1970-01-01T00:00:00Z", 1, "1970-01-01T00:00:00Z",
          "1970-02-01T00:00:00Z" },
        { "1969-12-31T23:59:59Z", 1, "1969-12-01T00:00:00Z",
          "1970-01-01T00:00:00Z" },
        { "1969-12-31T23:59:59Z", 31, "1969-12-31T00:00:00Z",
          "1970-01-31T00:00:00Z" },
        { "1900-02-28T12:00:00Z", 31, "1900-02-28T00:00:00Z",
          "1900-03-31T00:00:00Z" },
        { "9999-12-31T23:59:59Z", 1, "9999-12-01T00:00:00Z",
          "10000-01-01T00:00:00Z" },
        { "0000-01-01T00:00:00Z", 1, "0000-01-01T00:00:00Z",
          "0000-02-01T00:00:00Z" },
        { "2038-01-19T03:14:08Z", 19, "2038-01-19T00:00:00Z",
          "2038-02-19T00:00:00Z" },
    };

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        rc = quota_period_month(ts(cases[i].now), cases[i].anchor, &p);

        CHECK(rc == 0 && p.start == ts(cases[i].start)
              && p.end == ts(cases[i].end),
              "%s anchor %d: [%s, %s) (got %d [%s, %s))", cases[i].now,
              cases[i].anchor, cases[i].start, cases[i].end, rc,
              iso(p.start, b1), iso(p.end, b2));
    }

    rc = quota_period_day(ts("2026-11-22T07:00:00Z"), &p);
    CHECK(rc == 0 && p.start == ts("2026-11-22T00:00:00Z")
          && p.end == ts("2026-11-23T00:00:00Z"),
          "day of 2026-11-22T07:00:00Z");

    rc = quota_period_day(ts("2026-12-31T23:59:59Z"), &p);
    CHECK(rc == 0 && p.start == ts("2026-12-31T00:00:00Z")
          && p.end == ts("2027-01-01T00:00:00Z"),
          "day of 2026-12-31T23:59:59Z");

    rc = quota_period_day(-1, &p);
    CHECK(rc == 0 && p.start == -86400 && p.end == 0, "day of -1");

    rc = quota_period_day(-86400, &p);
    CHECK(rc == 0 && p.start == -86400 && p.end == 0, "day of -86400");

    rc = quota_period_day(0, &p);
    CHECK(rc == 0 && p.start == 0 && p.end == 86400, "day of 0");
}


static void
test_bounds(void)
{
    int             ok, a;
    char            buf[32];
    quota_period_t  p;

    static const int  bad[] = { 0, -1, 32, 100, -2147483647 - 1 };

    ok = 1;
    for (a = 0; a < (int) (sizeof(bad) / sizeof(bad[0])); a++) {
        ok = ok && quota_period_month(0, bad[a], &p) == -1;
    }
    CHECK(ok, "anchors 0, -1, 32, 100, INT_MIN are rejected");

    ok = 1;
    for (a = 1; a <= 31; a++) {
        ok = ok && quota_period_month(T_MIN, a, &p) == 0
             && quota_period_month(T_MAX, a, &p) == 0
             && quota_period_month(INT64_MAX, a, &p) == -1
             && quota_period_month(INT64_MIN, a, &p) == -1
             && quota_period_month(T_MAX + 1, a, &p) == -1
             && quota_period_month(T_MIN - 1, a, &p) == -1;
    }
    CHECK(ok, "month: years 0000-9999 accepted, beyond rejected");

    CHECK(quota_period_day(T_MIN, &p) == 0 && p.start == T_MIN
          && quota_period_day(T_MAX, &p) == 0 && p.end == T_MAX + 1
          && quota_period_day(INT64_MAX, &p) == -1
          && quota_period_day(INT64_MIN, &p) == -1,
          "day: years 0000-9999 accepted, beyond rejected");

    memset(buf, 'X', sizeof(buf));
    quota_format_iso8601(ts("2026-12-01T00:00:00Z"), buf);
    CHECK(memcmp(buf, "2026-12-01T00:00:00Z", 20) == 0 && buf[20] == 'X',
          "iso8601 writes exactly 20 bytes");

    memset(buf, 'X', sizeof(buf));
    quota_format_date(ts("2026-12-01T13:14:15Z"), buf);
    CHECK(memcmp(buf, "2026-12-01", 10) == 0 && buf[10] == 'X',
          "date writes exactly 10 bytes");

    CHECK(strcmp(iso(-1, buf), "1969-12-31T23:59:59Z") == 0,
          "iso8601 of -1");
    CHECK(strcmp(iso(951782400, buf), "2000-02-29T00:00:00Z") == 0,
          "iso8601 of 951782400");
    CHECK(strcmp(iso(INT64_MIN, buf), "0000-01-01T00:00:00Z") == 0,
          "iso8601 clamps INT64_MIN to 0000-01-01T00:00:00Z");
    CHECK(strcmp(iso(INT64_MAX, buf), "9999-12-31T23:59:59Z") == 0,
          "iso8601 clamps INT64_MAX to 9999-12-31T23:59:59Z");
    CHECK(strcmp(iso(T_MAX + 1, buf), "9999-12-31T23:59:59Z") == 0,
          "iso8601 clamps 10000-01-01 to 9999-12-31T23:59:59Z");

    memset(buf, 'X', sizeof(buf));
    quota_format_date(INT64_MIN, buf);
    CHECK(memcmp(buf, "0000-01-01", 10) == 0 && buf[10] == 'X',
          "date clamps INT64_MIN");
}


/* every day of 1900-2101, every anchor: the periods tile the time line */

static void
test_walk(void)
{
    int             a, ok, y, m, d;
    time_t          tt;
    int64_t         t, from, to, n;
    struct tm       tm;
    quota_period_t  p, q;

    from = ts("1900-01-01T00:00:00Z");
    to = ts("2101-01-01T00:00:00Z");
    ok = 1;
    n = 0;

    for (t = from; t < to && ok; t += 86400) {
        for (a = 1; a <= 31 && ok; a++) {
            n++;

            /* also probe the last second of the day */

            if (quota_period_month(t + (a % 2) * 86399, a, &p) != 0
                || p.start > t || p.end <= t
                || p.start % 86400 != 0 || p.end % 86400 != 0
                || p.end - p.start < 28 * 86400
                || p.end - p.start > 31 * 86400
                || quota_period_month(p.end, a, &q) != 0
                || q.start != p.end
                || quota_period_month(p.end - 1, a, &q) != 0
                || q.start != p.start || q.end != p.end)
            {
                ok = 0;
                break;
            }

            /* the start is on the anchor or on the last day of a month */

            tt = (time_t) p.start;
            gmtime_r(&tt, &tm);
            d = tm.tm_mday;
            y = tm.tm_year;
            m = tm.tm_mon;

            if (d != a && (d > a || ref_start(y, m, 31) != p.start)) {
                ok = 0;
            }
        }
    }

    CHECK(ok, "1900-2100, every day and anchor (%lld periods): contiguous, "
          "28-31 days, start on the clamped anchor", (long long) n);
}


static void
test_random(void)
{
    int             a, ok;
    char            got[32], want[32];
    int64_t         t, s, e;
    uint64_t        seed;
    unsigned        i, n;
    quota_period_t  p;

    seed = 0x9e3779b97f4a7c15ULL;
    ok = 1;
    n = 4000;

    for (i = 0; i < n && ok; i++) {
        switch (i % 4) {
        case 0:
            t = rnd_range(&seed, T_MIN, T_MAX);
            break;
        case 1:
            t = rnd_range(&seed, ts("1969-01-01T00:00:00Z"),
                          ts("2101-01-01T00:00:00Z"));
            break;
        default:
            /* a second around a midnight: month starts are there */
            t = rnd_range(&seed, 0, 2 * 36525) * 86400
                - 2 * 36525LL * 86400 / 2 + rnd_range(&seed, -1, 0);
        }

        for (a = 1; a <= 31; a++) {
            ref_month(t, a, &s, &e);

            if (quota_period_month(t, a, &p) != 0 || p.start != s
                || p.end != e)
            {
                printf("#   %lld anchor %d: want [%lld, %lld) got "
                       "[%lld, %lld)\n", (long long) t, a, (long long) s,
                       (long long) e, (long long) p.start,
                       (long long) p.end);
                ok = 0;
                break;
            }
        }
    }

    CHECK(ok, "%u random instants x 31 anchors agree with timegm()", i);

    ok = 1;
    n = 100000;

    for (i = 0; i < n && ok; i++) {
        t = (i % 2) ? rnd_range(&seed, T_MIN, T_MAX)
                    : rnd_range(&seed, -4000000000LL, 8000000000LL);

        iso(t, got);
        ref_iso(t, want);

        if (strcmp(got, want) != 0
            || quota_period_day(t, &p) != 0
            || p.start > t || p.end != p.start + 86400
            || strncmp(iso(p.start, got), want, 10) != 0
            || strcmp(got + 10, "T00:00:00Z") != 0)
        {
            printf("#   %lld: want %s got %s\n", (long long) t, want, got);
            ok = 0;
        }

        quota_format_date(t, got);
        if (memcmp(got, want, 10) != 0) {
            ok = 0;
        }
    }

    CHECK(ok, "%u random instants: iso8601, date and day agree with "
          "gmtime_r()", i);
}


/*
 * The charge script finds the billing month of an account's anchor from a
 * quota_calendar_t with the arithmetic of quota_period_from_calendar();
 * it must agree with quota_period_month() for every day and anchor.
 */
static void
test_calendar(void)
{
    int               a, ok;
    int64_t           t, from, to, n, probe;
    quota_period_t    p, q;
    quota_calendar_t  cal;

    from = ts("1999-01-01T00:00:00Z");
    to = ts("2031-01-01T00:00:00Z");
    ok = 1;
    n = 0;

    for (t = from; t < to && ok; t += 86400) {
        for (probe = 0; probe < 86400 && ok; probe += 43199) {
            if (quota_calendar(t + probe, &cal) != 0) {
                ok = 0;
                break;
            }

            for (a = 1; a <= 31; a++) {
                n++;

                if (quota_period_month(t + probe, a, &p) != 0
                    || quota_period_from_calendar(&cal, t + probe, a, &q) != 0
                    || p.start != q.start || p.end != q.end)
                {
                    ok = 0;
                    break;
                }
            }
        }
    }

    CHECK(ok, "calendar + script arithmetic == quota_period_month "
          "(%lld instants x anchors, 1999-2030)", (long long) n);

    CHECK(quota_calendar(ts("2026-01-15T10:00:00Z"), &cal) == 0
          && cal.month_start[0] == ts("2025-12-01T00:00:00Z")
          && cal.month_start[1] == ts("2026-01-01T00:00:00Z")
          && cal.month_start[2] == ts("2026-02-01T00:00:00Z")
          && cal.days[0] == 31 && cal.days[1] == 31 && cal.days[2] == 28,
          "calendar around January 2026 (December before, February after)");

    CHECK(quota_calendar(ts("2028-02-29T23:59:59Z"), &cal) == 0
          && cal.days[1] == 29 && cal.month_start[2] == ts("2028-03-01T00:00:00Z"),
          "calendar in leap February 2028");

    CHECK(quota_period_from_calendar(&cal, 0, 0, &p) == -1
          && quota_period_from_calendar(&cal, 0, 32, &p) == -1,
          "calendar arithmetic rejects anchors 0 and 32");
}


int
main(void)
{
    test_fixed();
    test_bounds();
    test_walk();
    test_random();
    test_calendar();

    return unit_done();
}

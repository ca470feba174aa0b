
/*
 * Fuzzes the billing period math and the formatting with arbitrary
 * 64-bit instants and anchors, checking the period invariants.
 */


#include <stdint.h>
#include <string.h>

#include "ngx_http_quota_pure.h"
#include "fuzz.h"


#define T_MIN   (-62167219200LL)        /* 0000-01-01T00:00:00Z */
#define T_MAX   253402300799LL          /* 9999-12-31T23:59:59Z */


static void
check_format(int64_t t)
{
    char    buf[QUOTA_ISO8601_LEN + 1], date[QUOTA_DATE_LEN + 1];
    size_t  i;

    static const char  shape[] = "dddd-dd-ddTdd:dd:ddZ";

    buf[QUOTA_ISO8601_LEN] = '!';
    date[QUOTA_DATE_LEN] = '!';

    quota_format_iso8601(t, buf);
    quota_format_date(t, date);

    FUZZ_ASSERT(buf[QUOTA_ISO8601_LEN] == '!');
    FUZZ_ASSERT(date[QUOTA_DATE_LEN] == '!');
    FUZZ_ASSERT(memcmp(buf, date, QUOTA_DATE_LEN) == 0);

    for (i = 0; i < QUOTA_ISO8601_LEN; i++) {
        if (shape[i] == 'd') {
            FUZZ_ASSERT(buf[i] >= '0' && buf[i] <= '9');

        } else {
            FUZZ_ASSERT(buf[i] == shape[i]);
        }
    }

    FUZZ_ASSERT(memcmp(buf + 5, "00", 2) != 0);
    FUZZ_ASSERT(memcmp(buf + 5, "12", 2) <= 0);
    FUZZ_ASSERT(memcmp(buf + 8, "00", 2) != 0);
    FUZZ_ASSERT(memcmp(buf + 8, "31", 2) <= 0);
    FUZZ_ASSERT(memcmp(buf + 11, "23", 2) <= 0);
    FUZZ_ASSERT(memcmp(buf + 14, "59", 2) <= 0);
    FUZZ_ASSERT(memcmp(buf + 17, "59", 2) <= 0);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int             rc, anchor, day;
    char            a[QUOTA_ISO8601_LEN], b[QUOTA_ISO8601_LEN];
    int64_t         now;
    uint64_t        u;
    quota_period_t  p, q;

    if (size < 9) {
        return 0;
    }

    memcpy(&u, data, sizeof(u));
    now = (int64_t) u;

    /* mostly in range, else nearly every input would be rejected */

    if (data[8] & 0x80) {
        now = T_MIN + (int64_t) (u % (uint64_t) (T_MAX - T_MIN + 1));
    }

    anchor = (int) (data[8] & 0x7f) % 36 - 2;

    check_format(now);

    rc = quota_period_day(now, &p);
    FUZZ_ASSERT(rc == ((now >= T_MIN && now <= T_MAX) ? 0 : -1));

    if (rc == 0) {
        FUZZ_ASSERT(p.start <= now && now < p.end);
        FUZZ_ASSERT(p.end - p.start == 86400);
        quota_format_iso8601(p.start, a);
        FUZZ_ASSERT(memcmp(a + 10, "T00:00:00Z", 10) == 0);
    }

    rc = quota_period_month(now, anchor, &p);

    if (anchor < 1 || anchor > 31 || now < T_MIN || now > T_MAX) {
        FUZZ_ASSERT(rc == -1);
        return 0;
    }

    FUZZ_ASSERT(rc == 0);
    FUZZ_ASSERT(p.start <= now && now < p.end);
    FUZZ_ASSERT(p.end - p.start >= 28 * 86400);
    FUZZ_ASSERT(p.end - p.start <= 31 * 86400);

    FUZZ_ASSERT(p.start % 86400 == 0 && p.end % 86400 == 0);

    /*
     * The day of month is the anchor unless the month is shorter.  Near
     * year 0 the period may start in year -1, which the format clamps.
     */

    if (p.start >= T_MIN) {
        quota_format_iso8601(p.start, a);
        day = (a[8] - '0') * 10 + (a[9] - '0');

        FUZZ_ASSERT(day <= anchor);
        FUZZ_ASSERT(day == anchor || day >= 28);
    }

    if (p.end <= T_MAX) {
        quota_format_iso8601(p.end, b);
        day = (b[8] - '0') * 10 + (b[9] - '0');

        FUZZ_ASSERT(day <= anchor);
        FUZZ_ASSERT(day == anchor || day >= 28);
    }

    /* periods tile the time line */

    if (p.start >= T_MIN) {
        FUZZ_ASSERT(quota_period_month(p.start, anchor, &q) == 0);
        FUZZ_ASSERT(q.start == p.start && q.end == p.end);
    }

    if (p.end - 1 <= T_MAX) {
        FUZZ_ASSERT(quota_period_month(p.end - 1, anchor, &q) == 0);
        FUZZ_ASSERT(q.start == p.start && q.end == p.end);
    }

    if (p.end <= T_MAX) {
        FUZZ_ASSERT(quota_period_month(p.end, anchor, &q) == 0);
        FUZZ_ASSERT(q.start == p.end);
    }

    if (p.start - 1 >= T_MIN) {
        FUZZ_ASSERT(quota_period_month(p.start - 1, anchor, &q) == 0);
        FUZZ_ASSERT(q.end == p.start);
    }

    return 0;
}

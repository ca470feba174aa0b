
/*
 * Billing period math in UTC and ISO 8601 formatting.
 *
 * Civil dates are computed with Howard Hinnant's days-from-civil
 * algorithms instead of timegm()/gmtime_r(): those depend on the TZ
 * database, are slow and are not available everywhere.
 *
 * Pure code: no nginx headers, no allocation, no state.
 */


#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ngx_http_quota_pure.h"


/*
 * Instants from 0000-01-01T00:00:00Z to 9999-12-31T23:59:59Z: every
 * year in that range has four digits, and nothing here can overflow.
 */
#define QUOTA_TIME_MIN   (-62167219200LL)
#define QUOTA_TIME_MAX   253402300799LL

#define QUOTA_DAY        86400


static int64_t quota_days_from_civil(int64_t y, int m, int d);
static void quota_civil_from_days(int64_t z, int64_t *y, int *m, int *d);
static int quota_days_in_month(int64_t y, int m);
static int64_t quota_floor_div(int64_t a, int64_t b);
static void quota_put_digits(char *buf, int64_t v, int n);


int
quota_period_month(int64_t now, int anchor, quota_period_t *p)
{
    int      m, d, sd, pm, nm;
    int64_t  y, py, ny, days;

    if (anchor < 1 || anchor > 31) {
        return -1;
    }

    if (now < QUOTA_TIME_MIN || now > QUOTA_TIME_MAX) {
        return -1;
    }

    days = quota_floor_div(now, QUOTA_DAY);
    quota_civil_from_days(days, &y, &m, &d);

    /* the period of this month starts on the anchor, clamped to its end */

    sd = anchor;
    if (sd > quota_days_in_month(y, m)) {
        sd = quota_days_in_month(y, m);
    }

    if (d >= sd) {
        ny = (m == 12) ? y + 1 : y;
        nm = (m == 12) ? 1 : m + 1;

        p->start = quota_days_from_civil(y, m, sd) * QUOTA_DAY;

        sd = anchor;
        if (sd > quota_days_in_month(ny, nm)) {
            sd = quota_days_in_month(ny, nm);
        }

        p->end = quota_days_from_civil(ny, nm, sd) * QUOTA_DAY;

        return 0;
    }

    /* before this month's start: the period began last month */

    p->end = quota_days_from_civil(y, m, sd) * QUOTA_DAY;

    py = (m == 1) ? y - 1 : y;
    pm = (m == 1) ? 12 : m - 1;

    sd = anchor;
    if (sd > quota_days_in_month(py, pm)) {
        sd = quota_days_in_month(py, pm);
    }

    p->start = quota_days_from_civil(py, pm, sd) * QUOTA_DAY;

    return 0;
}


int
quota_calendar(int64_t now, quota_calendar_t *cal)
{
    int      m, d, i;
    int64_t  y, cy;
    int      cm;

    if (now < QUOTA_TIME_MIN || now > QUOTA_TIME_MAX) {
        return -1;
    }

    quota_civil_from_days(quota_floor_div(now, QUOTA_DAY), &y, &m, &d);

    for (i = 0; i < 3; i++) {
        /* month m - 1 + i, carried across year ends */
        cm = m - 1 + i;
        cy = y;

        if (cm == 0) {
            cm = 12;
            cy--;

        } else if (cm == 13) {
            cm = 1;
            cy++;
        }

        cal->month_start[i] = quota_days_from_civil(cy, cm, 1) * QUOTA_DAY;
        cal->days[i] = quota_days_in_month(cy, cm);
    }

    return 0;
}


int
quota_period_from_calendar(const quota_calendar_t *cal, int64_t now,
    int anchor, quota_period_t *p)
{
    int64_t  start_here;

    if (anchor < 1 || anchor > 31) {
        return -1;
    }

#define quota_clamped_start(i)                                               \
    (cal->month_start[i]                                                     \
     + (int64_t) ((anchor < cal->days[i] ? anchor : cal->days[i]) - 1)       \
       * QUOTA_DAY)

    start_here = quota_clamped_start(1);

    if (now >= start_here) {
        p->start = start_here;
        p->end = quota_clamped_start(2);

    } else {
        p->start = quota_clamped_start(0);
        p->end = start_here;
    }

#undef quota_clamped_start

    return 0;
}


int
quota_period_day(int64_t now, quota_period_t *p)
{
    if (now < QUOTA_TIME_MIN || now > QUOTA_TIME_MAX) {
        return -1;
    }

    p->start = quota_floor_div(now, QUOTA_DAY) * QUOTA_DAY;
    p->end = p->start + QUOTA_DAY;

    return 0;
}


void
quota_format_iso8601(int64_t t, char *buf)
{
    int      m, d;
    int64_t  y, days, secs;

    /* the format has four year digits: clamp rather than overflow */

    if (t < QUOTA_TIME_MIN) {
        t = QUOTA_TIME_MIN;

    } else if (t > QUOTA_TIME_MAX) {
        t = QUOTA_TIME_MAX;
    }

    days = quota_floor_div(t, QUOTA_DAY);
    secs = t - days * QUOTA_DAY;

    quota_civil_from_days(days, &y, &m, &d);

    quota_put_digits(buf, y, 4);
    buf[4] = '-';
    quota_put_digits(buf + 5, m, 2);
    buf[7] = '-';
    quota_put_digits(buf + 8, d, 2);
    buf[10] = 'T';
    quota_put_digits(buf + 11, secs / 3600, 2);
    buf[13] = ':';
    quota_put_digits(buf + 14, secs / 60 % 60, 2);
    buf[16] = ':';
    quota_put_digits(buf + 17, secs % 60, 2);
    buf[19] = 'Z';
}


void
quota_format_date(int64_t t, char *buf)
{
    char  tmp[QUOTA_ISO8601_LEN];

    quota_format_iso8601(t, tmp);

    memcpy(buf, tmp, QUOTA_DATE_LEN);
}


/* days since 1970-01-01 of a proleptic Gregorian date */

static int64_t
quota_days_from_civil(int64_t y, int m, int d)
{
    int64_t  era, yoe, doy, doe;

    y -= (m <= 2);
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;

    return era * 146097 + doe - 719468;
}


static void
quota_civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
    int64_t  era, doe, yoe, doy, mp;

    z += 719468;
    era = (z >= 0 ? z : z - 146096) / 146097;
    doe = z - era * 146097;
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;

    *d = (int) (doy - (153 * mp + 2) / 5 + 1);
    *m = (int) (mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}


static int
quota_days_in_month(int64_t y, int m)
{
    static const unsigned char  days[12] = {
        31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31
    };

    if (m == 2 && y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)) {
        return 29;
    }

    return days[m - 1];
}


/* C division truncates toward zero; instants before 1970 need the floor */

static int64_t
quota_floor_div(int64_t a, int64_t b)
{
    int64_t  q;

    q = a / b;

    if ((a % b != 0) && ((a < 0) != (b < 0))) {
        q--;
    }

    return q;
}


static void
quota_put_digits(char *buf, int64_t v, int n)
{
    while (n-- > 0) {
        buf[n] = (char) ('0' + v % 10);
        v /= 10;
    }
}

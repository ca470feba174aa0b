
/*
 * Pure helpers of ngx_http_quota_module: route templates, billing period
 * math, cost and tenant parsing.
 *
 * Nothing here includes nginx headers or allocates memory, so the same
 * objects are linked into the module and into the C unit tests and fuzzers
 * under t/unit/ (see t/000-unit.t).
 */

#ifndef _NGX_HTTP_QUOTA_PURE_H_INCLUDED_
#define _NGX_HTTP_QUOTA_PURE_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>


/* route templates */

#define QUOTA_TPL_MAX_SEGMENTS   64

#define QUOTA_SEG_LITERAL        0      /* "tests": exact text              */
#define QUOTA_SEG_PARAM          1      /* ":id" or "{id}": one segment     */
#define QUOTA_SEG_REST           2      /* "**" (last only): zero or more   */

typedef struct {
    unsigned char   type;
    const char     *data;       /* points into the template; name for PARAM */
    size_t          len;
} quota_tpl_seg_t;

/*
 * Parses a template such as "/api/v2/:project/tests/{id}", whose last
 * segment may be "**", into segments.
 * Returns 0, or -1 with *err pointing to a static message.
 */
int quota_tpl_parse(const char *s, size_t len, quota_tpl_seg_t *segs,
    size_t max, size_t *nsegs, const char **err);

/* 1 if the (already normalized, query-less) path matches, else 0 */
int quota_tpl_match(const quota_tpl_seg_t *segs, size_t nsegs,
    const char *path, size_t len);

/*
 * Specificity order: < 0 if a is more specific than b, 0 if neither is,
 * > 0 if b is more specific.  Compared segment by segment from the left:
 * literal beats :name beats **; a template that has ended beats "**".
 */
int quota_tpl_compare(const quota_tpl_seg_t *a, size_t na,
    const quota_tpl_seg_t *b, size_t nb);


/* billing periods, all instants in seconds since the epoch, UTC */

typedef struct {
    int64_t   start;            /* first second of the period              */
    int64_t   end;              /* first second of the next period         */
} quota_period_t;

/*
 * The billing month containing "now" for a billing-cycle day "anchor"
 * (1-31, clamped to the last day of each month; 1 = calendar month).
 */
int quota_period_month(int64_t now, int anchor, quota_period_t *p);

/*
 * What the charge script needs to find a billing month for an anchor it
 * reads from the account: the first second and the length in days of the
 * calendar months before, at and after "now".  The calendar stays in C
 * (unit-tested); the script only clamps and compares, exactly as
 * quota_period_from_calendar() does.
 */
typedef struct {
    int64_t   month_start[3];   /* previous, current, next calendar month  */
    int       days[3];          /* their lengths in days                   */
} quota_calendar_t;

int quota_calendar(int64_t now, quota_calendar_t *cal);

/* the arithmetic the script does with a quota_calendar_t */
int quota_period_from_calendar(const quota_calendar_t *cal, int64_t now,
    int anchor, quota_period_t *p);

/* the UTC day containing "now" */
int quota_period_day(int64_t now, quota_period_t *p);

#define QUOTA_ISO8601_LEN   20  /* "2026-12-01T00:00:00Z"                  */
#define QUOTA_DATE_LEN      10  /* "2026-12-01"                            */

/* write exactly QUOTA_ISO8601_LEN / QUOTA_DATE_LEN bytes, no NUL */
void quota_format_iso8601(int64_t t, char *buf);
void quota_format_date(int64_t t, char *buf);


/*
 * The names of a tenant's keys (ngx_http_quota_keys.c), in the order of
 * the charge script's KEYS (protocol.def KEY_*: QUOTA_KEY_x + 1).
 */
typedef enum {
    QUOTA_KEY_ACCOUNT = 0,      /* P{T}:account                            */
    QUOTA_KEY_RECORD,           /* P{T}:c:ID                               */
    QUOTA_KEY_BUCKET,           /* P{T}:r:BUCKET                           */
    QUOTA_KEY_USAGE,            /* P{T}:usage:START                        */
    QUOTA_KEY_DAILY,            /* P{T}:daily:START                        */
    QUOTA_KEY_ALERTED,          /* P{T}:alerted:START                      */
    QUOTA_KEY_BEFORE,           /* P{T}:usage:START of the period before   */
    QUOTA_KEY_ALERTS,           /* P{T}:alerts                             */
    QUOTA_KEY_RATE,             /* P{T}:rate                               */
    QUOTA_KEY_INFLIGHT,         /* P{T}:inflight                           */
    QUOTA_KEYS
} quota_key_e;

typedef struct {
    const char  *data;
    size_t       len;
} quota_key_t;

/* the buffer quota_keys() needs for a "P{T}:" of base_len and an id */
size_t quota_keys_size(size_t base_len, size_t id_len);

/*
 * Every key of the tenant whose "P{T}:" is base, for the charge "id"
 * (may be empty), the record bucket "bucket" (now_ms / RECORD_BUCKET_MS),
 * at "now" (seconds) for the billing anchor "anchor" (1-31): written to
 * buf, pointed to by keys[QUOTA_KEYS].  Returns 0, or -1 (an anchor or an
 * instant out of range).
 */
int quota_keys(char *buf, const char *base, size_t base_len, const char *id,
    size_t id_len, int64_t bucket, int64_t now, int anchor,
    quota_key_t *keys);


/* request values */

#define QUOTA_COST_MAX      9007199254740991LL     /* 2^53 - 1 */
#define QUOTA_TENANT_MAX    256

/* decimal digits only, 0 .. 2^53-1; returns 0 or -1 */
int quota_parse_cost(const char *s, size_t len, int64_t *out);

/*
 * A raw (non-hashed) tenant id: 1-256 bytes of printable ASCII other than
 * space, '{' and '}' (braces would break the Redis Cluster hash tag).
 * Returns 1 if valid.
 */
int quota_tenant_valid(const char *s, size_t len);


/*
 * The circuit breaker of quota_fallback, in shared memory: every worker of
 * a node sees the same state.  Lock-free (the compiler's __atomic
 * builtins), so a request only ever reads one word when Redis is fine.
 *
 *   closed --(threshold consecutive failures)--> open
 *   open   --(a probe, or any reply, succeeds)--> closed
 *
 * While open, one worker at a time probes: it holds the probe until a
 * deadline, so a worker that dies holding it delays the next probe only
 * until then.
 */
typedef struct {
    uint64_t  open;             /* 0 closed, 1 open                        */
    uint64_t  failures;         /* consecutive Redis failures              */
    uint64_t  opened;           /* times it opened (an outage counter)     */
    uint64_t  probe;            /* 0, or the msec until which a probe runs */
} quota_breaker_t;

int quota_breaker_is_open(quota_breaker_t *b);

/* a Redis failure; 1 when this one opened the circuit */
int quota_breaker_failure(quota_breaker_t *b, uint64_t threshold);

/* Redis answered; 1 when this answer closed the circuit (the caller then
   owns what an outage leaves to do: charging what fallback admitted) */
int quota_breaker_success(quota_breaker_t *b);

/* 1 when the caller may probe now, holding the probe until now + hold */
int quota_breaker_probe_take(quota_breaker_t *b, uint64_t now,
    uint64_t hold);
void quota_breaker_probe_done(quota_breaker_t *b);


/*
 * What one node may spend of a metric while Redis is unreachable:
 * (limit - used) / nodes, rounded down, never negative; limit < 0: no
 * limit (-1 returned: unlimited).
 */
int64_t quota_fallback_share(int64_t limit, int64_t used, uint64_t nodes);

/* the enforcement point of a limit with a grace percentage (the charge
   script's floor(limit * (100 + grace) / 100), without overflow) */
int64_t quota_enforce_point(int64_t limit, uint64_t grace);


#endif /* _NGX_HTTP_QUOTA_PURE_H_INCLUDED_ */

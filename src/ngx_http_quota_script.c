
/*
 * Running the scripts of src/lua/: the arguments of the charge script (one
 * EVALSHA per metered request), its NOSCRIPT fallback, the void of a charge
 * whose outcome is unknown, the release of an in-flight slot, and
 * quota_reconcile.  Every argument goes to the position protocol.def names
 * (NGX_HTTP_QUOTA_ARG_* etc.).
 *
 * Plans are configuration and accounts are data: the account names its
 * plan, and the limits of every configured plan for the rule's metrics
 * travel with the request, so a plan change in Redis applies to the next
 * request without a reload.  That part of the arguments depends only on
 * configuration and is built once per rule, here, at init_main_conf.
 */


#include "ngx_http_quota_module.h"
#include <ngx_sha1.h>
#include <openssl/rand.h>

/* generated from the src/lua scripts by src/lua/gen.sh (config.make) */
#include "ngx_http_quota_scripts.h"


/* argc of EVALSHA, sha, numkeys, the charge's KEYS and nargs ARGV */
#define NGX_HTTP_QUOTA_ARGC(nargs)  (NGX_HTTP_QUOTA_ARGV_AT(nargs) + 1)

/* the index in argv of the void script's ARGV[NGX_HTTP_QUOTA_VOID_name] */
#define NGX_HTTP_QUOTA_VOID_AT(name)                                          \
    NGX_HTTP_QUOTA_ARGV_OF(NGX_HTTP_QUOTA_VOID_NKEYS,                         \
                           NGX_HTTP_QUOTA_VOID_##name)
#define NGX_HTTP_QUOTA_VOID_ARGC  (NGX_HTTP_QUOTA_VOID_AT(NARGS) + 1)
#define NGX_HTTP_QUOTA_RC_ARGC                                                \
    (NGX_HTTP_QUOTA_ARGV_OF(NGX_HTTP_QUOTA_RC_NKEYS,                          \
                            NGX_HTTP_QUOTA_RC_NARGS) + 1)
#define NGX_HTTP_QUOTA_SETTLE_AT(name)                                        \
    NGX_HTTP_QUOTA_ARGV_OF(NGX_HTTP_QUOTA_SETTLE_NKEYS,                       \
                           NGX_HTTP_QUOTA_SETTLE_##name)
#define NGX_HTTP_QUOTA_SETTLE_ARGC  (NGX_HTTP_QUOTA_SETTLE_AT(NARGS) + 1)

/* the index in argv of the reconcile script's ARGV[NGX_HTTP_QUOTA_RC_name]
   and KEYS[NGX_HTTP_QUOTA_RKEY_name] */
#define NGX_HTTP_QUOTA_RC(name)                                               \
    NGX_HTTP_QUOTA_ARGV_OF(NGX_HTTP_QUOTA_RC_NKEYS, NGX_HTTP_QUOTA_RC_##name)
#define NGX_HTTP_QUOTA_RKEY(name)                                             \
    NGX_HTTP_QUOTA_KEY_AT(NGX_HTTP_QUOTA_RKEY_##name)


/* the charge script's argv, each argument put at its ARGV position */
typedef struct {
    const char                 **argv;
    size_t                      *argvlen;
    ngx_uint_t                   argc;        /* past the last one put */
    ngx_uint_t                   n;           /* expected */
    u_char                      *p;           /* the request's buffer */
    ngx_pool_t                  *pool;
} ngx_http_quota_args_t;


/* the scripts' text: their SHA1 is computed from it, never written down */
static const ngx_str_t  ngx_http_quota_charge_lua =
    ngx_string(ngx_http_quota_charge_text);
static const ngx_str_t  ngx_http_quota_reconcile_lua =
    ngx_string(ngx_http_quota_reconcile_text);
static const ngx_str_t  ngx_http_quota_void_lua =
    ngx_string(ngx_http_quota_void_text);
static const ngx_str_t  ngx_http_quota_settle_lua =
    ngx_string(ngx_http_quota_settle_text);


static ngx_int_t ngx_http_quota_plan_table(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf, ngx_http_quota_rule_t *rule,
    ngx_http_quota_plan_table_t *table);
static ngx_int_t ngx_http_quota_table_num(ngx_conf_t *cf, ngx_str_t *arg,
    int64_t n);
static ngx_http_quota_clock_t *ngx_http_quota_clock(
    ngx_http_quota_main_conf_t *qmcf, time_t sec);
static void ngx_http_quota_script_reply(void *data, redisReply *reply);
static ngx_int_t ngx_http_quota_script_anchor(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, redisReply *reply);
static ngx_int_t ngx_http_quota_script_args(ngx_http_quota_main_conf_t *qmcf,
    ngx_pool_t *pool, ngx_http_quota_args_t *a, ngx_str_t *tenant,
    ngx_uint_t k, ngx_http_quota_plan_table_t *table, size_t extra,
    ngx_time_t *at);
static ngx_int_t ngx_http_quota_script_built(ngx_http_quota_args_t *a,
    ngx_log_t *log);
static u_char *ngx_http_quota_charge_id(u_char *p);
static ngx_int_t ngx_http_quota_script_head(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_http_quota_args_t *a);
static ngx_int_t ngx_http_quota_script_metrics(
    ngx_http_quota_main_conf_t *qmcf, ngx_http_quota_args_t *a,
    ngx_http_quota_rule_t *rule, int64_t *costs, ngx_uint_t k);
static ngx_int_t ngx_http_quota_script_record(
    ngx_http_quota_main_conf_t *qmcf, ngx_http_quota_args_t *a,
    ngx_http_quota_rule_t *rule, int64_t *costs, ngx_uint_t k);
static void ngx_http_quota_args_str(ngx_http_quota_args_t *a,
    ngx_uint_t pos, const u_char *data, size_t len);
static void ngx_http_quota_args_num(ngx_http_quota_args_t *a, ngx_uint_t pos,
    int64_t n);
static void ngx_http_quota_args_copy(ngx_http_quota_args_t *a, ngx_uint_t pos,
    ngx_str_t *s);


/* the charge id prefix of this worker, and its sequence */
static u_char      ngx_http_quota_id_prefix[16];
static uint64_t    ngx_http_quota_id_seq;
static u_char *ngx_http_quota_num(ngx_pool_t *pool, int64_t n, size_t *len);
static ngx_int_t ngx_http_quota_reconcile_alert(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_str_t *name, time_t reset, u_char **p,
    const char **argv, size_t *argvlen);
static void ngx_http_quota_reconcile_nums(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_uint_t index, int64_t delta, u_char **p,
    const char **argv, size_t *argvlen);


ngx_int_t
ngx_http_quota_script_init(ngx_conf_t *cf, ngx_http_quota_main_conf_t *qmcf)
{
    u_char                       digest[20];
    ngx_uint_t                   i, j;
    ngx_sha1_t                   sha1;
    ngx_array_t                **sets;
    ngx_http_quota_rule_t       *rule;
    ngx_http_quota_loc_conf_t   *qlcf;

    qmcf->script = ngx_http_quota_charge_lua;

    ngx_sha1_init(&sha1);
    ngx_sha1_update(&sha1, qmcf->script.data, qmcf->script.len);
    ngx_sha1_final(digest, &sha1);
    ngx_hex_dump(qmcf->script_sha1, digest, 20);

    if (ngx_http_quota_plan_table(cf, qmcf, NULL, &qmcf->no_rule_table)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_http_quota_report_rule(cf, qmcf) != NGX_OK
        || ngx_http_quota_plan_table(cf, qmcf, &qmcf->report_rule,
                                     &qmcf->report_rule.table)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    qlcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_quota_module);
    qmcf->force_threshold = (qlcf->warning_threshold == NGX_CONF_UNSET_UINT)
                            ? 80 : qlcf->warning_threshold;

    /* the events channel: "Pevents" */
    qmcf->events_channel.len = qmcf->prefix.len + 6;
    qmcf->events_channel.data = ngx_pnalloc(cf->pool,
                                            qmcf->events_channel.len);
    if (qmcf->events_channel.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(ngx_cpymem(qmcf->events_channel.data, qmcf->prefix.data,
                          qmcf->prefix.len), "events", 6);

    sets = qmcf->rule_sets.elts;

    for (i = 0; i < qmcf->rule_sets.nelts; i++) {
        rule = sets[i]->elts;

        for (j = 0; j < sets[i]->nelts; j++) {
            if (ngx_http_quota_plan_table(cf, qmcf, &rule[j], &rule[j].table)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    return NGX_OK;
}


/*
 * "number of plans", then per plan: NAME, "GRACE RATE RATE_MS BURST
 * CONCURRENCY LEASE_MS" ("GRACE" when RATE and CONCURRENCY are 0), and per
 * charged metric "LIMIT PER_SEAT PRICE" ("LIMIT" when not per seat and
 * without a price)
 */
static ngx_int_t
ngx_http_quota_plan_table(ngx_conf_t *cf, ngx_http_quota_main_conf_t *qmcf,
    ngx_http_quota_rule_t *rule, ngx_http_quota_plan_table_t *table)
{
    int64_t                        limit, price;
    ngx_str_t                     *arg;
    ngx_uint_t                     i, j, m, k, per_seat;
    ngx_http_quota_plan_t         *plan;
    ngx_http_quota_plan_metric_t  *pm;

    k = rule ? rule->ncharges : 0;
    plan = qmcf->plans.elts;

    table->nargs = 1 + qmcf->plans.nelts * (2 + k);
    table->args = ngx_palloc(cf->pool, table->nargs * sizeof(ngx_str_t));
    if (table->args == NULL) {
        return NGX_ERROR;
    }

    arg = table->args;

    if (ngx_http_quota_table_num(cf, arg++, qmcf->plans.nelts) != NGX_OK) {
        return NGX_ERROR;
    }

    for (j = 0; j < qmcf->plans.nelts; j++) {
        *arg++ = plan[j].name;

        arg->data = ngx_pnalloc(cf->pool, 6 * NGX_INT_T_LEN);
        if (arg->data == NULL) {
            return NGX_ERROR;
        }

        /* the common plan, without rate and concurrency: "GRACE" alone
           (the script then skips parsing the other five) */
        if (plan[j].rate == 0 && plan[j].concurrency == 0) {
            arg->len = ngx_sprintf(arg->data, "%ui", plan[j].grace)
                       - arg->data;

        } else {
            arg->len = ngx_sprintf(arg->data, "%ui %ui %M %ui %ui %M",
                                   plan[j].grace, plan[j].rate,
                                   plan[j].rate_period, plan[j].burst,
                                   plan[j].concurrency, plan[j].lease)
                       - arg->data;
        }
        arg++;

        for (i = 0; i < k; i++) {
            limit = NGX_HTTP_QUOTA_UNLIMITED;
            per_seat = 0;
            price = -1;

            pm = plan[j].metrics.elts;

            for (m = 0; m < plan[j].metrics.nelts; m++) {
                if (pm[m].metric == rule->charges[i].metric) {
                    limit = pm[m].limit;
                    per_seat = pm[m].per_seat ? 1 : 0;
                    price = pm[m].price;
                    break;
                }
            }

            arg->data = ngx_pnalloc(cf->pool, 3 * NGX_INT64_LEN);
            if (arg->data == NULL) {
                return NGX_ERROR;
            }

            /* the common metric, not per seat and without a price:
               "LIMIT" alone (the script then skips parsing the others) */
            if (per_seat == 0 && price == -1) {
                arg->len = ngx_sprintf(arg->data, "%L", limit) - arg->data;

            } else {
                arg->len = ngx_sprintf(arg->data, "%L %ui %L", limit,
                                       per_seat, price)
                           - arg->data;
            }
            arg++;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_quota_table_num(ngx_conf_t *cf, ngx_str_t *arg, int64_t n)
{
    arg->data = ngx_http_quota_num(cf->pool, n, &arg->len);

    return arg->data ? NGX_OK : NGX_ERROR;
}


/* the calendar arguments for "sec", rebuilt when the second changes */
static ngx_http_quota_clock_t *
ngx_http_quota_clock(ngx_http_quota_main_conf_t *qmcf, time_t sec)
{
    u_char                  *p, *dates;
    quota_period_t           today;
    quota_calendar_t         cal, before;
    ngx_http_quota_clock_t  *c;

    c = &qmcf->clock;

    if (c->sec == sec) {
        return c;
    }

    /* "before" holds the month before the previous one in month_start[1] */
    if (quota_calendar(sec, &cal) != 0
        || quota_calendar(cal.month_start[0] - 1, &before) != 0
        || quota_period_day(sec, &today) != 0)
    {
        return NULL;
    }

    p = c->buf;

    dates = p;
    quota_format_date(cal.month_start[0], (char *) p);
    quota_format_date(cal.month_start[1], (char *) p + QUOTA_DATE_LEN);
    quota_format_date(cal.month_start[2], (char *) p + 2 * QUOTA_DATE_LEN);
    quota_format_date(before.month_start[1], (char *) p + 3 * QUOTA_DATE_LEN);
    p += 4 * QUOTA_DATE_LEN;

    c->ym_cur.data = dates + QUOTA_DATE_LEN;
    c->ym_cur.len = 7;
    c->ym_next.data = dates + 2 * QUOTA_DATE_LEN;
    c->ym_next.len = 7;

    c->cur_start.data = p;
    p = ngx_sprintf(p, "%L", cal.month_start[1]);
    c->cur_start.len = p - c->cur_start.data;

    c->next_start.data = p;
    p = ngx_sprintf(p, "%L", cal.month_start[2]);
    c->next_start.len = p - c->next_start.data;

    c->today.data = p;
    quota_format_date(today.start, (char *) p);
    p += QUOTA_DATE_LEN;
    c->today.len = QUOTA_DATE_LEN;

    c->tomorrow.data = p;
    quota_format_date(today.end, (char *) p);
    p += QUOTA_DATE_LEN;
    c->tomorrow.len = QUOTA_DATE_LEN;

    c->now_iso.data = p;
    quota_format_iso8601(sec, (char *) p);
    p += QUOTA_ISO8601_LEN;
    c->now_iso.len = QUOTA_ISO8601_LEN;

    /* PREV_1ST PREV_DAYS PREV_YM CUR_DAYS NEXT_DAYS BEFORE_1ST BEFORE_DAYS
       BEFORE_YM TODAY_END */
    c->calendar.data = p;
    p = ngx_sprintf(p, "%L %d %*s %d %d %L %d %*s %L",
                    cal.month_start[0], cal.days[0], (size_t) 7, dates,
                    cal.days[1], cal.days[2], before.month_start[1],
                    before.days[1], (size_t) 7, dates + 3 * QUOTA_DATE_LEN,
                    today.end);
    c->calendar.len = p - c->calendar.data;

    c->sec = sec;

    return c;
}


/*
 * Charge ids: a random 64-bit prefix per worker (16 hex digits) and a
 * sequence, so that two gateways whose workers share a pid (containers)
 * never name two charges alike.  The id names the charge's record (what a
 * void undoes) and its in-flight slot.
 */
ngx_int_t
ngx_http_quota_script_init_worker(ngx_log_t *log)
{
    u_char  rnd[8];

    if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
        ngx_log_error(NGX_LOG_EMERG, log, 0,
                      "quota: RAND_bytes() failed, no charge id prefix");
        return NGX_ERROR;
    }

    ngx_hex_dump(ngx_http_quota_id_prefix, rnd, sizeof(rnd));
    ngx_http_quota_id_seq = 0;

    return NGX_OK;
}


/* ARGV[pos] */
static void
ngx_http_quota_args_str(ngx_http_quota_args_t *a, ngx_uint_t pos,
    const u_char *data, size_t len)
{
    ngx_uint_t  i;

    i = NGX_HTTP_QUOTA_ARGV_AT(pos);

    a->argv[i] = (const char *) data;
    a->argvlen[i] = len;

    if (a->argc <= i) {
        a->argc = i + 1;
    }
}


static void
ngx_http_quota_args_num(ngx_http_quota_args_t *a, ngx_uint_t pos, int64_t n)
{
    u_char  *start;

    start = a->p;
    a->p = ngx_sprintf(a->p, "%L", n);
    ngx_http_quota_args_str(a, pos, start, a->p - start);
}


/* a copy in the request's buffer: the clock's is rebuilt every second, and
   the NOSCRIPT fallback resends these arguments one round trip later */
static void
ngx_http_quota_args_copy(ngx_http_quota_args_t *a, ngx_uint_t pos,
    ngx_str_t *s)
{
    u_char  *start;

    start = a->p;
    a->p = ngx_cpymem(a->p, s->data, s->len);
    ngx_http_quota_args_str(a, pos, start, s->len);
}


ngx_int_t
ngx_http_quota_script_charge(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx)
{
    ngx_http_quota_op_t          *op;
    ngx_http_quota_args_t         a;
    ngx_http_quota_main_conf_t   *qmcf;
    ngx_http_quota_plan_table_t  *table;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);

    table = ctx->rule ? &ctx->rule->table : &qmcf->no_rule_table;

    if (ngx_http_quota_script_args(qmcf, r->pool, &a, &ctx->tenant,
                                   ctx->ncharges, table,
                                   sizeof(ngx_http_quota_id_prefix)
                                   + 7 * NGX_INT64_LEN, NULL)
        != NGX_OK
        || ngx_http_quota_script_head(r, ctx, &a) != NGX_OK
        || ngx_http_quota_anchor_keys(r->pool, a.argv, a.argvlen,
                                      ngx_http_quota_anchor_guess(
                                          &ctx->tenant))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_http_quota_script_metrics(qmcf, &a, ctx->rule, ctx->costs,
                                      ctx->ncharges)
        != NGX_OK
        || ngx_http_quota_script_built(&a, r->connection->log) != NGX_OK)
    {
        return NGX_ERROR;
    }

    ctx->argc = a.argc;
    ctx->argv = a.argv;
    ctx->argvlen = a.argvlen;

    op = ngx_http_quota_redis_send(qmcf, a.argc, a.argv, a.argvlen,
                                   ngx_http_quota_script_reply, ctx);
    if (op == NULL) {
        return NGX_DECLINED;
    }

    ctx->op = op;

    /* from now on, until its reply is understood, the charge may have run */
    ctx->unknown = (ctx->charge_id.len != 0);

    return NGX_OK;
}


/*
 * The argv of the charge script for "tenant", k charged metrics and the
 * plan table: allocated, with what every mode sends (the clock, the
 * default plan, KEYS[1], ARG_BASE, the alert/event line, k, the table).
 * "extra": bytes of the buffer the caller needs for its own arguments;
 * "at": the clock to charge at (a forced charge: when its units were
 * admitted), NULL: now.
 */
static ngx_int_t
ngx_http_quota_script_args(ngx_http_quota_main_conf_t *qmcf,
    ngx_pool_t *pool, ngx_http_quota_args_t *a, ngx_str_t *tenant,
    ngx_uint_t k, ngx_http_quota_plan_table_t *table, size_t extra,
    ngx_time_t *at)
{
    u_char                  *start;
    size_t                   size, len;
    int64_t                  now_ms;
    ngx_uint_t               i, pos;
    ngx_time_t              *tp;
    ngx_http_quota_clock_t  *clock;

    /* the gateway's clock: see README, "Time" */
    tp = at ? at : ngx_timeofday();
    now_ms = (int64_t) tp->sec * 1000 + tp->msec;

    clock = ngx_http_quota_clock(qmcf, tp->sec);
    if (clock == NULL) {
        return NGX_ERROR;
    }

    /* EVAL(SHA), script, numkeys, KEYS[1], the head of ARGV, metrics,
       plans */
    pos = NGX_HTTP_QUOTA_ARG_METRICS + NGX_HTTP_QUOTA_METRIC_ARGS * k;
    a->n = NGX_HTTP_QUOTA_ARGC(pos - 1 + table->nargs);

    /* zeroed: a position left empty is found by _built() */
    a->argv = ngx_pcalloc(pool, a->n * sizeof(char *));
    a->argvlen = ngx_palloc(pool, a->n * sizeof(size_t));

    /* every number, id and date of the request in one buffer */
    size = (4 + k) * NGX_INT64_LEN + QUOTA_DATE_LEN + QUOTA_ISO8601_LEN
           + tenant->len + qmcf->events_channel.len + 8
           + clock->cur_start.len + clock->next_start.len
           + clock->ym_cur.len + clock->ym_next.len + clock->today.len
           + clock->calendar.len + extra;

    a->p = ngx_pnalloc(pool, size);

    if (a->argv == NULL || a->argvlen == NULL || a->p == NULL) {
        return NGX_ERROR;
    }

    a->argc = 0;
    a->pool = pool;

    /* "P{T}:account" starts with ARG_BASE, "P{T}:"; the KEYS are named
       from it once the charge id is known (ngx_http_quota_anchor_keys) */
    start = ngx_http_quota_key(pool, &qmcf->prefix, tenant, "account", 7,
                               NULL, 0, &len);
    if (start == NULL) {
        return NGX_ERROR;
    }

    a->argv[2] = NGX_HTTP_QUOTA_NUMKEYS(NGX_HTTP_QUOTA_CHARGE_NKEYS);
    a->argvlen[2] = ngx_strlen(a->argv[2]);

    ngx_http_quota_args_str(a, NGX_HTTP_QUOTA_ARG_BASE, start, len - 7);
    ngx_http_quota_args_num(a, NGX_HTTP_QUOTA_ARG_NOW_MS, now_ms);
    ngx_http_quota_args_copy(a, NGX_HTTP_QUOTA_ARG_CUR_START,
                             &clock->cur_start);
    ngx_http_quota_args_copy(a, NGX_HTTP_QUOTA_ARG_NEXT_START,
                             &clock->next_start);
    ngx_http_quota_args_copy(a, NGX_HTTP_QUOTA_ARG_YM_CUR, &clock->ym_cur);
    ngx_http_quota_args_copy(a, NGX_HTTP_QUOTA_ARG_YM_NEXT, &clock->ym_next);
    ngx_http_quota_args_copy(a, NGX_HTTP_QUOTA_ARG_TODAY, &clock->today);
    ngx_http_quota_args_num(a, NGX_HTTP_QUOTA_ARG_DEFAULT_PLAN,
                            qmcf->default_plan + 1);
    ngx_http_quota_args_copy(a, NGX_HTTP_QUOTA_ARG_CALENDAR,
                             &clock->calendar);

    /* what only an alert or an event needs */
    start = a->p;
    a->p = ngx_sprintf(a->p, "%V\n%V\n%V\n%V", tenant, &qmcf->events_channel,
                       &clock->now_iso, &clock->tomorrow);
    ngx_http_quota_args_str(a, NGX_HTTP_QUOTA_ARG_NOTIFY, start,
                            a->p - start);

    ngx_http_quota_args_num(a, NGX_HTTP_QUOTA_ARG_NCHARGES, k);

    for (i = 0; i < table->nargs; i++) {
        ngx_http_quota_args_str(a, pos + i, table->args[i].data,
                                table->args[i].len);
    }

    return NGX_OK;
}


/* every position of the argv was put */
static ngx_int_t
ngx_http_quota_script_built(ngx_http_quota_args_t *a, ngx_log_t *log)
{
    ngx_uint_t  i;

    for (i = 0; i < a->n; i++) {
        if (a->argv[i] == NULL) {
            break;
        }
    }

    if (a->argc != a->n || i != a->n) {
        ngx_log_error(NGX_LOG_ALERT, log, 0,
                      "quota: %ui script arguments built, %ui expected, "
                      "argument %ui missing", a->argc, a->n, i);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* a new charge id: the worker's prefix and its sequence */
static u_char *
ngx_http_quota_charge_id(u_char *p)
{
    return ngx_sprintf(p, "%*s%xL", sizeof(ngx_http_quota_id_prefix),
                       ngx_http_quota_id_prefix,
                       (uint64_t) ngx_http_quota_id_seq++);
}


/* EVALSHA, sha and the arguments that depend on the request */
static ngx_int_t
ngx_http_quota_script_head(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx,
    ngx_http_quota_args_t *a)
{
    ngx_uint_t                   mode, events;
    ngx_http_quota_loc_conf_t   *qlcf;
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    qlcf = ngx_http_get_module_loc_conf(r, ngx_http_quota_module);

    a->argv[0] = "EVALSHA";
    a->argvlen[0] = 7;
    a->argv[1] = (const char *) qmcf->script_sha1;
    a->argvlen[1] = 40;

    if (ctx->report) {
        mode = (ctx->report == 2) ? NGX_HTTP_QUOTA_MODE_REPORT_DAILY
                                  : NGX_HTTP_QUOTA_MODE_REPORT;

    } else {
        mode = ctx->bypass ? NGX_HTTP_QUOTA_MODE_PEEK
                           : NGX_HTTP_QUOTA_MODE_CHARGE;
    }

    ngx_http_quota_args_num(a, NGX_HTTP_QUOTA_ARG_MODE, mode);
    ngx_http_quota_args_str(a, NGX_HTTP_QUOTA_ARG_REQUIRE_ACCOUNT,
                            (u_char *) (qlcf->require_account ? "1" : "0"),
                            1);

    /* the charge id, which is also the in-flight slot's */
    if (!ctx->bypass && !ctx->report) {
        ctx->charge_id.data = a->p;
        a->p = ngx_http_quota_charge_id(a->p);
        ctx->charge_id.len = a->p - ctx->charge_id.data;

        if (qmcf->concurrency) {
            ctx->slot_id = ctx->charge_id;

            /* named now: the release runs while the request pool is freed */
            ctx->slot_key.data = ngx_http_quota_key(r->pool, &qmcf->prefix,
                                                    &ctx->tenant, "inflight",
                                                    8, NULL, 0,
                                                    &ctx->slot_key.len);
            if (ctx->slot_key.data == NULL) {
                return NGX_ERROR;
            }
        }
    }

    ngx_http_quota_args_str(a, NGX_HTTP_QUOTA_ARG_CHARGE_ID,
                            ctx->charge_id.data ? ctx->charge_id.data
                                                : (u_char *) "",
                            ctx->charge_id.len);

    ngx_http_quota_args_num(a, NGX_HTTP_QUOTA_ARG_THRESHOLD,
                            qlcf->warning_threshold);

    /* a lease's grant sends no usage_update when one went out within its
       ttl (_lease.c) */
    events = qmcf->events;

    if (ctx->lease_quiet && events > NGX_HTTP_QUOTA_EVENTS_ALERTS) {
        events = NGX_HTTP_QUOTA_EVENTS_ALERTS;
    }

    ngx_http_quota_args_num(a, NGX_HTTP_QUOTA_ARG_EVENTS, events);

    ngx_http_quota_args_num(a, NGX_HTTP_QUOTA_ARG_LEASE_N,
                            ctx->lease_n > 1 ? ctx->lease_n : 1);
    ngx_http_quota_args_num(a, NGX_HTTP_QUOTA_ARG_LEASE_TTL,
                            (ctx->lease_ttl + 999) / 1000);

    return NGX_OK;
}


/* k x METRIC, COST, "m"|"d" of the rule's charges, and the record */
static ngx_int_t
ngx_http_quota_script_metrics(ngx_http_quota_main_conf_t *qmcf,
    ngx_http_quota_args_t *a, ngx_http_quota_rule_t *rule, int64_t *costs,
    ngx_uint_t k)
{
    ngx_uint_t                i, pos;
    ngx_http_quota_metric_t  *m;

    for (i = 0; i < k; i++) {
        m = (ngx_http_quota_metric_t *) qmcf->metrics.elts
            + rule->charges[i].metric;

        pos = NGX_HTTP_QUOTA_ARG_METRICS + i * NGX_HTTP_QUOTA_METRIC_ARGS;

        ngx_http_quota_args_str(a, pos + NGX_HTTP_QUOTA_METRIC_NAME_OFF,
                                m->name.data, m->name.len);
        ngx_http_quota_args_num(a, pos + NGX_HTTP_QUOTA_METRIC_COST_OFF,
                                costs[i]);
        ngx_http_quota_args_str(a, pos + NGX_HTTP_QUOTA_METRIC_PERIOD_OFF,
                                (u_char *)
                                (m->period == NGX_HTTP_QUOTA_PERIOD_DAY
                                 ? "d" : "m"), 1);
    }

    return ngx_http_quota_script_record(qmcf, a, rule, costs, k);
}


/*
 * The record of an exact charge as it mostly is (charge.lua): of the month
 * that starts on the 1st (anchor 1), no GCRA step, one request unit, and
 * no charged metric with a price: "START TODAY 0 0 1", then per charged
 * metric " NAME COST m|d 0 -1 -1".  The script uses it when that holds:
 * concatenating it cost Redis about 1 us per request.
 */
static ngx_int_t
ngx_http_quota_script_record(ngx_http_quota_main_conf_t *qmcf,
    ngx_http_quota_args_t *a, ngx_http_quota_rule_t *rule, int64_t *costs,
    ngx_uint_t k)
{
    u_char                   *p, *start;
    size_t                    size;
    ngx_uint_t                i;
    ngx_http_quota_clock_t   *c;
    ngx_http_quota_metric_t  *m;

    c = &qmcf->clock;

    size = c->ym_cur.len + sizeof("-01 ") - 1 + c->today.len
           + sizeof(" 0 0 1") - 1;

    for (i = 0; i < k; i++) {
        m = (ngx_http_quota_metric_t *) qmcf->metrics.elts
            + rule->charges[i].metric;
        size += 1 + m->name.len + 1 + NGX_INT64_LEN
                + sizeof(" m 0 -1 -1") - 1;
    }

    start = ngx_pnalloc(a->pool, size);
    if (start == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(start, "%V-01 %V 0 0 1", &c->ym_cur, &c->today);

    for (i = 0; i < k; i++) {
        if (costs[i] <= 0) {
            continue;
        }

        m = (ngx_http_quota_metric_t *) qmcf->metrics.elts
            + rule->charges[i].metric;

        p = ngx_sprintf(p, " %V %L %s 0 -1 -1", &m->name, costs[i],
                        m->period == NGX_HTTP_QUOTA_PERIOD_DAY ? "d" : "m");
    }

    ngx_http_quota_args_str(a, NGX_HTTP_QUOTA_ARG_RECORD, start, p - start);

    return NGX_OK;
}


static void
ngx_http_quota_script_reply(void *data, redisReply *reply)
{
    ngx_http_quota_ctx_t *ctx = data;

    ngx_int_t                    rc;
    ngx_http_request_t          *r;
    ngx_http_quota_main_conf_t  *qmcf;

    r = ctx->request;
    ctx->op = NULL;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);

    if (reply != NULL && !ctx->eval_retried
        && ngx_http_quota_reply_is_noscript(reply))
    {
        /*
         * The script cache was flushed (restart, failover, SCRIPT FLUSH).
         * The script did not run, so sending it once as EVAL is safe; EVAL
         * also caches it again for the next EVALSHA.
         */

        ctx->eval_retried = 1;
        ctx->argv[0] = "EVAL";
        ctx->argvlen[0] = 4;
        ctx->argv[1] = (char *) qmcf->script.data;
        ctx->argvlen[1] = qmcf->script.len;

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "quota: redis answered NOSCRIPT, sending EVAL");

        ngx_http_quota_count(qmcf, noscript);

        ctx->op = ngx_http_quota_redis_send(qmcf, ctx->argc, ctx->argv,
                                            ctx->argvlen,
                                            ngx_http_quota_script_reply, ctx);
        if (ctx->op != NULL) {
            return;
        }

        /* the EVAL was not sent: nothing can have run */
        ctx->unknown = 0;
        reply = NULL;
    }

    if (reply != NULL && !ctx->anchor_retried) {
        rc = ngx_http_quota_script_anchor(r, ctx, reply);

        if (rc == NGX_OK) {
            return;
        }

        if (rc == NGX_ERROR) {
            /* not resent: the first one wrote nothing */
            ctx->unknown = 0;
            reply = NULL;
        }
    }

    if (ngx_http_quota_reply_decode(r, ctx, reply) != NGX_OK
        || (ctx->build && ctx->build(r, ctx, reply) != NGX_OK))
    {
        ctx->redis_failed = 1;

        if (reply != NULL) {
            ngx_http_quota_count(qmcf, errors[NGX_HTTP_QUOTA_ERR_REPLY]);
        }
    }

    /* the charge may have run, partly or wholly: undo whatever it did */
    if (ctx->unknown) {
        ctx->unknown = 0;
        ngx_http_quota_script_void(ctx, NULL);
    }

    ngx_http_quota_reply_done(ctx);
}


/*
 * The period keys of the charge were named for an anchor the account does
 * not have (its guess, ngx_http_quota_anchor.c): the script wrote nothing
 * and answered CODE_ANCHOR with the account's.  The same charge (same id,
 * same clock) is named again for it and sent once more, within the
 * request's timeout: the one case of two round trips for a request (the
 * first time a worker meets a tenant with another anchor than 1, and
 * after an anchor changes).  NGX_OK: resent; NGX_DECLINED: not that
 * answer; NGX_ERROR: not resent.
 */
static ngx_int_t
ngx_http_quota_script_anchor(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx,
    redisReply *reply)
{
    ngx_uint_t                   anchor;
    ngx_http_quota_main_conf_t  *qmcf;

    anchor = ngx_http_quota_reply_anchor(reply);
    if (anchor == 0) {
        return NGX_DECLINED;
    }

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);

    ctx->anchor_retried = 1;
    ngx_http_quota_anchor_learn(&ctx->tenant, anchor, r->connection->log);
    ngx_http_quota_count(qmcf, anchor_resends);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "quota: tenant \"%V\" bills from day %ui of the month, "
                   "charge sent again", &ctx->tenant, anchor);

    if (ngx_http_quota_anchor_keys(r->pool, ctx->argv, ctx->argvlen, anchor)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ctx->op = ngx_http_quota_redis_send(qmcf, ctx->argc, ctx->argv,
                                        ctx->argvlen,
                                        ngx_http_quota_script_reply, ctx);

    return ctx->op ? NGX_OK : NGX_ERROR;
}


/*
 * The charge's outcome is unknown: send its void (src/lua/void.lua),
 * right behind the charge on its connection when op is still pending, else
 * on any connection, now or after a reconnect.  Runs from the request's
 * pool cleanup too: nothing here is allocated from the request pool.
 */
void
ngx_http_quota_script_void(ngx_http_quota_ctx_t *ctx, ngx_http_quota_op_t *op)
{
    size_t                       argvlen[NGX_HTTP_QUOTA_VOID_ARGC];
    ngx_uint_t                   i;
    const char                  *argv[NGX_HTTP_QUOTA_VOID_ARGC];
    ngx_http_request_t          *r;
    ngx_http_quota_main_conf_t  *qmcf;

    /* the void's KEYS are the charge's, named for the anchor it was last
       sent with: a charge that wrote anything wrote those */
    static const ngx_uint_t      keys[][2] = {
        { NGX_HTTP_QUOTA_VKEY_RECORD, NGX_HTTP_QUOTA_KEY_RECORD },
        { NGX_HTTP_QUOTA_VKEY_BUCKET, NGX_HTTP_QUOTA_KEY_BUCKET },
        { NGX_HTTP_QUOTA_VKEY_USAGE, NGX_HTTP_QUOTA_KEY_USAGE },
        { NGX_HTTP_QUOTA_VKEY_DAILY, NGX_HTTP_QUOTA_KEY_DAILY },
        { NGX_HTTP_QUOTA_VKEY_RATE, NGX_HTTP_QUOTA_KEY_RATE },
        { NGX_HTTP_QUOTA_VKEY_INFLIGHT, NGX_HTTP_QUOTA_KEY_INFLIGHT }
    };

    r = ctx->request;
    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);

    argv[0] = "EVAL";
    argvlen[0] = 4;
    argv[1] = (const char *) ngx_http_quota_void_lua.data;
    argvlen[1] = ngx_http_quota_void_lua.len;
    argv[2] = NGX_HTTP_QUOTA_NUMKEYS(NGX_HTTP_QUOTA_VOID_NKEYS);
    argvlen[2] = ngx_strlen(argv[2]);

    for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        argv[NGX_HTTP_QUOTA_KEY_AT(keys[i][0])] =
                                  ctx->argv[NGX_HTTP_QUOTA_KEY_AT(keys[i][1])];
        argvlen[NGX_HTTP_QUOTA_KEY_AT(keys[i][0])] =
                               ctx->argvlen[NGX_HTTP_QUOTA_KEY_AT(keys[i][1])];
    }

    argv[NGX_HTTP_QUOTA_VOID_AT(ID)] = (const char *) ctx->charge_id.data;
    argvlen[NGX_HTTP_QUOTA_VOID_AT(ID)] = ctx->charge_id.len;

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "quota: voiding charge %V of tenant \"%V\"",
                  &ctx->charge_id, &ctx->tenant);

    /* the void also removes the slot, taken or not */
    ctx->slot_taken = 0;

    if (op) {
        ngx_http_quota_redis_cancel(op, NGX_HTTP_QUOTA_VOID_ARGC, argv,
                                    argvlen);

    } else if (ngx_http_quota_redis_send_reliable(qmcf,
                                                  NGX_HTTP_QUOTA_VOID_ARGC,
                                                  argv, argvlen)
               != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "quota: void of charge %V not sent", &ctx->charge_id);
    }
}


/* the request is being freed: give its in-flight slot back at once */
void
ngx_http_quota_script_release(ngx_http_quota_ctx_t *ctx)
{
    size_t                       argvlen[3];
    const char                  *argv[3];
    ngx_http_request_t          *r;
    ngx_http_quota_main_conf_t  *qmcf;

    r = ctx->request;
    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);

    argv[0] = "ZREM";
    argvlen[0] = 4;
    argv[1] = (const char *) ctx->slot_key.data;
    argvlen[1] = ctx->slot_key.len;
    argv[2] = (const char *) ctx->slot_id.data;
    argvlen[2] = ctx->slot_id.len;

    /* ZREM is idempotent: resent after a reconnect if need be */
    if (ngx_http_quota_redis_send_reliable(qmcf, 3, argv, argvlen) != NGX_OK) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "quota: in-flight slot not released, its lease will "
                      "free it");
    }
}


/*
 * A lease's unspent request units back (src/lua/settle.lua): from a timer,
 * at exit or from a request; no request pool is needed.  handler gets the
 * reply (NULL: the connection was lost): the caller resends it until Redis
 * answers, for as long as the lease's record lives (not the reliable
 * queue's horizon, a void's); the script is idempotent (the record becomes
 * its tombstone).  NGX_DECLINED: no connection is ready.  "start": the
 * grant's period start ("YYYY-MM-DD", its reply's), which names the usage
 * and daily hashes the script declares.
 */
ngx_int_t
ngx_http_quota_script_settle(ngx_http_quota_main_conf_t *qmcf,
    ngx_str_t *tenant, ngx_str_t *charge_id, ngx_str_t *start,
    ngx_uint_t units, ngx_http_quota_reply_pt handler, void *data)
{
    u_char      *num;
    size_t       argvlen[NGX_HTTP_QUOTA_SETTLE_ARGC];
    ngx_int_t    rc;
    ngx_uint_t   rec, usage, daily;
    const char  *argv[NGX_HTTP_QUOTA_SETTLE_ARGC];
    ngx_pool_t  *pool;

    pool = ngx_create_pool(512, ngx_cycle->log);
    if (pool == NULL) {
        return NGX_ERROR;
    }

    /* every key it touches: the grant's record, its period's hashes */
    rec = NGX_HTTP_QUOTA_KEY_AT(NGX_HTTP_QUOTA_SKEY_RECORD);
    usage = NGX_HTTP_QUOTA_KEY_AT(NGX_HTTP_QUOTA_SKEY_USAGE);
    daily = NGX_HTTP_QUOTA_KEY_AT(NGX_HTTP_QUOTA_SKEY_DAILY);

    argv[rec] = (const char *) ngx_http_quota_key(pool, &qmcf->prefix,
                                                  tenant, "c:", 2,
                                                  charge_id->data,
                                                  charge_id->len,
                                                  &argvlen[rec]);
    argv[usage] = (const char *) ngx_http_quota_key(pool, &qmcf->prefix,
                                                    tenant, "usage:", 6,
                                                    start->data, start->len,
                                                    &argvlen[usage]);
    argv[daily] = (const char *) ngx_http_quota_key(pool, &qmcf->prefix,
                                                    tenant, "daily:", 6,
                                                    start->data, start->len,
                                                    &argvlen[daily]);
    num = ngx_pnalloc(pool, NGX_INT_T_LEN);

    if (argv[rec] == NULL || argv[usage] == NULL || argv[daily] == NULL
        || num == NULL)
    {
        ngx_destroy_pool(pool);
        return NGX_ERROR;
    }

    argv[0] = "EVAL";
    argvlen[0] = 4;
    argv[1] = (const char *) ngx_http_quota_settle_lua.data;
    argvlen[1] = ngx_http_quota_settle_lua.len;
    argv[2] = NGX_HTTP_QUOTA_NUMKEYS(NGX_HTTP_QUOTA_SETTLE_NKEYS);
    argvlen[2] = ngx_strlen(argv[2]);
    argv[NGX_HTTP_QUOTA_SETTLE_AT(UNITS)] = (const char *) num;
    argvlen[NGX_HTTP_QUOTA_SETTLE_AT(UNITS)] = ngx_sprintf(num, "%ui", units)
                                               - num;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "quota: settle of lease %V of tenant \"%V\": %ui back",
                   charge_id, tenant, units);

    /* the caller waits for the answer (quota_lease keeps a quitting
       worker until then) and resends it when it gets none: the command is
       formatted at once, the pool may go */
    rc = ngx_http_quota_redis_send(qmcf, NGX_HTTP_QUOTA_SETTLE_ARGC, argv,
                                   argvlen, handler, data)
         ? NGX_OK : NGX_DECLINED;

    ngx_destroy_pool(pool);

    return rc;
}


/*
 * What quota_fallback admitted while Redis was away, charged once when it
 * is back: the charge script in MODE_FORCE (no check refuses it; overage
 * is priced, alerts fire) with units[m] of every declared metric m, at
 * the clock at_ms (epoch ms: when they were admitted, so that they land
 * in the day and the period they were admitted in), under the charge id
 * "id": empty, a new one is written to id->data (room for
 * NGX_HTTP_QUOTA_CHARGE_ID_LEN); a resend passes the same, whose record
 * makes it a no-op.  EVAL: the script may not be loaded yet.  handler
 * gets the reply (NULL: the connection was lost, the caller resends);
 * NGX_DECLINED: no connection is ready, the caller resends later.
 */
ngx_int_t
ngx_http_quota_script_force(ngx_http_quota_main_conf_t *qmcf,
    ngx_str_t *tenant, int64_t *units, int64_t at_ms, ngx_str_t *id,
    ngx_http_quota_reply_pt handler, void *data)
{
    ngx_int_t               rc;
    ngx_uint_t              k;
    ngx_time_t              at;
    ngx_pool_t             *pool;
    ngx_http_quota_rule_t  *rule;
    ngx_http_quota_args_t   a;

    /* the quota_usage rule: every declared metric, with its plan table */
    rule = &qmcf->report_rule;
    k = rule->ncharges;

    pool = ngx_create_pool(4096, ngx_cycle->log);
    if (pool == NULL) {
        return NGX_ERROR;
    }

    at.sec = (time_t) (at_ms / 1000);
    at.msec = (ngx_msec_t) (at_ms % 1000);

    if (ngx_http_quota_script_args(qmcf, pool, &a, tenant, k, &rule->table,
                                   7 * NGX_INT64_LEN, &at)
        != NGX_OK)
    {
        ngx_destroy_pool(pool);
        return NGX_ERROR;
    }

    a.argv[0] = "EVAL";
    a.argvlen[0] = 4;
    a.argv[1] = (const char *) qmcf->script.data;
    a.argvlen[1] = qmcf->script.len;

    ngx_http_quota_args_num(&a, NGX_HTTP_QUOTA_ARG_MODE,
                            NGX_HTTP_QUOTA_MODE_FORCE);
    ngx_http_quota_args_str(&a, NGX_HTTP_QUOTA_ARG_REQUIRE_ACCOUNT,
                            (u_char *) "0", 1);

    if (id->len == 0) {
        id->len = ngx_http_quota_charge_id(id->data) - id->data;
    }

    ngx_http_quota_args_str(&a, NGX_HTTP_QUOTA_ARG_CHARGE_ID, id->data,
                            id->len);

    ngx_http_quota_args_num(&a, NGX_HTTP_QUOTA_ARG_THRESHOLD,
                            qmcf->force_threshold);
    ngx_http_quota_args_num(&a, NGX_HTTP_QUOTA_ARG_EVENTS, qmcf->events);
    ngx_http_quota_args_num(&a, NGX_HTTP_QUOTA_ARG_LEASE_N, 1);
    ngx_http_quota_args_num(&a, NGX_HTTP_QUOTA_ARG_LEASE_TTL, 0);

    rc = ngx_http_quota_script_metrics(qmcf, &a, rule, units, k);

    if (rc == NGX_OK) {
        rc = ngx_http_quota_anchor_keys(pool, a.argv, a.argvlen,
                                        ngx_http_quota_anchor_guess(tenant));
    }

    if (rc == NGX_OK) {
        rc = ngx_http_quota_script_built(&a, ngx_cycle->log);
    }

    if (rc == NGX_OK) {
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "quota: charging what fallback admitted for tenant "
                      "\"%V\" (charge %V at %L)", tenant, id, at_ms);

        /* the command is formatted at once: the pool may go */
        rc = ngx_http_quota_redis_send(qmcf, a.argc, a.argv, a.argvlen,
                                       handler, data)
             ? NGX_OK : NGX_DECLINED;
    }

    ngx_destroy_pool(pool);

    return rc;
}


/* quota_reconcile: add delta to the index-th metric, fire and forget */
ngx_int_t
ngx_http_quota_script_reconcile(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_uint_t index, int64_t delta)
{
    u_char                      *p, *end;
    size_t                       argvlen[NGX_HTTP_QUOTA_RC_ARGC];
    time_t                       now;
    ngx_uint_t                   day, ckey, dkey, field, dfield, marks;
    ngx_uint_t                   suffix, acct;
    const char                  *argv[NGX_HTTP_QUOTA_RC_ARGC];
    ngx_str_t                   *name;
    quota_period_t               period, today;
    ngx_http_quota_metric_t     *metrics;
    ngx_http_quota_main_conf_t  *qmcf;
    u_char                       start[QUOTA_DATE_LEN];

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    metrics = qmcf->metrics.elts;
    name = &metrics[ctx->rule->charges[index].metric].name;
    day = (metrics[ctx->rule->charges[index].metric].period
           == NGX_HTTP_QUOTA_PERIOD_DAY);
    now = ngx_time();

    /* the keys the charge used: its period, today for the daily field */
    period = ngx_http_quota_metric_period(r, ctx, index);

    if (quota_period_day(now, &today) != 0) {
        return NGX_ERROR;
    }

    p = ngx_pnalloc(r->pool, 2 * (name->len + 1 + QUOTA_DATE_LEN)
                             + 8 * NGX_INT64_LEN + ctx->tenant.len
                             + qmcf->events_channel.len
                             + 2 * QUOTA_ISO8601_LEN + 4);
    if (p == NULL) {
        return NGX_ERROR;
    }

    end = p;

    /* "METRIC:YYYY-MM-DD", and the mark suffix ":YYYY-MM-DD" or "" */
    dfield = NGX_HTTP_QUOTA_RC(DAILY_FIELD);
    suffix = NGX_HTTP_QUOTA_RC(MARK_SUFFIX);

    argv[dfield] = (const char *) end;
    end = ngx_cpymem(end, name->data, name->len);
    argv[suffix] = (const char *) end;
    *end++ = ':';
    quota_format_date(today.start, (char *) end);
    end += QUOTA_DATE_LEN;
    argvlen[dfield] = end - (u_char *) argv[dfield];
    argvlen[suffix] = day ? (size_t) (1 + QUOTA_DATE_LEN) : 0;

    argv[0] = "EVAL";
    argvlen[0] = 4;
    argv[1] = (const char *) ngx_http_quota_reconcile_lua.data;
    argvlen[1] = ngx_http_quota_reconcile_lua.len;
    argv[2] = NGX_HTTP_QUOTA_NUMKEYS(NGX_HTTP_QUOTA_RC_NKEYS);
    argvlen[2] = ngx_strlen(argv[2]);

    /* every key it touches is a KEY: the charge's period (its reply) */
    acct = NGX_HTTP_QUOTA_RKEY(ACCOUNT);
    argv[acct] = (const char *) ngx_http_quota_key(r->pool, &qmcf->prefix,
                                                   &ctx->tenant, "account",
                                                   7, NULL, 0,
                                                   &argvlen[acct]);
    quota_format_date(ctx->billing.start ? ctx->billing.start : period.start,
                      (char *) start);

    dkey = NGX_HTTP_QUOTA_RKEY(DAILY);
    argv[dkey] = (const char *) ngx_http_quota_key(r->pool, &qmcf->prefix,
                                                   &ctx->tenant, "daily:", 6,
                                                   start, QUOTA_DATE_LEN,
                                                   &argvlen[dkey]);
    marks = NGX_HTTP_QUOTA_RKEY(MARKS);
    argv[marks] = (const char *) ngx_http_quota_key(r->pool, &qmcf->prefix,
                                                    &ctx->tenant, "alerted:",
                                                    8, start, QUOTA_DATE_LEN,
                                                    &argvlen[marks]);

    /* a period=day metric counts in its daily field (see the script) */
    ckey = NGX_HTTP_QUOTA_RKEY(COUNTER);
    field = NGX_HTTP_QUOTA_RC(FIELD);

    if (day) {
        argv[ckey] = argv[dkey];
        argvlen[ckey] = argvlen[dkey];
        argv[field] = argv[dfield];
        argvlen[field] = argvlen[dfield];

    } else {
        quota_format_date(period.start, (char *) start);
        argv[ckey] = (const char *) ngx_http_quota_key(r->pool, &qmcf->prefix,
                                                       &ctx->tenant, "usage:",
                                                       6, start,
                                                       QUOTA_DATE_LEN,
                                                       &argvlen[ckey]);
        argv[field] = (const char *) name->data;
        argvlen[field] = name->len;
    }

    if (argv[acct] == NULL || argv[ckey] == NULL || argv[dkey] == NULL
        || argv[marks] == NULL
        || ngx_http_quota_reconcile_alert(r, ctx, name, period.end, &end,
                                          argv, argvlen)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_http_quota_reconcile_nums(r, ctx, index, delta, &end, argv, argvlen);

    /*
     * EVAL, not EVALSHA: nobody waits for this reply, so there would be no
     * one to answer a NOSCRIPT; reconciles are rare next to charges.
     */
    return ngx_http_quota_redis_send_oneway(qmcf, NGX_HTTP_QUOTA_RC_ARGC, argv,
                                             argvlen);
}


/* what an alert fired by a reconcile needs */
static ngx_int_t
ngx_http_quota_reconcile_alert(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_str_t *name, time_t reset, u_char **p,
    const char **argv, size_t *argvlen)
{
    ngx_uint_t                   i;
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);

    argv[NGX_HTTP_QUOTA_RC(METRIC)] = (const char *) name->data;
    argvlen[NGX_HTTP_QUOTA_RC(METRIC)] = name->len;
    argv[NGX_HTTP_QUOTA_RC(EVENTS)] =
                       qmcf->events == NGX_HTTP_QUOTA_EVENTS_OFF ? "0" : "1";
    argvlen[NGX_HTTP_QUOTA_RC(EVENTS)] = 1;

    /* "TENANT\nCHANNEL\nNOW\nRESET" */
    argv[NGX_HTTP_QUOTA_RC(NOTIFY)] = (const char *) *p;
    *p = ngx_sprintf(*p, "%V\n%V\n", &ctx->tenant, &qmcf->events_channel);
    quota_format_iso8601(ngx_time(), (char *) *p);
    *p += QUOTA_ISO8601_LEN;
    *(*p)++ = '\n';
    quota_format_iso8601(reset, (char *) *p);
    *p += QUOTA_ISO8601_LEN;
    argvlen[NGX_HTTP_QUOTA_RC(NOTIFY)] =
                                *p - (u_char *) argv[NGX_HTTP_QUOTA_RC(NOTIFY)];

    i = NGX_HTTP_QUOTA_RKEY(ALERTS);
    argv[i] = (const char *) ngx_http_quota_key(r->pool, &qmcf->prefix,
                                                &ctx->tenant, "alerts", 6,
                                                NULL, 0, &argvlen[i]);

    return argv[i] ? NGX_OK : NGX_ERROR;
}


/* DELTA, LIMIT, PRICE, the two TTLs and the threshold */
static void
ngx_http_quota_reconcile_nums(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_uint_t index, int64_t delta, u_char **p,
    const char **argv, size_t *argvlen)
{
    int64_t                        n[6];
    time_t                         now;
    ngx_uint_t                     i, m, metric;
    quota_period_t                 period;
    ngx_http_quota_plan_t         *plan;
    ngx_http_quota_metric_t       *metrics;
    ngx_http_quota_loc_conf_t     *qlcf;
    ngx_http_quota_main_conf_t    *qmcf;
    ngx_http_quota_plan_metric_t  *pm;

    static const ngx_uint_t        at[6] = {
        NGX_HTTP_QUOTA_RC(DELTA), NGX_HTTP_QUOTA_RC(LIMIT),
        NGX_HTTP_QUOTA_RC(PRICE), NGX_HTTP_QUOTA_RC(TTL),
        NGX_HTTP_QUOTA_RC(DAILY_TTL), NGX_HTTP_QUOTA_RC(THRESHOLD)
    };

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    qlcf = ctx->conf;    /* the location that charged (review D6) */
    metrics = qmcf->metrics.elts;
    metric = ctx->rule->charges[index].metric;
    now = ngx_time();
    period = ngx_http_quota_metric_period(r, ctx, index);

    /* the overage price of the plan the charge used (day metrics: none) */
    n[2] = -1;

    if (ctx->plan > 0 && ctx->plan <= qmcf->plans.nelts
        && metrics[metric].period == NGX_HTTP_QUOTA_PERIOD_MONTH)
    {
        plan = (ngx_http_quota_plan_t *) qmcf->plans.elts + ctx->plan - 1;
        pm = plan->metrics.elts;

        for (m = 0; m < plan->metrics.nelts; m++) {
            if (pm[m].metric == metric) {
                n[2] = pm[m].price;
                break;
            }
        }
    }

    n[0] = delta;
    n[1] = ctx->limit[index];

    /* counters expire 62 days after their period, like the charge's */
    n[3] = (metrics[metric].period == NGX_HTTP_QUOTA_PERIOD_DAY
            ? ctx->billing.end : period.end) - now + NGX_HTTP_QUOTA_KEEP;
    n[4] = ctx->billing.end - now + NGX_HTTP_QUOTA_KEEP;
    n[5] = qlcf->warning_threshold;

    for (i = 0; i < 6; i++) {
        argv[at[i]] = (const char *) *p;
        *p = ngx_sprintf(*p, "%L", n[i]);
        argvlen[at[i]] = *p - (u_char *) argv[at[i]];
    }
}


static u_char *
ngx_http_quota_num(ngx_pool_t *pool, int64_t n, size_t *len)
{
    u_char  *p;

    p = ngx_pnalloc(pool, NGX_INT64_LEN);
    if (p == NULL) {
        return NULL;
    }

    *len = ngx_sprintf(p, "%L", n) - p;

    return p;
}

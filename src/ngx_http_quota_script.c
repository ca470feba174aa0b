
/*
 * Running the scripts of ngx_http_quota_lua.c: the arguments of the charge
 * script (one EVALSHA per metered request), its NOSCRIPT fallback, the
 * release of an in-flight slot, and quota_reconcile.
 *
 * Plans are configuration and accounts are data: the account names its
 * plan, and the limits of every configured plan for the rule's metrics
 * travel with the request, so a plan change in Redis applies to the next
 * request without a reload.  That part of the arguments depends only on
 * configuration and is built once per rule, here, at init_main_conf.
 */


#include "ngx_http_quota_module.h"
#include <ngx_sha1.h>


#define NGX_HTTP_QUOTA_HEAD_ARGS   16    /* ARGV 1-16 of the charge script */


static ngx_int_t ngx_http_quota_plan_table(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf, ngx_http_quota_rule_t *rule,
    ngx_http_quota_plan_table_t *table);
static ngx_int_t ngx_http_quota_table_num(ngx_conf_t *cf, ngx_str_t *arg,
    int64_t n);
static ngx_http_quota_clock_t *ngx_http_quota_clock(
    ngx_http_quota_main_conf_t *qmcf, time_t sec);
static void ngx_http_quota_script_reply(void *data, redisReply *reply);
static u_char *ngx_http_quota_num(ngx_pool_t *pool, int64_t n, size_t *len);


ngx_int_t
ngx_http_quota_script_init(ngx_conf_t *cf, ngx_http_quota_main_conf_t *qmcf)
{
    u_char                  digest[20];
    ngx_uint_t              i, j;
    ngx_sha1_t              sha1;
    ngx_array_t           **sets;
    ngx_http_quota_rule_t  *rule;

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
 * CONCURRENCY LEASE_MS", and per charged metric "LIMIT PER_SEAT PRICE"
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

        arg->len = ngx_sprintf(arg->data, "%ui %ui %M %ui %ui %M",
                               plan[j].grace, plan[j].rate,
                               plan[j].rate_period, plan[j].burst,
                               plan[j].concurrency, plan[j].lease)
                   - arg->data;
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

            arg->len = ngx_sprintf(arg->data, "%L %ui %L", limit, per_seat,
                                   price)
                       - arg->data;
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


ngx_int_t
ngx_http_quota_script_charge(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx)
{
    u_char                       *p;
    size_t                       *argvlen;
    int64_t                       now_ms;
    ngx_uint_t                    i, k, n, argc;
    ngx_time_t                   *tp;
    const char                  **argv;
    ngx_http_quota_clock_t       *clock;
    ngx_http_quota_op_t          *op;
    ngx_http_quota_rule_t        *rule;
    ngx_http_quota_metric_t      *metrics;
    ngx_http_quota_loc_conf_t    *qlcf;
    ngx_http_quota_main_conf_t   *qmcf;
    ngx_http_quota_plan_table_t  *table;

    static ngx_uint_t             slot_seq;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    qlcf = ngx_http_get_module_loc_conf(r, ngx_http_quota_module);

    rule = ctx->rule;
    k = ctx->ncharges;
    table = rule ? &rule->table : &qmcf->no_rule_table;
    metrics = qmcf->metrics.elts;

    /* the gateway's clock: see README, "Time" */
    tp = ngx_timeofday();
    now_ms = (int64_t) tp->sec * 1000 + tp->msec;

    clock = ngx_http_quota_clock(qmcf, tp->sec);
    if (clock == NULL) {
        return NGX_ERROR;
    }

    /* EVALSHA, sha, numkeys, KEYS[1], the head of ARGV, metrics, plans */
    n = 4 + NGX_HTTP_QUOTA_HEAD_ARGS + 3 * k + table->nargs;

    argv = ngx_palloc(r->pool, n * sizeof(char *));
    argvlen = ngx_palloc(r->pool, n * sizeof(size_t));

    /* every number and date of the request in one buffer */
    p = ngx_pnalloc(r->pool, (8 + k) * NGX_INT64_LEN + QUOTA_DATE_LEN
                             + QUOTA_ISO8601_LEN + ctx->tenant.len
                             + qmcf->events_channel.len + 8);

    if (argv == NULL || argvlen == NULL || p == NULL) {
        return NGX_ERROR;
    }

#define ngx_http_quota_arg(s, len)                                           \
    argv[argc] = (const char *) (s); argvlen[argc] = (len); argc++

#define ngx_http_quota_arg_num(v)                                            \
    argv[argc] = (const char *) p;                                           \
    p = ngx_sprintf(p, "%L", (int64_t) (v));                                 \
    argvlen[argc] = p - (u_char *) argv[argc];                               \
    argc++

    argc = 0;

    ngx_http_quota_arg("EVALSHA", 7);
    ngx_http_quota_arg(qmcf->script_sha1, 40);
    ngx_http_quota_arg("1", 1);

    /* KEYS[1]; "P{T}:account" starts with ARGV[1], "P{T}:" */
    argv[argc] = (const char *) ngx_http_quota_key(r->pool, &qmcf->prefix,
                                                   &ctx->tenant, "account", 7,
                                                   NULL, 0, &argvlen[argc]);
    if (argv[argc] == NULL) {
        return NGX_ERROR;
    }

    argc++;

    /* ARGV[1], "P{T}:", is the account key without "account" */
    argv[argc] = argv[argc - 1];
    argvlen[argc] = argvlen[argc - 1] - 7;
    argc++;

    ngx_http_quota_arg(ctx->report ? (ctx->report == 2 ? "3" : "2")
                                   : (ctx->bypass ? "1" : "0"), 1);
    ngx_http_quota_arg_num(now_ms);
    ngx_http_quota_arg(qlcf->require_account ? "1" : "0", 1);

    /* an id for the in-flight slot, unique among this tenant's requests */
    if (qmcf->concurrency && !ctx->bypass && !ctx->report) {
        ctx->slot_id.data = p;
        p = ngx_sprintf(p, "%P:%ui:%L", ngx_pid, slot_seq++, now_ms);
        ctx->slot_id.len = p - ctx->slot_id.data;

        /* named now: the release runs while the request pool is freed */
        ctx->slot_key.data = ngx_http_quota_key(r->pool, &qmcf->prefix,
                                                &ctx->tenant, "inflight", 8,
                                                NULL, 0, &ctx->slot_key.len);
        if (ctx->slot_key.data == NULL) {
            return NGX_ERROR;
        }
    }

    ngx_http_quota_arg(ctx->slot_id.data ? ctx->slot_id.data
                                         : (u_char *) "",
                       ctx->slot_id.len);

    ngx_http_quota_arg(clock->cur_start.data, clock->cur_start.len);  /* 6 */
    ngx_http_quota_arg(clock->next_start.data, clock->next_start.len);
    ngx_http_quota_arg(clock->ym_cur.data, clock->ym_cur.len);        /* 8 */
    ngx_http_quota_arg(clock->ym_next.data, clock->ym_next.len);
    ngx_http_quota_arg(clock->today.data, clock->today.len);          /* 10 */
    ngx_http_quota_arg_num(qmcf->default_plan + 1);
    ngx_http_quota_arg_num(qlcf->warning_threshold);                  /* 12 */
    ngx_http_quota_arg_num(qmcf->events);
    ngx_http_quota_arg(clock->calendar.data, clock->calendar.len);    /* 14 */

    /* 15: what only an alert or an event needs */
    argv[argc] = (const char *) p;
    p = ngx_sprintf(p, "%V\n%V\n%V\n%V", &ctx->tenant, &qmcf->events_channel,
                    &clock->now_iso, &clock->tomorrow);
    argvlen[argc] = p - (u_char *) argv[argc];
    argc++;

    ngx_http_quota_arg_num(k);                              /* 16 */

    for (i = 0; i < k; i++) {
        ngx_http_quota_arg(metrics[rule->charges[i].metric].name.data,
                           metrics[rule->charges[i].metric].name.len);
        ngx_http_quota_arg_num(ctx->costs[i]);
        ngx_http_quota_arg(metrics[rule->charges[i].metric].period
                           == NGX_HTTP_QUOTA_PERIOD_DAY ? "d" : "m", 1);
    }

    for (i = 0; i < table->nargs; i++) {
        ngx_http_quota_arg(table->args[i].data, table->args[i].len);
    }

#undef ngx_http_quota_arg
#undef ngx_http_quota_arg_num

    if (argc != n) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "quota: %ui script arguments built, %ui expected",
                      argc, n);
        return NGX_ERROR;
    }

    ctx->argc = argc;
    ctx->argv = argv;
    ctx->argvlen = argvlen;

    op = ngx_http_quota_redis_send(qmcf, argc, argv, argvlen,
                                   ngx_http_quota_script_reply, ctx);
    if (op == NULL) {
        return NGX_DECLINED;
    }

    ctx->op = op;

    return NGX_OK;
}


static void
ngx_http_quota_script_reply(void *data, redisReply *reply)
{
    ngx_http_quota_ctx_t *ctx = data;

    ngx_http_request_t          *r;
    ngx_http_quota_main_conf_t  *qmcf;

    r = ctx->request;
    ctx->op = NULL;

    if (reply != NULL && !ctx->eval_retried
        && ngx_http_quota_reply_is_noscript(reply))
    {
        /*
         * The script cache was flushed (restart, failover, SCRIPT FLUSH).
         * The script did not run, so sending it once as EVAL is safe; EVAL
         * also caches it again for the next EVALSHA.
         */

        qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);

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

        reply = NULL;
    }

    if (ngx_http_quota_reply_decode(r, ctx, reply) != NGX_OK
        || (ctx->build && ctx->build(r, ctx, reply) != NGX_OK))
    {
        ctx->redis_failed = 1;

        if (reply != NULL) {
            qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
            ngx_http_quota_count(qmcf, errors[NGX_HTTP_QUOTA_ERR_REPLY]);
        }
    }

    ngx_http_quota_reply_done(ctx);
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

    /* if this is lost, the slot's lease frees it anyway */
    if (ngx_http_quota_redis_send_oneway(qmcf, 3, argv, argvlen) != NGX_OK) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "quota: in-flight slot not released, its lease will "
                      "free it");
    }
}


/* quota_reconcile: add delta to the index-th metric, fire and forget */
ngx_int_t
ngx_http_quota_script_reconcile(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_uint_t index, int64_t delta)
{
    u_char                      *field, *p;
    size_t                       argvlen[11];
    int64_t                      price;
    ngx_uint_t                   m, metric;
    const char                  *argv[11];
    ngx_http_quota_plan_t       *plan;
    ngx_http_quota_plan_metric_t  *pm;
    ngx_str_t                   *name;
    quota_period_t               period, today;
    ngx_http_quota_metric_t     *metrics;
    ngx_http_quota_main_conf_t  *qmcf;
    u_char                       start[QUOTA_DATE_LEN];

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    metrics = qmcf->metrics.elts;
    metric = ctx->rule->charges[index].metric;
    name = &metrics[metric].name;

    /* the overage price of the plan the charge used (day metrics: none) */
    price = -1;

    if (ctx->plan > 0 && ctx->plan <= qmcf->plans.nelts
        && metrics[metric].period == NGX_HTTP_QUOTA_PERIOD_MONTH)
    {
        plan = (ngx_http_quota_plan_t *) qmcf->plans.elts + ctx->plan - 1;
        pm = plan->metrics.elts;

        for (m = 0; m < plan->metrics.nelts; m++) {
            if (pm[m].metric == metric) {
                price = pm[m].price;
                break;
            }
        }
    }

    /* the keys the charge used: its period, today for the daily field */
    period = ngx_http_quota_metric_period(r, ctx, index);
    quota_format_date(period.start, (char *) start);

    if (quota_period_day(ngx_time(), &today) != 0) {
        return NGX_ERROR;
    }

    field = ngx_pnalloc(r->pool, name->len + 1 + QUOTA_DATE_LEN
                                 + 3 * NGX_INT64_LEN);
    if (field == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(field, name->data, name->len);
    *p++ = ':';
    quota_format_date(today.start, (char *) p);
    p += QUOTA_DATE_LEN;

    argv[0] = "EVAL";
    argvlen[0] = 4;
    argv[1] = (const char *) ngx_http_quota_reconcile_lua.data;
    argvlen[1] = ngx_http_quota_reconcile_lua.len;
    argv[2] = "1";
    argvlen[2] = 1;
    argv[3] = (const char *) ngx_http_quota_key(r->pool, &qmcf->prefix,
                                                &ctx->tenant, "account", 7,
                                                NULL, 0, &argvlen[3]);
    argv[4] = (const char *) ngx_http_quota_key(r->pool, &qmcf->prefix,
                                                &ctx->tenant, "usage:", 6,
                                                start, QUOTA_DATE_LEN,
                                                &argvlen[4]);
    quota_format_date(ctx->billing.start ? ctx->billing.start : period.start,
                      (char *) start);
    argv[5] = (const char *) ngx_http_quota_key(r->pool, &qmcf->prefix,
                                                &ctx->tenant, "daily:", 6,
                                                start, QUOTA_DATE_LEN,
                                                &argvlen[5]);
    argv[6] = (const char *) name->data;
    argvlen[6] = name->len;
    argv[8] = (const char *) field;
    argvlen[8] = (p - field);
    argv[7] = (const char *) p;
    p = ngx_sprintf(p, "%L", delta);
    argvlen[7] = p - (u_char *) argv[7];
    argv[9] = (const char *) p;
    p = ngx_sprintf(p, "%L", ctx->limit[index]);
    argvlen[9] = p - (u_char *) argv[9];
    argv[10] = (const char *) p;
    p = ngx_sprintf(p, "%L", price);
    argvlen[10] = p - (u_char *) argv[10];

    if (argv[3] == NULL || argv[4] == NULL || argv[5] == NULL) {
        return NGX_ERROR;
    }

    /*
     * EVAL, not EVALSHA: nobody waits for this reply, so there would be no
     * one to answer a NOSCRIPT; reconciles are rare next to charges.
     */
    return ngx_http_quota_redis_send_oneway(qmcf, 11, argv, argvlen);
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

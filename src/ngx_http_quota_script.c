
/*
 * The charge script: one EVALSHA per metered request does the whole
 * check-and-charge atomically inside Redis (SPEC section 4, steps 5-6), so
 * no interleaving of workers or gateway nodes can over-admit.
 *
 * KEYS[1]      P{T}:account           (read: plan)
 * KEYS[2]      P{T}:daily:START       (written: METRIC:YYYY-MM-DD)
 * KEYS[2+i]    P{T}:usage:START       usage hash of the i-th charged metric
 *                                     (its own period: month or day)
 * ARGV[1]      now, epoch seconds (gateway clock)
 * ARGV[2]      today, YYYY-MM-DD (UTC)
 * ARGV[3]      TTL of the daily key, seconds
 * ARGV[4]      default plan name ("" for none)
 * ARGV[5]      k, the number of charged metrics
 * then k x     METRIC, COST, TTL of its usage key
 * then         number of plans, and per plan: NAME, k limits (-1: none)
 *
 * Reply: { code, index, used_1, limit_1, ..., used_k, limit_k }, integers
 * only (Lua numbers would lose their fraction anyway): code 1 = charged,
 * 2 = metric number "index" would pass its limit and nothing was charged.
 * used_i is after the charge when charged, before it when rejected.
 *
 * Plans are configuration, accounts are data: the account names its plan,
 * and the limits of every configured plan travel with the request, so a
 * plan change in Redis applies to the next request without a reload.
 */


#include "ngx_http_quota_module.h"
#include <ngx_sha1.h>


static void ngx_http_quota_script_reply(void *data, redisReply *reply);
static u_char *ngx_http_quota_script_num(ngx_http_request_t *r, int64_t n,
    size_t *len);


static const char  ngx_http_quota_charge_lua[] =
    "local k = tonumber(ARGV[5])\n"
    "local names, costs, argcost, ttls = {}, {}, {}, {}\n"
    "local pos = 6\n"
    "for i = 1, k do\n"
    "  names[i] = ARGV[pos]\n"
    "  argcost[i] = ARGV[pos + 1]\n"
    "  costs[i] = tonumber(ARGV[pos + 1])\n"
    "  ttls[i] = ARGV[pos + 2]\n"
    "  pos = pos + 3\n"
    "end\n"
    "local plan = redis.call('HGET', KEYS[1], 'plan')\n"
    "local np = tonumber(ARGV[pos])\n"
    "pos = pos + 1\n"
    "local at, default_at\n"
    "for j = 1, np do\n"
    "  if ARGV[pos] == plan then at = pos end\n"
    "  if ARGV[pos] == ARGV[4] then default_at = pos end\n"
    "  pos = pos + 1 + k\n"
    "end\n"
    "at = at or default_at\n"
    "local used, limits = {}, {}\n"
    "for i = 1, k do\n"
    "  used[i] = tonumber(redis.call('HGET', KEYS[2 + i], names[i])) or 0\n"
    "  if at then limits[i] = tonumber(ARGV[at + i]) else limits[i] = -1 end\n"
    "end\n"
    "local reply = {1, 0}\n"
    "for i = 1, k do\n"
    "  if limits[i] >= 0 and used[i] + costs[i] > limits[i] then\n"
    "    reply[1] = 2\n"
    "    reply[2] = i\n"
    "    break\n"
    "  end\n"
    "end\n"
    "if reply[1] == 1 then\n"
    "  for i = 1, k do\n"
    "    if costs[i] > 0 then\n"
    "      used[i] = redis.call('HINCRBY', KEYS[2 + i], names[i], argcost[i])\n"
    "      redis.call('EXPIRE', KEYS[2 + i], ttls[i])\n"
    "      redis.call('HINCRBY', KEYS[2], names[i] .. ':' .. ARGV[2],"
                                                          " argcost[i])\n"
    "    end\n"
    "  end\n"
    "  redis.call('EXPIRE', KEYS[2], ARGV[3])\n"
    "end\n"
    "for i = 1, k do\n"
    "  reply[#reply + 1] = used[i]\n"
    "  reply[#reply + 1] = limits[i]\n"
    "end\n"
    "return reply\n";


ngx_int_t
ngx_http_quota_script_init(ngx_conf_t *cf, ngx_http_quota_main_conf_t *qmcf)
{
    u_char                   digest[20];
    ngx_uint_t               i, j;
    ngx_sha1_t               sha1;
    ngx_http_quota_plan_t   *plan;
    ngx_http_quota_limit_t  *limit;

    qmcf->script.data = (u_char *) ngx_http_quota_charge_lua;
    qmcf->script.len = sizeof(ngx_http_quota_charge_lua) - 1;

    /* computed, not hard-coded: it cannot drift from the source */
    ngx_sha1_init(&sha1);
    ngx_sha1_update(&sha1, qmcf->script.data, qmcf->script.len);
    ngx_sha1_final(digest, &sha1);
    ngx_hex_dump(qmcf->script_sha1, digest, 20);

    /* plans list limits sparsely; requests want them by metric index */

    plan = qmcf->plans.elts;

    for (i = 0; i < qmcf->plans.nelts; i++) {
        plan[i].limit_by_metric = ngx_palloc(cf->pool,
                                     (qmcf->metrics.nelts + 1)
                                     * sizeof(int64_t));
        if (plan[i].limit_by_metric == NULL) {
            return NGX_ERROR;
        }

        for (j = 0; j < qmcf->metrics.nelts; j++) {
            plan[i].limit_by_metric[j] = NGX_HTTP_QUOTA_UNLIMITED;
        }

        limit = plan[i].limits.elts;

        for (j = 0; j < plan[i].limits.nelts; j++) {
            plan[i].limit_by_metric[limit[j].metric] = limit[j].limit;
        }
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_quota_script_charge(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx)
{
    u_char                      *day, *month_start;
    size_t                      *argvlen, keylen;
    time_t                       now;
    ngx_uint_t                   i, j, k, n, argc, np;
    const char                 **argv;
    quota_period_t               month, today, period;
    ngx_http_quota_op_t         *op;
    ngx_http_quota_rule_t       *rule;
    ngx_http_quota_plan_t       *plan;
    ngx_http_quota_metric_t     *metrics;
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);

    rule = ctx->rule;
    k = rule->ncharges;
    plan = qmcf->plans.elts;
    np = qmcf->plans.nelts;
    metrics = qmcf->metrics.elts;

    now = ngx_time();

    if (quota_period_month(now, 1, &month) != 0
        || quota_period_day(now, &today) != 0)
    {
        return NGX_ERROR;
    }

    n = 3 + 2 + k + 5 + 3 * k + 1 + np * (1 + k);

    argv = ngx_palloc(r->pool, n * sizeof(char *));
    argvlen = ngx_palloc(r->pool, n * sizeof(size_t));
    day = ngx_pnalloc(r->pool, 2 * QUOTA_DATE_LEN);

    if (argv == NULL || argvlen == NULL || day == NULL) {
        return NGX_ERROR;
    }

    month_start = day + QUOTA_DATE_LEN;
    quota_format_date(today.start, (char *) day);
    quota_format_date(month.start, (char *) month_start);

    argc = 0;

    argv[argc] = "EVALSHA";
    argvlen[argc++] = 7;
    argv[argc] = (char *) qmcf->script_sha1;
    argvlen[argc++] = 40;
    argv[argc] = (char *) ngx_http_quota_script_num(r, 2 + k,
                                                    &argvlen[argc]);
    if (argv[argc++] == NULL) {
        return NGX_ERROR;
    }

    /* KEYS */

    argv[argc] = (char *) ngx_http_quota_key(r->pool, &qmcf->prefix,
                                             &ctx->tenant, "account", 7,
                                             NULL, 0, &argvlen[argc]);
    if (argv[argc++] == NULL) {
        return NGX_ERROR;
    }

    argv[argc] = (char *) ngx_http_quota_key(r->pool, &qmcf->prefix,
                                             &ctx->tenant, "daily:", 6,
                                             month_start, QUOTA_DATE_LEN,
                                             &argvlen[argc]);
    if (argv[argc++] == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < k; i++) {
        if (metrics[rule->charges[i].metric].period
            == NGX_HTTP_QUOTA_PERIOD_DAY)
        {
            argv[argc] = (char *) ngx_http_quota_key(r->pool, &qmcf->prefix,
                                                     &ctx->tenant, "usage:",
                                                     6, day, QUOTA_DATE_LEN,
                                                     &keylen);
        } else {
            argv[argc] = (char *) ngx_http_quota_key(r->pool, &qmcf->prefix,
                                                     &ctx->tenant, "usage:",
                                                     6, month_start,
                                                     QUOTA_DATE_LEN, &keylen);
        }

        if (argv[argc] == NULL) {
            return NGX_ERROR;
        }

        argvlen[argc++] = keylen;
    }

    /* ARGV */

    argv[argc] = (char *) ngx_http_quota_script_num(r, now, &argvlen[argc]);
    if (argv[argc++] == NULL) {
        return NGX_ERROR;
    }

    argv[argc] = (char *) day;
    argvlen[argc++] = QUOTA_DATE_LEN;

    argv[argc] = (char *) ngx_http_quota_script_num(r,
                              month.end - now + NGX_HTTP_QUOTA_KEEP_AFTER_PERIOD,
                              &argvlen[argc]);
    if (argv[argc++] == NULL) {
        return NGX_ERROR;
    }

    if (qmcf->default_plan >= 0) {
        argv[argc] = (char *) plan[qmcf->default_plan].name.data;
        argvlen[argc++] = plan[qmcf->default_plan].name.len;

    } else {
        argv[argc] = "";
        argvlen[argc++] = 0;
    }

    argv[argc] = (char *) ngx_http_quota_script_num(r, k, &argvlen[argc]);
    if (argv[argc++] == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < k; i++) {
        period = metrics[rule->charges[i].metric].period
                 == NGX_HTTP_QUOTA_PERIOD_DAY ? today : month;

        if (i == 0) {
            ctx->period = period;
        }

        argv[argc] = (char *) metrics[rule->charges[i].metric].name.data;
        argvlen[argc++] = metrics[rule->charges[i].metric].name.len;

        argv[argc] = (char *) ngx_http_quota_script_num(r, ctx->costs[i],
                                                        &argvlen[argc]);
        if (argv[argc++] == NULL) {
            return NGX_ERROR;
        }

        argv[argc] = (char *) ngx_http_quota_script_num(r,
                              period.end - now + NGX_HTTP_QUOTA_KEEP_AFTER_PERIOD,
                              &argvlen[argc]);
        if (argv[argc++] == NULL) {
            return NGX_ERROR;
        }
    }

    argv[argc] = (char *) ngx_http_quota_script_num(r, np, &argvlen[argc]);
    if (argv[argc++] == NULL) {
        return NGX_ERROR;
    }

    for (j = 0; j < np; j++) {
        argv[argc] = (char *) plan[j].name.data;
        argvlen[argc++] = plan[j].name.len;

        for (i = 0; i < k; i++) {
            argv[argc] = (char *) ngx_http_quota_script_num(r,
                              plan[j].limit_by_metric[rule->charges[i].metric],
                              &argvlen[argc]);
            if (argv[argc++] == NULL) {
                return NGX_ERROR;
            }
        }
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

        ctx->op = ngx_http_quota_redis_send(qmcf, ctx->argc, ctx->argv,
                                            ctx->argvlen,
                                            ngx_http_quota_script_reply, ctx);
        if (ctx->op != NULL) {
            return;
        }

        reply = NULL;
    }

    if (ngx_http_quota_reply_decode(r, ctx, reply) != NGX_OK) {
        ctx->redis_failed = 1;
    }

    if (ctx->timeout.timer_set) {
        ngx_del_timer(&ctx->timeout);
    }

    ctx->state = NGX_HTTP_QUOTA_CTX_DECIDED;

    /* never run nginx request code from inside hiredis' callback loop */
    ngx_post_event(&ctx->wake, &ngx_posted_events);
}


static u_char *
ngx_http_quota_script_num(ngx_http_request_t *r, int64_t n, size_t *len)
{
    u_char  *p;

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN);
    if (p == NULL) {
        return NULL;
    }

    *len = ngx_sprintf(p, "%L", n) - p;

    return p;
}


/*
 * What tenants see: the quota_usage and quota_alerts content handlers
 * (SPEC section 7).  Both answer for the requesting tenant only (the
 * location's quota_tenant, hashed as configured), charge nothing, and make
 * one Redis round trip:
 *
 *   quota_usage    the charge script in report mode over every metric (so
 *                  plan, seats, anchor and custom limits are resolved by the
 *                  same code that enforces them), read only;
 *   quota_alerts   XREVRANGE of the tenant's alert stream, filtered and
 *                  paged here.
 *
 * The JSON is built with yajl inside the Redis callback (the reply is freed
 * right after it) and sent when the request wakes up.
 *
 * An endpoint request has its own context, ngx_http_quota_endpoint_ctx_t:
 * it is never the module's request ctx, so the metering code (header
 * filter, variables, log phase, wake and timeout handlers) never sees it,
 * and it has its own wake, timeout and cleanup.  Its Redis part is a
 * metering ctx in report mode, so quota_usage shares the charge script's
 * argv and reply decoding.
 *
 * One convention for answers: the content handlers and the functions they
 * call never finalize the request; they return what the content phase
 * finalizes (the status, or the output filter's result), or NGX_DONE after
 * suspending.  Only the wake and timeout handlers, which run outside the
 * content phase, finalize, once.
 */


#include "ngx_http_quota_module.h"

#include <yajl/yajl_gen.h>


#define ngx_http_quota_yajl_str(g, s)                                        \
    yajl_gen_string(g, (const unsigned char *) s, sizeof(s) - 1)

#define NGX_HTTP_QUOTA_ALERTS_MAX      100     /* per_page cap */
#define NGX_HTTP_QUOTA_ALERTS_READ     "2000"  /* the stream keeps ~1000 */


typedef struct {
    ngx_http_quota_ctx_t         quota;       /* first: the Redis part */
    ngx_str_t                    body;        /* built in the callback */
    ngx_uint_t                   status;
    ngx_http_quota_report_done_pt  done;      /* quota_live: the snapshot */
} ngx_http_quota_endpoint_ctx_t;


typedef struct {
    u_char      *date;          /* "YYYY-MM-DD", points into the reply */
    ngx_uint_t   metric;
    int64_t      units;
} ngx_http_quota_day_t;



static ngx_http_quota_endpoint_ctx_t *ngx_http_quota_endpoint_ctx(
    ngx_http_request_t *r);
static ngx_int_t ngx_http_quota_endpoint_start(ngx_http_request_t *r,
    ngx_http_quota_endpoint_ctx_t *ectx);
static ngx_int_t ngx_http_quota_endpoint_error(ngx_http_request_t *r,
    ngx_http_quota_endpoint_ctx_t *ectx, ngx_int_t status);
static ngx_int_t ngx_http_quota_challenge(ngx_http_request_t *r);
static ngx_int_t ngx_http_quota_endpoint_wait(ngx_http_request_t *r,
    ngx_http_quota_endpoint_ctx_t *ectx, ngx_uint_t sent);
static void ngx_http_quota_endpoint_wake(ngx_event_t *ev);
static void ngx_http_quota_endpoint_timeout(ngx_event_t *ev);
static void ngx_http_quota_endpoint_cleanup(void *data);
static ngx_int_t ngx_http_quota_usage_build(ngx_http_request_t *r,
    void *data, redisReply *reply);
static ngx_int_t ngx_http_quota_usage_render(ngx_http_request_t *r,
    ngx_http_quota_endpoint_ctx_t *ectx, ngx_http_quota_body_tpl_t *tpl,
    ngx_http_quota_report_t *rep);
static yajl_gen_status ngx_http_quota_usage_gen_account(ngx_http_request_t *r,
    yajl_gen g, ngx_http_quota_ctx_t *ctx, ngx_http_quota_report_t *rep);
static yajl_gen_status ngx_http_quota_usage_gen_metrics(ngx_http_request_t *r,
    yajl_gen g, ngx_http_quota_ctx_t *ctx, ngx_http_quota_report_t *rep);
static ngx_int_t ngx_http_quota_usage_daily(ngx_http_request_t *r,
    yajl_gen g, redisReply **e, size_t n);
static ngx_int_t ngx_http_quota_alerts_build(ngx_http_request_t *r,
    ngx_http_quota_endpoint_ctx_t *ectx, redisReply *reply);
static ngx_int_t ngx_http_quota_alert_decode(redisReply *entry,
    ngx_http_quota_alert_t *a);
static ngx_int_t ngx_http_quota_alert_match(redisReply *entry,
    ngx_str_t *type, ngx_http_quota_alert_t *a);
static ngx_int_t ngx_http_quota_alerts_render(ngx_http_request_t *r,
    ngx_http_quota_endpoint_ctx_t *ectx, redisReply *reply, ngx_str_t *type,
    ngx_uint_t page, ngx_uint_t per_page);
static yajl_gen_status ngx_http_quota_alert_gen(yajl_gen g,
    ngx_http_quota_alert_t *a);
static u_char *ngx_http_quota_alert_message(ngx_http_quota_alert_t *a,
    u_char *buf, size_t size);
static ngx_uint_t ngx_http_quota_str_is(ngx_str_t *s, const char *lit);
static void ngx_http_quota_endpoint_finish(ngx_http_request_t *r,
    ngx_http_quota_endpoint_ctx_t *ectx);
static void ngx_http_quota_alerts_reply(void *data, redisReply *reply);
static yajl_gen ngx_http_quota_gen_alloc(void);
static yajl_gen_status ngx_http_quota_gen_text(yajl_gen g, u_char *data,
    size_t len);
static void ngx_http_quota_gen_iso(yajl_gen g, int64_t t);
static void ngx_http_quota_gen_usd(yajl_gen g, int64_t micro);
static int ngx_libc_cdecl ngx_http_quota_day_cmp(const void *a,
    const void *b);
static ngx_uint_t ngx_http_quota_arg_uint(ngx_http_request_t *r,
    const char *name, size_t len, ngx_uint_t dflt);


/*
 * quota_usage, quota_alerts, quota_metrics: the content handler comes in
 * cmd->post; the location itself is never metered.
 */
char *
ngx_http_quota_endpoint_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_quota_loc_conf_t *qlcf = conf;

    ngx_http_core_loc_conf_t    *clcf;
    ngx_http_quota_main_conf_t  *qmcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler) {
        return "is duplicate, or the location has another content handler";
    }

    clcf->handler = (ngx_http_handler_pt) cmd->post;
    qlcf->endpoint = 1;

    qmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_quota_module);

    if (clcf->handler != ngx_http_quota_metrics_handler
        && qmcf->endpoint_line == 0)
    {
        qmcf->endpoint_name = cmd->name;
        qmcf->endpoint_file = cf->conf_file->file.name;
        qmcf->endpoint_line = cf->conf_file->line;
    }

    return NGX_CONF_OK;
}


/* the rule quota_usage runs the charge script with: every metric, cost 0 */
ngx_int_t
ngx_http_quota_report_rule(ngx_conf_t *cf, ngx_http_quota_main_conf_t *qmcf)
{
    ngx_uint_t              i;
    ngx_http_quota_rule_t  *rule;

    rule = &qmcf->report_rule;

    rule->ncharges = qmcf->metrics.nelts;
    rule->charges = ngx_pcalloc(cf->pool, (rule->ncharges + 1)
                                          * sizeof(ngx_http_quota_charge_t));
    if (rule->charges == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < rule->ncharges; i++) {
        rule->charges[i].metric = i;
    }

    ngx_str_set(&rule->template, "(quota_usage)");

    return NGX_OK;
}


/*
 * The endpoint's own ctx, in a pool cleanup that detaches a pending Redis
 * operation when the request goes away early.  It is deliberately not set
 * as the module ctx: an endpoint is never metered.
 */
static ngx_http_quota_endpoint_ctx_t *
ngx_http_quota_endpoint_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t             *cln;
    ngx_http_quota_ctx_t           *ctx;
    ngx_http_quota_endpoint_ctx_t  *ectx;

    cln = ngx_pool_cleanup_add(r->pool, sizeof(ngx_http_quota_endpoint_ctx_t));
    if (cln == NULL) {
        return NULL;
    }

    ectx = cln->data;
    ngx_memzero(ectx, sizeof(ngx_http_quota_endpoint_ctx_t));

    ctx = &ectx->quota;
    ctx->request = r;
    ctx->state = NGX_HTTP_QUOTA_CTX_FINISHED;

    ctx->timeout.handler = ngx_http_quota_endpoint_timeout;
    ctx->timeout.data = ectx;
    ctx->timeout.log = r->connection->log;

    ctx->wake.handler = ngx_http_quota_endpoint_wake;
    ctx->wake.data = ectx;
    ctx->wake.log = r->connection->log;

    cln->handler = ngx_http_quota_endpoint_cleanup;

    return ectx;
}


/*
 * The method and the tenant: NGX_OK when the request goes on to Redis,
 * else the status to answer with.  Sends nothing.
 */
static ngx_int_t
ngx_http_quota_endpoint_start(ngx_http_request_t *r,
    ngx_http_quota_endpoint_ctx_t *ectx)
{
    ngx_int_t                   rc;
    ngx_str_t                   value;
    ngx_http_quota_loc_conf_t  *qlcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    qlcf = ngx_http_get_module_loc_conf(r, ngx_http_quota_module);

    value.len = 0;

    if (qlcf->tenant
        && ngx_http_complex_value(r, qlcf->tenant, &value) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (value.len == 0) {
        return NGX_HTTP_UNAUTHORIZED;
    }

    rc = ngx_http_quota_tenant_id(r, qlcf, &value, &ectx->quota.tenant);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_DECLINED) {
        return NGX_HTTP_BAD_REQUEST;
    }

    return NGX_OK;
}


/* 405, 401, 400 as JSON; what the content phase finalizes */
static ngx_int_t
ngx_http_quota_endpoint_error(ngx_http_request_t *r,
    ngx_http_quota_endpoint_ctx_t *ectx, ngx_int_t status)
{
    ngx_str_t                body;
    ngx_uint_t               code;
    ngx_table_elt_t         *allow;
    ngx_http_quota_error_e   error;

    static ngx_str_t  allow_name = ngx_string("Allow");

    switch (status) {

    case NGX_HTTP_NOT_ALLOWED:
        allow = ngx_http_quota_push_header(r, &allow_name);
        if (allow == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_str_set(&allow->value, "GET, HEAD");
        error = NGX_HTTP_QUOTA_ERROR_METHOD;
        break;

    case NGX_HTTP_UNAUTHORIZED:
        if (ngx_http_quota_challenge(r) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        error = NGX_HTTP_QUOTA_ERROR_MISSING_TENANT;
        break;

    case NGX_HTTP_BAD_REQUEST:
        error = NGX_HTTP_QUOTA_ERROR_BAD_TENANT;
        break;

    default:
        /* 500, or what discarding the body answered: nginx's own page */
        return status;
    }

    code = status;

    if (ngx_http_quota_error_body(r, &ectx->quota, error, &code, &body)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_quota_send_json(r, code, &body);
}


/* quota_live refuses before any upgrade with the endpoints' answers */
ngx_int_t
ngx_http_quota_endpoint_refuse(ngx_http_request_t *r, ngx_int_t status)
{
    ngx_http_quota_endpoint_ctx_t  *ectx;

    ectx = ngx_http_quota_endpoint_ctx(r);
    if (ectx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_quota_endpoint_error(r, ectx, status);
}


/*
 * RFC 9110 15.5.2: a 401 carries a challenge.  The tenant is an API key
 * sent in a header, for which no scheme is registered; like other API
 * gateways we name one, "ApiKey", with the header to send it in
 * (quota_apikey_header): WWW-Authenticate: ApiKey realm="quota",
 * header="X-API-Key".
 */
static ngx_int_t
ngx_http_quota_challenge(ngx_http_request_t *r)
{
    u_char                     *p;
    size_t                      len;
    ngx_table_elt_t            *h;
    ngx_http_quota_loc_conf_t  *qlcf;

    static ngx_str_t  name = ngx_string("WWW-Authenticate");

    qlcf = ngx_http_get_module_loc_conf(r, ngx_http_quota_module);

    len = sizeof("ApiKey realm=\"quota\", header=\"\"") - 1
          + qlcf->apikey_header.len;

    p = ngx_pnalloc(r->pool, len);
    h = ngx_http_quota_push_header(r, &name);

    if (p == NULL || h == NULL) {
        return NGX_ERROR;
    }

    h->value.data = p;
    h->value.len = ngx_sprintf(p, "ApiKey realm=\"quota\", header=\"%V\"",
                               &qlcf->apikey_header)
                   - p;

    return NGX_OK;
}


ngx_int_t
ngx_http_quota_usage_handler(ngx_http_request_t *r)
{
    ngx_int_t                       rc;
    ngx_str_t                       daily;
    ngx_http_quota_ctx_t           *ctx;
    ngx_http_quota_endpoint_ctx_t  *ectx;
    ngx_http_quota_loc_conf_t      *qlcf;
    ngx_http_quota_main_conf_t     *qmcf;

    ectx = ngx_http_quota_endpoint_ctx(r);
    if (ectx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_quota_endpoint_start(r, ectx);
    if (rc != NGX_OK) {
        return ngx_http_quota_endpoint_error(r, ectx, rc);
    }

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);

    ctx = &ectx->quota;
    ctx->rule = &qmcf->report_rule;
    ctx->ncharges = qmcf->report_rule.ncharges;
    ctx->report = 1;
    ctx->build = ngx_http_quota_usage_build;

    qlcf = ngx_http_get_module_loc_conf(r, ngx_http_quota_module);

    if ((qlcf->usage_body && qlcf->usage_body->daily)
        || (ngx_http_arg(r, (u_char *) "daily", 5, &daily) == NGX_OK
            && daily.len && !(daily.len == 1 && daily.data[0] == '0')))
    {
        ctx->report = 2;
    }

    rc = ngx_http_quota_script_charge(r, ctx);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_quota_endpoint_wait(r, ectx, rc == NGX_OK);
}


/*
 * quota_live's snapshot: the same report for a tenant the caller already
 * identified; "done" gets the status and the JSON instead of the client,
 * and finalizes the request itself.  Returns NGX_DONE (done will run, unless
 * the request goes away first), or what the content phase finalizes (503
 * when no Redis connection is ready, already sent).
 */
ngx_int_t
ngx_http_quota_usage_report(ngx_http_request_t *r, ngx_str_t *tenant,
    ngx_http_quota_report_done_pt done)
{
    ngx_int_t                       rc;
    ngx_http_quota_ctx_t           *ctx;
    ngx_http_quota_endpoint_ctx_t  *ectx;
    ngx_http_quota_main_conf_t     *qmcf;

    ectx = ngx_http_quota_endpoint_ctx(r);
    if (ectx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);

    ectx->done = done;

    ctx = &ectx->quota;
    ctx->tenant = *tenant;
    ctx->rule = &qmcf->report_rule;
    ctx->ncharges = qmcf->report_rule.ncharges;
    ctx->report = 1;
    ctx->build = ngx_http_quota_usage_build;

    rc = ngx_http_quota_script_charge(r, ctx);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_quota_endpoint_wait(r, ectx, rc == NGX_OK);
}


/*
 * The report: the charge script's reply (decoded into ctx already), then
 * status, seats, overage, cap, overage cost, k overage units [, daily].
 */
static ngx_int_t
ngx_http_quota_usage_build(ngx_http_request_t *r, void *data,
    redisReply *reply)
{
    ngx_http_quota_ctx_t  *ctx = data;

    ngx_http_quota_endpoint_ctx_t  *ectx = data;   /* ctx is its first field */

    yajl_gen                    g;
    yajl_gen_status             s;
    ngx_http_quota_report_t     rep;
    ngx_http_quota_loc_conf_t  *qlcf;

    if (ctx->code == NGX_HTTP_QUOTA_CODE_UNKNOWN) {
        ectx->status = NGX_HTTP_FORBIDDEN;
        return ngx_http_quota_error_body(r, ctx,
                                         NGX_HTTP_QUOTA_ERROR_UNKNOWN_TENANT,
                                         &ectx->status, &ectx->body);
    }

    if (ngx_http_quota_report_decode(r, ctx, reply, &rep) != NGX_OK) {
        return NGX_ERROR;
    }

    qlcf = ngx_http_get_module_loc_conf(r, ngx_http_quota_module);

    if (qlcf->usage_body) {
        return ngx_http_quota_usage_render(r, ectx, qlcf->usage_body, &rep);
    }

    g = ngx_http_quota_gen_alloc();
    if (g == NULL) {
        return NGX_ERROR;
    }

    s = yajl_gen_map_open(g);
    s |= ngx_http_quota_usage_gen_account(r, g, ctx, &rep);
    s |= ngx_http_quota_usage_gen_metrics(r, g, ctx, &rep);

    if (rep.daily) {
        s |= ngx_http_quota_yajl_str(g, "daily");

        if (ngx_http_quota_usage_daily(r, g, rep.daily, rep.ndaily)
            != NGX_OK)
        {
            yajl_gen_free(g);
            return NGX_ERROR;
        }
    }

    s |= yajl_gen_map_close(g);

    if (s != yajl_gen_status_ok) {
        yajl_gen_free(g);
        return NGX_ERROR;
    }

    ectx->status = NGX_HTTP_OK;

    return ngx_http_quota_gen_body(r, g, &ectx->body);
}


/* quota_usage_body: rendered while the reply (the daily tail) is alive */
static ngx_int_t
ngx_http_quota_usage_render(ngx_http_request_t *r,
    ngx_http_quota_endpoint_ctx_t *ectx, ngx_http_quota_body_tpl_t *tpl,
    ngx_http_quota_report_t *rep)
{
    ngx_int_t              rc;
    ngx_http_quota_view_t  view;

    ngx_memzero(&view, sizeof(ngx_http_quota_view_t));
    view.ctx = &ectx->quota;
    view.report = rep;

    rc = ngx_http_quota_render(r, tpl, &view, &ectx->body);

    if (rc == NGX_DECLINED) {
        ectx->status = NGX_HTTP_INTERNAL_SERVER_ERROR;
        ectx->body = ngx_http_quota_template_error_body;
        return NGX_OK;
    }

    ectx->status = NGX_HTTP_OK;

    return rc;
}


/* the report tail, every element type-checked (quota_live_body too) */
ngx_int_t
ngx_http_quota_report_decode(ngx_http_request_t *r, ngx_http_quota_ctx_t *ctx,
    redisReply *reply, ngx_http_quota_report_t *rep)
{
    size_t                       base, end, i, k;
    redisReply                 **e;
    ngx_http_quota_main_conf_t  *qmcf;

    k = ctx->ncharges;

    /* the REPORT_* tail of src/lua/protocol.def: e[base + OFF] */
    e = reply->element;
    base = NGX_HTTP_QUOTA_REPLY_METRICS - 1
           + k * NGX_HTTP_QUOTA_REPLY_METRIC_ELTS;
    end = base + NGX_HTTP_QUOTA_REPORT_UNITS_OFF + k;

    /* status (string), seats, overage, cap, cost, k overage units */
    if (reply->elements < end
        || e[base + NGX_HTTP_QUOTA_REPORT_STATUS_OFF]->type
           != REDIS_REPLY_STRING)
    {
        return NGX_ERROR;
    }

    for (i = base; i < end; i++) {
        if (i != base + NGX_HTTP_QUOTA_REPORT_STATUS_OFF
            && e[i]->type != REDIS_REPLY_INTEGER)
        {
            return NGX_ERROR;
        }
    }

    rep->status.data = (u_char *) e[base + NGX_HTTP_QUOTA_REPORT_STATUS_OFF]
                                  ->str;
    rep->status.len = e[base + NGX_HTTP_QUOTA_REPORT_STATUS_OFF]->len;
    rep->seats = e[base + NGX_HTTP_QUOTA_REPORT_SEATS_OFF]->integer;
    rep->overage = (e[base + NGX_HTTP_QUOTA_REPORT_OVERAGE_OFF]->integer == 1);
    rep->cap = e[base + NGX_HTTP_QUOTA_REPORT_CAP_OFF]->integer;
    rep->cost = e[base + NGX_HTTP_QUOTA_REPORT_COST_OFF]->integer;
    rep->units = &e[base + NGX_HTTP_QUOTA_REPORT_UNITS_OFF];
    rep->daily = NULL;
    rep->ndaily = 0;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);

    rep->plan = (ctx->plan > 0 && ctx->plan <= qmcf->plans.nelts)
                ? (ngx_http_quota_plan_t *) qmcf->plans.elts + ctx->plan - 1
                : NULL;

    if (ctx->report != 2) {
        return NGX_OK;
    }

    /* ?daily=1: N, then N pairs "METRIC:YYYY-MM-DD", units */
    base = end;

    if (reply->elements <= base || e[base]->type != REDIS_REPLY_INTEGER
        || e[base]->integer < 0
        || (size_t) e[base]->integer != (reply->elements - base - 1) / 2
        || reply->elements != base + 1 + 2 * (size_t) e[base]->integer)
    {
        return NGX_ERROR;
    }

    rep->ndaily = (size_t) e[base]->integer;
    rep->daily = &e[base + 1];

    return NGX_OK;
}


/* tenant, plan, status, seats, period, approaching, overage, cap */
static yajl_gen_status
ngx_http_quota_usage_gen_account(ngx_http_request_t *r, yajl_gen g,
    ngx_http_quota_ctx_t *ctx, ngx_http_quota_report_t *rep)
{
    int64_t          projected;
    yajl_gen_status  s;

    s = ngx_http_quota_yajl_str(g, "tenant_id");
    s |= yajl_gen_string(g, ctx->tenant.data, ctx->tenant.len);
    s |= ngx_http_quota_yajl_str(g, "plan");
    s |= rep->plan ? yajl_gen_string(g, rep->plan->name.data,
                                     rep->plan->name.len)
                   : yajl_gen_null(g);

    s |= ngx_http_quota_yajl_str(g, "status");
    s |= rep->status.len ? ngx_http_quota_gen_text(g, rep->status.data,
                                                   rep->status.len)
                         : ngx_http_quota_yajl_str(g, "active");

    s |= ngx_http_quota_yajl_str(g, "seats");
    s |= yajl_gen_integer(g, rep->seats);
    s |= ngx_http_quota_yajl_str(g, "period_start");
    ngx_http_quota_gen_iso(g, ctx->billing.start);
    s |= ngx_http_quota_yajl_str(g, "period_end");
    ngx_http_quota_gen_iso(g, ctx->billing.end - 1);
    s |= ngx_http_quota_yajl_str(g, "quota_reset_date");
    ngx_http_quota_gen_iso(g, ctx->billing.end);

    s |= ngx_http_quota_yajl_str(g, "approaching_limit");
    s |= yajl_gen_bool(g, ngx_http_quota_report_approaching(r, ctx));
    s |= ngx_http_quota_yajl_str(g, "overage_enabled");
    s |= yajl_gen_bool(g, rep->overage);
    s |= ngx_http_quota_yajl_str(g, "spending_cap");

    if (rep->cap >= 0) {
        ngx_http_quota_gen_usd(g, rep->cap);
    } else {
        s |= yajl_gen_null(g);
    }

    projected = rep->overage ? ngx_http_quota_report_projected(r, ctx, rep)
                             : 0;

    s |= ngx_http_quota_yajl_str(g, "projected_overage");
    ngx_http_quota_gen_usd(g, projected);

    return s;
}


/* "metrics": {NAME: {used, limit, remaining, overage}, ...} */
static yajl_gen_status
ngx_http_quota_usage_gen_metrics(ngx_http_request_t *r, yajl_gen g,
    ngx_http_quota_ctx_t *ctx, ngx_http_quota_report_t *rep)
{
    int64_t                      lim, used;
    ngx_uint_t                   i;
    yajl_gen_status              s;
    ngx_http_quota_metric_t     *metrics;
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    metrics = qmcf->metrics.elts;

    s = ngx_http_quota_yajl_str(g, "metrics");
    s |= yajl_gen_map_open(g);

    for (i = 0; i < ctx->ncharges; i++) {
        lim = ctx->limit[i];
        used = ctx->used[i];

        s |= yajl_gen_string(g, metrics[i].name.data, metrics[i].name.len);
        s |= yajl_gen_map_open(g);
        s |= ngx_http_quota_yajl_str(g, "used");
        s |= yajl_gen_integer(g, used);
        s |= ngx_http_quota_yajl_str(g, "limit");
        s |= lim >= 0 ? yajl_gen_integer(g, lim) : yajl_gen_null(g);
        s |= ngx_http_quota_yajl_str(g, "remaining");
        s |= lim >= 0 ? yajl_gen_integer(g, lim > used ? lim - used : 0)
                      : yajl_gen_null(g);
        s |= ngx_http_quota_yajl_str(g, "overage");
        s |= yajl_gen_integer(g, rep->units[i]->integer);
        s |= yajl_gen_map_close(g);
    }

    s |= yajl_gen_map_close(g);

    return s;
}


/* some metric at or past the warning threshold */
ngx_uint_t
ngx_http_quota_report_approaching(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx)
{
    ngx_uint_t                  i;
    ngx_http_quota_loc_conf_t  *qlcf;

    qlcf = ngx_http_get_module_loc_conf(r, ngx_http_quota_module);

    for (i = 0; i < ctx->ncharges; i++) {
        if (ctx->limit[i] > 0
            && ngx_http_quota_percent(ctx->used[i], ctx->limit[i])
               >= (int64_t) qlcf->warning_threshold)
        {
            return 1;
        }
    }

    return 0;
}


/*
 * Projected overage (micro-USD): this period's usage of each month metric
 * extrapolated linearly to the period's end, priced past the limit; at
 * least what has been spent, at most the cap.
 */
int64_t
ngx_http_quota_report_projected(ngx_http_request_t *r,
    ngx_http_quota_ctx_t *ctx, ngx_http_quota_report_t *rep)
{
    double                          over, total;
    int64_t                         projected, elapsed, length, lim;
    ngx_uint_t                      i, m;
    ngx_http_quota_metric_t        *metrics;
    ngx_http_quota_plan_metric_t   *pm;
    ngx_http_quota_main_conf_t     *qmcf;

    if (rep->plan == NULL) {
        return rep->cost;
    }

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    metrics = qmcf->metrics.elts;

    elapsed = ngx_time() - ctx->billing.start;
    length = ctx->billing.end - ctx->billing.start;

    if (elapsed < 1) {
        elapsed = 1;
    }

    total = 0;
    pm = rep->plan->metrics.elts;

    for (m = 0; m < rep->plan->metrics.nelts; m++) {
        i = pm[m].metric;
        lim = ctx->limit[i];

        if (pm[m].price < 0 || lim < 0 || i >= ctx->ncharges
            || metrics[i].period != NGX_HTTP_QUOTA_PERIOD_MONTH)
        {
            continue;
        }

        /* in double: units x seconds x micro-USD can pass 2^63 */
        over = (double) ctx->used[i] * length / elapsed - lim;

        if (over > 0) {
            total += over * pm[m].price;
        }
    }

    projected = total < 1e18 ? (int64_t) total : (int64_t) 1e18;

    if (rep->cap >= 0 && projected > rep->cap) {
        projected = rep->cap;
    }

    return projected < rep->cost ? rep->cost : projected;
}


/* "METRIC:YYYY-MM-DD" -> units, as [{"date", "METRIC": units, ...}] by date */
static ngx_int_t
ngx_http_quota_usage_daily(ngx_http_request_t *r, yajl_gen g, redisReply **e,
    size_t n)
{
    u_char                      *colon;
    ngx_str_t                    name;
    ngx_int_t                    metric;
    ngx_uint_t                   i, nd;
    ngx_http_quota_day_t        *days;
    ngx_http_quota_metric_t     *metrics;
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    metrics = qmcf->metrics.elts;

    days = ngx_palloc(r->pool, (n + 1) * sizeof(ngx_http_quota_day_t));
    if (days == NULL) {
        return NGX_ERROR;
    }

    nd = 0;

    for (i = 0; i < n; i++) {
        if (e[2 * i]->type != REDIS_REPLY_STRING
            || e[2 * i + 1]->type != REDIS_REPLY_STRING
            || e[2 * i]->len < QUOTA_DATE_LEN + 2)
        {
            continue;
        }

        colon = (u_char *) e[2 * i]->str + e[2 * i]->len - QUOTA_DATE_LEN - 1;

        if (*colon != ':' || !ngx_http_quota_is_date(colon + 1)) {
            continue;
        }

        name.data = (u_char *) e[2 * i]->str;
        name.len = colon - name.data;

        metric = ngx_http_quota_metric_index(qmcf, &name);
        if (metric == NGX_ERROR) {
            continue;       /* a metric no longer declared */
        }

        days[nd].date = colon + 1;
        days[nd].metric = metric;
        days[nd].units = ngx_atoof((u_char *) e[2 * i + 1]->str,
                                   e[2 * i + 1]->len);
        nd++;
    }

    ngx_qsort(days, nd, sizeof(ngx_http_quota_day_t), ngx_http_quota_day_cmp);

    yajl_gen_array_open(g);

    for (i = 0; i < nd; i++) {
        if (i == 0 || ngx_memcmp(days[i].date, days[i - 1].date,
                                 QUOTA_DATE_LEN) != 0)
        {
            if (i) {
                yajl_gen_map_close(g);
            }

            yajl_gen_map_open(g);
            ngx_http_quota_yajl_str(g, "date");
            yajl_gen_string(g, days[i].date, QUOTA_DATE_LEN);
        }

        yajl_gen_string(g, metrics[days[i].metric].name.data,
                        metrics[days[i].metric].name.len);
        yajl_gen_integer(g, days[i].units < 0 ? 0 : days[i].units);
    }

    if (nd) {
        yajl_gen_map_close(g);
    }

    yajl_gen_array_close(g);

    return NGX_OK;
}


/* "YYYY-MM-DD" as the script writes it: digits and dashes only */
ngx_uint_t
ngx_http_quota_is_date(u_char *p)
{
    ngx_uint_t  i;

    for (i = 0; i < QUOTA_DATE_LEN; i++) {
        if (i == 4 || i == 7 ? p[i] != '-' : (p[i] < '0' || p[i] > '9')) {
            return 0;
        }
    }

    return 1;
}


static int ngx_libc_cdecl
ngx_http_quota_day_cmp(const void *a, const void *b)
{
    const ngx_http_quota_day_t  *x = a, *y = b;
    ngx_int_t                    c;

    c = ngx_memcmp(x->date, y->date, QUOTA_DATE_LEN);

    if (c == 0) {
        return (int) x->metric - (int) y->metric;
    }

    return (int) c;
}


ngx_int_t
ngx_http_quota_alerts_handler(ngx_http_request_t *r)
{
    ngx_int_t                       rc;
    size_t                          argvlen[6];
    const char                     *argv[6];
    ngx_http_quota_ctx_t           *ctx;
    ngx_http_quota_endpoint_ctx_t  *ectx;
    ngx_http_quota_main_conf_t     *qmcf;

    ectx = ngx_http_quota_endpoint_ctx(r);
    if (ectx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_quota_endpoint_start(r, ectx);
    if (rc != NGX_OK) {
        return ngx_http_quota_endpoint_error(r, ectx, rc);
    }

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    ctx = &ectx->quota;

    argv[0] = "XREVRANGE";
    argvlen[0] = 9;
    argv[1] = (const char *) ngx_http_quota_key(r->pool, &qmcf->prefix,
                                                &ctx->tenant, "alerts", 6,
                                                NULL, 0, &argvlen[1]);
    argv[2] = "+";
    argvlen[2] = 1;
    argv[3] = "-";
    argvlen[3] = 1;
    argv[4] = "COUNT";
    argvlen[4] = 5;
    argv[5] = NGX_HTTP_QUOTA_ALERTS_READ;
    argvlen[5] = sizeof(NGX_HTTP_QUOTA_ALERTS_READ) - 1;

    if (argv[1] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->op = ngx_http_quota_redis_send(qmcf, 6, argv, argvlen,
                                        ngx_http_quota_alerts_reply, ectx);

    return ngx_http_quota_endpoint_wait(r, ectx, ctx->op != NULL);
}


/*
 * Sent: wait for Redis (NGX_DONE; the wake or timeout handler finalizes).
 * Not sent (no connection): 503 at once, finalized by the content phase.
 */
static ngx_int_t
ngx_http_quota_endpoint_wait(ngx_http_request_t *r,
    ngx_http_quota_endpoint_ctx_t *ectx, ngx_uint_t sent)
{
    ngx_str_t   body;
    ngx_uint_t  status;

    if (sent) {
        ngx_http_quota_suspend(r, &ectx->quota);
        return NGX_DONE;
    }

    status = NGX_HTTP_SERVICE_UNAVAILABLE;

    if (ngx_http_quota_error_body(r, &ectx->quota,
                                  NGX_HTTP_QUOTA_ERROR_UNAVAILABLE, &status,
                                  &body)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_quota_send_json(r, status, &body);
}


/*
 * The reply is in (or Redis failed, or the timeout fired): the content
 * handler returned NGX_DONE, so the request is finalized here, once.
 */
static void
ngx_http_quota_endpoint_finish(ngx_http_request_t *r,
    ngx_http_quota_endpoint_ctx_t *ectx)
{
    ngx_int_t  rc;

    ectx->quota.state = NGX_HTTP_QUOTA_CTX_FINISHED;

    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_request_empty_handler;

    if (ectx->quota.redis_failed || ectx->body.data == NULL) {
        ectx->status = NGX_HTTP_SERVICE_UNAVAILABLE;

        if (ngx_http_quota_error_body(r, &ectx->quota,
                                      NGX_HTTP_QUOTA_ERROR_UNAVAILABLE,
                                      &ectx->status, &ectx->body)
            != NGX_OK)
        {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
            return;
        }
    }

    if (ectx->done) {
        ectx->done(r, ectx->status, &ectx->body);
        return;
    }

    rc = ngx_http_quota_send_json(r, ectx->status, &ectx->body);

    ngx_http_finalize_request(r, rc);
}


static void
ngx_http_quota_endpoint_wake(ngx_event_t *ev)
{
    ngx_connection_t               *c;
    ngx_http_request_t             *r;
    ngx_http_quota_endpoint_ctx_t  *ectx;

    ectx = ev->data;
    r = ectx->quota.request;
    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    ngx_http_quota_endpoint_finish(r, ectx);
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_quota_endpoint_timeout(ngx_event_t *ev)
{
    ngx_http_quota_endpoint_ctx_t  *ectx;
    ngx_http_quota_main_conf_t     *qmcf;

    ectx = ev->data;

    qmcf = ngx_http_get_module_main_conf(ectx->quota.request,
                                         ngx_http_quota_module);

    ngx_log_error(NGX_LOG_ERR, ev->log, 0,
                  "quota: redis did not answer within %Mms",
                  qmcf->redis_timeout);

    ngx_http_quota_count(qmcf, errors[NGX_HTTP_QUOTA_ERR_TIMEOUT]);

    /* read only: its reply, if it comes, is dropped */
    if (ectx->quota.op) {
        ngx_http_quota_redis_timed_out(ectx->quota.op);
        ectx->quota.op = NULL;
    }

    ectx->quota.redis_failed = 1;

    ngx_http_quota_endpoint_wake(&ectx->quota.wake);
}


/* the request is being freed, whatever the reason */
static void
ngx_http_quota_endpoint_cleanup(void *data)
{
    ngx_http_quota_endpoint_ctx_t  *ectx = data;

    if (ectx->quota.op) {
        ngx_http_quota_redis_detach(ectx->quota.op);
        ectx->quota.op = NULL;
    }

    if (ectx->quota.timeout.timer_set) {
        ngx_del_timer(&ectx->quota.timeout);
    }

    if (ectx->quota.wake.posted) {
        ngx_delete_posted_event(&ectx->quota.wake);
    }
}


static void
ngx_http_quota_alerts_reply(void *data, redisReply *reply)
{
    ngx_http_quota_endpoint_ctx_t  *ectx = data;

    ngx_http_request_t  *r;

    r = ectx->quota.request;
    ectx->quota.op = NULL;

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR
        || ngx_http_quota_alerts_build(r, ectx, reply) != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "quota: alerts not read from redis%s%*s",
                      reply && reply->type == REDIS_REPLY_ERROR ? ": " : "",
                      reply && reply->type == REDIS_REPLY_ERROR
                      ? (size_t) reply->len : (size_t) 0,
                      reply && reply->type == REDIS_REPLY_ERROR
                      ? reply->str : "");
        ectx->quota.redis_failed = 1;
    }

    ngx_http_quota_reply_done(&ectx->quota);
}


/*
 * XREVRANGE: [[id, [field, value, ...]], ...], newest first.  Filter by
 * ?type=, count them all for "total", and keep one page.
 */
static ngx_int_t
ngx_http_quota_alerts_build(ngx_http_request_t *r,
    ngx_http_quota_endpoint_ctx_t *ectx, redisReply *reply)
{
    yajl_gen                    g;
    ngx_str_t                   type;
    ngx_uint_t                  i, page, per_page, total, first, last;
    yajl_gen_status             s;
    ngx_http_quota_alert_t      alert;
    ngx_http_quota_loc_conf_t  *qlcf;

    if (reply->type != REDIS_REPLY_ARRAY) {
        return NGX_ERROR;
    }

    page = ngx_http_quota_arg_uint(r, "page", 4, 1);
    per_page = ngx_http_quota_arg_uint(r, "per_page", 8, 20);

    page = ngx_max(page, 1);
    per_page = ngx_min(ngx_max(per_page, 1), NGX_HTTP_QUOTA_ALERTS_MAX);

    if (ngx_http_arg(r, (u_char *) "type", 4, &type) != NGX_OK) {
        type.len = 0;
    }

    first = (page - 1) * per_page;
    last = first + per_page;
    total = 0;

    qlcf = ngx_http_get_module_loc_conf(r, ngx_http_quota_module);

    if (qlcf->alerts_item) {
        return ngx_http_quota_alerts_render(r, ectx, reply, &type, page,
                                            per_page);
    }

    g = ngx_http_quota_gen_alloc();
    if (g == NULL) {
        return NGX_ERROR;
    }

    s = yajl_gen_map_open(g);
    s |= ngx_http_quota_yajl_str(g, "alerts");
    s |= yajl_gen_array_open(g);

    for (i = 0; i < reply->elements; i++) {

        if (ngx_http_quota_alert_match(reply->element[i], &type, &alert)
            != NGX_OK)
        {
            continue;
        }

        if (total++ < first || total > last) {
            continue;
        }

        s |= ngx_http_quota_alert_gen(g, &alert);
    }

    s |= yajl_gen_array_close(g);
    s |= ngx_http_quota_yajl_str(g, "total");
    s |= yajl_gen_integer(g, total);
    s |= ngx_http_quota_yajl_str(g, "page");
    s |= yajl_gen_integer(g, page);
    s |= ngx_http_quota_yajl_str(g, "per_page");
    s |= yajl_gen_integer(g, per_page);
    s |= yajl_gen_map_close(g);

    if (s != yajl_gen_status_ok) {
        yajl_gen_free(g);
        return NGX_ERROR;
    }

    ectx->status = NGX_HTTP_OK;

    return ngx_http_quota_gen_body(r, g, &ectx->body);
}


/* decoded, and of the ?type= asked for */
static ngx_int_t
ngx_http_quota_alert_match(redisReply *entry, ngx_str_t *type,
    ngx_http_quota_alert_t *a)
{
    if (ngx_http_quota_alert_decode(entry, a) != NGX_OK
        || (type->len && (type->len != a->kind.len
                          || ngx_strncmp(type->data, a->kind.data,
                                         type->len) != 0)))
    {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/*
 * quota_alerts_item: each alert of the page rendered by the template,
 * in the default envelope.  One invalid item makes the answer a 500.
 */
static ngx_int_t
ngx_http_quota_alerts_render(ngx_http_request_t *r,
    ngx_http_quota_endpoint_ctx_t *ectx, redisReply *reply, ngx_str_t *type,
    ngx_uint_t page, ngx_uint_t per_page)
{
    u_char                     *p, message[NGX_MAX_ERROR_STR];
    ngx_int_t                   rc;
    ngx_str_t                  *item;
    ngx_uint_t                  i, total, first;
    ngx_array_t                *items;
    ngx_http_quota_view_t       view;
    ngx_http_quota_alert_t      alert;
    ngx_http_quota_loc_conf_t  *qlcf;

    qlcf = ngx_http_get_module_loc_conf(r, ngx_http_quota_module);

    items = ngx_array_create(r->pool, per_page, sizeof(ngx_str_t));
    if (items == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(&view, sizeof(ngx_http_quota_view_t));
    view.ctx = &ectx->quota;
    view.alert = &alert;

    first = (page - 1) * per_page;
    total = 0;

    for (i = 0; i < reply->elements; i++) {

        if (ngx_http_quota_alert_match(reply->element[i], type, &alert)
            != NGX_OK
            || total++ < first || total > first + per_page)
        {
            continue;
        }

        p = ngx_http_quota_alert_message(&alert, message, sizeof(message));
        alert.message.data = message;
        alert.message.len = p - message;

        item = ngx_array_push(items);
        if (item == NULL) {
            return NGX_ERROR;
        }

        rc = ngx_http_quota_render(r, qlcf->alerts_item, &view, item);

        if (rc == NGX_DECLINED) {
            ectx->status = NGX_HTTP_INTERNAL_SERVER_ERROR;
            ectx->body = ngx_http_quota_template_error_body;
            return NGX_OK;
        }

        if (rc != NGX_OK) {
            return NGX_ERROR;
        }
    }

    ectx->status = NGX_HTTP_OK;

    return ngx_http_quota_alerts_envelope(r, items, total, page, per_page,
                                          &ectx->body);
}


/* one stream entry [id, [field, value, ...]]; NGX_DECLINED: not an alert */
static ngx_int_t
ngx_http_quota_alert_decode(redisReply *entry, ngx_http_quota_alert_t *a)
{
    ngx_str_t    f, v;
    ngx_uint_t   j;
    redisReply  *kv;

    if (entry->type != REDIS_REPLY_ARRAY || entry->elements != 2
        || entry->element[0]->type != REDIS_REPLY_STRING
        || entry->element[1]->type != REDIS_REPLY_ARRAY)
    {
        return NGX_DECLINED;
    }

    a->id.data = (u_char *) entry->element[0]->str;
    a->id.len = entry->element[0]->len;
    ngx_str_null(&a->kind);
    ngx_str_null(&a->metric);
    ngx_str_null(&a->at);
    a->used = 0;
    a->limit = -1;

    kv = entry->element[1];

    for (j = 0; j + 1 < kv->elements; j += 2) {
        if (kv->element[j]->type != REDIS_REPLY_STRING
            || kv->element[j + 1]->type != REDIS_REPLY_STRING)
        {
            continue;
        }

        f.data = (u_char *) kv->element[j]->str;
        f.len = kv->element[j]->len;
        v.data = (u_char *) kv->element[j + 1]->str;
        v.len = kv->element[j + 1]->len;

        if (f.len == 4 && ngx_strncmp(f.data, "type", 4) == 0) {
            a->kind = v;

        } else if (f.len == 6 && ngx_strncmp(f.data, "metric", 6) == 0) {
            a->metric = v;

        } else if (f.len == 4 && ngx_strncmp(f.data, "used", 4) == 0) {
            a->used = ngx_atoof(v.data, v.len);

        } else if (f.len == 5 && ngx_strncmp(f.data, "limit", 5) == 0) {
            a->limit = (v.len && v.data[0] == '-') ? -1
                                                   : ngx_atoof(v.data, v.len);

        } else if (f.len == 2 && ngx_strncmp(f.data, "at", 2) == 0) {
            a->at = v;
        }
    }

    return a->kind.len ? NGX_OK : NGX_DECLINED;
}


/* {"alert_id", "type", "metric", "message", "used", "limit", ...} */
static yajl_gen_status
ngx_http_quota_alert_gen(yajl_gen g, ngx_http_quota_alert_t *a)
{
    u_char           *p, message[NGX_MAX_ERROR_STR];
    yajl_gen_status   s;

    p = ngx_http_quota_alert_message(a, message, sizeof(message));

    s = yajl_gen_map_open(g);
    s |= ngx_http_quota_yajl_str(g, "alert_id");
    s |= ngx_http_quota_gen_text(g, a->id.data, a->id.len);
    s |= ngx_http_quota_yajl_str(g, "type");
    s |= ngx_http_quota_gen_text(g, a->kind.data, a->kind.len);
    s |= ngx_http_quota_yajl_str(g, "metric");
    s |= a->metric.len ? ngx_http_quota_gen_text(g, a->metric.data,
                                                 a->metric.len)
                       : yajl_gen_null(g);
    s |= ngx_http_quota_yajl_str(g, "message");
    s |= ngx_http_quota_gen_text(g, message, p - message);
    s |= ngx_http_quota_yajl_str(g, "used");
    s |= yajl_gen_integer(g, a->used);
    s |= ngx_http_quota_yajl_str(g, "limit");
    s |= a->limit >= 0 ? yajl_gen_integer(g, a->limit) : yajl_gen_null(g);
    s |= ngx_http_quota_yajl_str(g, "triggered_at");
    s |= a->at.len ? ngx_http_quota_gen_text(g, a->at.data, a->at.len)
                   : yajl_gen_null(g);
    s |= yajl_gen_map_close(g);

    return s;
}


static ngx_uint_t
ngx_http_quota_str_is(ngx_str_t *s, const char *lit)
{
    size_t  len;

    len = ngx_strlen(lit);

    return s->len == len && ngx_strncmp(s->data, lit, len) == 0;
}


/* the human-readable message of an alert kind; returns its end */
static u_char *
ngx_http_quota_alert_message(ngx_http_quota_alert_t *a, u_char *buf,
    size_t size)
{
    ngx_str_t  *kind;

    kind = &a->kind;

    if (ngx_http_quota_str_is(kind, "approaching_limit")) {
        return ngx_snprintf(buf, size,
                            "%V usage reached %L%% of the limit (%L of %L).",
                            &a->metric,
                            a->limit > 0
                            ? ngx_http_quota_percent(a->used, a->limit)
                            : (int64_t) 100,
                            a->used, a->limit);
    }

    if (ngx_http_quota_str_is(kind, "quota_exceeded")) {
        return ngx_snprintf(buf, size, "%V quota exhausted (%L of %L).",
                            &a->metric, a->used, a->limit);
    }

    if (ngx_http_quota_str_is(kind, "overage_started")) {
        return ngx_snprintf(buf, size,
                            "%V usage passed the limit of %L: overage "
                            "charges apply.", &a->metric, a->limit);
    }

    if (ngx_http_quota_str_is(kind, "spending_cap_reached")) {
        return ngx_snprintf(buf, size,
                            "Spending cap reached: metered requests are "
                            "refused until the period ends or the cap is "
                            "raised.");
    }

    if (ngx_http_quota_str_is(kind, "quota_reset")) {
        return ngx_snprintf(buf, size,
                            "%V usage starts again from zero in the new "
                            "period.", &a->metric);
    }

    return ngx_snprintf(buf, size, "%V", kind);
}


static ngx_uint_t
ngx_http_quota_arg_uint(ngx_http_request_t *r, const char *name, size_t len,
    ngx_uint_t dflt)
{
    ngx_int_t  n;
    ngx_str_t  value;

    if (ngx_http_arg(r, (u_char *) name, len, &value) != NGX_OK
        || value.len == 0 || value.len > 9)
    {
        return dflt;
    }

    n = ngx_atoi(value.data, value.len);

    return n == NGX_ERROR ? dflt : (ngx_uint_t) n;
}


/* strings are checked: text from Redis must not make the JSON invalid */
static yajl_gen
ngx_http_quota_gen_alloc(void)
{
    yajl_gen  g;

    g = yajl_gen_alloc(NULL);

    if (g != NULL && !yajl_gen_config(g, yajl_gen_validate_utf8, 1)) {
        yajl_gen_free(g);
        return NULL;
    }

    return g;
}


/*
 * Text a backend wrote into Redis (account status, alert fields): null
 * when it is not valid UTF-8 (review S7); yajl checks before it writes.
 */
static yajl_gen_status
ngx_http_quota_gen_text(yajl_gen g, u_char *data, size_t len)
{
    yajl_gen_status  s;

    s = yajl_gen_string(g, data, len);

    return s == yajl_gen_invalid_string ? yajl_gen_null(g) : s;
}


static void
ngx_http_quota_gen_iso(yajl_gen g, int64_t t)
{
    u_char  buf[QUOTA_ISO8601_LEN];

    quota_format_iso8601(t, (char *) buf);
    yajl_gen_string(g, buf, QUOTA_ISO8601_LEN);
}


/* micro-USD as a JSON number with no float rounding: 1500 -> 0.0015 */
static void
ngx_http_quota_gen_usd(yajl_gen g, int64_t micro)
{
    u_char  buf[NGX_INT64_LEN + 8];
    size_t  len;

    len = ngx_http_quota_format_usd(buf, micro);
    yajl_gen_number(g, (const char *) buf, len);
}

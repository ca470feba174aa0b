
/*
 * The variables of the body templates (SPEC section 13), usable after
 * the decision anywhere else too:
 *
 *   $quota_used_METRIC, _limit_, _remaining_, _overage_, _percent_,
 *   _daily_      per declared metric, prefix variables like $arg_*;
 *                "null" where the metric has no limit (or is not among
 *                the request's numbers)
 *   $quota_plan, _seats, _account_status, _overage_enabled, _approaching,
 *   _spending_cap, _projected_overage, _period_start, _period_end
 *   $quota_alert_id, _type, _metric, _message, _used, _limit,
 *   _triggered_at  (quota_alerts_item)
 *   $quota_event_type, _metric, _alert_type, _used, _limit, _timestamp
 *                  (quota_live_body: the event being rendered)
 *   $quota_json_NAME   $quota_NAME as a JSON string literal (yajl), or
 *                      null when it has no value
 *
 * They read ngx_http_quota_view(): the report or alert being rendered,
 * else the request's metering ctx.  Never cached.
 */


#include "ngx_http_quota_module.h"

#include <yajl/yajl_gen.h>


typedef enum {
    NGX_HTTP_QUOTA_TV_PLAN = 0,
    NGX_HTTP_QUOTA_TV_SEATS,
    NGX_HTTP_QUOTA_TV_STATUS,
    NGX_HTTP_QUOTA_TV_OVERAGE,
    NGX_HTTP_QUOTA_TV_APPROACHING,
    NGX_HTTP_QUOTA_TV_CAP,
    NGX_HTTP_QUOTA_TV_PROJECTED,
    NGX_HTTP_QUOTA_TV_START,
    NGX_HTTP_QUOTA_TV_END,
    NGX_HTTP_QUOTA_TV_ALERT_ID,
    NGX_HTTP_QUOTA_TV_ALERT_TYPE,
    NGX_HTTP_QUOTA_TV_ALERT_METRIC,
    NGX_HTTP_QUOTA_TV_ALERT_MESSAGE,
    NGX_HTTP_QUOTA_TV_ALERT_USED,
    NGX_HTTP_QUOTA_TV_ALERT_LIMIT,
    NGX_HTTP_QUOTA_TV_ALERT_AT,
    NGX_HTTP_QUOTA_TV_EVENT_TYPE,
    NGX_HTTP_QUOTA_TV_EVENT_METRIC,
    NGX_HTTP_QUOTA_TV_EVENT_ALERT_TYPE,
    NGX_HTTP_QUOTA_TV_EVENT_USED,
    NGX_HTTP_QUOTA_TV_EVENT_LIMIT,
    NGX_HTTP_QUOTA_TV_EVENT_TIMESTAMP
} ngx_http_quota_tv_e;


typedef enum {
    NGX_HTTP_QUOTA_FAM_USED = 0,
    NGX_HTTP_QUOTA_FAM_LIMIT,
    NGX_HTTP_QUOTA_FAM_REMAINING,
    NGX_HTTP_QUOTA_FAM_OVERAGE,
    NGX_HTTP_QUOTA_FAM_PERCENT,
    NGX_HTTP_QUOTA_FAM_DAILY
} ngx_http_quota_family_e;


typedef struct {
    u_char                      *date;
    int64_t                      units;
} ngx_http_quota_tv_day_t;


static ngx_int_t ngx_http_quota_tv_account(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_quota_tv_period(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, ngx_http_quota_view_t *view,
    uintptr_t data);
static ngx_int_t ngx_http_quota_tv_alert(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_quota_tv_event(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_quota_tv_metric(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_quota_tv_number(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, ngx_http_quota_view_t *view,
    ngx_uint_t family, ngx_uint_t m);
static ngx_int_t ngx_http_quota_tv_daily(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, ngx_http_quota_view_t *view,
    ngx_uint_t m);
static ngx_int_t ngx_http_quota_tv_json(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static int ngx_libc_cdecl ngx_http_quota_tv_day_cmp(const void *a,
    const void *b);
static ngx_int_t ngx_http_quota_tv_int(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, int64_t n);
static ngx_int_t ngx_http_quota_tv_usd(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, int64_t micro);
static ngx_int_t ngx_http_quota_tv_iso(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, time_t t);
static ngx_int_t ngx_http_quota_tv_gen(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, yajl_gen g);
static ngx_int_t ngx_http_quota_tv_set(ngx_http_variable_value_t *v,
    u_char *data, size_t len);
static ngx_int_t ngx_http_quota_tv_none(ngx_http_variable_value_t *v);


#define ngx_http_quota_tv_lit(v, s)                                          \
    ngx_http_quota_tv_set(v, (u_char *) s, sizeof(s) - 1)


static ngx_str_t  ngx_http_quota_tv_families[] = {
    ngx_string("quota_used_"),
    ngx_string("quota_limit_"),
    ngx_string("quota_remaining_"),
    ngx_string("quota_overage_"),
    ngx_string("quota_percent_"),
    ngx_string("quota_daily_"),
    ngx_null_string
};


#define NGX_HTTP_QUOTA_TV(name, handler, data)                               \
    { ngx_string(name), NULL, handler, data, NGX_HTTP_VAR_NOCACHEABLE, 0 }

#define NGX_HTTP_QUOTA_TV_PREFIX(name, handler)                              \
    { ngx_string(name), NULL, handler, 0,                                    \
      NGX_HTTP_VAR_NOCACHEABLE|NGX_HTTP_VAR_PREFIX, 0 }


static ngx_http_variable_t  ngx_http_quota_template_vars[] = {

    NGX_HTTP_QUOTA_TV("quota_plan", ngx_http_quota_tv_account,
                      NGX_HTTP_QUOTA_TV_PLAN),
    NGX_HTTP_QUOTA_TV("quota_seats", ngx_http_quota_tv_account,
                      NGX_HTTP_QUOTA_TV_SEATS),
    NGX_HTTP_QUOTA_TV("quota_account_status", ngx_http_quota_tv_account,
                      NGX_HTTP_QUOTA_TV_STATUS),
    NGX_HTTP_QUOTA_TV("quota_overage_enabled", ngx_http_quota_tv_account,
                      NGX_HTTP_QUOTA_TV_OVERAGE),
    NGX_HTTP_QUOTA_TV("quota_approaching", ngx_http_quota_tv_account,
                      NGX_HTTP_QUOTA_TV_APPROACHING),
    NGX_HTTP_QUOTA_TV("quota_spending_cap", ngx_http_quota_tv_account,
                      NGX_HTTP_QUOTA_TV_CAP),
    NGX_HTTP_QUOTA_TV("quota_projected_overage", ngx_http_quota_tv_account,
                      NGX_HTTP_QUOTA_TV_PROJECTED),
    NGX_HTTP_QUOTA_TV("quota_period_start", ngx_http_quota_tv_account,
                      NGX_HTTP_QUOTA_TV_START),
    NGX_HTTP_QUOTA_TV("quota_period_end", ngx_http_quota_tv_account,
                      NGX_HTTP_QUOTA_TV_END),

    NGX_HTTP_QUOTA_TV("quota_alert_id", ngx_http_quota_tv_alert,
                      NGX_HTTP_QUOTA_TV_ALERT_ID),
    NGX_HTTP_QUOTA_TV("quota_alert_type", ngx_http_quota_tv_alert,
                      NGX_HTTP_QUOTA_TV_ALERT_TYPE),
    NGX_HTTP_QUOTA_TV("quota_alert_metric", ngx_http_quota_tv_alert,
                      NGX_HTTP_QUOTA_TV_ALERT_METRIC),
    NGX_HTTP_QUOTA_TV("quota_alert_message", ngx_http_quota_tv_alert,
                      NGX_HTTP_QUOTA_TV_ALERT_MESSAGE),
    NGX_HTTP_QUOTA_TV("quota_alert_used", ngx_http_quota_tv_alert,
                      NGX_HTTP_QUOTA_TV_ALERT_USED),
    NGX_HTTP_QUOTA_TV("quota_alert_limit", ngx_http_quota_tv_alert,
                      NGX_HTTP_QUOTA_TV_ALERT_LIMIT),
    NGX_HTTP_QUOTA_TV("quota_alert_triggered_at", ngx_http_quota_tv_alert,
                      NGX_HTTP_QUOTA_TV_ALERT_AT),

    NGX_HTTP_QUOTA_TV("quota_event_type", ngx_http_quota_tv_event,
                      NGX_HTTP_QUOTA_TV_EVENT_TYPE),
    NGX_HTTP_QUOTA_TV("quota_event_metric", ngx_http_quota_tv_event,
                      NGX_HTTP_QUOTA_TV_EVENT_METRIC),
    NGX_HTTP_QUOTA_TV("quota_event_alert_type", ngx_http_quota_tv_event,
                      NGX_HTTP_QUOTA_TV_EVENT_ALERT_TYPE),
    NGX_HTTP_QUOTA_TV("quota_event_used", ngx_http_quota_tv_event,
                      NGX_HTTP_QUOTA_TV_EVENT_USED),
    NGX_HTTP_QUOTA_TV("quota_event_limit", ngx_http_quota_tv_event,
                      NGX_HTTP_QUOTA_TV_EVENT_LIMIT),
    NGX_HTTP_QUOTA_TV("quota_event_timestamp", ngx_http_quota_tv_event,
                      NGX_HTTP_QUOTA_TV_EVENT_TIMESTAMP),

    NGX_HTTP_QUOTA_TV_PREFIX("quota_used_", ngx_http_quota_tv_metric),
    NGX_HTTP_QUOTA_TV_PREFIX("quota_limit_", ngx_http_quota_tv_metric),
    NGX_HTTP_QUOTA_TV_PREFIX("quota_remaining_", ngx_http_quota_tv_metric),
    NGX_HTTP_QUOTA_TV_PREFIX("quota_overage_", ngx_http_quota_tv_metric),
    NGX_HTTP_QUOTA_TV_PREFIX("quota_percent_", ngx_http_quota_tv_metric),
    NGX_HTTP_QUOTA_TV_PREFIX("quota_daily_", ngx_http_quota_tv_metric),
    NGX_HTTP_QUOTA_TV_PREFIX("quota_json_", ngx_http_quota_tv_json),

      ngx_http_null_variable
};


ngx_int_t
ngx_http_quota_add_template_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_quota_template_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_quota_tv_account(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_quota_plan_t       *plan;
    ngx_http_quota_view_t       *view, tmp;
    ngx_http_quota_report_t     *rep;
    ngx_http_quota_main_conf_t  *qmcf;

    view = ngx_http_quota_view(r, &tmp);

    if (view == NULL || view->ctx == NULL || !view->ctx->have_usage) {
        return ngx_http_quota_tv_none(v);
    }

    rep = view->report;

    switch (data) {

    case NGX_HTTP_QUOTA_TV_PLAN:
        qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);

        if (view->ctx->plan == 0 || view->ctx->plan > qmcf->plans.nelts) {
            return ngx_http_quota_tv_none(v);
        }

        plan = qmcf->plans.elts;
        plan += view->ctx->plan - 1;

        return ngx_http_quota_tv_set(v, plan->name.data, plan->name.len);

    case NGX_HTTP_QUOTA_TV_APPROACHING:
        return ngx_http_quota_report_approaching(r, view->ctx)
               ? ngx_http_quota_tv_lit(v, "true")
               : ngx_http_quota_tv_lit(v, "false");

    case NGX_HTTP_QUOTA_TV_START:
    case NGX_HTTP_QUOTA_TV_END:
        return ngx_http_quota_tv_period(r, v, view, data);
    }

    /* the rest is in quota_usage's report only */

    if (rep == NULL) {
        return ngx_http_quota_tv_none(v);
    }

    switch (data) {

    case NGX_HTTP_QUOTA_TV_SEATS:
        return ngx_http_quota_tv_int(r, v, rep->seats);

    case NGX_HTTP_QUOTA_TV_STATUS:
        return rep->status.len
               ? ngx_http_quota_tv_set(v, rep->status.data, rep->status.len)
               : ngx_http_quota_tv_lit(v, "active");

    case NGX_HTTP_QUOTA_TV_OVERAGE:
        return rep->overage ? ngx_http_quota_tv_lit(v, "true")
                            : ngx_http_quota_tv_lit(v, "false");

    case NGX_HTTP_QUOTA_TV_CAP:
        return rep->cap >= 0 ? ngx_http_quota_tv_usd(r, v, rep->cap)
                             : ngx_http_quota_tv_lit(v, "null");

    default: /* NGX_HTTP_QUOTA_TV_PROJECTED */
        return ngx_http_quota_tv_usd(r, v, rep->overage
                   ? ngx_http_quota_report_projected(r, view->ctx, rep) : 0);
    }
}


/* the account's billing period, as the default usage body writes it */
static ngx_int_t
ngx_http_quota_tv_period(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    ngx_http_quota_view_t *view, uintptr_t data)
{
    if (data == NGX_HTTP_QUOTA_TV_START) {
        return ngx_http_quota_tv_iso(r, v, view->ctx->billing.start);
    }

    return ngx_http_quota_tv_iso(r, v, view->ctx->billing.end - 1);
}


static ngx_int_t
ngx_http_quota_tv_alert(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    ngx_str_t               *s;
    ngx_http_quota_view_t   *view, tmp;
    ngx_http_quota_alert_t  *a;

    view = ngx_http_quota_view(r, &tmp);

    if (view == NULL || view->alert == NULL) {
        return ngx_http_quota_tv_none(v);
    }

    a = view->alert;

    switch (data) {

    case NGX_HTTP_QUOTA_TV_ALERT_USED:
        return ngx_http_quota_tv_int(r, v, a->used);

    case NGX_HTTP_QUOTA_TV_ALERT_LIMIT:
        return a->limit >= 0 ? ngx_http_quota_tv_int(r, v, a->limit)
                             : ngx_http_quota_tv_lit(v, "null");

    case NGX_HTTP_QUOTA_TV_ALERT_ID:
        s = &a->id;
        break;

    case NGX_HTTP_QUOTA_TV_ALERT_TYPE:
        s = &a->kind;
        break;

    case NGX_HTTP_QUOTA_TV_ALERT_METRIC:
        s = &a->metric;
        break;

    case NGX_HTTP_QUOTA_TV_ALERT_MESSAGE:
        s = &a->message;
        break;

    default: /* NGX_HTTP_QUOTA_TV_ALERT_AT */
        s = &a->at;
        break;
    }

    if (s->len == 0) {
        return ngx_http_quota_tv_none(v);
    }

    return ngx_http_quota_tv_set(v, s->data, s->len);
}


/* the event quota_live_body is rendering; empty elsewhere */
static ngx_int_t
ngx_http_quota_tv_event(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    ngx_http_quota_event_t      *e;
    ngx_http_quota_view_t       *view, tmp;
    ngx_http_quota_metric_t     *metrics;
    ngx_http_quota_main_conf_t  *qmcf;

    view = ngx_http_quota_view(r, &tmp);

    if (view == NULL || view->event == NULL) {
        return ngx_http_quota_tv_none(v);
    }

    e = view->event;

    switch (data) {

    case NGX_HTTP_QUOTA_TV_EVENT_TYPE:
        return e->type == NGX_HTTP_QUOTA_EVENT_ALERT
               ? ngx_http_quota_tv_lit(v, "alert")
               : ngx_http_quota_tv_lit(v, "usage_update");

    case NGX_HTTP_QUOTA_TV_EVENT_METRIC:
        if (e->metric < 0) {
            return ngx_http_quota_tv_none(v);
        }

        qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
        metrics = qmcf->metrics.elts;

        return ngx_http_quota_tv_set(v, metrics[e->metric].name.data,
                                     metrics[e->metric].name.len);

    case NGX_HTTP_QUOTA_TV_EVENT_ALERT_TYPE:
        return e->alert_type_len
               ? ngx_http_quota_tv_set(v, e->alert_type, e->alert_type_len)
               : ngx_http_quota_tv_none(v);

    case NGX_HTTP_QUOTA_TV_EVENT_USED:
        return ngx_http_quota_tv_int(r, v, e->used);

    case NGX_HTTP_QUOTA_TV_EVENT_LIMIT:
        return e->limit >= 0 ? ngx_http_quota_tv_int(r, v, e->limit)
                             : ngx_http_quota_tv_lit(v, "null");

    default: /* NGX_HTTP_QUOTA_TV_EVENT_TIMESTAMP */
        return e->timestamp_len
               ? ngx_http_quota_tv_set(v, e->timestamp, e->timestamp_len)
               : ngx_http_quota_tv_none(v);
    }
}


/* $quota_FAMILY_METRIC: data is the variable's name */
static ngx_int_t
ngx_http_quota_tv_metric(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    ngx_str_t *name = (ngx_str_t *) data;

    ngx_str_t                    metric;
    ngx_int_t                    m;
    ngx_uint_t                   f;
    ngx_http_quota_view_t       *view, tmp;
    ngx_http_quota_main_conf_t  *qmcf;

    for (f = 0; ngx_http_quota_tv_families[f].len; f++) {
        if (name->len > ngx_http_quota_tv_families[f].len
            && ngx_strncmp(name->data, ngx_http_quota_tv_families[f].data,
                           ngx_http_quota_tv_families[f].len) == 0)
        {
            break;
        }
    }

    if (ngx_http_quota_tv_families[f].len == 0) {
        return ngx_http_quota_tv_none(v);
    }

    metric.data = name->data + ngx_http_quota_tv_families[f].len;
    metric.len = name->len - ngx_http_quota_tv_families[f].len;

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    m = ngx_http_quota_metric_index(qmcf, &metric);

    view = ngx_http_quota_view(r, &tmp);

    if (m == NGX_ERROR || view == NULL || view->ctx == NULL
        || !view->ctx->have_usage || view->ctx->rule == NULL)
    {
        return ngx_http_quota_tv_none(v);
    }

    if (f == NGX_HTTP_QUOTA_FAM_DAILY) {
        return ngx_http_quota_tv_daily(r, v, view, m);
    }

    return ngx_http_quota_tv_number(r, v, view, f, m);
}


static ngx_int_t
ngx_http_quota_tv_number(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    ngx_http_quota_view_t *view, ngx_uint_t family, ngx_uint_t m)
{
    int64_t                used, limit;
    ngx_uint_t             j;
    ngx_http_quota_ctx_t  *ctx;

    ctx = view->ctx;

    /* the metric's place among the numbers of the reply */
    for (j = 0; j < ctx->ncharges; j++) {
        if (ctx->rule->charges[j].metric == m) {
            break;
        }
    }

    if (j == ctx->ncharges) {
        return ngx_http_quota_tv_lit(v, "null");
    }

    used = ctx->used[j];
    limit = ctx->limit[j];

    switch (family) {

    case NGX_HTTP_QUOTA_FAM_USED:
        return ngx_http_quota_tv_int(r, v, used);

    case NGX_HTTP_QUOTA_FAM_OVERAGE:
        if (view->report) {
            return ngx_http_quota_tv_int(r, v, view->report->units[j]->integer);
        }

        return ngx_http_quota_tv_int(r, v, limit >= 0 && used > limit
                                           ? used - limit : 0);
    }

    if (limit < 0) {
        return ngx_http_quota_tv_lit(v, "null");
    }

    switch (family) {

    case NGX_HTTP_QUOTA_FAM_LIMIT:
        return ngx_http_quota_tv_int(r, v, limit);

    case NGX_HTTP_QUOTA_FAM_REMAINING:
        return ngx_http_quota_tv_int(r, v, limit > used ? limit - used : 0);

    default: /* NGX_HTTP_QUOTA_FAM_PERCENT */
        return ngx_http_quota_tv_int(r, v, ngx_http_quota_percent(used, limit));
    }
}


/* [{"date":"YYYY-MM-DD","METRIC":N},...] from the report's daily tail */
static ngx_int_t
ngx_http_quota_tv_daily(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    ngx_http_quota_view_t *view, ngx_uint_t m)
{
    size_t                       i, n, nd;
    yajl_gen                     g;
    redisReply                 **e;
    ngx_str_t                   *name;
    ngx_http_quota_tv_day_t     *days;
    ngx_http_quota_metric_t     *metrics;
    ngx_http_quota_main_conf_t  *qmcf;

    if (view->report == NULL || view->report->daily == NULL) {
        return ngx_http_quota_tv_none(v);
    }

    qmcf = ngx_http_get_module_main_conf(r, ngx_http_quota_module);
    metrics = qmcf->metrics.elts;
    name = &metrics[m].name;

    e = view->report->daily;
    n = view->report->ndaily;

    days = ngx_palloc(r->pool, (n + 1) * sizeof(ngx_http_quota_tv_day_t));
    if (days == NULL) {
        return NGX_ERROR;
    }

    nd = 0;

    /* "METRIC:YYYY-MM-DD" -> units, each pair type-checked (_usage.c) */
    for (i = 0; i < n; i++) {
        if (e[2 * i]->type != REDIS_REPLY_STRING
            || e[2 * i + 1]->type != REDIS_REPLY_STRING
            || e[2 * i]->len != name->len + 1 + QUOTA_DATE_LEN
            || ngx_strncmp(e[2 * i]->str, name->data, name->len) != 0
            || e[2 * i]->str[name->len] != ':'
            || !ngx_http_quota_is_date((u_char *) e[2 * i]->str
                                       + name->len + 1))
        {
            continue;
        }

        days[nd].date = (u_char *) e[2 * i]->str + name->len + 1;
        days[nd].units = ngx_atoof((u_char *) e[2 * i + 1]->str,
                                   e[2 * i + 1]->len);
        nd++;
    }

    ngx_qsort(days, nd, sizeof(ngx_http_quota_tv_day_t),
              ngx_http_quota_tv_day_cmp);

    g = yajl_gen_alloc(NULL);
    if (g == NULL) {
        return NGX_ERROR;
    }

    yajl_gen_array_open(g);

    for (i = 0; i < nd; i++) {
        yajl_gen_map_open(g);
        yajl_gen_string(g, (u_char *) "date", 4);
        yajl_gen_string(g, days[i].date, QUOTA_DATE_LEN);
        yajl_gen_string(g, name->data, name->len);
        yajl_gen_integer(g, days[i].units < 0 ? 0 : days[i].units);
        yajl_gen_map_close(g);
    }

    yajl_gen_array_close(g);

    return ngx_http_quota_tv_gen(r, v, g);
}


static int ngx_libc_cdecl
ngx_http_quota_tv_day_cmp(const void *a, const void *b)
{
    const ngx_http_quota_tv_day_t  *x = a, *y = b;

    return ngx_memcmp(x->date, y->date, QUOTA_DATE_LEN);
}


/* $quota_json_NAME: $quota_NAME as a JSON string, or null */
static ngx_int_t
ngx_http_quota_tv_json(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    ngx_str_t *name = (ngx_str_t *) data;

    u_char                     *p;
    yajl_gen                    g;
    ngx_str_t                   inner;
    yajl_gen_status             s;
    ngx_http_variable_value_t  *vv;

    /* "quota_json_X" -> "quota_X" */
    inner.len = name->len - (sizeof("json_") - 1);
    inner.data = ngx_pnalloc(r->pool, inner.len);
    if (inner.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(inner.data, "quota_", sizeof("quota_") - 1);
    ngx_memcpy(p, name->data + sizeof("quota_json_") - 1,
               name->len - (sizeof("quota_json_") - 1));

    vv = ngx_http_get_variable(r, &inner, ngx_hash_key(inner.data, inner.len));
    if (vv == NULL) {
        return NGX_ERROR;
    }

    if (vv->not_found) {
        return ngx_http_quota_tv_lit(v, "null");
    }

    if (!vv->valid) {
        return ngx_http_quota_tv_lit(v, "null");
    }

    g = yajl_gen_alloc(NULL);
    if (g == NULL) {
        return NGX_ERROR;
    }

    /* text from Redis that is not UTF-8 becomes null, not broken JSON */
    yajl_gen_config(g, yajl_gen_validate_utf8, 1);

    s = yajl_gen_string(g, vv->data, vv->len);

    if (s == yajl_gen_invalid_string) {
        s = yajl_gen_null(g);
    }

    if (s != yajl_gen_status_ok) {
        yajl_gen_free(g);
        return NGX_ERROR;
    }

    return ngx_http_quota_tv_gen(r, v, g);
}


/* the generator's text into the pool; frees g */
static ngx_int_t
ngx_http_quota_tv_gen(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    yajl_gen g)
{
    size_t                len;
    u_char               *p;
    const unsigned char  *buf;

    if (yajl_gen_get_buf(g, &buf, &len) != yajl_gen_status_ok) {
        yajl_gen_free(g);
        return NGX_ERROR;
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        yajl_gen_free(g);
        return NGX_ERROR;
    }

    ngx_memcpy(p, buf, len);
    yajl_gen_free(g);

    return ngx_http_quota_tv_set(v, p, len);
}


static ngx_int_t
ngx_http_quota_tv_int(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    int64_t n)
{
    u_char  *p;

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    return ngx_http_quota_tv_set(v, p, ngx_sprintf(p, "%L", n) - p);
}


static ngx_int_t
ngx_http_quota_tv_usd(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    int64_t micro)
{
    u_char  *p;

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN + 8);
    if (p == NULL) {
        return NGX_ERROR;
    }

    return ngx_http_quota_tv_set(v, p, ngx_http_quota_format_usd(p, micro));
}


static ngx_int_t
ngx_http_quota_tv_iso(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    time_t t)
{
    u_char  *p;

    p = ngx_pnalloc(r->pool, QUOTA_ISO8601_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    quota_format_iso8601(t, (char *) p);

    return ngx_http_quota_tv_set(v, p, QUOTA_ISO8601_LEN);
}


static ngx_int_t
ngx_http_quota_tv_set(ngx_http_variable_value_t *v, u_char *data, size_t len)
{
    v->len = len;
    v->data = data;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


/* every flag set: $quota_json_* reads them through ngx_http_get_variable() */
static ngx_int_t
ngx_http_quota_tv_none(ngx_http_variable_value_t *v)
{
    v->valid = 0;
    v->no_cacheable = 1;
    v->not_found = 1;

    return NGX_OK;
}

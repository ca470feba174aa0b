
/*
 * Directive parsers: quota_redis, quota_metric, quota_plan { },
 * quota_default_plan, quota_tenant, quota_warning_header, quota_reconcile
 * (quota_route is in _route.c).
 *
 * Names are resolved as they are parsed (a metric or plan must be declared
 * before it is used), so every error points at the line that is wrong.
 */


#include "ngx_http_quota_module.h"


typedef char *(*ngx_http_quota_plan_stmt_pt)(ngx_conf_t *cf,
    ngx_http_quota_plan_t *plan, ngx_str_t *value, ngx_uint_t nargs);

typedef struct {
    ngx_str_t                    name;
    ngx_uint_t                   min_args;    /* the name included */
    ngx_uint_t                   max_args;
    ngx_http_quota_plan_stmt_pt  handler;
    const char                  *usage;
} ngx_http_quota_plan_stmt_t;


static char *ngx_http_quota_plan_statement(ngx_conf_t *cf,
    ngx_command_t *dummy, void *conf);
static ngx_http_quota_plan_metric_t *ngx_http_quota_plan_metric_arg(
    ngx_conf_t *cf, ngx_http_quota_plan_t *plan, ngx_str_t *name);
static char *ngx_http_quota_plan_limit(ngx_conf_t *cf,
    ngx_http_quota_plan_t *plan, ngx_str_t *value, ngx_uint_t nargs);
static char *ngx_http_quota_plan_overage(ngx_conf_t *cf,
    ngx_http_quota_plan_t *plan, ngx_str_t *value, ngx_uint_t nargs);
static char *ngx_http_quota_plan_grace(ngx_conf_t *cf,
    ngx_http_quota_plan_t *plan, ngx_str_t *value, ngx_uint_t nargs);
static char *ngx_http_quota_plan_rate(ngx_conf_t *cf,
    ngx_http_quota_plan_t *plan, ngx_str_t *value, ngx_uint_t nargs);
static char *ngx_http_quota_plan_concurrency(ngx_conf_t *cf,
    ngx_http_quota_plan_t *plan, ngx_str_t *value, ngx_uint_t nargs);
static char *ngx_http_quota_plan_duplicate(ngx_conf_t *cf,
    ngx_http_quota_plan_t *plan, ngx_str_t *value);
static ngx_int_t ngx_http_quota_is_token(ngx_str_t *s);
static ngx_http_quota_plan_metric_t *ngx_http_quota_plan_metric(
    ngx_http_quota_plan_t *plan, ngx_uint_t metric);
static int64_t ngx_http_quota_parse_money(ngx_str_t *v);
static ngx_int_t ngx_http_quota_parse_name(ngx_str_t *name);




static ngx_http_quota_plan_stmt_t  ngx_http_quota_plan_stmts[] = {
    { ngx_string("limit"), 3, 4, ngx_http_quota_plan_limit,
      "limit METRIC N [per_seat]" },
    { ngx_string("overage"), 3, 3, ngx_http_quota_plan_overage,
      "overage METRIC PRICE" },
    { ngx_string("grace"), 2, 2, ngx_http_quota_plan_grace,
      "grace P%" },
    { ngx_string("rate"), 2, 3, ngx_http_quota_plan_rate,
      "rate Nr/s|Nr/m [burst=N]" },
    { ngx_string("concurrency"), 2, 3, ngx_http_quota_plan_concurrency,
      "concurrency N [lease=TIME]" },
    { ngx_null_string, 0, 0, NULL, NULL }
};


ngx_int_t
ngx_http_quota_metric_index(ngx_http_quota_main_conf_t *qmcf, ngx_str_t *name)
{
    ngx_uint_t                i;
    ngx_http_quota_metric_t  *m;

    m = qmcf->metrics.elts;

    for (i = 0; i < qmcf->metrics.nelts; i++) {
        if (m[i].name.len == name->len
            && ngx_strncmp(m[i].name.data, name->data, name->len) == 0)
        {
            return i;
        }
    }

    return NGX_ERROR;
}


/* metric and plan names end up in Redis fields, JSON and Prometheus labels */
static ngx_int_t
ngx_http_quota_parse_name(ngx_str_t *name)
{
    u_char  *p, *last;

    if (name->len == 0 || name->len > 64) {
        return NGX_ERROR;
    }

    last = name->data + name->len;

    for (p = name->data; p < last; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
            || (*p >= '0' && *p <= '9') || *p == '_' || *p == '-'
            || *p == '.')
        {
            continue;
        }

        return NGX_ERROR;
    }

    return NGX_OK;
}


char *
ngx_http_quota_metric_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_quota_main_conf_t *qmcf = conf;

    ngx_str_t                *value;
    ngx_http_quota_metric_t  *m;

    value = cf->args->elts;

    if (ngx_http_quota_parse_name(&value[1]) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid metric name \"%V\" (use letters, digits, "
                           "\"_\", \"-\" and \".\", at most 64)", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (ngx_http_quota_metric_index(qmcf, &value[1]) != NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate metric \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (qmcf->metrics.nelts == NGX_HTTP_QUOTA_MAX_CHARGES) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "too many metrics (at most %d)",
                           NGX_HTTP_QUOTA_MAX_CHARGES);
        return NGX_CONF_ERROR;
    }

    m = ngx_array_push(&qmcf->metrics);
    if (m == NULL) {
        return NGX_CONF_ERROR;
    }

    m->name = value[1];
    m->period = NGX_HTTP_QUOTA_PERIOD_MONTH;

    if (cf->args->nelts == 3) {
        if (ngx_strcmp(value[2].data, "period=month") == 0) {
            m->period = NGX_HTTP_QUOTA_PERIOD_MONTH;

        } else if (ngx_strcmp(value[2].data, "period=day") == 0) {
            m->period = NGX_HTTP_QUOTA_PERIOD_DAY;

        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\", "
                               "expected \"period=month\" or \"period=day\"",
                               &value[2]);
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


char *
ngx_http_quota_plan_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_quota_main_conf_t *qmcf = conf;

    char                   *rv;
    ngx_str_t              *value;
    ngx_uint_t              i;
    ngx_conf_t              save;
    ngx_http_quota_plan_t  *plan;

    value = cf->args->elts;

    if (ngx_http_quota_parse_name(&value[1]) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid plan name \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    plan = qmcf->plans.elts;

    for (i = 0; i < qmcf->plans.nelts; i++) {
        if (plan[i].name.len == value[1].len
            && ngx_strncmp(plan[i].name.data, value[1].data, value[1].len)
               == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate plan \"%V\"", &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    plan = ngx_array_push(&qmcf->plans);
    if (plan == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(plan, sizeof(ngx_http_quota_plan_t));

    plan->name = value[1];
    plan->lease = 60000;
    plan->grace = NGX_CONF_UNSET_UINT;     /* to see a duplicate "grace" */

    if (ngx_array_init(&plan->metrics, cf->pool, 4,
                       sizeof(ngx_http_quota_plan_metric_t))
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    save = *cf;
    cf->handler = ngx_http_quota_plan_statement;
    cf->handler_conf = (void *) plan;

    rv = ngx_conf_parse(cf, NULL);

    *cf = save;

    if (plan->grace == NGX_CONF_UNSET_UINT) {
        plan->grace = 0;
    }

    return rv;
}


/*
 * Inside quota_plan { }: one line, dispatched through the statement table
 * (like geo { } and upstream { } lines in core), so argument counts and
 * "is duplicate" are uniform.
 */
static char *
ngx_http_quota_plan_statement(ngx_conf_t *cf, ngx_command_t *dummy,
    void *conf)
{
    ngx_http_quota_plan_t  *plan = conf;

    ngx_str_t                         *value;
    ngx_uint_t                         nargs;
    ngx_http_quota_plan_stmt_t        *st;

    value = cf->args->elts;
    nargs = cf->args->nelts;

    for (st = ngx_http_quota_plan_stmts; st->name.len; st++) {

        if (st->name.len != value[0].len
            || ngx_strncmp(st->name.data, value[0].data, value[0].len) != 0)
        {
            continue;
        }

        if (nargs < st->min_args || nargs > st->max_args) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid number of arguments in \"%V\", "
                               "expected \"%s\"", &value[0], st->usage);
            return NGX_CONF_ERROR;
        }

        return st->handler(cf, plan, value, nargs);
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "unknown directive \"%V\" in quota_plan", &value[0]);

    return NGX_CONF_ERROR;
}


/* limit METRIC N [per_seat], overage METRIC PRICE: the plan's metric */
static ngx_http_quota_plan_metric_t *
ngx_http_quota_plan_metric_arg(ngx_conf_t *cf, ngx_http_quota_plan_t *plan,
    ngx_str_t *name)
{
    ngx_int_t                    metric;
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_quota_module);

    metric = ngx_http_quota_metric_index(qmcf, name);
    if (metric == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "unknown metric \"%V\" in plan \"%V\" "
                           "(declare it with quota_metric first)",
                           name, &plan->name);
        return NULL;
    }

    return ngx_http_quota_plan_metric(plan, metric);
}


static char *
ngx_http_quota_plan_limit(ngx_conf_t *cf, ngx_http_quota_plan_t *plan,
    ngx_str_t *value, ngx_uint_t nargs)
{
    int64_t                        n;
    ngx_http_quota_plan_metric_t  *pm;

    pm = ngx_http_quota_plan_metric_arg(cf, plan, &value[1]);
    if (pm == NULL) {
        return NGX_CONF_ERROR;
    }

    if (pm->limit != NGX_HTTP_QUOTA_UNLIMITED) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate limit for metric \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (quota_parse_cost((char *) value[2].data, value[2].len, &n) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid limit \"%V\" (an integer from 0 to "
                           "2^53-1)", &value[2]);
        return NGX_CONF_ERROR;
    }

    pm->limit = n;

    if (nargs == 4) {
        if (value[3].len != 8
            || ngx_strncmp(value[3].data, "per_seat", 8) != 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\", expected "
                               "\"per_seat\"", &value[3]);
            return NGX_CONF_ERROR;
        }

        pm->per_seat = 1;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_quota_plan_overage(ngx_conf_t *cf, ngx_http_quota_plan_t *plan,
    ngx_str_t *value, ngx_uint_t nargs)
{
    ngx_http_quota_plan_metric_t  *pm;

    pm = ngx_http_quota_plan_metric_arg(cf, plan, &value[1]);
    if (pm == NULL) {
        return NGX_CONF_ERROR;
    }

    if (pm->price >= 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate overage for metric \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    pm->price = ngx_http_quota_parse_money(&value[2]);
    if (pm->price < 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid price \"%V\" (USD per unit, at most "
                           "6 decimals, e.g. 0.0001)", &value[2]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* grace P% */
static char *
ngx_http_quota_plan_grace(ngx_conf_t *cf, ngx_http_quota_plan_t *plan,
    ngx_str_t *value, ngx_uint_t nargs)
{
    ngx_int_t  k;

    if (plan->grace != NGX_CONF_UNSET_UINT) {
        return ngx_http_quota_plan_duplicate(cf, plan, value);
    }

    k = NGX_ERROR;

    if (value[1].len >= 2 && value[1].data[value[1].len - 1] == '%') {
        k = ngx_atoi(value[1].data, value[1].len - 1);
    }

    if (k == NGX_ERROR || k > 1000) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid grace, expected \"grace P%%\" with P "
                           "from 0 to 1000");
        return NGX_CONF_ERROR;
    }

    plan->grace = k;

    return NGX_CONF_OK;
}


/* rate Nr/s|Nr/m [burst=N], as limit_req_zone writes a rate */
static char *
ngx_http_quota_plan_rate(ngx_conf_t *cf, ngx_http_quota_plan_t *plan,
    ngx_str_t *value, ngx_uint_t nargs)
{
    ngx_int_t                    k;
    ngx_str_t                    s;
    ngx_http_quota_main_conf_t  *qmcf;

    if (plan->rate) {
        return ngx_http_quota_plan_duplicate(cf, plan, value);
    }

    s = value[1];
    k = NGX_ERROR;

    if (s.len > 3 && ngx_strncmp(s.data + s.len - 3, "r/s", 3) == 0) {
        plan->rate_period = 1000;
        k = ngx_atoi(s.data, s.len - 3);

    } else if (s.len > 3 && ngx_strncmp(s.data + s.len - 3, "r/m", 3) == 0) {
        plan->rate_period = 60000;
        k = ngx_atoi(s.data, s.len - 3);
    }

    if (k == NGX_ERROR || k < 1 || k > 1000000) {
        goto invalid;
    }

    plan->rate = k;
    plan->burst = k;        /* a quiet tenant may send N at once */

    if (nargs == 3) {
        if (ngx_strncmp(value[2].data, "burst=", 6) != 0) {
            goto invalid;
        }

        k = ngx_atoi(value[2].data + 6, value[2].len - 6);
        if (k == NGX_ERROR || k < 1 || k > 1000000) {
            goto invalid;
        }

        plan->burst = k;
    }

    qmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_quota_module);
    qmcf->rate_or_concurrency = 1;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid rate, expected \"rate Nr/s|Nr/m "
                       "[burst=N]\" with N from 1 to 1000000");
    return NGX_CONF_ERROR;
}


/* concurrency N [lease=TIME] */
static char *
ngx_http_quota_plan_concurrency(ngx_conf_t *cf, ngx_http_quota_plan_t *plan,
    ngx_str_t *value, ngx_uint_t nargs)
{
    ngx_int_t                    k;
    ngx_str_t                    s;
    ngx_msec_t                   ms;
    ngx_http_quota_main_conf_t  *qmcf;

    if (plan->concurrency) {
        return ngx_http_quota_plan_duplicate(cf, plan, value);
    }

    k = ngx_atoi(value[1].data, value[1].len);
    if (k == NGX_ERROR || k < 1 || k > 100000) {
        goto invalid;
    }

    plan->concurrency = k;

    if (nargs == 3) {
        if (ngx_strncmp(value[2].data, "lease=", 6) != 0) {
            goto invalid;
        }

        s.data = value[2].data + 6;
        s.len = value[2].len - 6;

        ms = ngx_parse_time(&s, 0);
        if (ms == (ngx_msec_t) NGX_ERROR || ms < 100) {
            goto invalid;
        }

        plan->lease = ms;
    }

    qmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_quota_module);
    qmcf->rate_or_concurrency = 1;
    qmcf->concurrency = 1;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid concurrency, expected \"concurrency N "
                       "[lease=TIME]\" with N from 1 to 100000 and a "
                       "lease of at least 100ms");
    return NGX_CONF_ERROR;
}


static char *
ngx_http_quota_plan_duplicate(ngx_conf_t *cf, ngx_http_quota_plan_t *plan,
    ngx_str_t *value)
{
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "\"%V\" is duplicate in plan \"%V\"",
                       &value[0], &plan->name);
    return NGX_CONF_ERROR;
}


/* the plan's entry for a metric, created on first mention */
static ngx_http_quota_plan_metric_t *
ngx_http_quota_plan_metric(ngx_http_quota_plan_t *plan, ngx_uint_t metric)
{
    ngx_uint_t                     i;
    ngx_http_quota_plan_metric_t  *pm;

    pm = plan->metrics.elts;

    for (i = 0; i < plan->metrics.nelts; i++) {
        if (pm[i].metric == metric) {
            return &pm[i];
        }
    }

    pm = ngx_array_push(&plan->metrics);
    if (pm == NULL) {
        return NULL;
    }

    pm->metric = metric;
    pm->limit = NGX_HTTP_QUOTA_UNLIMITED;
    pm->per_seat = 0;
    pm->price = -1;

    return pm;
}


/* "0.0001" USD -> 100 micro-USD; -1 when not a price */
static int64_t
ngx_http_quota_parse_money(ngx_str_t *v)
{
    u_char     *p, *last;
    int64_t     units;
    ngx_uint_t  decimals, digits, dot;

    units = 0;
    decimals = 0;
    digits = 0;
    dot = 0;
    last = v->data + v->len;

    if (v->len == 0 || v->len > 20) {
        return -1;
    }

    for (p = v->data; p < last; p++) {
        if (*p == '.' && !dot) {
            dot = 1;
            continue;
        }

        if (*p < '0' || *p > '9') {
            return -1;
        }

        if (dot ? ++decimals > 6 : ++digits > 12) {
            /* 12 digits of dollars and 6 of micro-dollars fit an int64 */
            return -1;
        }

        units = units * 10 + (*p - '0');
    }

    if (digits + decimals == 0) {
        return -1;              /* "." is not a price */
    }

    for ( /* void */ ; decimals < 6; decimals++) {
        units *= 10;
    }

    return units;
}


char *
ngx_http_quota_default_plan_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_quota_main_conf_t *qmcf = conf;

    ngx_str_t              *value;
    ngx_uint_t              i;
    ngx_http_quota_plan_t  *plan;

    if (qmcf->default_plan != -1) {
        return "is duplicate";
    }

    value = cf->args->elts;
    plan = qmcf->plans.elts;

    for (i = 0; i < qmcf->plans.nelts; i++) {
        if (plan[i].name.len == value[1].len
            && ngx_strncmp(plan[i].name.data, value[1].data, value[1].len)
               == 0)
        {
            qmcf->default_plan = i;
            return NGX_CONF_OK;
        }
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "unknown plan \"%V\" (define it with quota_plan first)",
                       &value[1]);

    return NGX_CONF_ERROR;
}


char *
ngx_http_quota_tenant_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_quota_loc_conf_t *qlcf = conf;

    ngx_str_t                         *value;
    ngx_http_compile_complex_value_t   ccv;

    if (qlcf->tenant != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;

    qlcf->tenant = ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t));
    if (qlcf->tenant == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[1];
    ccv.complex_value = qlcf->tenant;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    qlcf->tenant_hash = 0;

    if (cf->args->nelts == 3) {
        if (ngx_strcmp(value[2].data, "hash") != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\", expected \"hash\"",
                               &value[2]);
            return NGX_CONF_ERROR;
        }

        qlcf->tenant_hash = 1;
    }

    return NGX_CONF_OK;
}


/* quota_warning_threshold 80% */
char *
ngx_http_quota_percent_slot(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    ngx_int_t    n;
    ngx_str_t   *value;
    ngx_uint_t  *field;

    field = (ngx_uint_t *) (p + cmd->offset);

    if (*field != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len < 2 || value[1].data[value[1].len - 1] != '%') {
        return "expects a percentage, e.g. \"80%\"";
    }

    n = ngx_atoi(value[1].data, value[1].len - 1);
    if (n == NGX_ERROR || n > 100) {
        return "expects a percentage from 0% to 100%";
    }

    *field = n;

    return NGX_CONF_OK;
}


/* quota_warning_header NAME VALUE */
char *
ngx_http_quota_warning_header_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_quota_loc_conf_t *qlcf = conf;

    ngx_str_t                         *value;
    ngx_http_compile_complex_value_t   ccv;

    if (qlcf->warning_value != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 0 || !ngx_http_quota_is_token(&value[1])) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid header name \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    qlcf->warning_name = value[1];
    qlcf->warning_value = ngx_palloc(cf->pool,
                                     sizeof(ngx_http_complex_value_t));
    if (qlcf->warning_value == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[2];
    ccv.complex_value = qlcf->warning_value;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* quota_reconcile METRIC VALUE: one per metric, like the rules they adjust */
char *
ngx_http_quota_reconcile_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_quota_loc_conf_t *qlcf = conf;

    ngx_int_t                          metric;
    ngx_str_t                         *value;
    ngx_uint_t                         i;
    ngx_http_quota_reconcile_t        *rc;
    ngx_http_quota_main_conf_t        *qmcf;
    ngx_http_compile_complex_value_t   ccv;

    value = cf->args->elts;
    qmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_quota_module);

    metric = ngx_http_quota_metric_index(qmcf, &value[1]);
    if (metric == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "unknown metric \"%V\" in quota_reconcile "
                           "(declare it with quota_metric first)", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (qlcf->reconcile == NULL) {
        qlcf->reconcile = ngx_array_create(cf->pool, 2,
                                           sizeof(ngx_http_quota_reconcile_t));
        if (qlcf->reconcile == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    rc = qlcf->reconcile->elts;

    for (i = 0; i < qlcf->reconcile->nelts; i++) {
        if (rc[i].metric == (ngx_uint_t) metric) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate quota_reconcile for metric \"%V\"",
                               &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    rc = ngx_array_push(qlcf->reconcile);
    if (rc == NULL) {
        return NGX_CONF_ERROR;
    }

    rc->metric = metric;
    rc->file = cf->conf_file->file.name;
    rc->line = cf->conf_file->line;

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[2];
    ccv.complex_value = &rc->value;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* quota_header_prefix: the names built from it must be header tokens */
char *
ngx_http_quota_header_prefix_check(ngx_conf_t *cf, void *post, void *data)
{
    ngx_str_t  *prefix = data;

    if (prefix->len == 0 || !ngx_http_quota_is_token(prefix)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid header name prefix \"%V\"", prefix);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* RFC 9110 5.6.2: token = 1*tchar */
static ngx_int_t
ngx_http_quota_is_token(ngx_str_t *s)
{
    u_char  *p, *last;

    last = s->data + s->len;

    for (p = s->data; p < last; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
            || (*p >= '0' && *p <= '9'))
        {
            continue;
        }

        if (ngx_strlchr((u_char *) "!#$%&'*+-.^_`|~",
                        (u_char *) "!#$%&'*+-.^_`|~" + 15, *p)
            == NULL)
        {
            return 0;
        }
    }

    return 1;
}


/*
 * quota_reconcile for a metric that no quota_route of the same level
 * charges can never apply (reconcile corrects what the rule charged, and
 * only in the location that charged): an error, like an unknown metric.
 * Called before merging, so both arrays are the level's own; inherited
 * ones are not checked (a server-wide reconcile may well skip locations
 * whose rules do not charge its metric).
 */
ngx_int_t
ngx_http_quota_reconcile_check(ngx_conf_t *cf, ngx_http_quota_loc_conf_t *qlcf)
{
    ngx_uint_t                   i, j, k;
    ngx_http_quota_rule_t       *rule;
    ngx_http_quota_metric_t     *metrics;
    ngx_http_quota_reconcile_t  *rc;
    ngx_http_quota_main_conf_t  *qmcf;

    if (qlcf->reconcile == NULL || qlcf->rules == NULL) {
        return NGX_OK;
    }

    qmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_quota_module);
    metrics = qmcf->metrics.elts;
    rc = qlcf->reconcile->elts;
    rule = qlcf->rules->elts;

    for (i = 0; i < qlcf->reconcile->nelts; i++) {

        for (j = 0; j < qlcf->rules->nelts; j++) {
            for (k = 0; k < rule[j].ncharges; k++) {
                if (rule[j].charges[k].metric == rc[i].metric) {
                    goto charged;
                }
            }
        }

        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "quota_reconcile \"%V\": no quota_route of this "
                      "level charges it, in %V:%ui",
                      &metrics[rc[i].metric].name, &rc[i].file, rc[i].line);
        return NGX_ERROR;

    charged:

        continue;
    }

    return NGX_OK;
}

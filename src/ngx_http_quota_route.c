
/*
 * The classifier: quota_route parsing (configuration time) and matching
 * (request time), in one place.
 *
 * A rule is METHODS TEMPLATE [auth=TYPE] [version=V] METRIC=COST...; the
 * template grammar and its specificity order live in the pure
 * _template.c.  Rules are kept sorted most specific first as they are
 * parsed, so matching takes the first rule whose method, template, auth
 * and version conditions all hold (SPEC 4a).
 */


#include "ngx_http_quota_module.h"


static char *ngx_http_quota_route_add(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf, ngx_http_quota_loc_conf_t *qlcf,
    ngx_http_quota_rule_t *rule);
static char *ngx_http_quota_route_param(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf, ngx_http_quota_rule_t *rule,
    ngx_str_t *value);
static char *ngx_http_quota_route_methods(ngx_conf_t *cf,
    ngx_http_quota_rule_t *rule, ngx_str_t *value);
static char *ngx_http_quota_route_charge(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf, ngx_http_quota_rule_t *rule,
    ngx_str_t *value);
static void ngx_http_quota_insert_rule(ngx_array_t *rules,
    ngx_http_quota_rule_t *rule);
static ngx_int_t ngx_http_quota_auth_holds(ngx_http_request_t *r,
    ngx_http_quota_loc_conf_t *qlcf, ngx_uint_t auth);
static ngx_int_t ngx_http_quota_has_cookie(ngx_http_request_t *r);
static ngx_int_t ngx_http_quota_has_header(ngx_http_request_t *r,
    ngx_str_t *name);


static ngx_str_t  ngx_http_quota_auth_names[] = {
    ngx_string("any"),          /* NGX_HTTP_QUOTA_AUTH_ANY */
    ngx_string("header"),       /* NGX_HTTP_QUOTA_AUTH_HEADER */
    ngx_string("cookie"),       /* NGX_HTTP_QUOTA_AUTH_COOKIE */
    ngx_string("apikey"),       /* NGX_HTTP_QUOTA_AUTH_APIKEY */
    ngx_string("none"),         /* NGX_HTTP_QUOTA_AUTH_NONE */
    ngx_null_string
};


char *
ngx_http_quota_route_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_quota_loc_conf_t *qlcf = conf;

    size_t                       nsegs;
    ngx_str_t                   *value;
    ngx_uint_t                   i;
    const char                  *err;
    quota_tpl_seg_t              segs[QUOTA_TPL_MAX_SEGMENTS];
    ngx_http_quota_rule_t        rule;
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_quota_module);
    value = cf->args->elts;

    ngx_memzero(&rule, sizeof(ngx_http_quota_rule_t));

    if (ngx_http_quota_route_methods(cf, &rule, &value[1]) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    if (quota_tpl_parse((char *) value[2].data, value[2].len, segs,
                        QUOTA_TPL_MAX_SEGMENTS, &nsegs, &err)
        != 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid route template \"%V\": %s",
                           &value[2], err);
        return NGX_CONF_ERROR;
    }

    /* the segments point into value[2], which lives in cf->pool */
    rule.template = value[2];
    rule.nsegs = nsegs;
    rule.segs = ngx_palloc(cf->pool, (nsegs ? nsegs : 1)
                                     * sizeof(quota_tpl_seg_t));
    if (rule.segs == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(rule.segs, segs, nsegs * sizeof(quota_tpl_seg_t));

    rule.charges = ngx_palloc(cf->pool, NGX_HTTP_QUOTA_MAX_CHARGES
                                        * sizeof(ngx_http_quota_charge_t));
    if (rule.charges == NULL) {
        return NGX_CONF_ERROR;
    }

    for (i = 3; i < cf->args->nelts; i++) {
        if (ngx_http_quota_route_param(cf, qmcf, &rule, &value[i])
            != NGX_CONF_OK)
        {
            return NGX_CONF_ERROR;
        }
    }

    if (rule.ncharges == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "quota_route \"%V\" charges no metric, "
                           "expected METRIC=COST", &value[2]);
        return NGX_CONF_ERROR;
    }

    return ngx_http_quota_route_add(cf, qmcf, qlcf, &rule);
}


/* into the location's sorted rule list; a new list is registered with
   the main conf, whose init builds every rule's plan table */
static char *
ngx_http_quota_route_add(ngx_conf_t *cf, ngx_http_quota_main_conf_t *qmcf,
    ngx_http_quota_loc_conf_t *qlcf, ngx_http_quota_rule_t *rule)
{
    ngx_array_t  **rule_set;

    if (qlcf->rules == NULL) {
        qlcf->rules = ngx_array_create(cf->pool, 4,
                                       sizeof(ngx_http_quota_rule_t));
        if (qlcf->rules == NULL) {
            return NGX_CONF_ERROR;
        }

        /* init_main_conf builds every rule's plan table */
        rule_set = ngx_array_push(&qmcf->rule_sets);
        if (rule_set == NULL) {
            return NGX_CONF_ERROR;
        }

        *rule_set = qlcf->rules;
    }

    if (ngx_array_push(qlcf->rules) == NULL) {
        return NGX_CONF_ERROR;
    }

    qlcf->rules->nelts--;
    ngx_http_quota_insert_rule(qlcf->rules, rule);

    return NGX_CONF_OK;
}


/* auth=TYPE, version=V or METRIC=COST */
static char *
ngx_http_quota_route_param(ngx_conf_t *cf, ngx_http_quota_main_conf_t *qmcf,
    ngx_http_quota_rule_t *rule, ngx_str_t *value)
{
    ngx_uint_t  k;

    if (ngx_strncmp(value->data, "auth=", 5) == 0) {
        for (k = 0; ngx_http_quota_auth_names[k].len; k++) {
            if (value->len - 5 == ngx_http_quota_auth_names[k].len
                && ngx_strncmp(value->data + 5,
                               ngx_http_quota_auth_names[k].data,
                               value->len - 5) == 0)
            {
                break;
            }
        }

        if (ngx_http_quota_auth_names[k].len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid \"%V\", expected auth=header, "
                               "cookie, apikey, none or any", value);
            return NGX_CONF_ERROR;
        }

        rule->auth = k;
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value->data, "version=", 8) == 0) {
        if (value->len == 8) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "empty \"version=\"");
            return NGX_CONF_ERROR;
        }

        rule->version.len = value->len - 8;
        rule->version.data = value->data + 8;
        return NGX_CONF_OK;
    }

    return ngx_http_quota_route_charge(cf, qmcf, rule, value);
}


static char *
ngx_http_quota_route_methods(ngx_conf_t *cf, ngx_http_quota_rule_t *rule,
    ngx_str_t *value)
{
    u_char      *p, *last, *start;
    ngx_uint_t   n;

    if (value->len == 1 && value->data[0] == '*') {
        rule->methods = NULL;
        rule->nmethods = 0;
        return NGX_CONF_OK;
    }

    n = 1;
    last = value->data + value->len;

    for (p = value->data; p < last; p++) {
        if (*p == ',') {
            n++;
        }
    }

    rule->methods = ngx_palloc(cf->pool, n * sizeof(ngx_str_t));
    if (rule->methods == NULL) {
        return NGX_CONF_ERROR;
    }

    start = value->data;

    for (p = value->data; p <= last; p++) {
        if (p < last && *p != ',') {
            if ((*p >= 'A' && *p <= 'Z') || *p == '_' || *p == '-') {
                continue;
            }

            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid method list \"%V\", expected \"*\" "
                               "or upper-case methods separated by \",\"",
                               value);
            return NGX_CONF_ERROR;
        }

        if (p == start) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "empty method in \"%V\"", value);
            return NGX_CONF_ERROR;
        }

        rule->methods[rule->nmethods].data = start;
        rule->methods[rule->nmethods].len = p - start;
        rule->nmethods++;

        start = p + 1;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_quota_route_charge(ngx_conf_t *cf, ngx_http_quota_main_conf_t *qmcf,
    ngx_http_quota_rule_t *rule, ngx_str_t *value)
{
    u_char                            *eq;
    ngx_int_t                          metric;
    ngx_str_t                          name, cost;
    ngx_uint_t                         i;
    ngx_http_quota_charge_t           *charge;
    ngx_http_compile_complex_value_t   ccv;

    eq = ngx_strlchr(value->data, value->data + value->len, '=');

    if (eq == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\", expected METRIC=COST, "
                           "auth=TYPE or version=V", value);
        return NGX_CONF_ERROR;
    }

    name.data = value->data;
    name.len = eq - value->data;
    cost.data = eq + 1;
    cost.len = value->data + value->len - cost.data;

    metric = ngx_http_quota_metric_index(qmcf, &name);
    if (metric == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "unknown metric \"%V\" in quota_route "
                           "(declare it with quota_metric first)", &name);
        return NGX_CONF_ERROR;
    }

    for (i = 0; i < rule->ncharges; i++) {
        if (rule->charges[i].metric == (ngx_uint_t) metric) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "metric \"%V\" is charged twice in one rule",
                               &name);
            return NGX_CONF_ERROR;
        }
    }

    if (rule->ncharges == NGX_HTTP_QUOTA_MAX_CHARGES) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "too many metrics in one rule (at most %d)",
                           NGX_HTTP_QUOTA_MAX_CHARGES);
        return NGX_CONF_ERROR;
    }

    charge = &rule->charges[rule->ncharges];
    charge->metric = metric;
    charge->cost = 0;
    charge->value = NULL;

    if (ngx_http_script_variables_count(&cost) == 0) {
        if (quota_parse_cost((char *) cost.data, cost.len, &charge->cost)
            != 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid cost \"%V\" for metric \"%V\" "
                               "(an integer from 0 to 2^53-1, or a variable)",
                               &cost, &name);
            return NGX_CONF_ERROR;
        }

    } else {
        charge->value = ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t));
        if (charge->value == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

        ccv.cf = cf;
        ccv.value = &cost;
        ccv.complex_value = charge->value;

        if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
    }

    rule->ncharges++;

    return NGX_CONF_OK;
}


/*
 * Keep rules sorted most specific first; a rule goes after every rule that
 * is at least as specific, so equal templates keep configuration order and
 * the handler can take the first rule that matches.
 */
static void
ngx_http_quota_insert_rule(ngx_array_t *rules, ngx_http_quota_rule_t *rule)
{
    ngx_uint_t              i;
    ngx_http_quota_rule_t  *r;

    r = rules->elts;

    for (i = 0; i < rules->nelts; i++) {
        if (quota_tpl_compare(rule->segs, rule->nsegs, r[i].segs, r[i].nsegs)
            < 0)
        {
            break;
        }
    }

    ngx_memmove(&r[i + 1], &r[i], (rules->nelts - i) * sizeof(*rule));
    r[i] = *rule;
    rules->nelts++;
}


/*
 * Rules are sorted most specific first at configuration time, so the first
 * rule whose template and conditions hold is the one SPEC 4a asks for.
 */
ngx_http_quota_rule_t *
ngx_http_quota_route_match(ngx_http_request_t *r,
    ngx_http_quota_loc_conf_t *qlcf)
{
    ngx_str_t               version;
    ngx_uint_t              i, m, have_version;
    ngx_http_quota_rule_t  *rule;

    rule = qlcf->rules->elts;
    have_version = 0;
    ngx_str_null(&version);

    for (i = 0; i < qlcf->rules->nelts; i++, rule++) {

        if (rule->methods) {
            for (m = 0; m < rule->nmethods; m++) {
                if (rule->methods[m].len == r->method_name.len
                    && ngx_strncmp(rule->methods[m].data, r->method_name.data,
                                   r->method_name.len) == 0)
                {
                    break;
                }
            }

            if (m == rule->nmethods) {
                continue;
            }
        }

        if (!quota_tpl_match(rule->segs, rule->nsegs, (char *) r->uri.data,
                             r->uri.len))
        {
            continue;
        }

        if (rule->auth != NGX_HTTP_QUOTA_AUTH_ANY
            && !ngx_http_quota_auth_holds(r, qlcf, rule->auth))
        {
            continue;
        }

        if (rule->version.len) {
            if (!have_version) {
                have_version = 1;

                if (qlcf->api_version == NULL
                    || ngx_http_complex_value(r, qlcf->api_version, &version)
                       != NGX_OK)
                {
                    ngx_str_null(&version);
                }
            }

            if (version.len != rule->version.len
                || ngx_strncmp(version.data, rule->version.data, version.len)
                   != 0)
            {
                continue;
            }
        }

        return rule;
    }

    return NULL;
}


static ngx_int_t
ngx_http_quota_auth_holds(ngx_http_request_t *r,
    ngx_http_quota_loc_conf_t *qlcf, ngx_uint_t auth)
{
    ngx_uint_t  authorization;

    authorization = (r->headers_in.authorization != NULL);

    switch (auth) {

    case NGX_HTTP_QUOTA_AUTH_HEADER:
        return authorization;

    case NGX_HTTP_QUOTA_AUTH_COOKIE:
        return !authorization && ngx_http_quota_has_cookie(r);

    case NGX_HTTP_QUOTA_AUTH_APIKEY:
        return ngx_http_quota_has_header(r, &qlcf->apikey_header);

    case NGX_HTTP_QUOTA_AUTH_NONE:
        return !authorization && !ngx_http_quota_has_cookie(r)
               && !ngx_http_quota_has_header(r, &qlcf->apikey_header);

    default:
        return 1;
    }
}


static ngx_int_t
ngx_http_quota_has_cookie(ngx_http_request_t *r)
{
#if (nginx_version >= 1023000)
    return r->headers_in.cookie != NULL;
#else
    return r->headers_in.cookies.nelts != 0;
#endif
}


static ngx_int_t
ngx_http_quota_has_header(ngx_http_request_t *r, ngx_str_t *name)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return 0;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == name->len
            && ngx_strncasecmp(h[i].key.data, name->data, name->len) == 0)
        {
            return 1;
        }
    }
}

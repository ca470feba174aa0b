
/*
 * The API's own JSON (SPEC section 13): quota_usage_body,
 * quota_alerts_item, quota_live_body and quota_rejection_body.
 *
 * A template is a complex value.  It is rendered after the report, the
 * alert or the decision is in, with ngx_http_quota_current_view pointing
 * at what its variables read (rendering is synchronous: nothing else runs
 * in the worker meanwhile).  The rendered text is parsed with yajl before
 * it is sent: a body that is not one valid JSON value is a configuration
 * bug, answered with 500 and logged with the template's file:line, never
 * sent.
 *
 * A template naming a per-metric variable of an undeclared metric fails
 * nginx -t (checked when the http block is read, so quota_metric may come
 * after the template).
 */


#include "ngx_http_quota_module.h"

#include <yajl/yajl_parse.h>


static ngx_http_quota_body_tpl_t *ngx_http_quota_body_compile(
    ngx_conf_t *cf, ngx_str_t *value);
static ngx_int_t ngx_http_quota_template_check(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf, ngx_http_quota_body_tpl_t *tpl);
static ngx_int_t ngx_http_quota_template_name(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf, ngx_http_quota_body_tpl_t *tpl,
    ngx_str_t *name);
static ngx_int_t ngx_http_quota_variable_exists(ngx_conf_t *cf,
    u_char *name, size_t len);
static ngx_int_t ngx_http_quota_json_valid(ngx_http_request_t *r,
    ngx_http_quota_body_tpl_t *tpl, ngx_str_t *body);


/* the loc conf's rejection[] has one slot per error kind: a new kind
   without a new slot fails the build */
typedef char  ngx_http_quota_rejection_slots_t[
    NGX_HTTP_QUOTA_ERRORS == NGX_HTTP_QUOTA_ERROR_COUNT ? 1 : -1];


ngx_str_t  ngx_http_quota_template_error_body = ngx_string(
    "{\"error\":\"INTERNAL_ERROR\",\"message\":\"Internal error.\"}");


/* the per-metric variable families: "quota_FAMILY_METRIC" */
static ngx_str_t  ngx_http_quota_families[] = {
    ngx_string("quota_used_"),
    ngx_string("quota_limit_"),
    ngx_string("quota_remaining_"),
    ngx_string("quota_overage_"),
    ngx_string("quota_percent_"),
    ngx_string("quota_daily_"),
    ngx_null_string
};


/* what the template being rendered reads; NULL between renderings */
static ngx_http_quota_view_t  *ngx_http_quota_current_view;


/* quota_usage_body, quota_alerts_item, quota_live_body: the field comes
   in cmd->offset */
char *
ngx_http_quota_body_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    char  *p = conf;

    ngx_str_t                   *value;
    ngx_http_quota_body_tpl_t  **field;

    field = (ngx_http_quota_body_tpl_t **) (p + cmd->offset);

    if (*field != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;

    *field = ngx_http_quota_body_compile(cf, &value[1]);

    if (*field == NULL) {
        return NGX_CONF_ERROR;
    }

    /* a live frame that does not render is dropped, not answered */
    (*field)->frame = (cmd->offset
                       == offsetof(ngx_http_quota_loc_conf_t, live_body));

    return NGX_CONF_OK;
}


/* quota_rejection_body ERROR VALUE */
char *
ngx_http_quota_rejection_body_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_quota_loc_conf_t *qlcf = conf;

    ngx_str_t   *value;
    ngx_uint_t   i;

    value = cf->args->elts;

    for (i = 0; i < NGX_HTTP_QUOTA_ERROR_COUNT; i++) {
        if (value[1].len == ngx_http_quota_errors[i].name.len
            && ngx_strncmp(value[1].data, ngx_http_quota_errors[i].name.data,
                           value[1].len) == 0)
        {
            break;
        }
    }

    if (i == NGX_HTTP_QUOTA_ERROR_COUNT) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "unknown error \"%V\": use one of "
                           "QUOTA_EXCEEDED, SPENDING_CAP_REACHED, "
                           "ACCOUNT_SUSPENDED, UNKNOWN_TENANT, RATE_LIMITED, "
                           "CONCURRENCY_LIMIT, BAD_TENANT, BAD_COST, "
                           "MISSING_TENANT, METHOD_NOT_ALLOWED, "
                           "QUOTA_UNAVAILABLE", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (qlcf->rejection[i] != NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" for %V is duplicate", &cmd->name,
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    qlcf->rejection[i] = ngx_http_quota_body_compile(cf, &value[2]);

    return qlcf->rejection[i] ? NGX_CONF_OK : NGX_CONF_ERROR;
}


static ngx_http_quota_body_tpl_t *
ngx_http_quota_body_compile(ngx_conf_t *cf, ngx_str_t *value)
{
    ngx_http_quota_body_tpl_t         *tpl, **t;
    ngx_http_quota_main_conf_t        *qmcf;
    ngx_http_compile_complex_value_t   ccv;

    if (value->len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "empty body template");
        return NULL;
    }

    tpl = ngx_pcalloc(cf->pool, sizeof(ngx_http_quota_body_tpl_t));
    if (tpl == NULL) {
        return NULL;
    }

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = value;
    ccv.complex_value = &tpl->value;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NULL;
    }

    tpl->file = cf->conf_file->file.name;
    tpl->line = cf->conf_file->line;
    tpl->daily = (ngx_strlcasestrn(value->data, value->data + value->len,
                                   (u_char *) "quota_daily_", 12 - 1)
                  != NULL);

    qmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_quota_module);

    if (qmcf->templates == NULL) {
        qmcf->templates = ngx_array_create(cf->pool, 4, sizeof(void *));
        if (qmcf->templates == NULL) {
            return NULL;
        }
    }

    t = ngx_array_push(qmcf->templates);
    if (t == NULL) {
        return NULL;
    }

    *t = tpl;

    return tpl;
}


/* every template: its per-metric variables name declared metrics */
ngx_int_t
ngx_http_quota_templates_check(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf)
{
    ngx_uint_t                   i;
    ngx_http_quota_body_tpl_t  **tpl;

    if (qmcf->templates == NULL) {
        return NGX_OK;
    }

    tpl = qmcf->templates->elts;

    for (i = 0; i < qmcf->templates->nelts; i++) {
        if (ngx_http_quota_template_check(cf, qmcf, tpl[i]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* at the merge: quota_live_body is read by quota_live only */
ngx_int_t
ngx_http_quota_live_body_check(ngx_conf_t *cf,
    ngx_http_quota_loc_conf_t *qlcf)
{
    ngx_http_core_loc_conf_t  *clcf;

    if (qlcf->live_body == NULL) {
        return NGX_OK;
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler == ngx_http_quota_live_handler) {
        return NGX_OK;
    }

    ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                  "\"quota_live_body\" in %V:%ui needs \"quota_live\" in "
                  "the same location", &qlcf->live_body->file,
                  qlcf->live_body->line);

    return NGX_ERROR;
}


/* the variable names of a template's source, as nginx's script reads them */
static ngx_int_t
ngx_http_quota_template_check(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf, ngx_http_quota_body_tpl_t *tpl)
{
    u_char     *p, *last;
    ngx_str_t   name;

    p = tpl->value.value.data;
    last = p + tpl->value.value.len;

    while (p < last) {
        if (*p++ != '$') {
            continue;
        }

        if (p < last && *p == '{') {
            name.data = ++p;

            while (p < last && *p != '}') {
                p++;
            }

        } else {
            name.data = p;

            while (p < last
                   && ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
                       || (*p >= '0' && *p <= '9') || *p == '_'))
            {
                p++;
            }
        }

        name.len = p - name.data;

        if (ngx_http_quota_template_name(cf, qmcf, tpl, &name) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* "quota_[json_]FAMILY_METRIC": METRIC must be declared */
static ngx_int_t
ngx_http_quota_template_name(ngx_conf_t *cf, ngx_http_quota_main_conf_t *qmcf,
    ngx_http_quota_body_tpl_t *tpl, ngx_str_t *name)
{
    u_char      buf[128];
    ngx_str_t   s, metric, *f;

    if (name->len < sizeof("quota_") - 1 || name->len > sizeof(buf) - 8) {
        return NGX_OK;
    }

    ngx_strlow(buf, name->data, name->len);
    s.data = buf;
    s.len = name->len;

    if (s.len > 11 && ngx_strncmp(buf, "quota_json_", 11) == 0) {
        /* $quota_json_used_scans quotes $quota_used_scans */
        ngx_memmove(buf + 6, buf + 11, s.len - 11);   /* they overlap */
        s.len -= 5;

        /* a typo would quote nothing: null in every answer */
        if (ngx_http_quota_variable_exists(cf, buf, s.len) != NGX_OK) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"$%V\" in a body template: there is no "
                          "variable \"$%*s\", in %V:%ui",
                          name, s.len, buf, &tpl->file, tpl->line);
            return NGX_ERROR;
        }
    }

    if (s.len == sizeof("quota_overage_enabled") - 1
        && ngx_strncmp(buf, "quota_overage_enabled", s.len) == 0)
    {
        return NGX_OK;
    }

    for (f = ngx_http_quota_families; f->len; f++) {
        if (s.len <= f->len || ngx_strncmp(buf, f->data, f->len) != 0) {
            continue;
        }

        metric.data = name->data + name->len - (s.len - f->len);
        metric.len = s.len - f->len;

        if (ngx_http_quota_metric_index(qmcf, &metric) != NGX_ERROR) {
            return NGX_OK;
        }

        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"$%V\" in a body template: \"%V\" is not a "
                      "declared quota_metric, in %V:%ui",
                      name, &metric, &tpl->file, tpl->line);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* a variable nginx knows by now (all are added before init_main_conf) */
static ngx_int_t
ngx_http_quota_variable_exists(ngx_conf_t *cf, u_char *name, size_t len)
{
    ngx_uint_t                  i;
    ngx_hash_key_t             *key;
    ngx_http_variable_t        *pv;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    key = cmcf->variables_keys->keys.elts;

    for (i = 0; i < cmcf->variables_keys->keys.nelts; i++) {
        if (key[i].key.len == len
            && ngx_strncmp(key[i].key.data, name, len) == 0)
        {
            return NGX_OK;
        }
    }

    pv = cmcf->prefix_variables.elts;

    for (i = 0; i < cmcf->prefix_variables.nelts; i++) {
        if (len > pv[i].name.len
            && ngx_strncmp(pv[i].name.data, name, pv[i].name.len) == 0)
        {
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


/*
 * Renders tpl with view; NGX_DECLINED: the result is not valid JSON
 * (logged with the template's file:line).
 */
ngx_int_t
ngx_http_quota_render(ngx_http_request_t *r, ngx_http_quota_body_tpl_t *tpl,
    ngx_http_quota_view_t *view, ngx_str_t *body)
{
    ngx_int_t  rc;

    view->request = r;
    ngx_http_quota_current_view = view;

    rc = ngx_http_complex_value(r, &tpl->value, body);

    ngx_http_quota_current_view = NULL;

    if (rc != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_quota_json_valid(r, tpl, body);
}


/* one JSON value, nothing after it, strings valid UTF-8 */
static ngx_int_t
ngx_http_quota_json_valid(ngx_http_request_t *r,
    ngx_http_quota_body_tpl_t *tpl, ngx_str_t *body)
{
    u_char        *err;
    size_t         len;
    yajl_handle    h;
    yajl_status    st;

    /* no callbacks: the parser only checks */
    h = yajl_alloc(NULL, NULL, NULL);
    if (h == NULL) {
        return NGX_ERROR;
    }

    st = body->len ? yajl_parse(h, body->data, body->len) : yajl_status_ok;

    if (st == yajl_status_ok) {
        st = yajl_complete_parse(h);
    }

    if (st == yajl_status_ok) {
        yajl_free(h);
        return NGX_OK;
    }

    err = yajl_get_error(h, 0, body->data, body->len);
    len = err ? ngx_strlen(err) : 0;

    /* yajl ends its message with a line break: one log line */
    while (len && (err[len - 1] == LF || err[len - 1] == CR
                   || err[len - 1] == '.'))
    {
        len--;
    }

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "quota: the body template in %V:%ui rendered invalid "
                  "JSON for this request (%*s): %s",
                  &tpl->file, tpl->line, len, err ? err : (u_char *) "",
                  tpl->frame ? "frame not sent" : "answering 500");

    if (err) {
        yajl_free_error(h, err);
    }

    yajl_free(h);

    return NGX_DECLINED;
}


/* {"alerts":[ITEM,...],"total":N,"page":N,"per_page":N}: items are valid */
ngx_int_t
ngx_http_quota_alerts_envelope(ngx_http_request_t *r, ngx_array_t *items,
    ngx_uint_t total, ngx_uint_t page, ngx_uint_t per_page, ngx_str_t *body)
{
    u_char      *p;
    size_t       len;
    ngx_str_t   *item;
    ngx_uint_t   i;

    item = items->elts;
    len = sizeof("{\"alerts\":[],\"total\":,\"page\":,\"per_page\":}") - 1
          + 3 * NGX_INT_T_LEN;

    for (i = 0; i < items->nelts; i++) {
        len += item[i].len + 1;
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    body->data = p;
    p = ngx_cpymem(p, "{\"alerts\":[", sizeof("{\"alerts\":[") - 1);

    for (i = 0; i < items->nelts; i++) {
        if (i) {
            *p++ = ',';
        }

        p = ngx_cpymem(p, item[i].data, item[i].len);
    }

    p = ngx_sprintf(p, "],\"total\":%ui,\"page\":%ui,\"per_page\":%ui}",
                    total, page, per_page);

    body->len = p - body->data;

    return NGX_OK;
}


/* what a variable reads: the template being rendered, or the request's */
ngx_http_quota_view_t *
ngx_http_quota_view(ngx_http_request_t *r, ngx_http_quota_view_t *tmp)
{
    ngx_http_quota_ctx_t  *ctx;

    if (ngx_http_quota_current_view
        && (ngx_http_quota_current_view->request == r
            || ngx_http_quota_current_view->request == r->main))
    {
        return ngx_http_quota_current_view;
    }

    ctx = ngx_http_quota_get_ctx(r->main);
    if (ctx == NULL) {
        return NULL;
    }

    ngx_memzero(tmp, sizeof(ngx_http_quota_view_t));
    tmp->request = r;
    tmp->ctx = ctx;

    return tmp;
}


/*
 * ngx_http_quota_module: usage-based quotas enforced at the gateway.
 *
 * Module definition: command table, configuration create/merge,
 * postconfiguration and per-worker init/exit.  The work is done by the
 * files under src/ (see src/ngx_http_quota_module.h for the map).
 *
 * Why the precontent phase: a dynamically loaded ACCESS handler runs before
 * allow/deny, auth_basic and auth_request (handlers of a phase run in
 * reverse registration order and dynamic modules register last), so it
 * would charge requests that are about to be refused.  ngx_module_order can
 * move it behind them under "satisfy all", but under "satisfy any" the
 * access phase stops at the first handler that grants access, so the quota
 * handler would be skipped for every allowed request.  PRECONTENT runs
 * after all access checks in both modes, sees auth_request_set variables,
 * and still runs before proxy_pass or any content handler touches the
 * upstream.
 */


#include "ngx_http_quota_module.h"
#include "ngx_http_quota_zone.h"


static ngx_int_t ngx_http_quota_preconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_quota_postconfiguration(ngx_conf_t *cf);
static void *ngx_http_quota_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_quota_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_quota_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_quota_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_quota_enable(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_quota_header_name(ngx_conf_t *cf, ngx_str_t *prefix,
    const char *suffix, ngx_str_t *name);
static ngx_int_t ngx_http_quota_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_quota_init_process(ngx_cycle_t *cycle);
static void ngx_http_quota_exit_process(ngx_cycle_t *cycle);


static ngx_conf_enum_t  ngx_http_quota_failure_modes[] = {
    { ngx_string("open"), NGX_HTTP_QUOTA_FAIL_OPEN },
    { ngx_string("closed"), NGX_HTTP_QUOTA_FAIL_CLOSED },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_http_quota_events_modes[] = {
    { ngx_string("off"), NGX_HTTP_QUOTA_EVENTS_OFF },
    { ngx_string("alerts"), NGX_HTTP_QUOTA_EVENTS_ALERTS },
    { ngx_string("on"), NGX_HTTP_QUOTA_EVENTS_ON },
    { ngx_null_string, 0 }
};


/* like limit_req_status: only error statuses make sense */
static ngx_conf_num_bounds_t  ngx_http_quota_status_bounds = {
    ngx_conf_check_num_bounds, 400, 599
};


static ngx_conf_post_t  ngx_http_quota_header_prefix_post = {
    ngx_http_quota_header_prefix_check
};


/* where the first "quota on" is, to point at it when quota_redis is missing */
static ngx_str_t   ngx_http_quota_on_file;
static ngx_uint_t  ngx_http_quota_on_line;


static ngx_command_t  ngx_http_quota_commands[] = {

    { ngx_string("quota_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_quota_redis_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("quota_redis_sentinel"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_quota_redis_sentinel_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("quota_redis_cluster"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_quota_redis_cluster_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("quota_redis_ssl"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_quota_main_conf_t, redis_ssl),
      NULL },

    { ngx_string("quota_redis_ssl_verify"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_http_quota_redis_ssl_verify_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_quota_main_conf_t, redis_ssl_verify),
      NULL },

    { ngx_string("quota_redis_ssl_verify_depth"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_quota_main_conf_t, redis_ssl_verify_depth),
      NULL },

    { ngx_string("quota_redis_ssl_trusted_certificate"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_quota_redis_ssl_file_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_quota_main_conf_t, redis_ssl_trusted_certificate),
      NULL },

    { ngx_string("quota_redis_ssl_certificate"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_quota_redis_ssl_file_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_quota_main_conf_t, redis_ssl_certificate),
      NULL },

    { ngx_string("quota_redis_ssl_certificate_key"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_quota_redis_ssl_file_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_quota_main_conf_t, redis_ssl_certificate_key),
      NULL },

    { ngx_string("quota_redis_ssl_name"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_quota_main_conf_t, redis_ssl_name),
      NULL },

    { ngx_string("quota_redis_prefix"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_quota_main_conf_t, prefix),
      NULL },

    { ngx_string("quota_metric"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_http_quota_metric_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("quota_plan"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_BLOCK|NGX_CONF_TAKE1,
      ngx_http_quota_plan_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("quota_default_plan"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_quota_default_plan_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("quota"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_http_quota_enable,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_quota_loc_conf_t, enable),
      NULL },

    { ngx_string("quota_failure_mode"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_quota_loc_conf_t, failure_mode),
      &ngx_http_quota_failure_modes },

    { ngx_string("quota_tenant"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE12,
      ngx_http_quota_tenant_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("quota_route"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_2MORE,
      ngx_http_quota_route_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("quota_apikey_header"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_quota_loc_conf_t, apikey_header),
      NULL },

    { ngx_string("quota_api_version"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_quota_loc_conf_t, api_version),
      NULL },

    { ngx_string("quota_status"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_quota_loc_conf_t, status),
      &ngx_http_quota_status_bounds },

    { ngx_string("quota_rate_status"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_quota_loc_conf_t, rate_status),
      &ngx_http_quota_status_bounds },

    { ngx_string("quota_headers"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_quota_loc_conf_t, headers),
      NULL },

    { ngx_string("quota_header_prefix"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_quota_loc_conf_t, header_prefix),
      &ngx_http_quota_header_prefix_post },

    { ngx_string("quota_require_account"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_quota_loc_conf_t, require_account),
      NULL },

    { ngx_string("quota_bypass"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_set_predicate_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_quota_loc_conf_t, bypass),
      NULL },

    { ngx_string("quota_dry_run"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_quota_loc_conf_t, dry_run),
      NULL },

    { ngx_string("quota_warning_threshold"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_quota_percent_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_quota_loc_conf_t, warning_threshold),
      NULL },

    { ngx_string("quota_warning_header"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE2,
      ngx_http_quota_warning_header_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("quota_ratelimit_headers"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_quota_loc_conf_t, ratelimit_headers),
      NULL },

    { ngx_string("quota_reconcile"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE2,
      ngx_http_quota_reconcile_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("quota_events"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_quota_main_conf_t, events),
      &ngx_http_quota_events_modes },

    { ngx_string("quota_live"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS|NGX_CONF_TAKE1,
      ngx_http_quota_live_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      ngx_http_quota_live_handler },

    { ngx_string("quota_usage"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_quota_endpoint_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      ngx_http_quota_usage_handler },

    { ngx_string("quota_alerts"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_quota_endpoint_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      ngx_http_quota_alerts_handler },

    { ngx_string("quota_usage_body"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_quota_body_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_quota_loc_conf_t, usage_body),
      NULL },

    { ngx_string("quota_alerts_item"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_quota_body_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_quota_loc_conf_t, alerts_item),
      NULL },

    { ngx_string("quota_live_body"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_quota_body_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_quota_loc_conf_t, live_body),
      NULL },

    { ngx_string("quota_rejection_body"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE2,
      ngx_http_quota_rejection_body_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("quota_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_quota_zone_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("quota_reject_cache"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_quota_reject_cache_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_quota_loc_conf_t, reject_cache),
      NULL },

    { ngx_string("quota_lease"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE12,
      ngx_http_quota_lease_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("quota_fallback"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_http_quota_fallback_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("quota_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_quota_endpoint_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      ngx_http_quota_metrics_handler },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_quota_module_ctx = {
    ngx_http_quota_preconfiguration,       /* preconfiguration */
    ngx_http_quota_postconfiguration,      /* postconfiguration */

    ngx_http_quota_create_main_conf,       /* create main configuration */
    ngx_http_quota_init_main_conf,         /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_quota_create_loc_conf,        /* create location configuration */
    ngx_http_quota_merge_loc_conf          /* merge location configuration */
};


ngx_module_t  ngx_http_quota_module = {
    NGX_MODULE_V1,
    &ngx_http_quota_module_ctx,            /* module context */
    ngx_http_quota_commands,               /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_http_quota_init_module,            /* init module */
    ngx_http_quota_init_process,           /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_quota_exit_process,           /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_int_t
ngx_http_quota_preconfiguration(ngx_conf_t *cf)
{
    ngx_str_null(&ngx_http_quota_on_file);
    ngx_http_quota_on_line = 0;

    return ngx_http_quota_add_variables(cf);
}


static ngx_int_t
ngx_http_quota_postconfiguration(ngx_conf_t *cf)
{
    ngx_http_handler_pt         *h;
    ngx_http_core_main_conf_t   *cmcf;
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_quota_module);

    if (qmcf->enabled_somewhere && !qmcf->redis_configured) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"quota on\" in %V:%ui needs \"quota_redis\" "
                      "in the http block",
                      &ngx_http_quota_on_file, ngx_http_quota_on_line);
        return NGX_ERROR;
    }

    if (qmcf->endpoint_line && !qmcf->redis_configured) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"%V\" in %V:%ui needs \"quota_redis\" "
                      "in the http block", &qmcf->endpoint_name,
                      &qmcf->endpoint_file, qmcf->endpoint_line);
        return NGX_ERROR;
    }

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_PRECONTENT_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_quota_handler;

    /* quota_reconcile and the release of in-flight slots run after the
       response, in the log phase */
    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_quota_log_handler;

    if (ngx_http_quota_lease_init_conf(cf) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_quota_headers_init(cf);
}


static void *
ngx_http_quota_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_quota_main_conf_t));
    if (qmcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     qmcf->redis_addr = { NULL, 0, { 0, NULL } };
     *     qmcf->redis_host = { 0, NULL };
     *     qmcf->redis_user = { 0, NULL };
     *     qmcf->redis_password = { 0, NULL };
     *     qmcf->redis_ssl_* files and name = { 0, NULL };
     *     qmcf->redis_configured = 0;
     *     qmcf->prefix = { 0, NULL };
     *     qmcf->enabled_somewhere = 0;
     *     qmcf->worker = NULL;
     */

    qmcf->redis_ssl = NGX_CONF_UNSET;
    qmcf->redis_ssl_verify = NGX_CONF_UNSET;
    qmcf->redis_ssl_verify_depth = NGX_CONF_UNSET;
    qmcf->redis_db = 0;
    qmcf->redis_timeout = 100;
    qmcf->redis_connect_timeout = 1000;
    qmcf->redis_pool = 1;
    qmcf->default_plan = -1;
    qmcf->fallback_nodes = NGX_CONF_UNSET_UINT;
    qmcf->events = NGX_CONF_UNSET_UINT;

    if (ngx_array_init(&qmcf->metrics, cf->pool, 4,
                       sizeof(ngx_http_quota_metric_t))
        != NGX_OK)
    {
        return NULL;
    }

    if (ngx_array_init(&qmcf->plans, cf->pool, 4,
                       sizeof(ngx_http_quota_plan_t))
        != NGX_OK)
    {
        return NULL;
    }

    if (ngx_array_init(&qmcf->rule_sets, cf->pool, 4, sizeof(ngx_array_t *))
        != NGX_OK)
    {
        return NULL;
    }

    return qmcf;
}


static char *
ngx_http_quota_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_quota_main_conf_t  *qmcf = conf;

    if (qmcf->prefix.data == NULL) {
        ngx_str_set(&qmcf->prefix, "quota:");
    }

    if (qmcf->events == NGX_CONF_UNSET_UINT) {
        qmcf->events = NGX_HTTP_QUOTA_EVENTS_ALERTS;
    }

    if (qmcf->live) {
        /* SPEC 11: live clients see every charge, as quota_events on */
        qmcf->events = NGX_HTTP_QUOTA_EVENTS_ON;
    }

    if (ngx_http_quota_script_init(cf, qmcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_http_quota_templates_check(cf, qmcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_http_quota_redis_ssl_init(cf, qmcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_http_quota_zone_check(cf, qmcf) != NGX_OK
        || ngx_http_quota_fallback_init_conf(cf, qmcf) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static void *
ngx_http_quota_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_quota_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_quota_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->tenant = NULL;
     *     conf->rules = NULL;
     *     conf->apikey_header = { 0, NULL };
     *     conf->api_version = NULL;
     *     conf->header_prefix = { 0, NULL };
     */

    conf->enable = NGX_CONF_UNSET;
    conf->failure_mode = NGX_CONF_UNSET_UINT;
    conf->tenant_hash = NGX_CONF_UNSET;
    conf->status = NGX_CONF_UNSET_UINT;
    conf->rate_status = NGX_CONF_UNSET_UINT;
    conf->headers = NGX_CONF_UNSET;
    conf->require_account = NGX_CONF_UNSET;
    conf->bypass = NGX_CONF_UNSET_PTR;
    conf->dry_run = NGX_CONF_UNSET;
    conf->live_ping = NGX_CONF_UNSET_MSEC;
    conf->reject_cache = NGX_CONF_UNSET_MSEC;
    conf->warning_threshold = NGX_CONF_UNSET_UINT;
    conf->ratelimit_headers = NGX_CONF_UNSET;
    conf->lease_mode = NGX_CONF_UNSET_UINT;

    return conf;
}


static char *
ngx_http_quota_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_quota_loc_conf_t *prev = parent;
    ngx_http_quota_loc_conf_t *conf = child;

    ngx_uint_t  i;

    ngx_conf_merge_value(conf->enable, prev->enable, 0);
    ngx_conf_merge_uint_value(conf->failure_mode, prev->failure_mode,
                              NGX_HTTP_QUOTA_FAIL_OPEN);

    if (conf->tenant == NULL) {
        conf->tenant = prev->tenant;
        conf->tenant_hash = prev->tenant_hash;
    }

    ngx_conf_merge_value(conf->tenant_hash, prev->tenant_hash, 0);

    if (ngx_http_quota_reconcile_check(cf, conf) != NGX_OK
        || ngx_http_quota_live_body_check(cf, conf) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    /* a level's own rules replace the inherited ones, as add_header does */
    if (conf->rules == NULL) {
        conf->rules = prev->rules;
    }

    ngx_conf_merge_str_value(conf->apikey_header, prev->apikey_header,
                             "X-API-Key");

    if (conf->api_version == NULL) {
        conf->api_version = prev->api_version;
    }

    ngx_conf_merge_uint_value(conf->status, prev->status, 402);
    ngx_conf_merge_uint_value(conf->rate_status, prev->rate_status, 429);
    ngx_conf_merge_value(conf->headers, prev->headers, 1);
    ngx_conf_merge_str_value(conf->header_prefix, prev->header_prefix,
                             "X-Quota-");
    ngx_conf_merge_value(conf->require_account, prev->require_account, 0);
    ngx_conf_merge_ptr_value(conf->bypass, prev->bypass, NULL);
    ngx_conf_merge_value(conf->dry_run, prev->dry_run, 0);
    ngx_conf_merge_msec_value(conf->live_ping, prev->live_ping, 30000);
    ngx_conf_merge_msec_value(conf->reject_cache, prev->reject_cache, 0);
    ngx_conf_merge_uint_value(conf->warning_threshold,
                              prev->warning_threshold, 80);
    ngx_conf_merge_value(conf->ratelimit_headers, prev->ratelimit_headers, 0);

    if (ngx_http_quota_lease_merge(cf, prev, conf) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    if (conf->warning_value == NULL) {
        conf->warning_name = prev->warning_name;
        conf->warning_value = prev->warning_value;
    }

    if (conf->reconcile == NULL) {
        conf->reconcile = prev->reconcile;
    }

    /* each kind of rejection inherits its own body template */
    for (i = 0; i < NGX_HTTP_QUOTA_ERRORS; i++) {
        if (conf->rejection[i] == NULL) {
            conf->rejection[i] = prev->rejection[i];
        }
    }

    if (conf->header_prefix.data == prev->header_prefix.data
        && prev->hdr_limit.data != NULL)
    {
        conf->hdr_limit = prev->hdr_limit;
        conf->hdr_remaining = prev->hdr_remaining;
        conf->hdr_reset = prev->hdr_reset;
        conf->hdr_used = prev->hdr_used;

    } else {
        if (ngx_http_quota_header_name(cf, &conf->header_prefix, "Limit",
                                       &conf->hdr_limit) != NGX_CONF_OK
            || ngx_http_quota_header_name(cf, &conf->header_prefix,
                                          "Remaining", &conf->hdr_remaining)
               != NGX_CONF_OK
            || ngx_http_quota_header_name(cf, &conf->header_prefix, "Reset",
                                          &conf->hdr_reset) != NGX_CONF_OK
            || ngx_http_quota_header_name(cf, &conf->header_prefix, "Used",
                                          &conf->hdr_used) != NGX_CONF_OK)
        {
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_quota_header_name(ngx_conf_t *cf, ngx_str_t *prefix,
    const char *suffix, ngx_str_t *name)
{
    size_t  len;

    len = ngx_strlen(suffix);

    name->len = prefix->len + len;
    name->data = ngx_pnalloc(cf->pool, name->len);
    if (name->data == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(ngx_cpymem(name->data, prefix->data, prefix->len), suffix, len);

    return NGX_CONF_OK;
}


static char *
ngx_http_quota_enable(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char                        *rv;
    ngx_http_quota_loc_conf_t   *qlcf = conf;
    ngx_http_quota_main_conf_t  *qmcf;

    rv = ngx_conf_set_flag_slot(cf, cmd, conf);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    if (qlcf->enable) {
        qmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_quota_module);

        if (!qmcf->enabled_somewhere) {
            qmcf->enabled_somewhere = 1;
            ngx_http_quota_on_file = cf->conf_file->file.name;
            ngx_http_quota_on_line = cf->conf_file->line;
        }
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_quota_init_module(ngx_cycle_t *cycle)
{
    /* at every start and reload, next to nginx's own "nginx/1.22.1"
       notice, so a bug report's log names the module version */
    if (!ngx_test_config) {
        ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                      "ngx_http_quota_module/" NGX_HTTP_QUOTA_VERSION);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_quota_init_process(ngx_cycle_t *cycle)
{
    ngx_http_quota_main_conf_t  *qmcf;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    qmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_quota_module);

    if (qmcf == NULL || !qmcf->redis_configured
        || (!qmcf->enabled_somewhere && qmcf->endpoint_line == 0))
    {
        return NGX_OK;
    }

    /*
     * nginx last updated its cached clock when ngx_init_cycle() began, before
     * the configuration was read (and a worker inherits the master's): the
     * connect timers and the hold window armed below must count from now,
     * or a configuration that took connect_timeout= to read leaves the first
     * connection timed out before its handshake could answer
     */
    ngx_time_update();

    if (ngx_http_quota_script_init_worker(cycle->log) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_quota_lease_init_worker(cycle, qmcf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_quota_redis_init_worker(cycle, qmcf) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_quota_fallback_init_worker(cycle, qmcf);
}


static void
ngx_http_quota_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_quota_main_conf_t  *qmcf;

    qmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_quota_module);

    if (qmcf != NULL && qmcf->worker != NULL) {
        ngx_http_quota_live_exit_worker();
        ngx_http_quota_redis_exit_worker(qmcf);
        ngx_http_quota_lease_exit_worker();
        ngx_http_quota_fallback_exit_worker();
    }

    ngx_http_quota_anchor_exit_worker();
}

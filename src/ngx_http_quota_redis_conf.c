
/*
 * quota_redis ADDRESS [user=U] [password=S] [db=N] [timeout=T]
 *             [connect_timeout=T] [pool=N];
 * quota_redis_sentinel ADDRESS... master=NAME [sentinel_password=S]
 *             [and the parameters of quota_redis];
 * quota_redis_cluster ADDRESS... [the parameters of quota_redis but db=];
 * and the file arguments of quota_redis_ssl_*.
 */


#include "ngx_http_quota_redis.h"


static char *ngx_http_quota_redis_address(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf, ngx_str_t *value);
static ngx_int_t ngx_http_quota_redis_param(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf, ngx_str_t *value);
static ngx_int_t ngx_http_quota_redis_msec(ngx_str_t *value, size_t skip,
    ngx_msec_t *ms);
static char *ngx_http_quota_redis_check(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf);
static char *ngx_http_quota_redis_sentinel_param(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf, ngx_str_t *value);
static char *ngx_http_quota_redis_other_mode(ngx_http_quota_main_conf_t *qmcf,
    ngx_uint_t mode);
static char *ngx_http_quota_redis_cluster_param(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf, ngx_str_t *value);

typedef char *(*ngx_http_quota_redis_param_pt)(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf, ngx_str_t *value);

static char *ngx_http_quota_redis_addresses(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf, ngx_uint_t mode, ngx_array_t **list,
    ngx_http_quota_redis_param_pt param, const char *what);


enum {
    NGX_HTTP_QUOTA_MODE_SINGLE = 0,
    NGX_HTTP_QUOTA_MODE_SENTINEL,
    NGX_HTTP_QUOTA_MODE_CLUSTER
};


char *
ngx_http_quota_redis_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_quota_main_conf_t *qmcf = conf;

    char        *rv;
    ngx_str_t   *value;
    ngx_uint_t   i;

    rv = ngx_http_quota_redis_other_mode(qmcf, NGX_HTTP_QUOTA_MODE_SINGLE);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    value = cf->args->elts;

    if (ngx_http_quota_redis_address(cf, qmcf, &value[1]) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    for (i = 2; i < cf->args->nelts; i++) {
        if (ngx_http_quota_redis_param(cf, qmcf, &value[i]) != NGX_OK) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\"", &value[i]);
            return NGX_CONF_ERROR;
        }
    }

    return ngx_http_quota_redis_check(cf, qmcf);
}


char *
ngx_http_quota_redis_sentinel_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_quota_main_conf_t *qmcf = conf;

    char  *rv;

    rv = ngx_http_quota_redis_addresses(cf, qmcf,
                                        NGX_HTTP_QUOTA_MODE_SENTINEL,
                                        &qmcf->redis_sentinels,
                                        ngx_http_quota_redis_sentinel_param,
                                        "sentinel");
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    if (qmcf->redis_master_name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"quota_redis_sentinel\" needs \"master=\"");
        return NGX_CONF_ERROR;
    }

    return ngx_http_quota_redis_check(cf, qmcf);
}


/* exactly one of quota_redis, quota_redis_sentinel, quota_redis_cluster */
static char *
ngx_http_quota_redis_other_mode(ngx_http_quota_main_conf_t *qmcf,
    ngx_uint_t mode)
{
    ngx_uint_t  set;

    if (!qmcf->redis_configured) {
        return NGX_CONF_OK;
    }

    set = qmcf->redis_sentinels ? NGX_HTTP_QUOTA_MODE_SENTINEL
          : qmcf->redis_cluster ? NGX_HTTP_QUOTA_MODE_CLUSTER
          : NGX_HTTP_QUOTA_MODE_SINGLE;

    if (set == mode) {
        return "is duplicate";
    }

    switch (set) {

    case NGX_HTTP_QUOTA_MODE_SENTINEL:
        return "cannot be used with \"quota_redis_sentinel\"";

    case NGX_HTTP_QUOTA_MODE_CLUSTER:
        return "cannot be used with \"quota_redis_cluster\"";

    default:
        return "cannot be used with \"quota_redis\"";
    }
}


char *
ngx_http_quota_redis_cluster_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_quota_main_conf_t *qmcf = conf;

    char  *rv;

    rv = ngx_http_quota_redis_addresses(cf, qmcf,
                                        NGX_HTTP_QUOTA_MODE_CLUSTER,
                                        &qmcf->redis_cluster,
                                        ngx_http_quota_redis_cluster_param,
                                        "node");
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    return ngx_http_quota_redis_check(cf, qmcf);
}


/*
 * The address list of quota_redis_sentinel or quota_redis_cluster: the
 * mode is exclusive, every argument goes through the mode's parameter
 * parser, and at least one address is named.
 */
static char *
ngx_http_quota_redis_addresses(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf, ngx_uint_t mode, ngx_array_t **list,
    ngx_http_quota_redis_param_pt param, const char *what)
{
    char        *rv;
    ngx_str_t   *value;
    ngx_uint_t   i;

    rv = ngx_http_quota_redis_other_mode(qmcf, mode);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    *list = ngx_array_create(cf->pool, 3, sizeof(ngx_addr_t));
    if (*list == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {
        if (param(cf, qmcf, &value[i]) != NGX_CONF_OK) {
            return NGX_CONF_ERROR;
        }
    }

    if ((*list)->nelts == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "no %s address in \"%V\"",
                           what, &value[0]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* a seed address (resolved now) or a parameter of quota_redis but db=:
   a cluster has database 0 only */
static char *
ngx_http_quota_redis_cluster_param(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf, ngx_str_t *value)
{
    ngx_url_t    u;
    ngx_addr_t  *a;

    if (ngx_strlchr(value->data, value->data + value->len, '=') != NULL) {
        if (ngx_strncmp(value->data, "db=", 3) == 0
            || ngx_http_quota_redis_param(cf, qmcf, value) != NGX_OK)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\"", value);
            return NGX_CONF_ERROR;
        }

        return NGX_CONF_OK;
    }

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = *value;
    u.default_port = 6379;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0
        || u.family == AF_UNIX)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%s in \"quota_redis_cluster %V\"",
                           u.err ? u.err
                           : u.family == AF_UNIX ? "a unix socket"
                           : "host not found", &u.url);
        return NGX_CONF_ERROR;
    }

    a = ngx_array_push(qmcf->redis_cluster);
    if (a == NULL) {
        return NGX_CONF_ERROR;
    }

    *a = u.addrs[0];

    if (qmcf->redis_host.len == 0) {
        /* the default TLS name: the nodes share one certificate name */
        qmcf->redis_host = u.host;
    }

    return NGX_CONF_OK;
}


/* an address (resolved now), master=, sentinel_password= or a parameter
   of quota_redis */
static char *
ngx_http_quota_redis_sentinel_param(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf, ngx_str_t *value)
{
    ngx_url_t    u;
    ngx_addr_t  *a;

    if (ngx_strncmp(value->data, "master=", 7) == 0 && value->len > 7) {
        qmcf->redis_master_name.len = value->len - 7;
        qmcf->redis_master_name.data = value->data + 7;
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value->data, "sentinel_password=", 18) == 0) {
        qmcf->redis_sentinel_password.len = value->len - 18;
        qmcf->redis_sentinel_password.data = value->data + 18;
        return NGX_CONF_OK;
    }

    if (ngx_strlchr(value->data, value->data + value->len, '=') != NULL) {
        if (ngx_http_quota_redis_param(cf, qmcf, value) != NGX_OK) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\"", value);
            return NGX_CONF_ERROR;
        }

        return NGX_CONF_OK;
    }

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = *value;
    u.default_port = 26379;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%s in \"quota_redis_sentinel %V\"",
                           u.err ? u.err : "host not found", &u.url);
        return NGX_CONF_ERROR;
    }

    a = ngx_array_push(qmcf->redis_sentinels);
    if (a == NULL) {
        return NGX_CONF_ERROR;
    }

    *a = u.addrs[0];

    if (qmcf->redis_host.len == 0 && u.family != AF_UNIX) {
        /* the default TLS name, for the sentinels and the master they
           name: they share one certificate name (else quota_redis_ssl_name) */
        qmcf->redis_host = u.host;
    }

    return NGX_CONF_OK;
}


/* what both directives need once parsed */
static char *
ngx_http_quota_redis_check(ngx_conf_t *cf, ngx_http_quota_main_conf_t *qmcf)
{
    if (qmcf->redis_user.len && qmcf->redis_password.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"user=\" needs \"password=\" in \"%V\"",
                           &((ngx_str_t *) cf->args->elts)[0]);
        return NGX_CONF_ERROR;
    }

    qmcf->redis_configured = 1;

    if (ngx_http_quota_stats_zone(cf, qmcf) != NGX_OK
        || ngx_http_quota_redis_stats_zone(cf, qmcf) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * Resolved now: a worker must never wait for DNS.  "unix:/path" is parsed
 * by ngx_parse_url() too; the host as written is the default TLS name.
 */
static char *
ngx_http_quota_redis_address(ngx_conf_t *cf, ngx_http_quota_main_conf_t *qmcf,
    ngx_str_t *value)
{
    ngx_url_t  u;

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = *value;
    u.default_port = 6379;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
        if (u.err) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%s in \"quota_redis %V\"", u.err, &u.url);
        }

        return NGX_CONF_ERROR;
    }

    if (u.naddrs == 0 || u.addrs == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "host not found in \"quota_redis %V\"", &u.url);
        return NGX_CONF_ERROR;
    }

    qmcf->redis_addr = u.addrs[0];

    if (u.family != AF_UNIX) {
        qmcf->redis_host = u.host;
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_quota_redis_param(ngx_conf_t *cf, ngx_http_quota_main_conf_t *qmcf,
    ngx_str_t *value)
{
    ngx_int_t  n;

    if (ngx_strncmp(value->data, "user=", 5) == 0 && value->len > 5) {
        qmcf->redis_user.len = value->len - 5;
        qmcf->redis_user.data = value->data + 5;
        return NGX_OK;
    }

    if (ngx_strncmp(value->data, "password=", 9) == 0) {
        qmcf->redis_password.len = value->len - 9;
        qmcf->redis_password.data = value->data + 9;
        return NGX_OK;
    }

    if (ngx_strncmp(value->data, "db=", 3) == 0) {
        n = ngx_atoi(value->data + 3, value->len - 3);
        if (n == NGX_ERROR) {
            return NGX_ERROR;
        }

        qmcf->redis_db = n;
        return NGX_OK;
    }

    if (ngx_strncmp(value->data, "timeout=", 8) == 0) {
        return ngx_http_quota_redis_msec(value, 8, &qmcf->redis_timeout);
    }

    if (ngx_strncmp(value->data, "connect_timeout=", 16) == 0) {
        return ngx_http_quota_redis_msec(value, 16,
                                         &qmcf->redis_connect_timeout);
    }

    if (ngx_strncmp(value->data, "pool=", 5) == 0) {
        n = ngx_atoi(value->data + 5, value->len - 5);
        if (n == NGX_ERROR || n < 1 || n > 64) {
            return NGX_ERROR;
        }

        qmcf->redis_pool = n;
        return NGX_OK;
    }

    return NGX_ERROR;
}


static ngx_int_t
ngx_http_quota_redis_msec(ngx_str_t *value, size_t skip, ngx_msec_t *ms)
{
    ngx_str_t   s;
    ngx_msec_t  t;

    s.len = value->len - skip;
    s.data = value->data + skip;

    t = ngx_parse_time(&s, 0);
    if (t == (ngx_msec_t) NGX_ERROR || t == 0) {
        return NGX_ERROR;
    }

    *ms = t;

    return NGX_OK;
}


/* a file of quota_redis_ssl_*: kept with where it was set, for the errors
   found when it is loaded after the whole configuration is read */
char *
ngx_http_quota_redis_ssl_file_slot(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_str_t                   *value;
    ngx_http_quota_conf_file_t  *f;

    f = (ngx_http_quota_conf_file_t *) ((char *) conf + cmd->offset);

    if (f->path.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 0) {
        return "takes a file name";
    }

    f->path = value[1];
    f->file = cf->conf_file->file.name;
    f->line = cf->conf_file->line;

    return NGX_CONF_OK;
}


/* quota_redis_ssl_verify on|off, remembering where for later errors */
char *
ngx_http_quota_redis_ssl_verify_slot(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_quota_main_conf_t *qmcf = conf;

    char  *rv;

    rv = ngx_conf_set_flag_slot(cf, cmd, conf);

    if (rv == NGX_CONF_OK) {
        qmcf->redis_ssl_verify_at.file = cf->conf_file->file.name;
        qmcf->redis_ssl_verify_at.line = cf->conf_file->line;
    }

    return rv;
}

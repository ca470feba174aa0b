
/*
 * TLS to Redis with nginx's OpenSSL, named and behaving like proxy_ssl_*:
 * one client SSL_CTX per configuration (ngx_ssl_create), one SSL per
 * connection (ngx_ssl_create_connection, ngx_ssl_handshake), SNI and the
 * name checked from quota_redis_ssl_name (default: the quota_redis host).
 *
 * With quota_redis_ssl_verify on, the chain is checked against
 * quota_redis_ssl_trusted_certificate up to quota_redis_ssl_verify_depth,
 * and the certificate must name the host: ngx_ssl_check_host() for a
 * name, X509_check_ip_asc() for an address (X509_check_host() only looks
 * at DNS names).  A failed check closes the connection: requests follow
 * quota_failure_mode while it reconnects with backoff.
 */


#include "ngx_http_quota_redis.h"


#if (NGX_SSL)

static ngx_int_t ngx_http_quota_redis_ssl_name(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf);
static ngx_int_t ngx_http_quota_redis_ssl_certs(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf, ngx_ssl_t *ssl);
static void ngx_http_quota_redis_ssl_handshaked(ngx_connection_t *c);
static void ngx_http_quota_redis_ssl_save(ngx_connection_t *c);
static ngx_int_t ngx_http_quota_redis_ssl_verify(
    ngx_http_quota_redis_conn_t *rc);

#endif


ngx_int_t
ngx_http_quota_redis_ssl_init(ngx_conf_t *cf, ngx_http_quota_main_conf_t *qmcf)
{
#if (NGX_SSL)
    ngx_ssl_t           *ssl;
    ngx_pool_cleanup_t  *cln;
    static ngx_str_t     ciphers = ngx_string("DEFAULT");
#endif

    ngx_conf_init_value(qmcf->redis_ssl, 0);
    ngx_conf_init_value(qmcf->redis_ssl_verify, 0);
    ngx_conf_init_value(qmcf->redis_ssl_verify_depth, 1);

    if (!qmcf->redis_ssl || !qmcf->redis_configured) {
        return NGX_OK;
    }

#if (NGX_SSL)

    ssl = ngx_pcalloc(cf->pool, sizeof(ngx_ssl_t));
    if (ssl == NULL) {
        return NGX_ERROR;
    }

    ssl->log = cf->log;

    if (ngx_ssl_create(ssl, NGX_SSL_TLSv1_2|NGX_SSL_TLSv1_3, NULL) != NGX_OK) {
        return NGX_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        ngx_ssl_cleanup_ctx(ssl);
        return NGX_ERROR;
    }

    cln->handler = ngx_ssl_cleanup_ctx;
    cln->data = ssl;

    /*
     * Our output buffer grows and moves between a write that would block
     * and its retry, and the retry may carry more bytes: allowed with
     * these modes (nginx's own buffer chains never need them).
     */
    SSL_CTX_set_mode(ssl->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE
                               |SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

    /* a reconnect resumes the last session (ssl_save below) */
    if (ngx_ssl_ciphers(cf, ssl, &ciphers, 0) != NGX_OK
        || ngx_ssl_client_session_cache(cf, ssl, 1) != NGX_OK
        || ngx_http_quota_redis_ssl_name(cf, qmcf) != NGX_OK
        || ngx_http_quota_redis_ssl_certs(cf, qmcf, ssl) != NGX_OK)
    {
        return NGX_ERROR;
    }

    qmcf->redis_ssl_ctx = ssl;

    return NGX_OK;

#else

    ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                  "\"quota_redis_ssl on\" needs nginx built with OpenSSL");
    return NGX_ERROR;

#endif
}


#if (NGX_SSL)

/* the name sent as SNI (not for an address) and checked on verify */
static ngx_int_t
ngx_http_quota_redis_ssl_name(ngx_conf_t *cf, ngx_http_quota_main_conf_t *qmcf)
{
    ngx_str_t  *name;

    name = qmcf->redis_ssl_name.len ? &qmcf->redis_ssl_name
                                    : &qmcf->redis_host;

    if (name->len == 0) {
        if (qmcf->redis_ssl_verify) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"quota_redis_ssl_verify\" in %V:%ui needs "
                          "\"quota_redis_ssl_name\" with a unix socket",
                          &qmcf->redis_ssl_verify_at.file,
                          qmcf->redis_ssl_verify_at.line);
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    if (name->len > 2 && name->data[0] == '[') {
        /* "[::1]" as written in quota_redis: the address inside */
        qmcf->redis_ssl_host_is_addr = 1;
        name->data++;
        name->len -= 2;
    }

    /* NUL-terminated for OpenSSL */
    qmcf->redis_ssl_host.data = ngx_pnalloc(cf->pool, name->len + 1);
    if (qmcf->redis_ssl_host.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(qmcf->redis_ssl_host.data, name->data, name->len);
    qmcf->redis_ssl_host.data[name->len] = '\0';
    qmcf->redis_ssl_host.len = name->len;

    if (ngx_inet_addr(name->data, name->len) != INADDR_NONE
        || ngx_strlchr(name->data, name->data + name->len, ':') != NULL)
    {
        qmcf->redis_ssl_host_is_addr = 1;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_quota_redis_ssl_certs(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf, ngx_ssl_t *ssl)
{
    ngx_http_quota_conf_file_t  *cert, *key, *trusted;

    cert = &qmcf->redis_ssl_certificate;
    key = &qmcf->redis_ssl_certificate_key;
    trusted = &qmcf->redis_ssl_trusted_certificate;

    if (cert->path.len && key->path.len == 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "no \"quota_redis_ssl_certificate_key\" for "
                      "\"quota_redis_ssl_certificate\" in %V:%ui",
                      &cert->file, cert->line);
        return NGX_ERROR;
    }

    if (key->path.len && cert->path.len == 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "no \"quota_redis_ssl_certificate\" for "
                      "\"quota_redis_ssl_certificate_key\" in %V:%ui",
                      &key->file, key->line);
        return NGX_ERROR;
    }

    if (cert->path.len
        && ngx_ssl_certificate(cf, ssl, &cert->path, &key->path, NULL)
           != NGX_OK)
    {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"quota_redis_ssl_certificate\" in %V:%ui (and its "
                      "key in %V:%ui) could not be loaded",
                      &cert->file, cert->line, &key->file, key->line);
        return NGX_ERROR;
    }

    if (!qmcf->redis_ssl_verify) {
        return NGX_OK;
    }

    if (trusted->path.len == 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "no \"quota_redis_ssl_trusted_certificate\" for "
                      "\"quota_redis_ssl_verify\" in %V:%ui",
                      &qmcf->redis_ssl_verify_at.file,
                      qmcf->redis_ssl_verify_at.line);
        return NGX_ERROR;
    }

    if (ngx_ssl_trusted_certificate(cf, ssl, &trusted->path,
                                    qmcf->redis_ssl_verify_depth)
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"quota_redis_ssl_trusted_certificate\" in %V:%ui "
                      "could not be loaded", &trusted->file, trusted->line);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* TCP is up: start the TLS handshake (connect_timeout still runs) */
ngx_int_t
ngx_http_quota_redis_ssl_start(ngx_http_quota_redis_conn_t *rc)
{
    ngx_int_t                    rv;
    ngx_connection_t            *c;
    ngx_http_quota_main_conf_t  *qmcf;

    c = rc->peer.connection;
    qmcf = rc->worker->qmcf;

    if (ngx_ssl_create_connection(qmcf->redis_ssl_ctx, c, NGX_SSL_CLIENT)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

#ifdef SSL_CTRL_SET_TLSEXT_HOSTNAME
    if (qmcf->redis_ssl_host.len && !qmcf->redis_ssl_host_is_addr
        && SSL_set_tlsext_host_name(c->ssl->connection,
                                    (char *) qmcf->redis_ssl_host.data)
           == 0)
    {
        ngx_ssl_error(NGX_LOG_ERR, rc->worker->log, 0,
                      "quota: redis SSL_set_tlsext_host_name(\"%s\") failed",
                      qmcf->redis_ssl_host.data);
        return NGX_ERROR;
    }
#endif

    c->ssl->save_session = ngx_http_quota_redis_ssl_save;

    if (rc->ssl_session && ngx_ssl_set_session(c, rc->ssl_session) != NGX_OK) {
        return NGX_ERROR;
    }

    rv = ngx_ssl_handshake(c);

    if (rv == NGX_AGAIN) {
        c->ssl->handler = ngx_http_quota_redis_ssl_handshaked;
        return NGX_OK;
    }

    ngx_http_quota_redis_ssl_handshaked(c);

    return NGX_OK;
}


static void
ngx_http_quota_redis_ssl_handshaked(ngx_connection_t *c)
{
    ngx_http_quota_redis_conn_t  *rc;

    rc = c->data;

    if (!c->ssl->handshaked) {
        /* ngx_ssl_handshake() logged OpenSSL's reason */
        ngx_log_error(NGX_LOG_ERR, rc->worker->log, 0,
                      "quota: redis TLS handshake failed");
        goto failed;
    }

    if (rc->worker->qmcf->redis_ssl_verify
        && ngx_http_quota_redis_ssl_verify(rc) != NGX_OK)
    {
        goto failed;
    }

    ngx_http_quota_redis_transport_ready(rc);
    return;

failed:

    /* a session of a failed check is not one to resume */
    ngx_http_quota_redis_ssl_forget(rc);

    ngx_http_quota_redis_error(rc, NGX_HTTP_QUOTA_ERR_CONNECT);
    ngx_http_quota_redis_close(rc, 1);
}


/* OpenSSL has a session to resume (TLSv1.3: a ticket after the handshake) */
static void
ngx_http_quota_redis_ssl_save(ngx_connection_t *c)
{
    ngx_ssl_session_t            *session;
    ngx_http_quota_redis_conn_t  *rc;

    rc = c->data;

    session = ngx_ssl_get_session(c);
    if (session == NULL) {
        return;
    }

    ngx_http_quota_redis_ssl_forget(rc);

    rc->ssl_session = session;
}


void
ngx_http_quota_redis_ssl_forget(ngx_http_quota_redis_conn_t *rc)
{
    if (rc->ssl_session) {
        ngx_ssl_free_session(rc->ssl_session);
        rc->ssl_session = NULL;
    }
}


static ngx_int_t
ngx_http_quota_redis_ssl_verify(ngx_http_quota_redis_conn_t *rc)
{
    long                         err;
    X509                        *cert;
    ngx_int_t                    match;
    ngx_connection_t            *c;
    ngx_http_quota_main_conf_t  *qmcf;

    c = rc->peer.connection;
    qmcf = rc->worker->qmcf;

    err = SSL_get_verify_result(c->ssl->connection);

    if (err != X509_V_OK) {
        ngx_log_error(NGX_LOG_ERR, rc->worker->log, 0,
                      "quota: redis SSL certificate verify error: (%l:%s)",
                      err, X509_verify_cert_error_string(err));
        return NGX_ERROR;
    }

    if (!qmcf->redis_ssl_host_is_addr) {
        match = ngx_ssl_check_host(c, &qmcf->redis_ssl_host);

    } else {
        cert = SSL_get_peer_certificate(c->ssl->connection);
        match = (cert != NULL
                 && X509_check_ip_asc(cert,
                                      (const char *) qmcf->redis_ssl_host.data,
                                      0) == 1)
                ? NGX_OK : NGX_ERROR;
        if (cert) {
            X509_free(cert);
        }
    }

    if (match != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, rc->worker->log, 0,
                      "quota: redis SSL certificate does not match \"%V\"",
                      &qmcf->redis_ssl_host);
        return NGX_ERROR;
    }

    return NGX_OK;
}

#endif

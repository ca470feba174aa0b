
/*
 * quota_live (SPEC section 11): one endpoint, two protocols.
 *
 *   WebSocket (RFC 6455)   the upgrade is checked here and answered 101;
 *                          framing, masking, fragmentation, control frames
 *                          and close codes are wslay's (an event-based
 *                          library: it never touches the socket, our
 *                          callbacks do, on nginx's events)
 *   Server-Sent Events     Accept: text/event-stream; event:/data: lines,
 *                          a comment heartbeat, retry:
 *
 * The tenant is the location's quota_tenant, or ?api_key= (browsers cannot
 * set headers on a WebSocket); without one: 401 JSON, before any upgrade.
 * The key's bytes in the request line are overwritten once read, so no log
 * line (access or error) shows them.
 *
 * The first message is the usage report of quota_usage (reused through
 * ngx_http_quota_usage_report()) with "type":"snapshot".  Then every event
 * of the tenant: each worker has one subscription to the events channel
 * (ngx_http_quota_redis_live.c) and finds the tenant's clients in a
 * red-black tree keyed by tenant id (ngx_str_rbtree): no scan over clients.
 *
 * After the 101 the connection's read and write handlers are ours (the
 * request stays alive: its count is held since the snapshot's wait); the
 * request is finalized once, by ngx_http_quota_live_finish(), and the pool
 * cleanup unlinks the client whatever ends it.  The connection is marked
 * idle, so a reload or quit (ngx_close_idle_connections) reaches our read
 * handler with c->close set: the client gets 1001 and the old worker exits.
 *
 * With quota_live_body a client gets every event rendered by its template
 * with the tenant's usage report (ngx_http_quota_live_body.c); clients
 * without one get the message as Redis delivered it, at once.
 *
 * Backpressure: frames waiting for a client that stops reading are bounded
 * by NGX_HTTP_QUOTA_LIVE_MAX_QUEUED; the event that would pass it closes the
 * client with 1008 (SSE: the connection is dropped) and is counted in
 * quota_live_dropped_total.
 */


#include "ngx_http_quota_module.h"

#include <ngx_sha1.h>
#include <wslay/wslay.h>
#include <yajl/yajl_tree.h>


#define NGX_HTTP_QUOTA_LIVE_MAX_QUEUED   (1024 * 1024)
#define NGX_HTTP_QUOTA_LIVE_MAX_RECV     4096      /* client messages */
#define NGX_HTTP_QUOTA_LIVE_LINGER       3000      /* ms after our close */
#define NGX_HTTP_QUOTA_LIVE_RETRY        3000      /* SSE retry:, ms */

#define NGX_HTTP_QUOTA_UPGRADE_REQUIRED  426

#define NGX_HTTP_QUOTA_WS_GUID  "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


typedef enum {
    NGX_HTTP_QUOTA_LIVE_WS = 0,
    NGX_HTTP_QUOTA_LIVE_SSE
} ngx_http_quota_live_proto_e;


typedef struct ngx_http_quota_live_client_s  ngx_http_quota_live_client_t;


/* a tenant with clients in this worker (ngx_alloc'd, freed with the last) */
typedef struct {
    ngx_str_node_t                 sn;        /* first: the tree's node */
    ngx_queue_t                    clients;
    ngx_uint_t                     templated; /* clients with a template */
    ngx_http_quota_live_fetch_t   *fetch;     /* their events' report */
} ngx_http_quota_live_tenant_t;


struct ngx_http_quota_live_client_s {
    ngx_http_request_t            *request;
    ngx_http_quota_live_tenant_t  *tenant;    /* NULL until live */
    ngx_queue_t                    queue;     /* in tenant->clients */
    ngx_http_quota_live_proto_e    proto;
    ngx_str_t                      tenant_id;
    ngx_http_quota_body_tpl_t     *tpl;       /* quota_live_body, or NULL */

    wslay_event_context_ptr        ws;

    /* SSE output (ngx_alloc'd) */
    u_char                        *out;
    size_t                         out_pos;
    size_t                         out_len;
    size_t                         out_size;

    ngx_event_t                    ping;      /* ping or heartbeat */
    ngx_event_t                    linger;    /* our close frame is out */
    ngx_msec_t                     ping_every;

    unsigned                       closing:1;
    unsigned                       finished:1;
};


static ngx_int_t ngx_http_quota_live_tenant(ngx_http_request_t *r,
    ngx_str_t *tenant);
static void ngx_http_quota_live_mask_key(ngx_http_request_t *r);
static ngx_int_t ngx_http_quota_live_check_upgrade(ngx_http_request_t *r,
    ngx_http_quota_live_client_t *lc, const char **msg);
static ngx_table_elt_t *ngx_http_quota_live_header(ngx_http_request_t *r,
    const char *name, size_t len, ngx_table_elt_t *after);
static ngx_uint_t ngx_http_quota_live_has_token(ngx_str_t *value,
    const char *token, size_t len);
static ngx_int_t ngx_http_quota_live_refuse(ngx_http_request_t *r,
    ngx_uint_t status, const char *message);
static ngx_http_quota_live_client_t *ngx_http_quota_live_client(
    ngx_http_request_t *r);
static ngx_http_quota_live_client_t *ngx_http_quota_live_get(
    ngx_http_request_t *r);
static void ngx_http_quota_live_snapshot(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *body);
static ngx_int_t ngx_http_quota_live_accept(ngx_http_request_t *r,
    ngx_http_quota_live_client_t *lc);
static ngx_int_t ngx_http_quota_live_start(ngx_http_quota_live_client_t *lc);
static ngx_int_t ngx_http_quota_live_join(ngx_http_quota_live_client_t *lc);
static ngx_int_t ngx_http_quota_live_send(ngx_http_quota_live_client_t *lc,
    u_char *type, size_t tlen, u_char *msg, size_t len);
static ngx_int_t ngx_http_quota_live_sse_append(
    ngx_http_quota_live_client_t *lc, u_char *type, size_t tlen, u_char *data,
    size_t len);
static void ngx_http_quota_live_read(ngx_event_t *rev);
static void ngx_http_quota_live_write(ngx_event_t *wev);
static ngx_int_t ngx_http_quota_live_flush(ngx_http_quota_live_client_t *lc);
static void ngx_http_quota_live_close(ngx_http_quota_live_client_t *lc,
    uint16_t code, const char *reason);
static void ngx_http_quota_live_ping(ngx_event_t *ev);
static void ngx_http_quota_live_linger(ngx_event_t *ev);
static void ngx_http_quota_live_finish(ngx_http_quota_live_client_t *lc);
static void ngx_http_quota_live_cleanup(void *data);
static ssize_t ngx_http_quota_ws_recv(wslay_event_context_ptr ctx,
    uint8_t *buf, size_t len, int flags, void *user_data);
static ssize_t ngx_http_quota_ws_send(wslay_event_context_ptr ctx,
    const uint8_t *data, size_t len, int flags, void *user_data);
static void ngx_http_quota_ws_on_msg(wslay_event_context_ptr ctx,
    const struct wslay_event_on_msg_recv_arg *arg, void *user_data);


/* per worker: tenant id -> its clients */
static ngx_rbtree_t       ngx_http_quota_live_tree;
static ngx_rbtree_node_t  ngx_http_quota_live_sentinel;
static ngx_uint_t         ngx_http_quota_live_tree_ready;


static struct wslay_event_callbacks  ngx_http_quota_ws_callbacks = {
    ngx_http_quota_ws_recv,
    ngx_http_quota_ws_send,
    NULL,                               /* genmask: servers do not mask */
    NULL,
    NULL,
    NULL,
    ngx_http_quota_ws_on_msg
};


/* quota_live [ping=TIME] */
char *
ngx_http_quota_live_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_quota_loc_conf_t *qlcf = conf;

    char                        *rv;
    ngx_str_t                   *value, s;
    ngx_msec_t                   ping;
    ngx_http_quota_main_conf_t  *qmcf;

    value = cf->args->elts;

    if (cf->args->nelts == 2) {
        if (ngx_strncmp(value[1].data, "ping=", 5) != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\"", &value[1]);
            return NGX_CONF_ERROR;
        }

        s.data = value[1].data + 5;
        s.len = value[1].len - 5;

        ping = ngx_parse_time(&s, 0);
        if (ping == (ngx_msec_t) NGX_ERROR || ping == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid ping interval \"%V\"", &value[1]);
            return NGX_CONF_ERROR;
        }

        qlcf->live_ping = ping;
    }

    rv = ngx_http_quota_endpoint_directive(cf, cmd, conf);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    qmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_quota_module);
    qmcf->live = 1;

    if (qmcf->live_line == 0) {
        qmcf->live_file = cf->conf_file->file.name;
        qmcf->live_line = cf->conf_file->line;
    }

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_quota_live_handler(ngx_http_request_t *r)
{
    ngx_int_t                      rc;
    ngx_str_t                      tenant;
    const char                    *msg;
    ngx_http_quota_live_client_t  *lc;

    if (!(r->method & NGX_HTTP_GET)) {
        return ngx_http_quota_endpoint_refuse(r, NGX_HTTP_NOT_ALLOWED);
    }

    rc = ngx_http_quota_live_tenant(r, &tenant);
    if (rc != NGX_OK) {
        return rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR
                               : ngx_http_quota_endpoint_refuse(r, rc);
    }

    lc = ngx_http_quota_live_client(r);
    if (lc == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    lc->tenant_id = tenant;

    rc = ngx_http_quota_live_check_upgrade(r, lc, &msg);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc != NGX_OK) {
        return ngx_http_quota_live_refuse(r, rc, msg);
    }

    return ngx_http_quota_usage_report(r, &tenant,
                                       ngx_http_quota_live_snapshot);
}


/*
 * The location's quota_tenant, else ?api_key=: NGX_OK, NGX_ERROR, or the
 * status to refuse with (401 none, 400 malformed).
 */
static ngx_int_t
ngx_http_quota_live_tenant(ngx_http_request_t *r, ngx_str_t *tenant)
{
    u_char                     *dst, *src;
    ngx_int_t                   rc;
    ngx_str_t                   value, arg;
    ngx_http_quota_loc_conf_t  *qlcf;

    qlcf = ngx_http_get_module_loc_conf(r, ngx_http_quota_module);

    value.len = 0;

    if (qlcf->tenant
        && ngx_http_complex_value(r, qlcf->tenant, &value) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (value.len == 0
        && ngx_http_arg(r, (u_char *) "api_key", 7, &arg) == NGX_OK
        && arg.len)
    {
        value.data = ngx_pnalloc(r->pool, arg.len);
        if (value.data == NULL) {
            return NGX_ERROR;
        }

        dst = value.data;
        src = arg.data;
        ngx_unescape_uri(&dst, &src, arg.len, NGX_UNESCAPE_URI);
        value.len = dst - value.data;
    }

    /* before anything is logged with the request line */
    ngx_http_quota_live_mask_key(r);

    if (value.len == 0) {
        return NGX_HTTP_UNAUTHORIZED;
    }

    rc = ngx_http_quota_tenant_id(r, qlcf, &value, tenant);

    if (rc == NGX_DECLINED) {
        return NGX_HTTP_BAD_REQUEST;
    }

    return rc;
}


/*
 * "api_key=KEY" in the request line becomes "api_key=***": r->args and
 * r->request_line share the client's header buffer, and $request, $args
 * and the error log's "request:" read them.  The key was copied before.
 */
static void
ngx_http_quota_live_mask_key(ngx_http_request_t *r)
{
    u_char  *p, *last;

    p = r->args.data;
    last = p + r->args.len;

    while (p && p + 8 <= last) {
        if ((p == r->args.data || p[-1] == '&')
            && ngx_strncmp(p, "api_key=", 8) == 0)
        {
            for (p += 8; p < last && *p != '&'; p++) {
                *p = '*';
            }

            continue;
        }

        p++;
    }
}


/*
 * SSE for Accept: text/event-stream; else a WebSocket upgrade, checked as
 * RFC 6455 4.2.1 says: NGX_OK, NGX_ERROR, or 400/426 with *msg set.
 */
static ngx_int_t
ngx_http_quota_live_check_upgrade(ngx_http_request_t *r,
    ngx_http_quota_live_client_t *lc, const char **msg)
{
    u_char            key[16];
    ngx_str_t         dst;
    ngx_table_elt_t  *h;

    h = ngx_http_quota_live_header(r, "Accept", 6, NULL);

    for ( /* void */ ; h; h = ngx_http_quota_live_header(r, "Accept", 6, h)) {
        if (ngx_strlcasestrn(h->value.data, h->value.data + h->value.len,
                             (u_char *) "text/event-stream", 17 - 1)
            != NULL)
        {
            lc->proto = NGX_HTTP_QUOTA_LIVE_SSE;
            return NGX_OK;
        }
    }

    lc->proto = NGX_HTTP_QUOTA_LIVE_WS;

    if (r->http_version != NGX_HTTP_VERSION_11) {
        *msg = "A WebSocket upgrade needs HTTP/1.1.";
        return NGX_HTTP_BAD_REQUEST;
    }

    h = ngx_http_quota_live_header(r, "Upgrade", 7, NULL);

    if (h == NULL
        || !ngx_http_quota_live_has_token(&h->value, "websocket", 9))
    {
        *msg = "Send a WebSocket upgrade (Upgrade: websocket), "
                   "or Accept: text/event-stream.";
        return NGX_HTTP_BAD_REQUEST;
    }

    for (h = ngx_http_quota_live_header(r, "Connection", 10, NULL);
         h;
         h = ngx_http_quota_live_header(r, "Connection", 10, h))
    {
        if (ngx_http_quota_live_has_token(&h->value, "upgrade", 7)) {
            break;
        }
    }

    if (h == NULL) {
        *msg = "A WebSocket upgrade needs Connection: Upgrade.";
        return NGX_HTTP_BAD_REQUEST;
    }

    h = ngx_http_quota_live_header(r, "Sec-WebSocket-Version", 21, NULL);

    if (h == NULL || h->value.len != 2
        || ngx_strncmp(h->value.data, "13", 2) != 0)
    {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Sec-WebSocket-Version");
        ngx_str_set(&h->value, "13");

        *msg = "Only WebSocket version 13 is spoken.";
        return NGX_HTTP_QUOTA_UPGRADE_REQUIRED;
    }

    h = ngx_http_quota_live_header(r, "Sec-WebSocket-Key", 17, NULL);

    dst.data = key;

    if (h == NULL || h->value.len != 24
        || ngx_decode_base64(&dst, &h->value) != NGX_OK || dst.len != 16)
    {
        *msg = "Sec-WebSocket-Key must be 16 bytes in base64.";
        return NGX_HTTP_BAD_REQUEST;
    }

    return NGX_OK;
}


static ngx_table_elt_t *
ngx_http_quota_live_header(ngx_http_request_t *r, const char *name,
    size_t len, ngx_table_elt_t *after)
{
    ngx_uint_t        i, seen;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    seen = (after == NULL);
    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NULL;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (&h[i] == after) {
            seen = 1;
            continue;
        }

        if (seen && h[i].key.len == len
            && ngx_strncasecmp(h[i].key.data, (u_char *) name, len) == 0)
        {
            return &h[i];
        }
    }
}


/* a comma-separated list holds the token (case-insensitive) */
static ngx_uint_t
ngx_http_quota_live_has_token(ngx_str_t *value, const char *token, size_t len)
{
    u_char  *p, *last, *start, *end;

    p = value->data;
    last = p + value->len;

    while (p < last) {
        while (p < last && (*p == ' ' || *p == '\t' || *p == ',')) {
            p++;
        }

        start = p;

        while (p < last && *p != ',') {
            p++;
        }

        end = p;

        while (end > start && (end[-1] == ' ' || end[-1] == '\t')) {
            end--;
        }

        if ((size_t) (end - start) == len
            && ngx_strncasecmp(start, (u_char *) token, len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


/* 400 or 426 with a JSON body in the module's error shape */
static ngx_int_t
ngx_http_quota_live_refuse(ngx_http_request_t *r, ngx_uint_t status,
    const char *message)
{
    ngx_str_t  body;

    body.len = sizeof("{\"error\":\"BAD_UPGRADE\",\"message\":\"\"}") - 1
               + ngx_strlen(message);
    body.data = ngx_pnalloc(r->pool, body.len);
    if (body.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_sprintf(body.data, "{\"error\":\"BAD_UPGRADE\",\"message\":\"%s\"}",
                message);

    if (status == NGX_HTTP_QUOTA_UPGRADE_REQUIRED) {
        /* nginx knows no reason phrase for it */
        ngx_str_set(&r->headers_out.status_line, "426 Upgrade Required");
    }

    return ngx_http_quota_send_json(r, status, &body);
}


/* the client, kept in a pool cleanup: never the module's request ctx */
static ngx_http_quota_live_client_t *
ngx_http_quota_live_client(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t            *cln;
    ngx_http_quota_live_client_t  *lc;

    cln = ngx_pool_cleanup_add(r->pool, sizeof(ngx_http_quota_live_client_t));
    if (cln == NULL) {
        return NULL;
    }

    lc = cln->data;
    ngx_memzero(lc, sizeof(ngx_http_quota_live_client_t));

    lc->request = r;

    lc->ping.handler = ngx_http_quota_live_ping;
    lc->ping.data = lc;
    lc->ping.log = r->connection->log;
    lc->ping.cancelable = 1;

    /* not cancelable: a quitting worker waits for its 1001 to go out */
    lc->linger.handler = ngx_http_quota_live_linger;
    lc->linger.data = lc;
    lc->linger.log = r->connection->log;

    cln->handler = ngx_http_quota_live_cleanup;

    return lc;
}


/* the request's client: its pool cleanup (a short list) holds it */
static ngx_http_quota_live_client_t *
ngx_http_quota_live_get(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t  *cln;

    for (cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_quota_live_cleanup) {
            return cln->data;
        }
    }

    return NULL;
}


/* the report is in: refuse as quota_usage would, or go live */
static void
ngx_http_quota_live_snapshot(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body)
{
    u_char                        *p;
    ngx_str_t                      snap;
    ngx_connection_t              *c;
    ngx_http_quota_live_client_t  *lc;

    c = r->connection;
    lc = ngx_http_quota_live_get(r);

    if (lc == NULL || status != NGX_HTTP_OK || body->len < 2) {
        ngx_http_finalize_request(r, lc == NULL
                                     ? NGX_HTTP_INTERNAL_SERVER_ERROR
                                     : ngx_http_quota_send_json(r, status,
                                                                body));
        return;
    }

    /* {"type":"snapshot", + the report without its "{" */
    snap.len = sizeof("{\"type\":\"snapshot\"") - 1 + body->len - 1
               + (body->len > 2);
    snap.data = ngx_pnalloc(r->pool, snap.len);
    if (snap.data == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    p = ngx_cpymem(snap.data, "{\"type\":\"snapshot\"",
                   sizeof("{\"type\":\"snapshot\"") - 1);
    if (body->len > 2) {
        *p++ = ',';
    }
    ngx_memcpy(p, body->data + 1, body->len - 1);

    if (ngx_http_quota_live_accept(r, lc) != NGX_OK
        || ngx_http_quota_live_start(lc) != NGX_OK
        || ngx_http_quota_live_send(lc, (u_char *) "snapshot", 8, snap.data,
                                    snap.len)
           != NGX_OK
        || ngx_http_quota_live_join(lc) != NGX_OK)
    {
        ngx_http_quota_live_finish(lc);
        return;
    }

    ngx_http_quota_live_write(c->write);
}


/* the 101 (or 200 text/event-stream) header, flushed */
static ngx_int_t
ngx_http_quota_live_accept(ngx_http_request_t *r,
    ngx_http_quota_live_client_t *lc)
{
    u_char            *p;
    ngx_str_t          src;
    ngx_sha1_t         sha1;
    ngx_table_elt_t   *h, *key;
    u_char             digest[20];

    r->keepalive = 0;

    if (lc->proto == NGX_HTTP_QUOTA_LIVE_SSE) {
        r->headers_out.status = NGX_HTTP_OK;
        r->headers_out.content_length_n = -1;
        ngx_str_set(&r->headers_out.content_type, "text/event-stream");
        r->headers_out.content_type_len = sizeof("text/event-stream") - 1;

        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Cache-Control");
        ngx_str_set(&h->value, "no-cache");

        goto send;
    }

    key = ngx_http_quota_live_header(r, "Sec-WebSocket-Key", 17, NULL);

    ngx_sha1_init(&sha1);
    ngx_sha1_update(&sha1, key->value.data, key->value.len);
    ngx_sha1_update(&sha1, NGX_HTTP_QUOTA_WS_GUID,
                    sizeof(NGX_HTTP_QUOTA_WS_GUID) - 1);
    ngx_sha1_final(digest, &sha1);

    p = ngx_pnalloc(r->pool, ngx_base64_encoded_length(20));
    h = ngx_list_push(&r->headers_out.headers);
    if (p == NULL || h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Sec-WebSocket-Accept");
    h->value.data = p;
    src.data = digest;
    src.len = 20;
    ngx_encode_base64(&h->value, &src);

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Upgrade");
    ngx_str_set(&h->value, "websocket");

    /* nginx's header filter writes "Connection: upgrade" for a 101 */
    r->headers_out.status = NGX_HTTP_SWITCHING_PROTOCOLS;
    ngx_str_set(&r->headers_out.status_line, "101 Switching Protocols");
    r->headers_out.content_length_n = -1;

send:

    if (ngx_http_send_header(r) == NGX_ERROR
        || ngx_http_send_special(r, NGX_HTTP_FLUSH) == NGX_ERROR)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* the connection is ours from here */
static ngx_int_t
ngx_http_quota_live_start(ngx_http_quota_live_client_t *lc)
{
    u_char                     *p;
    ngx_connection_t           *c;
    ngx_http_request_t         *r;
    ngx_http_quota_loc_conf_t  *qlcf;

    r = lc->request;
    c = r->connection;

    qlcf = ngx_http_get_module_loc_conf(r, ngx_http_quota_module);
    lc->ping_every = qlcf->live_ping;
    lc->tpl = qlcf->live_body;

    c->read->handler = ngx_http_quota_live_read;
    c->write->handler = ngx_http_quota_live_write;
    c->log->action = "sending live usage";

    /* reached by ngx_close_idle_connections() at a reload or quit */
    c->idle = 1;

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    if (lc->proto == NGX_HTTP_QUOTA_LIVE_SSE) {
        u_char  retry[sizeof("retry: \n\n") + NGX_INT_T_LEN];

        p = ngx_sprintf(retry, "retry: %d\n\n", NGX_HTTP_QUOTA_LIVE_RETRY);

        if (ngx_http_quota_live_sse_append(lc, NULL, 0, retry, p - retry)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

    } else {
        if (wslay_event_context_server_init(&lc->ws,
                                            &ngx_http_quota_ws_callbacks, lc)
            != 0)
        {
            return NGX_ERROR;
        }

        wslay_event_config_set_max_recv_msg_length(lc->ws,
                                              NGX_HTTP_QUOTA_LIVE_MAX_RECV);
    }

    ngx_add_timer(&lc->ping, lc->ping_every);

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* into the tenant's list, and the gauge */
static ngx_int_t
ngx_http_quota_live_join(ngx_http_quota_live_client_t *lc)
{
    uint32_t                       hash;
    ngx_http_quota_live_tenant_t  *t;
    ngx_http_quota_main_conf_t    *qmcf;

    if (!ngx_http_quota_live_tree_ready) {
        ngx_rbtree_init(&ngx_http_quota_live_tree,
                        &ngx_http_quota_live_sentinel,
                        ngx_str_rbtree_insert_value);
        ngx_http_quota_live_tree_ready = 1;
    }

    hash = ngx_crc32_long(lc->tenant_id.data, lc->tenant_id.len);

    t = (ngx_http_quota_live_tenant_t *)
        ngx_str_rbtree_lookup(&ngx_http_quota_live_tree, &lc->tenant_id,
                              hash);

    if (t == NULL) {
        t = ngx_alloc(sizeof(ngx_http_quota_live_tenant_t)
                      + lc->tenant_id.len, ngx_cycle->log);
        if (t == NULL) {
            return NGX_ERROR;
        }

        t->sn.node.key = hash;
        t->sn.str.len = lc->tenant_id.len;
        t->sn.str.data = (u_char *) (t + 1);
        ngx_memcpy(t->sn.str.data, lc->tenant_id.data, lc->tenant_id.len);
        ngx_queue_init(&t->clients);
        t->templated = 0;
        t->fetch = NULL;

        ngx_rbtree_insert(&ngx_http_quota_live_tree, &t->sn.node);
    }

    ngx_queue_insert_tail(&t->clients, &lc->queue);
    lc->tenant = t;

    if (lc->tpl) {
        t->templated++;
    }

    /* never the tenant: in hash mode even its hash stays out of logs */
    ngx_log_error(NGX_LOG_INFO, lc->request->connection->log, 0,
                  "quota: live client joined (%s)",
                  lc->proto == NGX_HTTP_QUOTA_LIVE_WS ? "websocket" : "sse");

    qmcf = ngx_http_get_module_main_conf(lc->request, ngx_http_quota_module);

    if (qmcf->stats) {
        (void) ngx_atomic_fetch_add(&qmcf->stats->live_clients, 1);
    }

    return NGX_OK;
}


/*
 * A message from the events channel: the clients of its tenant_id get it.
 * The tenant is found in the tree (one lookup per message per worker).
 */
void
ngx_http_quota_live_publish(ngx_http_quota_main_conf_t *qmcf, u_char *msg,
    size_t len)
{
    uint32_t                       hash;
    ngx_str_t                      tenant, type;
    yajl_val                       root, v;
    ngx_uint_t                     daily;
    ngx_queue_t                   *q, *next;
    ngx_http_request_t            *templated;
    ngx_http_quota_live_tenant_t  *t;
    ngx_http_quota_live_client_t  *lc;

    static const char  *tenant_path[] = { "tenant_id", NULL };
    static const char  *type_path[] = { "type", NULL };

    if (!ngx_http_quota_live_tree_ready
        || ngx_http_quota_live_tree.root == &ngx_http_quota_live_sentinel)
    {
        return;
    }

    /* hiredis ends every string with a NUL */
    root = yajl_tree_parse((const char *) msg, NULL, 0);
    if (root == NULL) {
        return;
    }

    v = yajl_tree_get(root, tenant_path, yajl_t_string);
    if (v == NULL) {
        goto done;
    }

    tenant.data = (u_char *) YAJL_GET_STRING(v);
    tenant.len = ngx_strlen(tenant.data);

    v = yajl_tree_get(root, type_path, yajl_t_string);
    if (v == NULL) {
        goto done;
    }

    type.data = (u_char *) YAJL_GET_STRING(v);
    type.len = ngx_strlen(type.data);

    hash = ngx_crc32_long(tenant.data, tenant.len);

    t = (ngx_http_quota_live_tenant_t *)
        ngx_str_rbtree_lookup(&ngx_http_quota_live_tree, &tenant, hash);

    if (t == NULL) {
        goto done;
    }

    templated = NULL;
    daily = 0;

    for (q = ngx_queue_head(&t->clients);
         q != ngx_queue_sentinel(&t->clients);
         q = next)
    {
        /* a send may finish the client: its unlinking is done by then */
        next = ngx_queue_next(q);
        lc = ngx_queue_data(q, ngx_http_quota_live_client_t, queue);

        if (lc->closing) {
            continue;
        }

        if (lc->tpl) {
            /* its frame waits for the tenant's usage report */
            templated = lc->request;
            daily |= lc->tpl->daily;
            continue;
        }

        if (ngx_http_quota_live_send(lc, type.data, type.len, msg, len)
            == NGX_OK)
        {
            if (!lc->request->connection->write->posted) {
                ngx_post_event(lc->request->connection->write,
                               &ngx_posted_events);
            }
        }
    }

    if (templated) {
        (void) ngx_http_quota_live_body_event(&t->fetch, t, &t->sn.str,
                                              templated, daily, root);
    }

done:

    yajl_tree_free(root);
}


/*
 * quota_live_body: one event, with the tenant's report in view, rendered
 * for each templated client of the tenant and queued.  A rendering that
 * is not valid JSON was logged with the template's file:line: that client
 * gets no frame.
 */
void
ngx_http_quota_live_fanout(void *tenant, ngx_http_quota_view_t *view,
    ngx_pool_t *pool)
{
    ngx_http_quota_live_tenant_t *t = tenant;

    u_char                        *type;
    size_t                         tlen;
    ngx_str_t                      body;
    ngx_queue_t                   *q;
    ngx_http_quota_live_client_t  *lc;

    if (view->event->type == NGX_HTTP_QUOTA_EVENT_ALERT) {
        type = (u_char *) "alert";
        tlen = sizeof("alert") - 1;

    } else {
        type = (u_char *) "usage_update";
        tlen = sizeof("usage_update") - 1;
    }

    for (q = ngx_queue_head(&t->clients);
         q != ngx_queue_sentinel(&t->clients);
         q = ngx_queue_next(q))
    {
        lc = ngx_queue_data(q, ngx_http_quota_live_client_t, queue);

        if (lc->tpl == NULL || lc->closing) {
            continue;
        }

        if (lc->tpl->daily && view->report->daily == NULL) {
            /* joined after this report was sent without the daily
               counters: these events predate it, its snapshot has them */
            continue;
        }

        if (ngx_http_quota_live_body_render(lc->request, lc->tpl, view, pool,
                                            &body)
            != NGX_OK)
        {
            continue;
        }

        if (ngx_http_quota_live_send(lc, type, tlen, body.data, body.len)
            == NGX_OK
            && !lc->request->connection->write->posted)
        {
            ngx_post_event(lc->request->connection->write, &ngx_posted_events);
        }
    }
}


/*
 * One message queued (not written: the write handler does that).  Past the
 * bound the client is closed with 1008 instead.
 */
static ngx_int_t
ngx_http_quota_live_send(ngx_http_quota_live_client_t *lc, u_char *type,
    size_t tlen, u_char *msg, size_t len)
{
    size_t                       queued, need;
    ngx_http_quota_main_conf_t  *qmcf;
    struct wslay_event_msg       wm;

    qmcf = ngx_http_get_module_main_conf(lc->request, ngx_http_quota_module);

    if (lc->proto == NGX_HTTP_QUOTA_LIVE_WS) {
        queued = wslay_event_get_queued_msg_length(lc->ws);
        need = len + 14;

    } else {
        queued = lc->out_len - lc->out_pos;
        need = sizeof("event: \ndata: \n\n") - 1 + tlen + len;
    }

    if (queued + need > NGX_HTTP_QUOTA_LIVE_MAX_QUEUED) {
        ngx_log_error(NGX_LOG_WARN, lc->request->connection->log, 0,
                      "quota: live client does not read, %uz bytes queued, "
                      "closing", queued);

        if (qmcf->stats) {
            (void) ngx_atomic_fetch_add(&qmcf->stats->live_dropped, 1);
        }

        ngx_http_quota_live_close(lc, 1008, "too slow");
        return NGX_DECLINED;
    }

    if (lc->proto == NGX_HTTP_QUOTA_LIVE_WS) {
        wm.opcode = WSLAY_TEXT_FRAME;
        wm.msg = msg;
        wm.msg_length = len;

        if (wslay_event_queue_msg(lc->ws, &wm) != 0) {
            return NGX_ERROR;
        }

    } else if (ngx_http_quota_live_sse_append(lc, type, tlen, msg, len)
               != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (qmcf->stats) {
        (void) ngx_atomic_fetch_add(&qmcf->stats->live_frames, 1);
    }

    return NGX_OK;
}


/*
 * One SSE message into the output: "event: TYPE\ndata: DATA\n\n", or, type
 * NULL, DATA as is (retry:, a comment).  nginx's chunked filter decided on
 * chunked encoding when it sent the header: then each message is a chunk.
 */
static ngx_int_t
ngx_http_quota_live_sse_append(ngx_http_quota_live_client_t *lc,
    u_char *type, size_t tlen, u_char *data, size_t len)
{
    u_char  *out, *p;
    size_t   size, need;

    size = type ? sizeof("event: \ndata: \n\n") - 1 + tlen + len : len;
    need = size + NGX_OFF_T_LEN + 4;

    if (lc->out_pos == lc->out_len) {
        lc->out_pos = 0;
        lc->out_len = 0;
    }

    if (lc->out_len + need > lc->out_size && lc->out_pos) {
        ngx_memmove(lc->out, lc->out + lc->out_pos, lc->out_len - lc->out_pos);
        lc->out_len -= lc->out_pos;
        lc->out_pos = 0;
    }

    if (lc->out_len + need > lc->out_size) {
        size_t  n;

        n = ngx_max(lc->out_size * 2, lc->out_len + need);
        n = ngx_max(n, 1024);

        out = ngx_alloc(n, lc->request->connection->log);
        if (out == NULL) {
            return NGX_ERROR;
        }

        if (lc->out) {
            ngx_memcpy(out, lc->out, lc->out_len);
            ngx_free(lc->out);
        }

        lc->out = out;
        lc->out_size = n;
    }

    p = lc->out + lc->out_len;

    if (lc->request->chunked) {
        p = ngx_sprintf(p, "%xz" CRLF, size);
    }

    if (type) {
        p = ngx_sprintf(p, "event: %*s\ndata: %*s\n\n", tlen, type, len, data);

    } else {
        p = ngx_cpymem(p, data, len);
    }

    if (lc->request->chunked) {
        *p++ = CR; *p++ = LF;
    }

    lc->out_len = p - lc->out;

    return NGX_OK;
}


static void
ngx_http_quota_live_read(ngx_event_t *rev)
{
    u_char                         buf[256];
    ssize_t                        n;
    ngx_connection_t              *c;
    ngx_http_request_t            *r;
    ngx_http_quota_live_client_t  *lc;

    c = rev->data;
    r = c->data;

    lc = ngx_http_quota_live_get(r);

    if (lc == NULL) {
        return;
    }

    if (c->close) {
        /* a reload or quit: "going away" */
        c->close = 0;
        c->idle = 0;

        if (c->error || lc->closing) {
            ngx_http_quota_live_finish(lc);
            return;
        }

        ngx_http_quota_live_close(lc, 1001, "server going away");
        ngx_http_quota_live_write(c->write);
        return;
    }

    if (lc->proto == NGX_HTTP_QUOTA_LIVE_WS) {
        if (wslay_event_recv(lc->ws) != 0) {
            ngx_http_quota_live_finish(lc);
            return;
        }

        ngx_http_quota_live_write(c->write);
        return;
    }

    /* SSE: the client sends nothing; read to notice its hang-up */
    for ( ;; ) {
        n = c->recv(c, buf, sizeof(buf));

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0 || n == NGX_ERROR) {
            ngx_http_quota_live_finish(lc);
            return;
        }
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_http_quota_live_finish(lc);
    }
}


static void
ngx_http_quota_live_write(ngx_event_t *wev)
{
    ngx_connection_t              *c;
    ngx_http_request_t            *r;
    ngx_http_quota_live_client_t  *lc;

    c = wev->data;
    r = c->data;

    lc = ngx_http_quota_live_get(r);

    if (lc == NULL) {
        return;
    }

    if (wev->timedout) {
        ngx_http_quota_live_finish(lc);
        return;
    }

    if (ngx_http_quota_live_flush(lc) != NGX_OK) {
        ngx_http_quota_live_finish(lc);
        return;
    }

    if (lc->proto == NGX_HTTP_QUOTA_LIVE_WS
        && !wslay_event_want_read(lc->ws) && !wslay_event_want_write(lc->ws))
    {
        /* both close frames went: the handshake is over */
        ngx_http_quota_live_finish(lc);
        return;
    }

    if (lc->proto == NGX_HTTP_QUOTA_LIVE_SSE && lc->closing
        && lc->out_pos == lc->out_len)
    {
        ngx_http_quota_live_finish(lc);
        return;
    }

    if (ngx_handle_write_event(wev, 0) != NGX_OK) {
        ngx_http_quota_live_finish(lc);
    }
}


/* the header first (nginx's write filter), then our frames */
static ngx_int_t
ngx_http_quota_live_flush(ngx_http_quota_live_client_t *lc)
{
    ssize_t              n;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = lc->request;
    c = r->connection;

    if (r->out) {
        if (ngx_http_write_filter(r, NULL) == NGX_ERROR) {
            return NGX_ERROR;
        }

        if (r->out) {
            return NGX_OK;
        }
    }

    if (lc->proto == NGX_HTTP_QUOTA_LIVE_WS) {
        return wslay_event_send(lc->ws) == 0 ? NGX_OK : NGX_ERROR;
    }

    while (lc->out_pos < lc->out_len) {
        n = c->send(c, lc->out + lc->out_pos, lc->out_len - lc->out_pos);

        if (n == NGX_AGAIN) {
            return NGX_OK;
        }

        if (n == NGX_ERROR) {
            return NGX_ERROR;
        }

        lc->out_pos += n;
    }

    return NGX_OK;
}


/* our close: a close frame (WS), then a bounded wait for the client's */
static void
ngx_http_quota_live_close(ngx_http_quota_live_client_t *lc, uint16_t code,
    const char *reason)
{
    if (lc->closing) {
        return;
    }

    lc->closing = 1;

    if (lc->proto == NGX_HTTP_QUOTA_LIVE_WS) {
        (void) wslay_event_queue_close(lc->ws, code, (const uint8_t *) reason,
                                       ngx_strlen(reason));
    }

    if (lc->ping.timer_set) {
        ngx_del_timer(&lc->ping);
    }

    ngx_add_timer(&lc->linger, NGX_HTTP_QUOTA_LIVE_LINGER);

    if (!lc->request->connection->write->posted) {
        ngx_post_event(lc->request->connection->write, &ngx_posted_events);
    }
}


static void
ngx_http_quota_live_ping(ngx_event_t *ev)
{
    ngx_http_quota_live_client_t  *lc = ev->data;

    struct wslay_event_msg  wm;

    if (lc->proto == NGX_HTTP_QUOTA_LIVE_WS) {
        wm.opcode = WSLAY_PING;
        wm.msg = NULL;
        wm.msg_length = 0;

        if (wslay_event_queue_msg(lc->ws, &wm) != 0) {
            ngx_http_quota_live_finish(lc);
            return;
        }

    } else if (ngx_http_quota_live_sse_append(lc, NULL, 0,
                                              (u_char *) ": ping\n\n", 8)
               != NGX_OK)
    {
        ngx_http_quota_live_finish(lc);
        return;
    }

    ngx_add_timer(&lc->ping, lc->ping_every);

    ngx_http_quota_live_write(lc->request->connection->write);
}


static void
ngx_http_quota_live_linger(ngx_event_t *ev)
{
    ngx_http_quota_live_finish(ev->data);
}


/* the one way out: the request is finalized, the cleanup unlinks */
static void
ngx_http_quota_live_finish(ngx_http_quota_live_client_t *lc)
{
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    if (lc->finished) {
        return;
    }

    lc->finished = 1;

    r = lc->request;
    c = r->connection;

    c->idle = 0;

    ngx_http_finalize_request(r, NGX_HTTP_CLOSE);
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_quota_live_cleanup(void *data)
{
    ngx_http_quota_live_client_t  *lc = data;

    ngx_http_quota_main_conf_t  *qmcf;

    if (lc->ping.timer_set) {
        ngx_del_timer(&lc->ping);
    }

    if (lc->linger.timer_set) {
        ngx_del_timer(&lc->linger);
    }

    if (lc->tenant) {
        ngx_queue_remove(&lc->queue);

        /* the last templated client: a report in flight is abandoned */
        if (lc->tpl && --lc->tenant->templated == 0 && lc->tenant->fetch) {
            ngx_http_quota_live_body_free(lc->tenant->fetch);
            lc->tenant->fetch = NULL;
        }

        if (ngx_queue_empty(&lc->tenant->clients)) {
            ngx_rbtree_delete(&ngx_http_quota_live_tree,
                              &lc->tenant->sn.node);
            ngx_free(lc->tenant);
        }

        lc->tenant = NULL;

        qmcf = ngx_http_get_module_main_conf(lc->request,
                                             ngx_http_quota_module);
        if (qmcf->stats) {
            (void) ngx_atomic_fetch_add(&qmcf->stats->live_clients, -1);
        }
    }

    if (lc->ws) {
        wslay_event_context_free(lc->ws);
        lc->ws = NULL;
    }

    if (lc->out) {
        ngx_free(lc->out);
        lc->out = NULL;
    }
}


/* the worker exits: clients still here are closed with their connections */
void
ngx_http_quota_live_exit_worker(void)
{
    ngx_http_quota_live_tree_ready = 0;
}


/* wslay's I/O: the bytes the HTTP parser read past the header come first */
static ssize_t
ngx_http_quota_ws_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
    int flags, void *user_data)
{
    ngx_http_quota_live_client_t  *lc = user_data;

    size_t               n;
    ssize_t              rc;
    ngx_buf_t           *b;
    ngx_connection_t    *c;

    c = lc->request->connection;
    b = lc->request->header_in;

    if (b && b->pos < b->last) {
        n = ngx_min((size_t) (b->last - b->pos), len);
        ngx_memcpy(buf, b->pos, n);
        b->pos += n;
        return n;
    }

    rc = c->recv(c, buf, len);

    if (rc == NGX_AGAIN) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }

    if (rc == 0 || rc == NGX_ERROR) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }

    return rc;
}


static ssize_t
ngx_http_quota_ws_send(wslay_event_context_ptr ctx, const uint8_t *data,
    size_t len, int flags, void *user_data)
{
    ngx_http_quota_live_client_t  *lc = user_data;

    ssize_t            n;
    ngx_connection_t  *c;

    c = lc->request->connection;

    n = c->send(c, (u_char *) data, len);

    if (n == NGX_AGAIN) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }

    if (n == NGX_ERROR) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }

    return n;
}


/* the client's messages: text and binary are ignored; wslay answers pings
   and close frames itself */
static void
ngx_http_quota_ws_on_msg(wslay_event_context_ptr ctx,
    const struct wslay_event_on_msg_recv_arg *arg, void *user_data)
{
    ngx_http_quota_live_client_t  *lc = user_data;

    if (arg->opcode == WSLAY_CONNECTION_CLOSE && !lc->closing) {
        /* the client closes; wslay echoes its code (RFC 6455 5.5.1) */
        lc->closing = 1;

        if (lc->ping.timer_set) {
            ngx_del_timer(&lc->ping);
        }

        ngx_add_timer(&lc->linger, NGX_HTTP_QUOTA_LIVE_LINGER);
    }
}

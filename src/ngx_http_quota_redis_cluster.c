
/*
 * quota_redis_cluster: each command goes to the master of its key's slot.
 *
 * Each worker keeps one control connection to one of the listed seeds (the
 * next one when it fails: any of them may be down).  Its handshake is
 * [AUTH] and CLUSTER SLOTS; the answer is the slot map (slot -> master) and
 * names the masters.  Each master gets a pool of data connections
 * (quota_redis pool=N each, the same connection code and handshake: AUTH,
 * SCRIPT LOAD), created as the masters are learned; w->conns holds room
 * for NGX_HTTP_QUOTA_CLUSTER_MAX_NODES pools, node n owns
 * conns[n * pool ... n * pool + pool - 1].
 *
 * A command's slot is CRC16 (XMODEM, as Redis' keyHashSlot) of its first
 * key's hash tag {T}, mod 16384 (ngx_http_quota_redis_route()); every key
 * a command or script touches carries the same tag, so the whole command
 * runs on one master.
 *
 * The map is asked again on a MOVED reply and when a data connection is
 * lost (the master may have failed over).  MOVED and ASK mean that the
 * node did NOT run the command (Redis checks the slot before executing
 * anything), so sending it once to the node named cannot charge twice:
 * MOVED also updates the slot at once, ASK sends ASKING first (the slot is
 * being imported there).  A second redirection is given to the caller as
 * the error it is (quota_failure_mode).
 *
 * Every key a script touches is declared (ngx_http_quota_keys.c), so a
 * script is a multi-key command: while its slot migrates, the source (with
 * some of the keys) and the destination (after ASK, without all of them)
 * answer TRYAGAIN, and nothing ran.  The op is sent again to the slot's
 * master every NGX_HTTP_QUOTA_CLUSTER_AGAIN ms (MOVED and ASK followed
 * again) until the migration ends, its caller gives up (timeout=), a
 * reliable command's horizon, or, for any other, 5 s: then its caller
 * gets a lost reply and resends it within its own horizon (a FORCE's
 * resend must find its first run's record).
 *
 * A redirection to a node just learned (a replica promoted at a failover)
 * finds its connections still connecting: the op is parked in the worker
 * (not sent anywhere, so nothing to undo) and sent as soon as one of them
 * is ready.  It fails when none of them is still trying (connect_timeout=
 * at most); a caller that gave up meanwhile (its timeout=) leaves an op
 * that is dropped unsent.  The commands that follow it to that node (the
 * map now names it) wait the same way until a command has gone there; a
 * node that was used and is reconnecting fails them at once, as a lost
 * master does.
 */


#include "ngx_http_quota_redis.h"


static ngx_int_t ngx_http_quota_redis_cluster_range(
    ngx_http_quota_redis_conn_t *rc, redisReply *r);
static ngx_uint_t ngx_http_quota_redis_cluster_node(
    ngx_http_quota_worker_t *w, ngx_sockaddr_t *sa, socklen_t socklen);
static ngx_http_quota_redis_conn_t *ngx_http_quota_redis_cluster_pick_node(
    ngx_http_quota_worker_t *w, ngx_uint_t node, ngx_uint_t affinity,
    size_t len);
static ngx_int_t ngx_http_quota_redis_cluster_send(ngx_http_quota_worker_t *w,
    ngx_http_quota_redis_conn_t *to, ngx_http_quota_op_t *op,
    ngx_uint_t ask);
static void ngx_http_quota_redis_cluster_park(ngx_http_quota_worker_t *w,
    ngx_http_quota_op_t *op);
static ngx_uint_t ngx_http_quota_redis_cluster_trying(
    ngx_http_quota_worker_t *w, ngx_uint_t node);
static ngx_int_t ngx_http_quota_redis_cluster_again(
    ngx_http_quota_redis_conn_t *rc, ngx_http_quota_op_t *op,
    redisReply *reply);
static void ngx_http_quota_redis_cluster_again_handler(ngx_event_t *ev);


static const char  ngx_http_quota_redis_asking[] =
    "*1\r\n$6\r\nASKING\r\n";


ngx_int_t
ngx_http_quota_redis_cluster_init(ngx_http_quota_worker_t *w)
{
    ngx_addr_t                   *seeds;
    ngx_http_quota_redis_conn_t  *rc;

    rc = ngx_pcalloc(ngx_cycle->pool, sizeof(ngx_http_quota_redis_conn_t));
    w->nodes = ngx_pcalloc(ngx_cycle->pool,
                           NGX_HTTP_QUOTA_CLUSTER_MAX_NODES
                           * sizeof(ngx_http_quota_redis_node_t));
    w->slots = ngx_palloc(ngx_cycle->pool, 2 * NGX_HTTP_QUOTA_CLUSTER_SLOTS);

    if (rc == NULL || w->nodes == NULL || w->slots == NULL) {
        return NGX_ERROR;
    }

    w->new_slots = w->slots + NGX_HTTP_QUOTA_CLUSTER_SLOTS;
    ngx_memset(w->slots, NGX_HTTP_QUOTA_NO_NODE, NGX_HTTP_QUOTA_CLUSTER_SLOTS);

    ngx_http_quota_redis_conn_init(rc, w, 0);

    w->again_ev.handler = ngx_http_quota_redis_cluster_again_handler;
    w->again_ev.data = w;
    w->again_ev.log = w->log;
    w->again_ev.cancelable = 1;

    seeds = w->qmcf->redis_cluster->elts;

    rc->control = 1;
    rc->addr = &seeds[0];

    w->control = rc;

    ngx_http_quota_redis_connect(rc);

    return NGX_OK;
}


/* the control connection's handshake: [AUTH], CLUSTER SLOTS */
ngx_int_t
ngx_http_quota_redis_cluster_handshake(ngx_http_quota_redis_conn_t *rc)
{
    size_t       argvlen[2];
    const char  *argv[2];

    if (ngx_http_quota_redis_handshake_auth(rc) != NGX_OK) {
        return NGX_ERROR;
    }

    argv[0] = "CLUSTER";
    argvlen[0] = 7;
    argv[1] = "SLOTS";
    argvlen[1] = 5;

    rc->worker->asking_map = 1;

    return ngx_http_quota_redis_handshake_cmd(rc, "CLUSTER SLOTS", 2, argv,
                                              argvlen);
}


/* CLUSTER SLOTS: [[start, end, [ip, port, id], replicas...], ...] */
ngx_int_t
ngx_http_quota_redis_cluster_slots(ngx_http_quota_redis_conn_t *rc,
    redisReply *reply)
{
    size_t                    i;
    ngx_uint_t                covered;
    ngx_http_quota_worker_t  *w;

    w = rc->worker;
    w->asking_map = 0;

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements == 0) {
        ngx_log_error(NGX_LOG_ERR, w->log, 0,
                      "quota: redis cluster node %V sent no slot map",
                      &rc->addr->name);
        return NGX_ERROR;
    }

    ngx_memset(w->new_slots, NGX_HTTP_QUOTA_NO_NODE,
               NGX_HTTP_QUOTA_CLUSTER_SLOTS);

    for (i = 0; i < reply->elements; i++) {
        if (ngx_http_quota_redis_cluster_range(rc, reply->element[i])
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    ngx_memcpy(w->slots, w->new_slots, NGX_HTTP_QUOTA_CLUSTER_SLOTS);

    /* a slot with another owner than any worker saw: a failover, once */
    ngx_http_quota_redis_stats_slots(w);

    covered = 0;
    for (i = 0; i < NGX_HTTP_QUOTA_CLUSTER_SLOTS; i++) {
        covered += (w->slots[i] != NGX_HTTP_QUOTA_NO_NODE);
    }

    ngx_log_error(NGX_LOG_INFO, w->log, 0,
                  "quota: redis cluster: %ui master(s), %ui of 16384 slots "
                  "served, map from %V", w->nnodes, covered, &rc->addr->name);

    if (rc->connect_timer.timer_set) {
        ngx_del_timer(&rc->connect_timer);
    }

    rc->state = NGX_HTTP_QUOTA_REDIS_READY;
    rc->backoff = NGX_HTTP_QUOTA_BACKOFF_MIN;

    return NGX_OK;
}


/* one range of the map and its master (replicas are not used) */
static ngx_int_t
ngx_http_quota_redis_cluster_range(ngx_http_quota_redis_conn_t *rc,
    redisReply *r)
{
    u_char                   *ip;
    size_t                    iplen;
    socklen_t                 socklen;
    ngx_uint_t                node;
    ngx_sockaddr_t            sa;
    long long                 start, end, port;
    redisReply               *m;
    ngx_http_quota_worker_t  *w;
    u_char                    text[NGX_SOCKADDR_STRLEN];

    w = rc->worker;

    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3
        || r->element[0]->type != REDIS_REPLY_INTEGER
        || r->element[1]->type != REDIS_REPLY_INTEGER
        || r->element[2]->type != REDIS_REPLY_ARRAY
        || r->element[2]->elements < 2
        || r->element[2]->element[0]->type != REDIS_REPLY_STRING
        || r->element[2]->element[1]->type != REDIS_REPLY_INTEGER)
    {
        goto invalid;
    }

    start = r->element[0]->integer;
    end = r->element[1]->integer;
    m = r->element[2];
    port = m->element[1]->integer;

    if (start < 0 || end < start || end >= NGX_HTTP_QUOTA_CLUSTER_SLOTS
        || port < 1 || port > 65535)
    {
        goto invalid;
    }

    ip = (u_char *) m->element[0]->str;
    iplen = m->element[0]->len;

    if (iplen == 0 || (iplen == 1 && ip[0] == '?')) {
        /* "the node you asked": its IP */
        iplen = ngx_sock_ntop(rc->addr->sockaddr, rc->addr->socklen, text,
                              NGX_SOCKADDR_STRLEN, 0);
        ip = text;
    }

    if (ngx_http_quota_redis_parse_addr(&sa, &socklen, ip, iplen, port)
        != NGX_OK)
    {
        goto invalid;
    }

    node = ngx_http_quota_redis_cluster_node(w, &sa, socklen);
    if (node == NGX_HTTP_QUOTA_NO_NODE) {
        return NGX_ERROR;
    }

    ngx_memset(w->new_slots + start, (u_char) node, end - start + 1);

    return NGX_OK;

invalid:

    ngx_log_error(NGX_LOG_ERR, w->log, 0,
                  "quota: redis cluster node %V sent an invalid slot map",
                  &rc->addr->name);

    return NGX_ERROR;
}


/* the index of a master, added (and its pool connected) if new */
static ngx_uint_t
ngx_http_quota_redis_cluster_node(ngx_http_quota_worker_t *w,
    ngx_sockaddr_t *sa, socklen_t socklen)
{
    ngx_uint_t                    i, n, pool;
    ngx_http_quota_redis_conn_t  *rc;
    ngx_http_quota_redis_node_t  *node;

    for (n = 0; n < w->nnodes; n++) {
        node = &w->nodes[n];

        if (ngx_cmp_sockaddr(&sa->sockaddr, socklen, node->addr.sockaddr,
                             node->addr.socklen, 1)
            == NGX_OK)
        {
            return n;
        }
    }

    if (w->nnodes == NGX_HTTP_QUOTA_CLUSTER_MAX_NODES) {
        ngx_log_error(NGX_LOG_ERR, w->log, 0,
                      "quota: redis cluster has more than %d masters",
                      NGX_HTTP_QUOTA_CLUSTER_MAX_NODES);
        return NGX_HTTP_QUOTA_NO_NODE;
    }

    node = &w->nodes[n];

    ngx_memcpy(&node->sa, sa, socklen);
    node->addr.sockaddr = &node->sa.sockaddr;
    node->addr.socklen = socklen;
    node->addr.name.data = node->text;
    node->addr.name.len = ngx_sock_ntop(node->addr.sockaddr, socklen,
                                        node->text, NGX_SOCKADDR_STRLEN, 1);

    w->nnodes++;

    ngx_log_error(NGX_LOG_NOTICE, w->log, 0,
                  "quota: redis cluster master %V", &node->addr.name);

    pool = w->qmcf->redis_pool;

    for (i = 0; i < pool; i++) {
        rc = &w->conns[n * pool + i];
        rc->addr = &node->addr;
        ngx_http_quota_redis_connect(rc);
    }

    return n;
}


/* the control connection failed: the next seed, after the backoff */
void
ngx_http_quota_redis_cluster_lost(ngx_http_quota_redis_conn_t *rc)
{
    ngx_addr_t               *seeds;
    ngx_http_quota_worker_t  *w;

    w = rc->worker;
    seeds = w->qmcf->redis_cluster->elts;

    w->asking_map = 0;
    w->seed_index = (w->seed_index + 1) % w->qmcf->redis_cluster->nelts;

    if (!w->exiting) {
        ngx_log_error(NGX_LOG_WARN, w->log, 0,
                      "quota: redis cluster: no slot map from %V, asking "
                      "%V next", &rc->addr->name, &seeds[w->seed_index].name);
    }

    rc->addr = &seeds[w->seed_index];
}


/* a sign the map may have changed: ask again (once at a time) */
void
ngx_http_quota_redis_cluster_refresh(ngx_http_quota_worker_t *w)
{
    size_t                        argvlen[2];
    const char                   *argv[2];
    ngx_http_quota_redis_conn_t  *rc;

    rc = w->control;

    if (rc == NULL || w->exiting || w->asking_map) {
        return;
    }

    if (rc->state == NGX_HTTP_QUOTA_REDIS_DOWN) {
        if (!rc->reconnect_timer.timer_set) {
            ngx_http_quota_redis_connect(rc);
        }

        return;
    }

    if (rc->state != NGX_HTTP_QUOTA_REDIS_READY) {
        return;     /* connecting: its handshake asks */
    }

    argv[0] = "CLUSTER";
    argvlen[0] = 7;
    argv[1] = "SLOTS";
    argvlen[1] = 5;

    w->asking_map = 1;

    if (ngx_http_quota_redis_handshake_cmd(rc, "CLUSTER SLOTS", 2, argv,
                                           argvlen)
        != NGX_OK)
    {
        ngx_http_quota_redis_close(rc, 1);
    }
}


/* every master of the map has a ready connection */
ngx_uint_t
ngx_http_quota_redis_cluster_ready(ngx_http_quota_worker_t *w)
{
    ngx_uint_t  n, i, pool, ready;

    pool = w->qmcf->redis_pool;

    if (w->nnodes == 0) {
        return 0;
    }

    for (n = 0; n < w->nnodes; n++) {
        ready = 0;

        for (i = 0; i < pool; i++) {
            ready |= (w->conns[n * pool + i].state
                      == NGX_HTTP_QUOTA_REDIS_READY);
        }

        if (!ready) {
            return 0;
        }
    }

    return 1;
}


/* a connection of the slot's master (any master: a command of no key) */
ngx_http_quota_redis_conn_t *
ngx_http_quota_redis_cluster_pick(ngx_http_quota_worker_t *w, size_t len,
    ngx_uint_t affinity, ngx_uint_t route)
{
    ngx_uint_t                    i, n, node, pool;
    ngx_http_quota_redis_conn_t  *rc;

    pool = w->qmcf->redis_pool;

    if (route) {
        node = w->slots[route - 1];

        if (node == NGX_HTTP_QUOTA_NO_NODE) {
            return NULL;    /* no master serves the slot (yet) */
        }

        return ngx_http_quota_redis_cluster_pick_node(w, node, affinity, len);
    }

    for (n = 0; n < w->nnodes * pool; n++) {
        i = (w->next_node + n) % (w->nnodes * pool);
        rc = &w->conns[i];

        if (ngx_http_quota_redis_can_take(rc, len) == NGX_OK) {
            w->next_node = i + 1;
            return rc;
        }
    }

    return NULL;
}


/* a connection of a master: the tenant's own while it can take len */
static ngx_http_quota_redis_conn_t *
ngx_http_quota_redis_cluster_pick_node(ngx_http_quota_worker_t *w,
    ngx_uint_t node, ngx_uint_t affinity, size_t len)
{
    ngx_uint_t                    i, n, pool, start;
    ngx_http_quota_redis_conn_t  *rc;

    pool = w->qmcf->redis_pool;
    start = affinity % pool;

    for (n = 0; n < pool; n++) {
        i = (start + n) % pool;
        rc = &w->conns[node * pool + i];

        if (ngx_http_quota_redis_can_take(rc, len) == NGX_OK) {
            w->nodes[node].used = 1;
            return rc;
        }
    }

    return NULL;
}


/*
 * No connection of the slot's master can take cmd: when the master was
 * just learned (no command went there yet) and one of its connections is
 * being made, a copy of cmd waits parked for it, as the redirected command
 * that named the master does, instead of failing at once.
 */
ngx_http_quota_op_t *
ngx_http_quota_redis_cluster_wait(ngx_http_quota_worker_t *w, ngx_str_t *cmd,
    ngx_uint_t route)
{
    ngx_uint_t            node;
    ngx_http_quota_op_t  *op;

    if (w->slots == NULL || route == 0 || w->exiting) {
        return NULL;
    }

    node = w->slots[route - 1];

    if (node == NGX_HTTP_QUOTA_NO_NODE
        || w->nodes[node].used
        || !ngx_http_quota_redis_cluster_trying(w, node)
        || w->nparked >= NGX_HTTP_QUOTA_MAX_PENDING)
    {
        return NULL;
    }

    op = ngx_http_quota_redis_op_copy(w, cmd);
    if (op == NULL) {
        return NULL;
    }

    op->node = (u_char) node;
    op->ask = 0;

    ngx_http_quota_redis_cluster_park(w, op);

    return op;
}


/*
 * "MOVED SLOT IP:PORT" or "ASK SLOT IP:PORT" for op, already out of rc's
 * FIFO: NGX_OK when op went to the node named.  Safe because the node
 * that answered this did not run the command (see the top of this file),
 * and done once per op.  An op nobody waits for any more is not sent
 * again: not running it is what its caller expects least harm from.
 */
ngx_int_t
ngx_http_quota_redis_cluster_redirect(ngx_http_quota_redis_conn_t *rc,
    ngx_http_quota_op_t *op, redisReply *reply)
{
    u_char                       *p, *last, *colon, *addr;
    socklen_t                     socklen;
    ngx_int_t                     slot, port;
    ngx_uint_t                    ask, node;
    ngx_sockaddr_t                sa;
    ngx_http_quota_worker_t      *w;
    ngx_http_quota_redis_conn_t  *to;

    w = rc->worker;
    p = (u_char *) reply->str;
    last = p + reply->len;

    if (reply->len >= 8 && ngx_strncmp(p, "TRYAGAIN", 8) == 0) {
        return ngx_http_quota_redis_cluster_again(rc, op, reply);
    }

    if (reply->len > 6 && ngx_strncmp(p, "MOVED ", 6) == 0) {
        ask = 0;
        p += 6;

    } else if (reply->len > 4 && ngx_strncmp(p, "ASK ", 4) == 0) {
        ask = 1;
        p += 4;

    } else {
        return NGX_DECLINED;
    }

    addr = ngx_strlchr(p, last, ' ');
    colon = NULL;

    if (addr) {
        for (colon = last - 1; colon > addr && *colon != ':'; colon--) {
            /* void */
        }
    }

    if (addr == NULL || colon == NULL || colon == addr) {
        return NGX_DECLINED;
    }

    slot = ngx_atoi(p, addr - p);
    port = ngx_atoi(colon + 1, last - colon - 1);
    addr++;

    if (slot < 0 || slot >= NGX_HTTP_QUOTA_CLUSTER_SLOTS
        || port < 1 || port > 65535
        || ngx_http_quota_redis_parse_addr(&sa, &socklen, addr, colon - addr,
                                           port)
           != NGX_OK)
    {
        return NGX_DECLINED;
    }

    node = ngx_http_quota_redis_cluster_node(w, &sa, socklen);

    if (!ask && node != NGX_HTTP_QUOTA_NO_NODE) {
        w->slots[slot] = (u_char) node;
        ngx_http_quota_redis_stats_moved(w, slot, node);
        ngx_http_quota_redis_cluster_refresh(w);
    }

    if (node == NGX_HTTP_QUOTA_NO_NODE || op->redirected
        || op->cmd.data == NULL
        || (op->kind == NGX_HTTP_QUOTA_OP_REPLY && op->handler == NULL))
    {
        return NGX_DECLINED;
    }

    ngx_log_error(NGX_LOG_INFO, w->log, 0,
                  "quota: redis cluster: \"%*s\" from %V, following",
                  (size_t) ngx_min(reply->len, 80), reply->str,
                  &rc->addr->name);

    /* ASK: the map is not changed, only this command goes there */
    to = ngx_http_quota_redis_cluster_pick_node(w, node, 0,
                                                op->cmd.len + 32);

    if (to == NULL) {
        if (!ngx_http_quota_redis_cluster_trying(w, node)
            || w->nparked >= NGX_HTTP_QUOTA_MAX_PENDING)
        {
            return NGX_DECLINED;
        }

        /* a node just learned: wait for its connection */
        op->node = (u_char) node;
        op->ask = ask;
        op->redirected = 1;
        ngx_http_quota_redis_cluster_park(w, op);

        return NGX_OK;
    }

    if (ngx_http_quota_redis_cluster_send(w, to, op, ask) != NGX_OK) {
        return NGX_DECLINED;
    }

    op->redirected = 1;

    return NGX_OK;
}


/*
 * TRYAGAIN for op, already out of rc's FIFO: nothing ran (Redis checks the
 * keys before executing anything); NGX_OK when it waits to be sent again.
 */
static ngx_int_t
ngx_http_quota_redis_cluster_again(ngx_http_quota_redis_conn_t *rc,
    ngx_http_quota_op_t *op, redisReply *reply)
{
    ngx_http_quota_worker_t  *w;

    w = rc->worker;

    if (w->exiting || op->cmd.data == NULL || op->route == 0
        || (op->kind == NGX_HTTP_QUOTA_OP_REPLY && op->handler == NULL))
    {
        return NGX_DECLINED;
    }

    if (op->kind == NGX_HTTP_QUOTA_OP_RELIABLE
        ? ngx_time() - op->since >= NGX_HTTP_QUOTA_RELIABLE_HORIZON
        : op->tries >= NGX_HTTP_QUOTA_CLUSTER_TRIES)
    {
        ngx_log_error(NGX_LOG_WARN, w->log, 0,
                      "quota: redis cluster: \"%*s\" from %V for %d "
                      "tries, giving the command up",
                      (size_t) ngx_min(reply->len, 80), reply->str,
                      &rc->addr->name, (int) op->tries);

        if (op->kind != NGX_HTTP_QUOTA_OP_REPLY) {
            return NGX_DECLINED;
        }

        /* nothing ran: its caller resends it or not, within its own
           horizon (a FORCE's record must still be there, a settle's) */
        ngx_http_quota_redis_dispatch_lost(w, op);
        return NGX_OK;
    }

    if (op->tries++ == 0) {
        ngx_log_error(NGX_LOG_INFO, w->log, 0,
                      "quota: redis cluster: \"%*s\" from %V, sending again "
                      "every %d ms", (size_t) ngx_min(reply->len, 80),
                      reply->str, &rc->addr->name,
                      NGX_HTTP_QUOTA_CLUSTER_AGAIN);
    }

    /* out of every FIFO (a cancel() sends no undo: nothing ran), and free
       to follow MOVED or ASK again */
    op->conn = NULL;
    op->next = NULL;
    op->redirected = 0;

    if (w->again_tail) {
        w->again_tail->next = op;

    } else {
        w->again = op;
    }

    w->again_tail = op;

    if (!w->again_ev.timer_set) {
        ngx_add_timer(&w->again_ev, NGX_HTTP_QUOTA_CLUSTER_AGAIN);
    }

    return NGX_OK;
}


static void
ngx_http_quota_redis_cluster_again_handler(ngx_event_t *ev)
{
    ngx_http_quota_redis_cluster_retry(ev->data);
}


/*
 * The ops answered TRYAGAIN go to their slot's master again, in order; an
 * exiting worker's fail (a reliable one is kept, as at a lost connection).
 */
void
ngx_http_quota_redis_cluster_retry(ngx_http_quota_worker_t *w)
{
    ngx_uint_t                    node;
    ngx_http_quota_op_t          *op, *next;
    ngx_http_quota_redis_conn_t  *to;

    if (w->again_ev.timer_set) {
        ngx_del_timer(&w->again_ev);
    }

    op = w->again;
    w->again = NULL;
    w->again_tail = NULL;

    for ( /* void */ ; op; op = next) {
        next = op->next;

        if (w->exiting
            || (op->kind == NGX_HTTP_QUOTA_OP_REPLY && op->handler == NULL))
        {
            ngx_http_quota_redis_dispatch_lost(w, op);
            continue;
        }

        node = w->slots[op->route - 1];
        to = (node == NGX_HTTP_QUOTA_NO_NODE) ? NULL
             : ngx_http_quota_redis_cluster_pick_node(w, node, 0,
                                                      op->cmd.len + 32);

        if (to != NULL) {
            if (ngx_http_quota_redis_cluster_send(w, to, op, 0) != NGX_OK) {
                ngx_http_quota_redis_dispatch_lost(w, op);
            }

            continue;
        }

        if (node != NGX_HTTP_QUOTA_NO_NODE
            && ngx_http_quota_redis_cluster_trying(w, node)
            && w->nparked < NGX_HTTP_QUOTA_MAX_PENDING)
        {
            op->node = (u_char) node;
            op->ask = 0;
            ngx_http_quota_redis_cluster_park(w, op);
            continue;
        }

        ngx_http_quota_redis_dispatch_lost(w, op);
    }
}


/* op to the connection of the node named, after ASKING for an ASK */
static ngx_int_t
ngx_http_quota_redis_cluster_send(ngx_http_quota_worker_t *w,
    ngx_http_quota_redis_conn_t *to, ngx_http_quota_op_t *op, ngx_uint_t ask)
{
    ngx_http_quota_op_t  *asking;

    if (ask) {
        asking = ngx_http_quota_redis_op_alloc(w);
        if (asking == NULL) {
            return NGX_ERROR;
        }

        asking->kind = NGX_HTTP_QUOTA_OP_ONEWAY;

        if (ngx_http_quota_redis_append(to, asking,
                                        (u_char *) ngx_http_quota_redis_asking,
                                        sizeof(ngx_http_quota_redis_asking)
                                        - 1)
            != NGX_OK)
        {
            ngx_http_quota_redis_op_free(w, asking);
            return NGX_ERROR;
        }
    }

    return ngx_http_quota_redis_append(to, op, op->cmd.data, op->cmd.len);
}


/* out of every FIFO: cancel() finds no connection, so sends no undo */
static void
ngx_http_quota_redis_cluster_park(ngx_http_quota_worker_t *w,
    ngx_http_quota_op_t *op)
{
    op->conn = NULL;
    op->next = NULL;

    if (w->parked_tail) {
        w->parked_tail->next = op;

    } else {
        w->parked = op;
    }

    w->parked_tail = op;
    w->nparked++;
}


/*
 * A connection became ready or was lost: each parked op goes to its
 * node's ready connection, waits on if one is still connecting, else
 * fails; an op whose caller gave up is dropped unsent.  In order, so a
 * tenant's release still follows its charge.
 */
void
ngx_http_quota_redis_cluster_unpark(ngx_http_quota_worker_t *w)
{
    ngx_http_quota_op_t          *op, *next;
    ngx_http_quota_redis_conn_t  *to;

    op = w->parked;

    w->parked = NULL;
    w->parked_tail = NULL;
    w->nparked = 0;

    for ( /* void */ ; op; op = next) {
        next = op->next;

        if (op->kind == NGX_HTTP_QUOTA_OP_REPLY && op->handler == NULL) {
            ngx_http_quota_redis_dispatch_lost(w, op);
            continue;
        }

        to = w->exiting ? NULL
             : ngx_http_quota_redis_cluster_pick_node(w, op->node, 0,
                                                      op->cmd.len + 32);

        if (to != NULL) {
            if (ngx_http_quota_redis_cluster_send(w, to, op, op->ask)
                != NGX_OK)
            {
                ngx_http_quota_redis_dispatch_lost(w, op);
            }

            continue;
        }

        if (!w->exiting && ngx_http_quota_redis_cluster_trying(w, op->node)) {
            ngx_http_quota_redis_cluster_park(w, op);
            continue;
        }

        ngx_http_quota_redis_dispatch_lost(w, op);
    }
}


/* a connection of the node is on its way to ready */
static ngx_uint_t
ngx_http_quota_redis_cluster_trying(ngx_http_quota_worker_t *w,
    ngx_uint_t node)
{
    ngx_uint_t                    i, pool;
    ngx_http_quota_redis_conn_t  *rc;

    pool = w->qmcf->redis_pool;

    for (i = 0; i < pool; i++) {
        rc = &w->conns[node * pool + i];

        if (rc->state != NGX_HTTP_QUOTA_REDIS_DOWN
            && rc->state != NGX_HTTP_QUOTA_REDIS_READY)
        {
            return 1;
        }
    }

    return 0;
}


/* CRC16-CCITT (XMODEM: poly 0x1021, init 0), as Redis' crc16.c */
static uint16_t
ngx_http_quota_redis_crc16(u_char *p, size_t len)
{
    ngx_uint_t  i;
    uint16_t    crc;

    crc = 0;

    while (len--) {
        crc ^= (uint16_t) (*p++ << 8);

        for (i = 0; i < 8; i++) {
            crc = (crc & 0x8000) ? (uint16_t) ((crc << 1) ^ 0x1021)
                                 : (uint16_t) (crc << 1);
        }
    }

    return crc;
}


/* Redis' keyHashSlot(): the tag between the first { and the next }, if
   not empty, else the whole key */
ngx_uint_t
ngx_http_quota_redis_key_slot(u_char *key, size_t len)
{
    u_char  *open, *close, *last;

    last = key + len;

    open = ngx_strlchr(key, last, '{');

    if (open) {
        close = ngx_strlchr(open + 1, last, '}');

        if (close && close > open + 1) {
            return ngx_http_quota_redis_crc16(open + 1, close - open - 1)
                   & (NGX_HTTP_QUOTA_CLUSTER_SLOTS - 1);
        }
    }

    return ngx_http_quota_redis_crc16(key, len)
           & (NGX_HTTP_QUOTA_CLUSTER_SLOTS - 1);
}

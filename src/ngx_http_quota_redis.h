
/*
 * The Redis connection layer, shared by ngx_http_quota_redis*.c only: the
 * rest of the module sees the functions declared in ngx_http_quota_module.h.
 *
 *   ngx_http_quota_redis.c       per-worker pool, ops, the public calls
 *   ngx_http_quota_redis_conn.c  one connection: connect, handshake, read,
 *                                write, dead-peer rule, close, backoff
 *   ngx_http_quota_redis_ssl.c   TLS with nginx's OpenSSL
 *   ngx_http_quota_redis_sentinel.c
 *                                the master's address from Redis Sentinel
 *   ngx_http_quota_redis_cluster.c
 *                                Redis Cluster: slot map, routing by the
 *                                hash tag, MOVED and ASK
 *   ngx_http_quota_redis_conf.c  quota_redis and quota_redis_ssl_* parsers
 *   ngx_http_quota_redis_live.c  quota_live's SUBSCRIBE connection
 *   ngx_http_quota_redis_stats.c per-server counters, failovers
 */

#ifndef _NGX_HTTP_QUOTA_REDIS_H_INCLUDED_
#define _NGX_HTTP_QUOTA_REDIS_H_INCLUDED_


#include "ngx_http_quota_module.h"


#define NGX_HTTP_QUOTA_BACKOFF_MIN        50      /* ms */
#define NGX_HTTP_QUOTA_BACKOFF_MAX        1000    /* ms */

/* past these a connection takes no more commands: a stalled Redis must not
   grow our output buffer without bound */
#define NGX_HTTP_QUOTA_MAX_PENDING        8192
#define NGX_HTTP_QUOTA_MAX_OUTPUT         (4 * 1024 * 1024)

/* commands that must reach Redis, kept while no connection is ready */
#define NGX_HTTP_QUOTA_MAX_RELIABLE       4096

/* a quitting worker waits this long at most for its reliable commands */
#define NGX_HTTP_QUOTA_QUIT_WAIT          50000   /* ms */
#define NGX_HTTP_QUOTA_QUIT_POLL          100     /* ms */

/* a connection silent this many times timeout= while commands wait is dead
   (never less than connect_timeout) */
#define NGX_HTTP_QUOTA_DEAD_FACTOR        10

#define NGX_HTTP_QUOTA_READ_SIZE          16384

#define NGX_HTTP_QUOTA_CLUSTER_SLOTS      16384
#define NGX_HTTP_QUOTA_CLUSTER_MAX_NODES  64      /* masters */
#define NGX_HTTP_QUOTA_NO_NODE            0xff

/* TRYAGAIN (a multi-key command on a migrating slot): sent again this
   often; a reliable command within its horizon, any other this many
   times (5 s), then given back as a lost reply: its caller's own resend
   horizon decides (a FORCE's, a settle's) */
#define NGX_HTTP_QUOTA_CLUSTER_AGAIN      50
#define NGX_HTTP_QUOTA_CLUSTER_TRIES      100

/* servers with their own metric labels; the rest are server="other" */
#define NGX_HTTP_QUOTA_REDIS_SERVERS      64


typedef enum {
    NGX_HTTP_QUOTA_REDIS_DOWN = 0,        /* waiting for the reconnect timer */
    NGX_HTTP_QUOTA_REDIS_CONNECTING,      /* TCP connect in progress */
    NGX_HTTP_QUOTA_REDIS_TLS,             /* TLS handshake in progress */
    NGX_HTTP_QUOTA_REDIS_HANDSHAKE,       /* AUTH, SELECT, SCRIPT LOAD sent */
    NGX_HTTP_QUOTA_REDIS_READY            /* takes commands */
} ngx_http_quota_redis_state_e;


typedef enum {
    NGX_HTTP_QUOTA_OP_REPLY = 0,          /* a caller waits (or detached) */
    NGX_HTTP_QUOTA_OP_ONEWAY,             /* nobody waits, never resent */
    NGX_HTTP_QUOTA_OP_RELIABLE,           /* nobody waits, resent if lost */
    NGX_HTTP_QUOTA_OP_HANDSHAKE           /* AUTH, SELECT, SCRIPT LOAD */
} ngx_http_quota_op_kind_e;


typedef struct ngx_http_quota_redis_conn_s  ngx_http_quota_redis_conn_t;


/* a cluster master, learned from CLUSTER SLOTS or a redirection */
typedef struct {
    ngx_addr_t                   addr;
    ngx_sockaddr_t               sa;
    u_char                       text[NGX_SOCKADDR_STRLEN];
    unsigned                     used:1;      /* a command went there */
} ngx_http_quota_redis_node_t;


/* a command in a connection's FIFO, or on the free list */
struct ngx_http_quota_op_s {
    ngx_http_quota_reply_pt      handler;     /* NULL once detached */
    void                        *data;
    ngx_http_quota_op_t         *next;
    ngx_http_quota_redis_conn_t *conn;
    uint64_t                     sent_us;     /* for the latency histogram */
    ngx_str_t                    cmd;         /* RELIABLE, cluster: RESP */
    ngx_uint_t                   route;       /* cluster: slot + 1, 0: none */
    time_t                       since;       /* RELIABLE: first sent */
    ngx_http_quota_op_kind_e     kind;
    u_char                       node;        /* cluster: parked for it */
    u_short                      tries;       /* cluster: TRYAGAIN resends */
    unsigned                     redirected:1;    /* MOVED/ASK followed */
    unsigned                     ask:1;       /* parked after an ASK */
};


/* a RESP command kept until a connection is ready (ngx_alloc'd) */
typedef struct ngx_http_quota_redis_cmd_s  ngx_http_quota_redis_cmd_t;

struct ngx_http_quota_redis_cmd_s {
    ngx_http_quota_redis_cmd_t  *next;
    ngx_uint_t                   route;       /* cluster: slot + 1, 0: none */
    time_t                       since;       /* first sent: the horizon */
    size_t                       len;
    u_char                       data[1];
};


struct ngx_http_quota_redis_conn_s {
    ngx_http_quota_worker_t     *worker;
    ngx_uint_t                   index;
    ngx_uint_t                   server;      /* its metric label, _stats.c */
    ngx_http_quota_redis_state_e state;
    ngx_addr_t                  *addr;        /* NULL: master not known yet */
    unsigned                     sentinel:1;  /* talks to a sentinel */
    unsigned                     subscribed:1;    /* replies without ops */
    unsigned                     live:1;      /* quota_live's subscriber */
    unsigned                     control:1;   /* cluster: CLUSTER SLOTS */

    ngx_peer_connection_t        peer;        /* peer.connection: the socket */
    redisReader                 *reader;
#if (NGX_SSL)
    ngx_ssl_session_t           *ssl_session; /* resumed at the reconnect */
#endif

    /* unwritten RESP, ngx_alloc'd, grown by doubling */
    u_char                      *out;
    size_t                       out_pos;
    size_t                       out_len;
    size_t                       out_size;

    ngx_http_quota_op_t         *head;        /* replies come in this order */
    ngx_http_quota_op_t         *tail;
    ngx_uint_t                   pending;     /* ops in the FIFO */

    ngx_msec_t                   busy_since;  /* pending went 0 -> 1 */
    ngx_msec_t                   last_read;   /* Redis last sent a byte */

    ngx_msec_t                   backoff;
    ngx_event_t                  connect_timer;    /* connect + handshake */
    ngx_event_t                  dead_timer;       /* the dead-peer rule */
    ngx_event_t                  reconnect_timer;
};


struct ngx_http_quota_worker_s {
    ngx_http_quota_main_conf_t  *qmcf;
    ngx_log_t                   *log;
    ngx_http_quota_redis_conn_t *conns;
    ngx_uint_t                   nconns;
    ngx_uint_t                   next;        /* round robin */
    ngx_http_quota_op_t         *free_ops;

    ngx_http_quota_redis_cmd_t  *reliable;    /* FIFO while none is ready */
    ngx_http_quota_redis_cmd_t  *reliable_tail;
    ngx_uint_t                   nreliable;
    ngx_uint_t                   reliable_out;    /* RELIABLE ops sent, not
                                                     answered */
    ngx_event_t                  reliable_wait;   /* keeps a quitting
                                                     worker for them */
    ngx_msec_t                   quit_at;     /* first seen quitting */

    /* right after the worker starts, before any connection was ready:
       commands held here (not sent) for at most timeout= */
    ngx_http_quota_op_t         *held;
    ngx_http_quota_op_t         *held_tail;
    ngx_uint_t                   nheld;
    ngx_msec_t                   hold_until;
    ngx_event_t                  hold_timer;

    /* quota_redis_sentinel: the sentinel connection and the master */
    ngx_http_quota_redis_conn_t *sentinel;
    ngx_uint_t                   sentinel_index;
    ngx_addr_t                   master;
    ngx_sockaddr_t               master_sa;
    u_char                       master_text[NGX_SOCKADDR_STRLEN];

    /* quota_live: SUBSCRIBEd to the events channel */
    ngx_http_quota_redis_conn_t *live;
    ngx_uint_t                   live_seed;   /* cluster: its seed */
    /* quota_redis_cluster: the CLUSTER SLOTS connection, the masters
       (append only; node n owns conns[n * pool ...]) and the slot map */
    ngx_http_quota_redis_conn_t *control;
    ngx_uint_t                   seed_index;
    ngx_http_quota_redis_node_t *nodes;
    ngx_uint_t                   nnodes;
    ngx_uint_t                   next_node;   /* round robin, no key */
    u_char                      *slots;       /* slot -> node */
    u_char                      *new_slots;   /* CLUSTER SLOTS parsed here */
    unsigned                     asking_map:1;

    /* ops redirected to a node whose connections are not ready yet */
    ngx_http_quota_op_t         *parked;
    ngx_http_quota_op_t         *parked_tail;
    ngx_uint_t                   nparked;

    /* ops answered TRYAGAIN, sent again by again_ev */
    ngx_http_quota_op_t         *again;
    ngx_http_quota_op_t         *again_tail;
    ngx_event_t                  again_ev;

    ngx_msec_t                   dead_after;  /* the dead-peer threshold */
    unsigned                     ever_ready:1;
    unsigned                     exiting:1;
};


/* ngx_http_quota_redis_stats.c */
ngx_int_t ngx_http_quota_redis_stats_zone(ngx_conf_t *cf,
    ngx_http_quota_main_conf_t *qmcf);
ngx_uint_t ngx_http_quota_redis_stats_server(
    ngx_http_quota_main_conf_t *qmcf, ngx_addr_t *addr);
void ngx_http_quota_redis_error(ngx_http_quota_redis_conn_t *rc,
    ngx_uint_t kind);
void ngx_http_quota_redis_server_error(ngx_http_quota_redis_conn_t *rc,
    ngx_uint_t kind);
void ngx_http_quota_redis_stats_reconnect(ngx_http_quota_redis_conn_t *rc);
void ngx_http_quota_redis_stats_latency(ngx_http_quota_redis_conn_t *rc,
    uint64_t us);
void ngx_http_quota_redis_stats_master(ngx_http_quota_worker_t *w);
void ngx_http_quota_redis_stats_slots(ngx_http_quota_worker_t *w);
void ngx_http_quota_redis_stats_moved(ngx_http_quota_worker_t *w,
    ngx_uint_t slot, ngx_uint_t node);

/* ngx_http_quota_redis.c */
ngx_http_quota_op_t *ngx_http_quota_redis_op_alloc(
    ngx_http_quota_worker_t *w);
ngx_http_quota_op_t *ngx_http_quota_redis_op_copy(
    ngx_http_quota_worker_t *w, ngx_str_t *cmd);
void ngx_http_quota_redis_op_free(ngx_http_quota_worker_t *w,
    ngx_http_quota_op_t *op);
void ngx_http_quota_redis_dispatch(ngx_http_quota_redis_conn_t *rc,
    ngx_http_quota_op_t *op, redisReply *reply);
void ngx_http_quota_redis_on_ready(ngx_http_quota_redis_conn_t *rc);
void ngx_http_quota_redis_dispatch_lost(ngx_http_quota_worker_t *w,
    ngx_http_quota_op_t *op);
ngx_int_t ngx_http_quota_redis_keep(ngx_http_quota_worker_t *w, u_char *cmd,
    size_t len, ngx_uint_t route, time_t since);
ngx_uint_t ngx_http_quota_redis_route(ngx_http_quota_worker_t *w, int argc,
    const char **argv, const size_t *argvlen, ngx_uint_t *affinity);

/* ngx_http_quota_redis_conn.c */
void ngx_http_quota_redis_conn_init(ngx_http_quota_redis_conn_t *rc,
    ngx_http_quota_worker_t *w, ngx_uint_t index);
void ngx_http_quota_redis_connect(ngx_http_quota_redis_conn_t *rc);
void ngx_http_quota_redis_close(ngx_http_quota_redis_conn_t *rc,
    ngx_uint_t reconnect);
ngx_int_t ngx_http_quota_redis_can_take(ngx_http_quota_redis_conn_t *rc,
    size_t len);
void ngx_http_quota_redis_write_now(ngx_http_quota_redis_conn_t *rc);
ngx_int_t ngx_http_quota_redis_append(ngx_http_quota_redis_conn_t *rc,
    ngx_http_quota_op_t *op, u_char *cmd, size_t len);
ngx_int_t ngx_http_quota_redis_handshake_auth(
    ngx_http_quota_redis_conn_t *rc);
ngx_int_t ngx_http_quota_redis_handshake_cmd(ngx_http_quota_redis_conn_t *rc,
    const char *step, int argc, const char **argv, const size_t *argvlen);
void ngx_http_quota_redis_transport_ready(ngx_http_quota_redis_conn_t *rc);

/* ngx_http_quota_redis_sentinel.c */
ngx_int_t ngx_http_quota_redis_sentinel_init(ngx_http_quota_worker_t *w);
ngx_int_t ngx_http_quota_redis_sentinel_handshake(
    ngx_http_quota_redis_conn_t *rc);
ngx_int_t ngx_http_quota_redis_sentinel_reply(ngx_http_quota_redis_conn_t *rc,
    redisReply *reply);
void ngx_http_quota_redis_sentinel_push(ngx_http_quota_redis_conn_t *rc,
    redisReply *reply);
void ngx_http_quota_redis_sentinel_lost(ngx_http_quota_redis_conn_t *rc);
void ngx_http_quota_redis_sentinel_refresh(ngx_http_quota_worker_t *w);
ngx_int_t ngx_http_quota_redis_failover_sign(redisReply *reply);
ngx_int_t ngx_http_quota_redis_parse_addr(ngx_sockaddr_t *sa,
    socklen_t *socklen, u_char *ip, size_t iplen, ngx_int_t port);

/* ngx_http_quota_redis_cluster.c */
ngx_int_t ngx_http_quota_redis_cluster_init(ngx_http_quota_worker_t *w);
ngx_int_t ngx_http_quota_redis_cluster_handshake(
    ngx_http_quota_redis_conn_t *rc);
ngx_int_t ngx_http_quota_redis_cluster_slots(ngx_http_quota_redis_conn_t *rc,
    redisReply *reply);
void ngx_http_quota_redis_cluster_lost(ngx_http_quota_redis_conn_t *rc);
void ngx_http_quota_redis_cluster_refresh(ngx_http_quota_worker_t *w);
ngx_uint_t ngx_http_quota_redis_cluster_ready(ngx_http_quota_worker_t *w);
void ngx_http_quota_redis_cluster_unpark(ngx_http_quota_worker_t *w);
ngx_http_quota_op_t *ngx_http_quota_redis_cluster_wait(
    ngx_http_quota_worker_t *w, ngx_str_t *cmd, ngx_uint_t route);
void ngx_http_quota_redis_cluster_retry(ngx_http_quota_worker_t *w);
ngx_http_quota_redis_conn_t *ngx_http_quota_redis_cluster_pick(
    ngx_http_quota_worker_t *w, size_t len, ngx_uint_t affinity,
    ngx_uint_t route);
ngx_int_t ngx_http_quota_redis_cluster_redirect(
    ngx_http_quota_redis_conn_t *rc, ngx_http_quota_op_t *op,
    redisReply *reply);
ngx_uint_t ngx_http_quota_redis_key_slot(u_char *key, size_t len);

/* ngx_http_quota_redis_live.c */
ngx_int_t ngx_http_quota_redis_live_init(ngx_http_quota_worker_t *w);
void ngx_http_quota_redis_live_lost(ngx_http_quota_redis_conn_t *rc);
ngx_int_t ngx_http_quota_redis_live_handshake(
    ngx_http_quota_redis_conn_t *rc);
void ngx_http_quota_redis_live_push(ngx_http_quota_redis_conn_t *rc,
    redisReply *reply);

/* ngx_http_quota_redis_ssl.c */
#if (NGX_SSL)
ngx_int_t ngx_http_quota_redis_ssl_start(ngx_http_quota_redis_conn_t *rc);
void ngx_http_quota_redis_ssl_forget(ngx_http_quota_redis_conn_t *rc);
#endif


#endif /* _NGX_HTTP_QUOTA_REDIS_H_INCLUDED_ */

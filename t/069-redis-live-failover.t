# quota_live behind Sentinel and on a Redis Cluster (SSE clients):
#
# 1. Sentinel: the subscription is on the master the sentinels name; after
#    SENTINEL FAILOVER the old master is stopped, so only a subscription
#    that followed the master still hears the events; a charge after the
#    failover reaches the client, with the new master's count.
# 2. Cluster (three masters, a dead seed listed first): the subscription
#    moves to the next seed, and hears the events of tenants whose slots
#    are on the other masters (PUBLISH reaches every node).

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaHA ();
use QuotaTime;
use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw(time sleep);

my $start = month_start();
my $valgrind = $ENV{TEST_NGINX_USE_VALGRIND};
my $slack = $valgrind ? 3 : 1;

sub post {
    my ($port, $tenant) = @_;
    my $r = http_request($port, 'POST', '/api/x', { 'X-API-Key' => $tenant }, '', 10);
    return $r->{headers}{'x-status'} // '';
}

my $server = <<'_EOC_';
    quota on;
    quota_tenant $http_x_api_key;
    quota_route POST /api/** api_requests=1;

    location /api/ {
        add_header X-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location = /ws/live { quota_live; }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_

# an SSE client of /ws/live: returns a reader that waits for a pattern
sub sse {
    my ($port, $tenant) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port)
        or die "connect: $!";
    print $s "GET /ws/live?api_key=$tenant HTTP/1.1\r\nHost: x\r\n"
        . "Accept: text/event-stream\r\n\r\n";
    my $buf = '';
    my $sel = IO::Select->new($s);
    return {
        sock => $s,
        until => sub {
            my ($re, $secs) = @_;
            my $deadline = time + ($secs // 8) * $slack;
            while ($buf !~ $re && time < $deadline) {
                $sel->can_read(0.2) or next;
                sysread($s, $buf, 65536, length $buf) or last;
            }
            return $buf =~ $re;
        },
        buf => sub { $buf },
    };
}

# a usage_update event saying used N
sub used_event {
    my ($n) = @_;
    return qr/event: usage_update\ndata: \{[^\n]*"used":$n[,}]/;
}

# 1. Sentinel
{
    my $m = start_redis();
    my $r = start_redis(args => ['--replicaof', '127.0.0.1', $m->{port}]);
    ok(QuotaHA::wait_until(10, sub { $r->cmd('INFO', 'replication') =~ /master_link_status:up/ }),
       'sentinel: the replica follows the master');
    my $s1 = QuotaHA::start_sentinel($m->{port});
    ok(QuotaHA::wait_until(20, sub {
           my $x = QuotaTest::redis_at($s1, 'SENTINEL', 'replicas', 'billing');
           ref $x && @$x;
       }), 'sentinel: knows the replica');

    my (%ok, $used);
    my $log = nginx_run(
        no_root_location => 1,
        http_config => "    quota_redis_sentinel 127.0.0.1:$s1 master=billing"
                       . " timeout=1s;\n"
                       . "    quota_metric api_requests;\n"
                       . "    quota_events on;\n",
        config => $server,
        code => sub {
            my ($port, $root) = @_;
            QuotaHA::wait_until(10 * $slack, sub { post($port, 'warm-up') eq 'ALLOWED' });
            # the subscription is up once an event comes through
            my $c = sse($port, 'lv');
            $ok{snapshot} = $c->{until}->(qr/event: snapshot/);
            QuotaHA::wait_until(10 * $slack, sub {
                post($port, 'lv');
                $c->{until}->(qr/event: usage_update/, 0.5);
            });
            $ok{before} = $c->{until}->(qr/event: usage_update/);

            # the replica has every charge before it is promoted (SENTINEL
            # FAILOVER does not wait for it: what it lacks is lost)
            ok(QuotaHA::replica_has_all($m, $r),
               'the replica has every write');
            QuotaTest::redis_at($s1, 'SENTINEL', 'FAILOVER', 'billing');
            $ok{moved} = QuotaHA::wait_until(20, sub {
                QuotaTest::redis_at($s1, 'SENTINEL', 'get-master-addr-by-name',
                                    'billing')->[1] == $r->{port};
            });
            # +switch-master moves the subscription with the pool, while
            # the old master still runs
            $ok{followed} = QuotaHA::wait_until(20 * $slack, sub {
                QuotaTest::_slurp("$root/logs/error.log")
                    =~ /master "billing" is 127\.0\.0\.1:$r->{port}.*live subscription ready/s;
            });
            # the old master goes away: a subscription still on it (it
            # relays the new master's PUBLISH as a replica) hears nothing
            stop_redis($m);
            $ok{resumed} = QuotaHA::wait_until(20 * $slack, sub { post($port, 'lv') eq 'ALLOWED' });
            # the event of a charge on the new master, with its count (the
            # subscription may take a moment to be made again)
            for (1 .. 20) {
                next unless post($port, 'lv') eq 'ALLOWED';
                $used = $r->cmd('HGET', "quota:{lv}:usage:$start", 'api_requests');
                last if $ok{after} = $c->{until}->(used_event($used), 1);
            }
            close $c->{sock};
        },
    );
    ok($ok{snapshot}, 'sentinel: the client got its snapshot');
    ok($ok{before}, 'sentinel: events before the failover');
    ok($ok{moved}, 'sentinel: the master moved');
    ok($ok{followed}, 'sentinel: the subscription moved to the new master at the switch');
    ok($ok{resumed}, 'sentinel: charging resumed on the new master');
    ok($ok{after}, "sentinel: the event of a charge on the new master (used "
                   . ($used // 'none') . ") reached the client");
    unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'sentinel: no alert, no crash');
    stop_redis($r);
}

# 2. Cluster
{
    my @nodes = QuotaHA::cluster_nodes(3);
    my $out = `redis-cli --cluster create @{[ map { "127.0.0.1:$_->{port}" } @nodes ]} --cluster-replicas 0 --cluster-yes 2>&1`;
    is($?, 0, 'cluster: created') or diag($out);
    ok(QuotaHA::wait_until(20, sub {
           3 == grep { $_->cmd('CLUSTER', 'INFO') =~ /cluster_state:ok/ } @nodes }),
       'cluster: up');
    my @owner;
    for my $x (@{ $nodes[0]->cmd('CLUSTER', 'SLOTS') }) {
        $owner[$_] = $x->[2][1] for $x->[0] .. $x->[1];
    }
    # the subscription is on the seed nodes[0]: tenants on the two others
    my @tenants;
    my %seen = ($nodes[0]{port} => 1);
    for my $i (0 .. 999) {
        my $t = "l$i";
        next if $seen{ $owner[QuotaHA::slot($t)] }++;
        push @tenants, $t;
        last if @tenants == 2;
    }
    is(scalar(@tenants), 2, 'cluster: a tenant on each master but the seed');

    my $dead = free_port();
    my %got;
    my $log = nginx_run(
        no_root_location => 1,
        http_config => "    quota_redis_cluster 127.0.0.1:$dead 127.0.0.1:$nodes[0]{port}"
                       . " timeout=2s;\n"
                       . "    quota_metric api_requests;\n"
                       . "    quota_events on;\n",
        config => $server,
        code => sub {
            my ($port) = @_;
            QuotaHA::wait_until(10 * $slack, sub { post($port, 'warm-up') eq 'ALLOWED' });
            my @c = map { sse($port, $_) } @tenants;
            $_->{until}->(qr/event: snapshot/) for @c;
            # until the subscription is up (the dead seed is tried first)
            QuotaHA::wait_until(10 * $slack, sub {
                post($port, $tenants[0]);
                $c[0]{until}->(qr/event: usage_update/, 0.5);
            });
            for my $i (0, 1) {
                my $t = $tenants[$i];
                post($port, $t) for 1 .. 3;
                my $used = QuotaTest::redis_at($owner[QuotaHA::slot($t)], 'HGET',
                                               "quota:{$t}:usage:$start", 'api_requests');
                $got{$t} = [ $used, $c[$i]{until}->(used_event($used)) ];
            }
            close $_->{sock} for @c;
        },
    );
    for my $t (@tenants) {
        ok($got{$t}[1], "cluster: $t (master $owner[QuotaHA::slot($t)]): the event of its "
                        . "last charge (used $got{$t}[0]) reached the client");
    }
    like($log, qr/127\.0\.0\.1:$dead/, 'cluster: the dead seed was tried');
    like($log, qr/quota: live subscription ready/, 'cluster: subscribed on the next seed');
    unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'cluster: no alert, no crash');
    stop_redis($_) for @nodes;
}

done_testing();

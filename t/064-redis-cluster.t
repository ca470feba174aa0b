# quota_redis_cluster (SPEC 10): a real three-master Redis Cluster on
# loopback.  nginx lists a seed that is down and one live node; tenants
# spread over all three masters are charged exactly, each on the master of
# its slot (CRC16 of the hash tag), 402 at the limit; the usage endpoint
# works; a tenant's slot migrated while nginx runs is followed through ASK
# and TRYAGAIN (during the migration: the scripts declare every key, so the
# destination runs them only once it holds them all; the charges wait and
# are sent again) and MOVED (after it) with nothing charged twice;
# two Redis modes at once and db= fail nginx -t.  Metrics: each master's
# round trips on its own server label, the seed that is down has its connect
# errors, and the migrated slot is one quota_redis_failovers_total.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaHA ();
use QuotaProm;
use QuotaTime;
use Time::HiRes qw(time sleep);
use File::Temp ();
use POSIX ();

my $start = month_start();
my $valgrind = $ENV{TEST_NGINX_USE_VALGRIND};
my $slack = $valgrind ? 3 : 1;

is(QuotaHA::slot('123456789'), 0x31c3 % 16384, 'CRC16 XMODEM check value');

# three empty cluster nodes, joined by redis-cli --cluster create
my @nodes = QuotaHA::cluster_nodes(3);

my $out = `redis-cli --cluster create @{[ map { "127.0.0.1:$_->{port}" } @nodes ]} --cluster-replicas 0 --cluster-yes 2>&1`;
is($?, 0, 'redis-cli --cluster create') or diag($out);
ok(QuotaHA::wait_until(20, sub {
       3 == grep { $_->cmd('CLUSTER', 'INFO') =~ /cluster_state:ok/ } @nodes }),
   'the cluster is up');

my %id = map { $_->{port} => scalar $_->cmd('CLUSTER', 'MYID') } @nodes;

# the master of each slot, as the cluster says
my @owner;
for my $r (@{ $nodes[0]->cmd('CLUSTER', 'SLOTS') }) {
    my ($from, $to, $m) = @$r;
    $owner[$_] = $m->[1] for $from .. $to;
}
my %by_port = map { $_->{port} => $_ } @nodes;

# two tenants on each master, and one more to migrate
my (%on, @tenants);
for my $i (0 .. 999) {
    my $t = "t$i";
    my $p = $owner[QuotaHA::slot($t)];
    next if ($on{$p} //= 0) >= 2;
    $on{$p}++;
    push @tenants, $t;
    last if @tenants == 6;
}
is(scalar(keys %on), 3, 'the tenants cover all three masters');

# a warm-up tenant on each master: charged until every master's
# connection is ready (slow under valgrind), so that no tenant's count
# starts with a request that failed open
my %warm;
for my $i (0 .. 999) {
    $warm{ $owner[QuotaHA::slot("w$i")] } //= "w$i";
    last if keys %warm == 3;
}

my $mover = 'mover';
my $mslot = QuotaHA::slot($mover);
my $src = $by_port{ $owner[$mslot] };
my ($dst) = grep { $_->{port} != $src->{port} } @nodes;

my $server = <<'_EOC_';
    quota on;
    quota_tenant $http_x_api_key;
    quota_route POST /api/** api_requests=1;

    location /api/ {
        add_header X-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location = /usage {
        quota_usage;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }

    location = /metrics {
        quota_metrics;
    }
_EOC_

sub post {
    my ($port, $tenant) = @_;
    return http_request($port, 'POST', '/api/x', { 'X-API-Key' => $tenant },
                        '', 10);
}

my $dead = free_port();
my $kid_dir = File::Temp::tempdir(CLEANUP => 1);
my (%codes, $usage, @ask, @moved, $m0, $m1);

my $log = nginx_run(
    no_root_location => 1,
    http_config => "    quota_redis_cluster 127.0.0.1:$dead"
                   . " 127.0.0.1:$nodes[1]{port} timeout=2s;\n"
                   . "    quota_metric api_requests;\n"
                   . "    quota_plan free { limit api_requests 5; }\n"
                   . "    quota_default_plan free;\n",
    config => $server,
    code => sub {
        my ($port) = @_;

        for my $w (values %warm) {
            QuotaHA::wait_until(10 * $slack, sub {
                (post($port, $w)->{headers}{'x-status'} // '') eq 'ALLOWED' });
        }

        for my $t (@tenants) {
            push @{ $codes{$t} }, post($port, $t)->{status} for 1 .. 6;
        }

        $usage = http_request($port, 'GET', '/usage',
                              { 'X-API-Key' => $tenants[0] }, undef, 10);
        $m0 = http_get($port, '/metrics')->{body};

        # one charge before the migration, on the source
        push @ask, post($port, $mover);

        # CLUSTER SETSLOT IMPORTING / MIGRATING, then MIGRATE every key:
        # the source answers ASK for the slot's (now absent) keys
        $dst->cmd('CLUSTER', 'SETSLOT', $mslot, 'IMPORTING', $id{ $src->{port} });
        $src->cmd('CLUSTER', 'SETSLOT', $mslot, 'MIGRATING', $id{ $dst->{port} });
        my $keys = $src->cmd('CLUSTER', 'GETKEYSINSLOT', $mslot, 100);
        $src->cmd('MIGRATE', '127.0.0.1', $dst->{port}, '', 0, 5000,
                  'KEYS', @$keys) if @$keys;

        # every key of the script is declared (KEYS): the source, without
        # the keys, answers ASK, and the destination, without all of them,
        # TRYAGAIN; the charges wait, sent again, until the slot has moved
        my @kids;
        for my $i (1 .. 2) {
            my $f = "$kid_dir/ask$i";
            my $pid = fork // die "fork: $!";
            if ($pid == 0) {
                my $st = post($port, $mover)->{headers}{'x-status'} // '';
                open my $fh, '>', $f or die "$f: $!";
                print $fh $st;
                close $fh;
                POSIX::_exit(0);
            }
            push @kids, [$pid, $f];
        }
        sleep(0.5 * $slack);

        # the slot now belongs to the destination: the source answers MOVED
        $_->cmd('CLUSTER', 'SETSLOT', $mslot, 'NODE', $id{ $dst->{port} })
            for $dst, $src, grep { $_ != $src && $_ != $dst } @nodes;

        for my $k (@kids) {
            waitpid($k->[0], 0);
            open my $fh, '<', $k->[1] or die "$k->[1]: $!";
            push @ask, { headers => { 'x-status' => scalar <$fh> } };
            close $fh;
        }

        push @moved, post($port, $mover) for 1 .. 2;
        # MOVED asks for the map again: wait for its answer
        QuotaHA::wait_until(5 * $slack, sub {
            http_get($port, '/metrics')->{body}
                =~ /^quota_redis_failovers_total [1-9]/m });
        $m1 = http_get($port, '/metrics')->{body};
    },
);

for my $t (@tenants) {
    my $p = $owner[QuotaHA::slot($t)];
    is_deeply($codes{$t}, [200, 200, 200, 200, 200, 402],
              "$t (slot " . QuotaHA::slot($t) . ", master $p): five admitted, the sixth 402");
    is($by_port{$p}->cmd('HGET', "quota:{$t}:usage:$start", 'api_requests'), 5,
       "$t: counted on its own master");
    # another node answers MOVED: it holds no such key
    is(scalar(grep { eval { $_->cmd('EXISTS', "quota:{$t}:usage:$start") } }
                   @nodes), 1,
       "$t: on no other node");
}

is($usage->{status}, 200, 'the usage endpoint answers');
like($usage->{body}, qr/api_requests/, 'the usage endpoint names the metric')
    or diag($usage->{body});
like($usage->{body}, qr/\b5\b/, 'the usage endpoint reports the 5 used')
    or diag($usage->{body});

is_deeply([map { $_->{headers}{'x-status'} // '' } @ask],
          [('ALLOWED') x 3],
          'the migrating slot: charged before and during the migration (ASK)');
is_deeply([map { $_->{headers}{'x-status'} // '' } @moved],
          [('ALLOWED') x 2],
          'the moved slot: charged on the new owner (MOVED)');
unlike($log, qr/"(?:MOVED|ASK) (?!$mslot )\d+/,
       'every other command went to the master of its slot at once');
like($log, qr/"ASK $mslot 127\.0\.0\.1:$dst->{port}" from/, 'ASK was followed');
like($log, qr/"TRYAGAIN[^"]*" from 127\.0\.0\.1:$dst->{port}, sending again/,
     'the destination without every key answered TRYAGAIN: sent again');
like($log, qr/"MOVED $mslot 127\.0\.0\.1:$dst->{port}" from/, 'MOVED was followed');
is($dst->cmd('HGET', "quota:{$mover}:usage:$start", 'api_requests'), 5,
   'the new owner holds every admitted charge of the moved tenant: none twice');
my $left = eval { $src->cmd('EXISTS', "quota:{$mover}:usage:$start") };
like($left // $@, qr/^(0|MOVED .*)$/, 'and the old owner none');
like($log, qr/no slot map from 127\.0\.0\.1:$dead, asking 127\.0\.0\.1:$nodes[1]{port} next/,
     'the seed that is down was tried, then the next one');
unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'no alert, no crash');

my $p0 = eval { QuotaProm::parse($m0) };
ok($p0, 'metrics: valid Prometheus text') or diag($@);
my $p1 = eval { QuotaProm::parse($m1) };
ok($p1, 'metrics after the migration: valid Prometheus text') or diag($@);
for my $n (@nodes) {
    my $s = "127.0.0.1:$n->{port}";
    # 2 tenants x 6 charges on each master (the usage call adds one)
    ok((QuotaProm::value($p0, 'quota_redis_server_latency_seconds_count', server => $s) // 0) >= 12,
       "metrics: the charges of the master's tenants on server=\"$s\"");
}
ok(QuotaProm::value($p0, 'quota_redis_server_errors_total', server => "127.0.0.1:$dead",
                    kind => 'connect') >= 1,
   'metrics: the seed that is down has its connect errors');
is(QuotaProm::value($p0, 'quota_redis_failovers_total'), 0,
   'metrics: no failover before the migration');
is(QuotaProm::value($p1, 'quota_redis_failovers_total'), 1,
   'metrics: the migrated slot (a new owner in the map) is one failover');

stop_redis($_) for @nodes;

# TLS (quota_redis_ssl): a cluster whose nodes and bus speak TLS only to
# the module; CLUSTER SLOTS over TLS names the TLS ports
SKIP: {
    skip 'openssl not found', 4 if system('openssl version >/dev/null 2>&1');
    my $dir = File::Temp::tempdir(CLEANUP => 1);
    my $o = `openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=redis.test -addext subjectAltName=IP:127.0.0.1 -keyout $dir/s.key -out $dir/s.pem 2>&1`;
    die "openssl: $o" if $?;
    my @tnodes = map {
        my $tp = free_port();
        my $h = start_redis(args => ['--cluster-enabled', 'yes',
                                     '--cluster-config-file', 'nodes.conf',
                                     '--cluster-port', free_port(),
                                     '--tls-port', $tp, '--tls-cluster', 'yes',
                                     '--tls-cert-file', "$dir/s.pem",
                                     '--tls-key-file', "$dir/s.key",
                                     '--tls-ca-cert-file', "$dir/s.pem",
                                     '--tls-auth-clients', 'no']);
        $h->{tport} = $tp;
        $h;
    } 1 .. 3;
    my $c = `redis-cli --tls --cacert $dir/s.pem --cluster create @{[ map { "127.0.0.1:$_->{tport}" } @tnodes ]} --cluster-replicas 0 --cluster-yes 2>&1`;
    is($?, 0, 'tls: redis-cli --cluster create') or diag($c);
    QuotaHA::wait_until(20, sub {
        3 == grep { $_->cmd('CLUSTER', 'INFO') =~ /cluster_state:ok/ } @tnodes });
    # asked over plain TCP, CLUSTER SLOTS names the plain ports
    my %tby = map { ($_->{tport} => $_, $_->{port} => $_) } @tnodes;
    my @town;
    for my $r (@{ $tnodes[0]->cmd('CLUSTER', 'SLOTS') }) {
        $town[$_] = $r->[2][1] for $r->[0] .. $r->[1];
    }
    my %seen;
    my @tt = grep { !$seen{ $town[QuotaHA::slot($_)] // '' }++ } map { "s$_" } 0 .. 200;
    my @st;
    nginx_run(
        no_root_location => 1,
        http_config => "    quota_redis_cluster 127.0.0.1:$tnodes[0]{tport}"
                       . " timeout=3s connect_timeout=3s;\n"
                       . "    quota_redis_ssl on;\n"
                       . "    quota_redis_ssl_verify on;\n"
                       . "    quota_redis_ssl_trusted_certificate $dir/s.pem;\n"
                       . "    quota_metric api_requests;\n",
        config => $server,
        code => sub {
            my ($port) = @_;
            push @st, post($port, $_)->{headers}{'x-status'} // '' for @tt;
        },
    );
    is(scalar(@tt), 3, 'tls: one tenant per master');
    is_deeply(\@st, [('ALLOWED') x 3], 'tls: charged over TLS on every master');
    is(scalar(grep { ($tby{ $town[QuotaHA::slot($_)] }->cmd('HGET', "quota:{$_}:usage:$start",
                                                   'api_requests') // 0) == 1 } @tt),
       3, 'tls: each on the master of its slot');
    stop_redis($_) for @tnodes;
}

# configuration errors
for my $c (
    [ "    quota_redis 127.0.0.1:1;\n    quota_redis_cluster 127.0.0.1:2;",
      qr/"quota_redis_cluster" directive cannot be used with "quota_redis" in \S+:\d+/,
      'quota_redis and quota_redis_cluster' ],
    [ "    quota_redis_cluster 127.0.0.1:2;\n    quota_redis_sentinel 127.0.0.1:3 master=x;",
      qr/"quota_redis_sentinel" directive cannot be used with "quota_redis_cluster" in \S+:\d+/,
      'quota_redis_cluster and quota_redis_sentinel' ],
    [ "    quota_redis_cluster 127.0.0.1:2;\n    quota_redis_cluster 127.0.0.1:3;",
      qr/"quota_redis_cluster" directive is duplicate in \S+:\d+/,
      'quota_redis_cluster twice' ],
    [ "    quota_redis_cluster 127.0.0.1:2 db=1;",
      qr/invalid parameter "db=1" in \S+:\d+/,
      'db= in a cluster' ],
) {
    my ($conf, $re, $name, $extra) = @$c;
    my $ok = eval {
        nginx_run(no_root_location => 1,
                  http_config => "$conf\n    quota_metric api_requests;\n",
                  config => $server . ($extra // ''), code => sub { });
        1;
    };
    ok(!$ok, "nginx -t: $name fails");
    like($@ // '', $re, "nginx -t: $name: file:line and why");
}

done_testing();

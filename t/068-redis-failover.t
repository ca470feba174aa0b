# Failovers with real servers (the slow Redis tests, apart from 063/064):
#
# 1. Sentinel with TLS everywhere: a master and a replica that speak TLS
#    (replication over TLS), a sentinel that speaks TLS to them and to the
#    module; the module verifies every certificate.  SENTINEL FAILOVER
#    during traffic: charging resumes over TLS on the promoted replica, its
#    count equals the admitted requests, nothing charged twice; the metrics
#    put the round trips on the TLS ports' labels and count one failover
#    for two workers.
# 2. Redis Cluster with replicas: 3 masters + 3 replicas on loopback;
#    CLUSTER FAILOVER on the replica of one tenant's master while requests
#    flow (two workers): the charges redirected (MOVED) to the promoted
#    node wait for its connection instead of failing open, every tenant's
#    count equals its admitted requests (none charged twice, none lost),
#    and quota_redis_failovers_total is 1.
# 3. The same cluster behind a seed whose map is stale (a node cut off from
#    the others keeps answering the map it last knew: here a fake seed
#    that answers CLUSTER SLOTS with the map from before the failover);
#    CLUSTER FAILOVER back to the first master: the failover is seen only
#    through MOVED, and counted once (not 0 because no map shows it, nor
#    once more at each stale map).
# 4. A master learned while the gateway runs (a new map: here a fake
#    seed's, naming a proxy in front of the victim's master that holds
#    connections until told): the victim's charges sent while its
#    connection is being made wait for it (parked, as a redirected one
#    does) instead of failing open at once.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaHA ();
use QuotaTime;
use QuotaProm;
use File::Temp ();
use IO::Socket::INET;
use IO::Select;
use POSIX ();
use Time::HiRes qw(time sleep);

my $start = month_start();
my $valgrind = $ENV{TEST_NGINX_USE_VALGRIND};
my $slack = $valgrind ? 3 : 1;

sub post {
    my ($port, $tenant) = @_;
    my $t0 = time;
    my $r = http_request($port, 'POST', '/api/x', { 'X-API-Key' => $tenant }, '', 10);
    $r->{elapsed} = time - $t0;
    return $r;
}

sub status { $_[0]{headers}{'x-status'} // '' }

# stale_seed($map, [$then, $file]): a fake cluster node that answers
# CLUSTER SLOTS with $map ([[from, to, [ip, port, id], replicas...], ...],
# as read from a real node) whatever happens to the cluster (with $then
# once $file exists), PING and AUTH as a node would; returns (port, pid)
sub stale_seed {
    my ($map, $then, $file) = @_;
    my $bulk = sub { '$' . length($_[0]) . "\r\n$_[0]\r\n" };
    my $resp = sub {
        my ($m) = @_;
        my $out = '*' . @$m . "\r\n";
        for my $r (@$m) {
            my ($from, $to, @n) = @$r;
            $out .= '*' . (2 + @n) . "\r\n:$from\r\n:$to\r\n";
            $out .= "*3\r\n" . $bulk->($_->[0]) . ":$_->[1]\r\n"
                    . $bulk->($_->[2]) for @n;
        }
        return $out;
    };
    my $slots = $resp->($map);
    my $slots2 = $then ? $resp->($then) : $slots;
    my $l = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Listen => 16, ReuseAddr => 1) or die $!;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        $SIG{CHLD} = 'IGNORE';
        alarm 120;
        while (my $c = $l->accept) {
            next if fork;
            alarm 120;
            local $/ = "\r\n";
            while (defined(my $n = <$c>)) {
                my @cmd;
                if ($n =~ /^\*(\d+)/) {
                    for (1 .. $1) {
                        my ($len) = (scalar <$c>) =~ /^\$(\d+)/ or last;
                        read($c, my $arg, $len + 2);
                        push @cmd, uc substr($arg, 0, $len);
                    }
                }
                my $cmd = join ' ', @cmd[0 .. ($#cmd < 1 ? $#cmd : 1)];
                print $c $cmd eq 'CLUSTER SLOTS'
                         ? ($file && -e $file ? $slots2 : $slots)
                       : $cmd =~ /^(AUTH|PING)/ ? ($1 eq 'PING' ? "+PONG\r\n" : "+OK\r\n")
                       : "-ERR unknown command\r\n";
                $c->flush;
            }
            POSIX::_exit(0);
        }
        POSIX::_exit(0);
    }
    my $port = $l->sockport;
    close $l;
    return ($port, $pid);
}

# gated_proxy($to): a TCP proxy to 127.0.0.1:$to that accepts connections
# but forwards nothing until SIGUSR1; returns (port, pid)
sub gated_proxy {
    my ($to) = @_;
    my $l = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Listen => 16, ReuseAddr => 1) or die $!;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        my $open = 0;
        local $SIG{USR1} = sub { $open = 1 };
        local $SIG{PIPE} = 'IGNORE';
        alarm 120;
        my $sel = IO::Select->new($l);
        my (@held, %peer);
        while (1) {
            while ($open && (my $c = shift @held)) {
                my $u = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                              PeerPort => $to) or next;
                $peer{$c} = $u; $peer{$u} = $c;
                $sel->add($c, $u);
            }
            for my $h ($sel->can_read(0.01)) {
                if ($h == $l) {
                    push @held, $l->accept // next;
                    next;
                }
                next unless $peer{$h};
                my $n = sysread($h, my $buf, 65536);
                if (!$n) {
                    my $o = delete $peer{$h};
                    delete $peer{$o};
                    $sel->remove($h, $o);
                    close $h; close $o;
                    next;
                }
                syswrite($peer{$h}, $buf);
            }
        }
    }
    my $port = $l->sockport;
    close $l;
    return ($port, $pid);
}

my $server = <<'_EOC_';
    quota on;
    quota_tenant $http_x_api_key;
    quota_route POST /api/** api_requests=1;

    location /api/ {
        add_header X-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }

    location = /metrics {
        quota_metrics;
    }
_EOC_

SKIP: {
    skip 'openssl not found', 14 if system('openssl version >/dev/null 2>&1');

    my $dir = File::Temp::tempdir(CLEANUP => 1);
    my $o = `openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=redis.test -addext subjectAltName=IP:127.0.0.1 -keyout $dir/s.key -out $dir/s.pem 2>&1`;
    die "openssl: $o" if $?;
    my @tls = ('--tls-cert-file', "$dir/s.pem", '--tls-key-file', "$dir/s.key",
               '--tls-ca-cert-file', "$dir/s.pem", '--tls-auth-clients', 'no',
               '--tls-replication', 'yes');

    # the plain ports are the test's own way in; nginx uses the TLS ports
    my ($mt, $rt, $st) = (free_port(), free_port(), free_port());
    my $m = start_redis(args => ['--tls-port', $mt, @tls]);
    my $r = start_redis(args => ['--tls-port', $rt, @tls,
                                 '--replicaof', '127.0.0.1', $mt]);
    ok(QuotaHA::wait_until(10, sub { $r->cmd('INFO', 'replication') =~ /master_link_status:up/ }),
       'sentinel+tls: the replica follows the master over TLS');

    my $s1 = QuotaHA::start_sentinel($mt, "tls-port $st\ntls-cert-file $dir/s.pem\n"
                                 . "tls-key-file $dir/s.key\ntls-ca-cert-file $dir/s.pem\n"
                                 . "tls-auth-clients no\ntls-replication yes\n");
    ok(QuotaHA::wait_until(20, sub {
           my $x = QuotaTest::redis_at($s1, 'SENTINEL', 'replicas', 'billing');
           ref $x && @$x && "@{ $x->[0] }" =~ /\b$rt\b/;
       }), 'sentinel+tls: the sentinel knows the replica at its TLS port');

    my $dead = free_port();
    my $key = "quota:{tls}:usage:$start";
    my (@before, @during, @after, $moved, $metrics);

    my $log = nginx_run(
        no_root_location => 1,
        workers => 2,
        http_config => "    quota_redis_sentinel 127.0.0.1:$dead 127.0.0.1:$st"
                       . " master=billing timeout=2s connect_timeout=3s;\n"
                       . "    quota_redis_ssl on;\n"
                       . "    quota_redis_ssl_verify on;\n"
                       . "    quota_redis_ssl_trusted_certificate $dir/s.pem;\n"
                       . "    quota_metric api_requests;\n",
        config => $server,
        code => sub {
            my ($port, $root) = @_;
            QuotaHA::wait_until(10 * $slack, sub { status(post($port, 'warm-up')) eq 'ALLOWED' });
            push @before, post($port, 'tls') for 1 .. 20;

            # the replica has every charge before it is promoted (SENTINEL
            # FAILOVER does not wait for it: what it lacks is lost)
            ok(QuotaHA::replica_has_all($m, $r),
               'the replica has every write');
            QuotaTest::redis_at($s1, 'SENTINEL', 'FAILOVER', 'billing');
            $moved = QuotaHA::wait_until(20, sub {
                QuotaTest::redis_at($s1, 'SENTINEL', 'get-master-addr-by-name',
                                    'billing')->[1] == $rt;
            });
            # both workers moved their pool (the counter is counted once:
            # one that has not moved yet would charge the old master, which
            # drops what it took when it becomes the new one's replica)
            QuotaHA::wait_until(20, sub {
                my %moved = map { $_ => 1 } QuotaTest::_slurp("$root/logs/error.log")
                    =~ /\d+#(\d+): quota: redis sentinel: master "billing" is 127\.0\.0\.1:$rt\b/g;
                keys %moved >= 2 });

            my $deadline = time + 10 * $slack;
            while (time < $deadline) {
                my $x = post($port, 'tls');
                push @during, $x;
                last if status($x) eq 'ALLOWED';
                sleep 0.05;
            }
            push @after, post($port, 'tls') for 1 .. 20;
            sleep 1;
            $metrics = http_get($port, '/metrics')->{body};
        },
    );

    ok($moved, 'sentinel+tls: the sentinel moved the master to the replica');
    is(scalar(grep { status($_) eq 'ALLOWED' } @before), 20,
       'sentinel+tls: before, charged over TLS on the first master');
    is(status($during[-1]), 'ALLOWED', 'sentinel+tls: charging resumes');
    is(scalar(grep { status($_) !~ /^(ALLOWED|FAIL_OPEN)$/ } @during), 0,
       'sentinel+tls: during, every request admitted or failing open');
    is(scalar(grep { status($_) eq 'ALLOWED' } @after), 20,
       'sentinel+tls: after, charged over TLS on the new master')
        or diag('after: ', join ' ', map { ($_->{status} // '?') . '/' . status($_) } @after);
    my $admitted = grep { status($_) eq 'ALLOWED' } @before, @during, @after;
    is($r->cmd('HGET', $key, 'api_requests'), $admitted,
       "sentinel+tls: the new master's count equals the admitted requests ($admitted)");
    like($log, qr/quota: redis sentinel: master "billing" is 127\.0\.0\.1:$rt/,
         'sentinel+tls: the TLS port of the new master was named');
    unlike($log, qr/verify error|does not match/, 'sentinel+tls: every certificate verified');
    unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'sentinel+tls: no alert, no crash');

    my $p = eval { QuotaProm::parse($metrics) };
    ok($p, 'sentinel+tls: valid Prometheus text') or diag($@);
    is(QuotaProm::value($p, 'quota_redis_failovers_total'), 1,
       'sentinel+tls: one failover, two workers');
    ok((QuotaProm::value($p, 'quota_redis_server_latency_seconds_count',
                         server => "127.0.0.1:$mt") // 0) >= 20,
       'sentinel+tls: round trips on the old master\'s TLS port');
    ok((QuotaProm::value($p, 'quota_redis_server_latency_seconds_count',
                         server => "127.0.0.1:$rt") // 0) >= 20,
       'sentinel+tls: round trips on the new master\'s TLS port');

    stop_redis($r);
    stop_redis($m);
}

# 2. a cluster with replicas; CLUSTER FAILOVER during traffic
{

    my @nodes = QuotaHA::cluster_nodes(6);
    my $out = `redis-cli --cluster create @{[ map { "127.0.0.1:$_->{port}" } @nodes ]} --cluster-replicas 1 --cluster-yes 2>&1`;
    is($?, 0, 'cluster: redis-cli --cluster create, 3 masters + 3 replicas') or diag($out);
    ok(QuotaHA::wait_until(30, sub {
           6 == grep { $_->cmd('CLUSTER', 'INFO') =~ /cluster_state:ok/ } @nodes }),
       'cluster: up');

    my %by_port = map { $_->{port} => $_ } @nodes;
    my (@owner, %replica_of);
    # the replicas join a moment after the create
    QuotaHA::wait_until(30, sub {
        (@owner, %replica_of) = ();
        for my $r (@{ $nodes[0]->cmd('CLUSTER', 'SLOTS') }) {
            my ($from, $to, $mm, @reps) = @$r;
            $owner[$_] = $mm->[1] for $from .. $to;
            $replica_of{ $mm->[1] } = $reps[0][1] if @reps;
        }
        keys %replica_of == 3;
    });
    is(scalar(keys %replica_of), 3, 'cluster: each master has a replica');

    # one tenant per master; the first one's master fails over
    my (%seen, @tenants);
    for my $i (0 .. 999) {
        my $t = "c$i";
        next if $seen{ $owner[QuotaHA::slot($t)] }++;
        push @tenants, $t;
        last if @tenants == 3;
    }
    my $victim = $tenants[0];
    my $old = $owner[QuotaHA::slot($victim)];
    my $new = $replica_of{$old};
    ok(QuotaHA::wait_until(20, sub {
           $by_port{$new}->cmd('INFO', 'replication') =~ /master_link_status:up/ }),
       'cluster: the replica follows its master');

    my (%res, $promoted, $metrics);
    my $log = nginx_run(
        no_root_location => 1,
        workers => 2,
        http_config => "    quota_redis_cluster 127.0.0.1:$nodes[0]{port}"
                       . " timeout=2s connect_timeout=3s;\n"
                       . "    quota_metric api_requests;\n",
        config => $server,
        code => sub {
            my ($port) = @_;
            QuotaHA::wait_until(10 * $slack, sub {
                3 == grep { status(post($port, "warm-$_")) eq 'ALLOWED' } @tenants });

            my $t0 = time;
            my $failed_over = 0;
            my $after = 0;
            # traffic on every tenant; the failover after 1 s; then until
            # the victim was charged 20 times in a row after the promotion
            # (or 40 s)
            while (time - $t0 < 40 * $slack) {
                for my $t (@tenants) {
                    push @{ $res{$t} }, post($port, $t);
                }
                if (!$failed_over && time - $t0 > 1) {
                    $by_port{$new}->cmd('CLUSTER', 'FAILOVER');
                    $failed_over = 1;
                }
                if ($failed_over && !$promoted) {
                    $promoted = eval {
                        $by_port{$new}->cmd('ROLE')->[0] eq 'master' } ? time : undef;
                }
                # 20 in a row charged after the promotion
                $after = $promoted && status($res{$victim}[-1]) eq 'ALLOWED'
                         ? $after + 1 : 0;
                last if $after >= 20;
            }
            sleep 1;
            $metrics = http_get($port, '/metrics')->{body};
        },
    );

    ok($promoted, 'cluster: CLUSTER FAILOVER promoted the replica');
    for my $t (@tenants) {
        my @s = map { status($_) } @{ $res{$t} };
        my $admitted = grep { $_ eq 'ALLOWED' } @s;
        is(scalar(grep { !/^(ALLOWED|FAIL_OPEN)$/ } @s), 0,
           "cluster: $t, every request admitted or failing open");
        my $at = $t eq $victim ? $new : $owner[QuotaHA::slot($t)];
        is($by_port{$at}->cmd('HGET', "quota:{$t}:usage:$start", 'api_requests') // 0,
           $admitted, "cluster: $t counted exactly on its master $at ($admitted admitted)");
    }
    my @v = map { status($_) } @{ $res{$victim} };
    Test::More::note("cluster: the victim's requests: "
                     . join(' ', map { my $x = $_; "$x=" . grep { $_ eq $x } @v }
                                 qw(ALLOWED FAIL_OPEN)));
    is_deeply([ @v[-20 .. -1] ], [ ('ALLOWED') x 20 ],
              'cluster: charging resumed on the promoted node');
    # the first MOVED names the promoted node, whose connections are still
    # being made: the charge waits for them instead of failing open
    # (valgrind: a connection may take longer than timeout=)
    ok(scalar(grep { $_ eq 'FAIL_OPEN' } @v) <= ($valgrind ? 4 : 0),
       'cluster: no request failed open at the failover');
    like($log, qr/quota: redis cluster master 127\.0\.0\.1:$new/,
         'cluster: the promoted node learned as a master');
    unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'cluster: no alert, no crash');

    my $p = eval { QuotaProm::parse($metrics) };
    ok($p, 'cluster: valid Prometheus text') or diag($@);
    is(QuotaProm::value($p, 'quota_redis_failovers_total'), 1,
       'cluster: one failover (a slot map with new owners), two workers');
    ok((QuotaProm::value($p, 'quota_redis_server_latency_seconds_count',
                         server => "127.0.0.1:$new") // 0) >= 20,
       'cluster: round trips on the promoted node\'s label')
        or diag(join "\n", grep { /latency_seconds_count/ } split /\n/, $metrics);

    # 3. a stale seed; CLUSTER FAILOVER back to $old (now $new's replica)
    my $vslot = QuotaHA::slot($victim);
    my $map;
    ok(QuotaHA::wait_until(20, sub {
           $map = $nodes[0]->cmd('CLUSTER', 'SLOTS');
           grep { $_->[0] <= $vslot && $vslot <= $_->[1] && $_->[2][1] == $new } @$map;
       }), 'stale seed: the map names the promoted node');
    # every node knows the demoted master as the promoted one's replica
    # (else the promoted one ignores the failover request, and a master
    # that still sees a master in it denies its vote), and the replication
    # link is up
    my $new_id = $by_port{$new}->cmd('CLUSTER', 'MYID');
    ok(QuotaHA::wait_until(30, sub {
           6 == grep { $_->cmd('CLUSTER', 'NODES')
                       =~ /^\S+ 127\.0\.0\.1:$old\@\S* (?:myself,)?slave $new_id /m }
                     @nodes
           and $by_port{$old}->cmd('INFO', 'replication') =~ /master_link_status:up/ }),
       'stale seed: the demoted master follows the promoted one');
    my ($sport, $spid) = stale_seed($map);
    # a second tenant of the same master, in another slot: its first MOVED
    # is the same failover, not a second one
    my ($victim2) = grep { QuotaHA::slot($_) != $vslot
                           && $owner[QuotaHA::slot($_)] == $old }
                    map { "c$_" } 0 .. 999;
    my $usage = sub { my ($at, $t) = @_;
                      $by_port{$at}->cmd('HGET', "quota:{" . ($t // $victim)
                                         . "}:usage:$start", 'api_requests') // 0 };
    my ($before, $before2, @v3, @v3b, $back);
    $metrics = undef;
    $log = nginx_run(
        no_root_location => 1,
        workers => 2,
        http_config => "    quota_redis_cluster 127.0.0.1:$sport"
                       . " timeout=2s connect_timeout=3s;\n"
                       . "    quota_metric api_requests;\n",
        config => $server,
        code => sub {
            my ($port, $root) = @_;
            # a stale map was fetched after a MOVED (each worker's first
            # map, then one more; a MOVED more than one per worker): the
            # path this section is about was taken
            my $stale_seen = sub {
                my $l = QuotaTest::_slurp("$root/logs/error.log") // '';
                my @mp = $l =~ /map from 127\.0\.0\.1:$sport/g;
                my @mv = $l =~ /"MOVED $vslot 127\.0\.0\.1:$old" from/g;
                @mp >= 3 && @mv >= 3;
            };
            QuotaHA::wait_until(10 * $slack, sub {
                3 == grep { status(post($port, "warm-$_")) eq 'ALLOWED' } @tenants });
            $before = $usage->($new);
            $before2 = $usage->($new, $victim2);
            $by_port{$old}->cmd('CLUSTER', 'FAILOVER');
            my $after = 0;
            my $t0 = time;
            while (time - $t0 < 40 * $slack) {
                push @v3, post($port, $victim);
                push @v3b, post($port, $victim2);
                $back ||= eval { $by_port{$old}->cmd('ROLE')->[0] eq 'master' };
                # 20 in a row charged after the failover, and the stale
                # map was asked again (on a loaded machine a worker's
                # refresh may come after 20 requests)
                $after = $back && status($v3[-1]) eq 'ALLOWED' ? $after + 1 : 0;
                last if $after >= 20 && $stale_seen->();
            }
            $metrics = http_get($port, '/metrics')->{body};
        },
    );
    kill 'KILL', $spid;
    waitpid($spid, 0);

    ok($back, 'stale seed: CLUSTER FAILOVER promoted the first master again');
    my $admitted = grep { status($_) eq 'ALLOWED' } @v3;
    is(scalar(grep { status($_) ne 'ALLOWED' } @v3), 0,
       'stale seed: every request charged');
    is($usage->($old) - $before, $admitted,
       "stale seed: counted exactly on the master $old ($admitted admitted)");
    my $admitted2 = grep { status($_) eq 'ALLOWED' } @v3b;
    is(scalar(grep { status($_) ne 'ALLOWED' } @v3b), 0,
       'stale seed: every request of the second tenant charged');
    is($usage->($old, $victim2) - $before2, $admitted2,
       "stale seed: the second tenant counted exactly on $old ($admitted2 admitted)");
    my @maps = $log =~ /map from 127\.0\.0\.1:$sport/g;
    my @moved = $log =~ /"MOVED $vslot 127\.0\.0\.1:$old" from 127\.0\.0\.1:$new, following/g;
    # each worker's first map, then at least one stale map undoing a
    # MOVED: a MOVED more than one per worker
    ok(@maps >= 3 && @moved >= 3,
       'stale seed: the stale map was asked again after each MOVED ('
       . scalar(@maps) . ' maps, ' . scalar(@moved) . ' MOVED)');
    unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'stale seed: no alert, no crash');
    $p = eval { QuotaProm::parse($metrics) };
    ok($p, 'stale seed: valid Prometheus text') or diag($@);
    is(QuotaProm::value($p, 'quota_redis_failovers_total'), 1,
       'stale seed: one failover, seen through MOVED only (two slots), two workers');

    # 4. the victim's master behind a proxy that holds its connections:
    #    the map (a fake seed's) names the proxy
    ok(QuotaHA::wait_until(20, sub {
           $map = $nodes[0]->cmd('CLUSTER', 'SLOTS');
           grep { $_->[0] <= $vslot && $vslot <= $_->[1] && $_->[2][1] == $old } @$map;
       }), 'held: the map names the master');
    my ($gport, $gpid) = gated_proxy($old);
    my $map2 = [ map { [ @$_ ] } @$map ];
    $_->[2] = [ '127.0.0.1', $gport, $_->[2][2] ]
        for grep { $_->[0] <= $vslot && $vslot <= $_->[1] } @$map2;
    my $switch = File::Temp::tempdir(CLEANUP => 1) . '/map2';
    ($sport, $spid) = stale_seed($map, $map2, $switch);
    my (@held, $learned);
    $before = $usage->($old);
    $log = nginx_run(
        no_root_location => 1,
        http_config => "    quota_redis_cluster 127.0.0.1:$sport"
                       . " timeout=5s connect_timeout=10s;\n"
                       . "    quota_metric api_requests;\n",
        config => $server,
        code => sub {
            my ($port, $root) = @_;
            QuotaHA::wait_until(10 * $slack, sub {
                3 == grep { status(post($port, "warm-$_")) eq 'ALLOWED' }
                          @tenants });
            # the next map names the proxy: asked after a lost connection
            open my $fh, '>', $switch or die "$switch: $!";
            close $fh;
            $by_port{ $owner[QuotaHA::slot($tenants[1])] }
                ->cmd('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes');
            $learned = QuotaHA::wait_until(10 * $slack, sub {
                QuotaTest::_slurp("$root/logs/error.log")
                    =~ /redis cluster master 127\.0\.0\.1:$gport\b/ });
            my @kids;
            for (1 .. 5) {
                pipe(my $r, my $w) or die "pipe: $!";
                my $pid = fork;
                die "fork: $!" unless defined $pid;
                if ($pid == 0) {
                    close $r;
                    my $x = post($port, $victim);
                    print $w status($x) . ' ' . $x->{elapsed};
                    close $w;
                    POSIX::_exit(0);
                }
                close $w;
                push @kids, [$pid, $r];
            }
            # every one sent: the master's connection is still held
            sleep 0.5;
            kill 'USR1', $gpid;
            for my $k (@kids) {
                my $fh = $k->[1];
                local $/;
                push @held, [split ' ', <$fh> // ''];
                waitpid($k->[0], 0);
            }
        },
    );
    for my $pid ($spid, $gpid) {
        kill 'KILL', $pid;
        waitpid($pid, 0);
    }
    ok($learned, 'held: the proxy learned as the victim\'s master');
    is(join(' ', map { $_->[0] // '' } @held), join(' ', ('ALLOWED') x 5),
       'held: the charges sent while the master was being connected waited for it');
    is($usage->($old) - $before, 5, 'held: each charged once');
    unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'held: no alert, no crash');

    stop_redis($_) for @nodes;
}

done_testing();

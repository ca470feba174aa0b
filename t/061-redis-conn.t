# The Redis connection layer under trouble that does not close the socket:
# a slow reply (DEBUG SLEEP) longer than timeout=, a black-holed port, a
# pooled connection stuck in its handshake next to a healthy one, one-way
# commands on a silent peer, and a Redis restarted under load with
# "events { use poll; }".

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use IO::Socket::INET;
use IO::Select;
use POSIX ();
use File::Temp ();
use Time::HiRes qw(time sleep);

my $valgrind = $ENV{TEST_NGINX_USE_VALGRIND};
my $slack = $valgrind ? 3 : 1;

sub server_config {
    return <<'_EOC_';
    quota on;
    quota_tenant $http_x_api_key;
    quota_route POST /api/** api_requests=1;

    location /api/ {
        add_header X-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /closed/ {
        quota_failure_mode closed;
        quota_route POST /closed/** api_requests=1;
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
}

sub http_config {
    my ($redis) = @_;
    return <<"_EOC_";
    quota_redis $redis;
    quota_metric api_requests;
    quota_plan free { limit api_requests 1000000; }
    quota_default_plan free;
_EOC_
}

# the worker's first connection is ready (slow under valgrind): charge a
# tenant of its own until it is admitted
sub warm {
    my ($port) = @_;
    my $deadline = time + 10;
    while (time < $deadline) {
        my $r = http_request($port, 'POST', '/api/x', { 'X-API-Key' => 'warm-up' },
                             '', 10);
        return 1 if ($r->{headers}{'x-status'} // '') eq 'ALLOWED';
        sleep 0.05;
    }
    return 0;
}

sub post {
    my ($port, $path, $tenant, $timeout) = @_;
    my $t0 = time;
    my $res = http_request($port, 'POST', $path, { 'X-API-Key' => $tenant },
                           '', $timeout || 10);
    $res->{elapsed} = time - $t0;
    return $res;
}

# a request sent now, read later: several can wait on Redis at once
sub post_start {
    my ($port, $path, $tenant) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port)
        or die "connect: $!";
    my $t0 = time;
    print $s "POST $path HTTP/1.1\r\nHost: x\r\nX-API-Key: $tenant\r\n"
             . "Content-Length: 0\r\nConnection: close\r\n\r\n";
    return { sock => $s, t0 => $t0 };
}

sub post_finish {
    my ($p) = @_;
    my ($raw, $s) = ('', $p->{sock});
    my $sel = IO::Select->new($s);
    my $deadline = time + 10 * $slack;
    while (time < $deadline && $sel->can_read($deadline - time)) {
        my $n = sysread($s, $raw, 65536, length $raw);
        last unless $n;
    }
    my $res = QuotaTest::parse_http_response($raw);
    $res->{elapsed} = time - $p->{t0};
    close $s;
    return $res;
}

sub metric {
    my ($port, $name) = @_;
    my $r = http_get($port, '/metrics');
    return $r->{body} =~ /^\Q$name\E (\d+)$/m ? $1 : undef;
}

# DEBUG SLEEP on a connection of its own, written by the test itself on a
# connection Redis has already accepted (a PING answered), so that it is
# in Redis' buffers before any request the test sends next (a child that
# connected and wrote it itself could be scheduled after them on a busy
# machine); a child waits for its reply, so the test goes on
sub redis_sleep {
    my ($port, $secs) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port)
        or die "redis_sleep: connect: $!";
    print $s "*1\r\n\$4\r\nPING\r\n";
    $s->flush;
    my $pong = <$s>;
    die 'redis_sleep: PING: ' . ($pong // 'closed') . "\n"
        unless defined $pong && $pong =~ /^\+PONG/;
    print $s "*3\r\n\$5\r\nDEBUG\r\n\$5\r\nSLEEP\r\n\$" . length($secs)
             . "\r\n$secs\r\n";
    $s->flush;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        my $line = <$s>;
        POSIX::_exit(0);
    }
    close $s;
    sleep 0.05;    # let the sleep begin
    return $pid;
}

# A TCP proxy in a child process, to Redis at $to (or nowhere: a black hole
# that accepts and never answers). Signals: USR1 freezes every connection,
# USR2 thaws them, HUP closes the first client connection and black-holes
# the connections accepted after it.
sub start_proxy {
    my ($to) = @_;
    my $l = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Listen => 64, ReuseAddr => 1) or die $!;
    my $pport = $l->sockport;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        my ($frozen, $cut, $hole) = (0, 0, !defined $to);
        local $SIG{USR1} = sub { $frozen = 1 };
        local $SIG{USR2} = sub { $frozen = 0 };
        local $SIG{HUP} = sub { $cut = 1 };
        alarm 60;
        my $sel = IO::Select->new($l);
        my (%peer, @clients, @held);
        while (1) {
            if ($cut == 1) {
                $cut = 2;
                $hole = 1;
                if (my $c = shift @clients) {
                    my $u = delete $peer{$c};
                    delete $peer{$u} if $u;
                    $sel->remove($c); $sel->remove($u) if $u;
                    close $c; close $u if $u;
                }
            }
            my @ready = $sel->can_read(0.01);
            for my $h (@ready) {
                if ($h == $l) {
                    my $c = $l->accept or next;
                    if ($hole) {
                        push @held, $c;    # accepted, never answered
                        next;
                    }
                    my $u = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                                  PeerPort => $to) or next;
                    $peer{$c} = $u; $peer{$u} = $c;
                    push @clients, $c;
                    $sel->add($c, $u);
                    next;
                }
                next unless $h->opened;
                next if $frozen;
                my $buf;
                my $n = sysread($h, $buf, 65536);
                if (!$n) {
                    my $o = delete $peer{$h};
                    delete $peer{$o} if $o;
                    $sel->remove($h); $sel->remove($o) if $o;
                    close $h; close $o if $o;
                    next;
                }
                syswrite($peer{$h}, $buf) if $peer{$h};
            }
        }
    }
    close $l;
    return ($pport, $pid);
}

sub stop_proxy {
    my ($pid) = @_;
    kill 'KILL', $pid;
    waitpid $pid, 0;
}


# 1. D12: one reply slower than timeout= (DEBUG SLEEP, CLIENT PAUSE) does
#    not drop the shared connection: each waiting request times out on its
#    own, nothing reconnects, and the requests after the pause are served
#    at once
for my $how ('DEBUG SLEEP', 'CLIENT PAUSE') {
    my $rs = start_redis(args => ['--enable-debug-command', 'local']);
    my (@slow, $after, $r0, $r1);
    my $log = nginx_run(
        no_root_location => 1,
        http_config => http_config("127.0.0.1:$rs->{port} timeout=200ms"),
        config => server_config(),
        code => sub {
            my ($port) = @_;
            warm($port);
            my $r = post($port, '/api/x', 'slow');
            is($r->{headers}{'x-status'}, 'ALLOWED', "$how: charged before");
            $r0 = metric($port, 'quota_redis_reconnects_total');

            my $pid;
            if ($how eq 'DEBUG SLEEP') {
                $pid = redis_sleep($rs->{port}, '1.2');
            } else {
                $rs->cmd('CLIENT', 'PAUSE', 1200);
            }
            my $t0 = time;
            my $a = post_start($port, '/api/x', 'slow');
            sleep 0.1;
            my $b = post_start($port, '/closed/x', 'slow');
            sleep 0.05;
            my $c = post_start($port, '/api/x', 'slow');
            @slow = map { post_finish($_) } $a, $b, $c;
            if ($pid) {
                waitpid($pid, 0);
            } else {
                sleep 1.3 - (time - $t0) if time - $t0 < 1.3;
            }

            $after = post($port, '/api/x', 'slow');
            $r1 = metric($port, 'quota_redis_reconnects_total');
        },
    );
    is_deeply([map { $_->{headers}{'x-status'} // '' } @slow],
              ['FAIL_OPEN', 'FAIL_CLOSED', 'FAIL_OPEN'],
              "$how: each waiting request follows its failure mode");
    is($slow[1]{status}, 503, "$how: closed answers 503");
    # each waited its own timeout: none was failed early by another's
    for my $i (0 .. 2) {
        ok($slow[$i]{elapsed} >= 0.19 && $slow[$i]{elapsed} < 0.2 + $slack,
           "$how: request $i waited its own 200ms")
            or diag "took $slow[$i]{elapsed}s";
    }
    is($after->{headers}{'x-status'}, 'ALLOWED', "$how: charging goes on after the pause");
    ok($after->{elapsed} < 0.15 * $slack, "$how: no reconnect wait after the pause")
        or diag "took $after->{elapsed}s";
    is($r1, $r0, "$how: quota_redis_reconnects_total did not move");
    unlike($log, qr/stalled|dead peer|connection lost/, "$how: the connection was kept");
    unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, "$how: no alert, no crash");
    stop_redis($rs);
}


# 2. F3: Redis turns into a black hole (accepts, never answers: here a proxy
#    that drops the connection and then holds new ones): the reconnected
#    connection stays in its handshake for connect_timeout=; no request is
#    queued on it, all are answered at once instead of each waiting timeout=
{
    my $rs = start_redis();
    my ($bport, $bpid) = start_proxy($rs->{port});
    my @res;
    my $log = nginx_run(
        no_root_location => 1,
        http_config => http_config("127.0.0.1:$bport timeout=300ms connect_timeout=5s"),
        config => server_config(),
        code => sub {
            my ($port) = @_;
            warm($port);
            kill 'HUP', $bpid;
            sleep 0.3;    # lost, reconnected into the black hole
            push @res, post($port, $_ % 2 ? '/closed/x' : '/api/x', 'hole') for 1 .. 8;
        },
    );
    stop_proxy($bpid);
    stop_redis($rs);
    is(scalar(grep { ($_->{headers}{'x-status'} // '') =~ /^FAIL_(OPEN|CLOSED)$/ } @res), 8,
       'black hole: every request follows the failure mode');
    my @late = grep { $_->{elapsed} >= 0.15 } @res;
    is(scalar(@late), 0, 'black hole: no request waits the 300ms timeout')
        or diag join ' ', map { sprintf '%.3f', $_->{elapsed} } @res;
    unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'black hole: no alert, no crash');
}


# 3. D15: pool=2, one connection lost and reconnecting into a black hole
#    (in its handshake for connect_timeout): every command goes to the
#    healthy one, nothing waits on the stuck one
{
    my $rs = start_redis();
    my ($pport, $ppid) = start_proxy($rs->{port});
    my @res;
    my $log = nginx_run(
        no_root_location => 1,
        http_config => http_config("127.0.0.1:$pport pool=2 timeout=300ms connect_timeout=5s"),
        config => server_config(),
        code => sub {
            my ($port) = @_;
            my $deadline = time + 5;
            my $ok = 0;
            while (time < $deadline && $ok < 4) {
                my $r = post($port, '/api/x', 'pool');
                $ok = ($r->{headers}{'x-status'} // '') eq 'ALLOWED' ? $ok + 1 : 0;
                sleep 0.02;
            }
            kill 'HUP', $ppid;
            sleep 0.5;    # the lost one reconnects into the black hole
            # ten tenants: some are at home on the lost connection
            push @res, post($port, '/api/x', "pool$_") for 1 .. 10;
        },
    );
    stop_proxy($ppid);
    stop_redis($rs);
    is(scalar(grep { ($_->{headers}{'x-status'} // '') eq 'ALLOWED' } @res), 10,
       'pool: every request charged on the healthy connection')
        or diag join ' ', map { $_->{headers}{'x-status'} // '?' } @res;
    is(scalar(grep { $_->{elapsed} >= 0.15 } @res), 0,
       'pool: no request waited on the connection in its handshake')
        or diag join ' ', map { sprintf '%.3f', $_->{elapsed} } @res;
    unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'pool: no alert, no crash');
}


# 4. D14: a one-way command (a concurrency slot release) waiting on a silent
#    peer counts for the connection's health: with no request left to time
#    out, the connection is still found dead and replaced
{
    my $rs = start_redis();
    my ($pport, $ppid) = start_proxy($rs->{port});

    # an upstream that answers after 0.6 s, so the release is sent later
    my $ul = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                   Listen => 16, ReuseAddr => 1) or die $!;
    my $uport = $ul->sockport;
    my $upid = fork;
    die "fork: $!" unless defined $upid;
    if ($upid == 0) {
        alarm 30;
        while (my $c = $ul->accept) {
            my $req = '';
            while ($req !~ /\r\n\r\n/) {
                sysread($c, $req, 4096, length $req) or last;
            }
            sleep 0.6;
            print $c "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
            close $c;
        }
        POSIX::_exit(0);
    }
    close $ul;

    my ($first, $back);
    my $log = nginx_run(
        no_root_location => 1,
        http_config => "    quota_redis 127.0.0.1:$pport timeout=100ms connect_timeout=300ms;\n"
                       . "    quota_metric api_requests;\n"
                       . "    quota_plan one { limit api_requests 1000; concurrency 5; }\n"
                       . "    quota_default_plan one;\n",
        config => <<"_EOC_",
    quota on;
    quota_tenant \$http_x_api_key;
    quota_route POST /slow/** api_requests=1;
    quota_route POST /api/** api_requests=1;

    location /slow/ {
        add_header X-Status \$quota_status always;
        proxy_pass http://127.0.0.1:$uport;
    }

    location /api/ {
        add_header X-Status \$quota_status always;
        proxy_pass http://127.0.0.1:\$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\\n";
    }
_EOC_
        code => sub {
            my ($port) = @_;
            warm($port);
            my $p = post_start($port, '/slow/x', 'oneway');
            sleep 0.3;               # charged, the slot is held upstream
            kill 'USR1', $ppid;      # Redis goes silent
            $first = post_finish($p);    # the release goes to the silent peer
            sleep 3 * $slack;            # no request waits: only the release
            kill 'USR2', $ppid;
            my $deadline = time + 5;
            while (time < $deadline) {
                $back = post($port, '/api/x', 'oneway');
                last if ($back->{headers}{'x-status'} // '') eq 'ALLOWED';
                sleep 0.05;
            }
        },
    );
    kill 'KILL', $upid;
    waitpid $upid, 0;
    stop_proxy($ppid);
    stop_redis($rs);

    is($first->{headers}{'x-status'}, 'ALLOWED', 'one-way: the slow request was charged');
    like($log, qr/quota: redis connection #0 dead peer: nothing received for \d+ms with 1 command/,
         'one-way: a silent peer with only a release waiting is found dead');
    is($back->{headers}{'x-status'}, 'ALLOWED', 'one-way: charging resumes after the peer answers again');
    unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'one-way: no alert, no crash');
}


# 5b. jittered backoff: eight connections refused at once do not retry in
#    step; each delay is drawn from the upper half of its backoff step
{
    my $dead = free_port();
    my $log = nginx_run(
        no_root_location => 1,
        log_level => 'debug',
        http_config => http_config("127.0.0.1:$dead pool=8 timeout=100ms"),
        config => server_config(),
        code => sub { sleep 0.3 },
    );
    my %first;
    while ($log =~ /quota: redis connection #(\d+) reconnects in (\d+)ms \(backoff 50ms\)/g) {
        $first{$1} //= $2;
    }
    is(scalar(keys %first), 8, 'backoff: every connection scheduled its first retry');
    is(scalar(grep { $_ < 25 || $_ > 50 } values %first), 0,
       'backoff: the first retry within 25-50ms') or diag join ' ', values %first;
    my %distinct = map { $_ => 1 } values %first;
    ok(keys %distinct >= 2, 'backoff: not all in step (' . join(' ', sort values %first) . ')');
}

sub poll_supported {
    my $dir = File::Temp::tempdir(CLEANUP => 1);
    open my $fh, '>', "$dir/nginx.conf" or die $!;
    print $fh "error_log stderr;\npid $dir/nginx.pid;\nevents { use poll; }\n";
    close $fh;
    my $bin = $ENV{TEST_NGINX_BINARY} || 'nginx';
    my $out = `$bin -t -p $dir/ -c $dir/nginx.conf 2>&1`;
    return $out !~ /invalid event type/;
}

# 5. D7: "use poll" keeps the connection table indexed by fd; Redis restarted
#    three times under load must not crash the worker nor misroute events
{
    my $rs = start_redis();
    my $rport = $rs->{port};
    my ($ok_after, $statuses);
    # Debian's nginx is built without the poll module: then the same
    # restarts run under the default method (epoll)
    local $ENV{TEST_NGINX_EVENT_TYPE} = poll_supported() ? 'poll' : undef;
    Test::More::diag('nginx has no poll module: restarts under epoll')
        unless $ENV{TEST_NGINX_EVENT_TYPE};
    my $log = nginx_run(
        no_root_location => 1,
        http_config => http_config("127.0.0.1:$rport pool=2 timeout=500ms"),
        config => server_config(),
        code => sub {
            my ($port) = @_;
            my %seen;
            for my $round (1 .. 3) {
                my $lpid = fork;
                die "fork: $!" unless defined $lpid;
                if ($lpid == 0) {
                    my $end = time + 0.8;
                    while (time < $end) {
                        QuotaTest::http_concurrent($port, 8,
                            "POST /api/x HTTP/1.1\r\nHost: x\r\nX-API-Key: poll\r\n"
                            . "Content-Length: 0\r\nConnection: close\r\n\r\n", 5);
                    }
                    POSIX::_exit(0);
                }
                sleep 0.2;
                stop_redis($rs);
                sleep 0.1;
                $rs = start_redis(port => $rport);
                waitpid($lpid, 0);
            }
            my $deadline = time + 5;
            while (time < $deadline) {
                $ok_after = post($port, '/api/x', 'poll');
                last if ($ok_after->{headers}{'x-status'} // '') eq 'ALLOWED';
                sleep 0.05;
            }
        },
    );
    stop_redis($rs);
    is($ok_after->{headers}{'x-status'}, 'ALLOWED', 'poll: the worker still serves and charges');
    unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal|unexpected event/,
           'poll: no alert, no crash, no misrouted event');
}

done_testing();

# A charge whose outcome the gateway does not know is voided: a request
# answered FAIL_OPEN or 503 after a timeout, or whose client went away while
# Redis was slow, is charged nothing and leaves no in-flight slot, whether
# its script ran before the void (undone) or after it (a no-op).  Charge
# ids are unique across nodes (random per-worker prefix).
#
# Redis is made slow with DEBUG SLEEP on a private redis-server, so the
# charges run late, after the gateway gave up on them (chaos report F1).

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaTime;
use IO::Socket::INET;
use IO::Select;
use File::Temp ();
use POSIX ();
use Time::HiRes qw(time sleep);

my $start = month_start();
my $valgrind = $ENV{TEST_NGINX_USE_VALGRIND};

sub server_config {
    return <<'_EOC_';
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /api/** a=1;
    access_log logs/status.log st;

    location /api/ {
        add_header X-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /closed/ {
        quota_failure_mode closed;
        quota_route POST /closed/** a=1;
        add_header X-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location = /metrics {
        quota_metrics;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_
}

sub http_config {
    my ($port, $timeout, $conc) = @_;
    return <<"_EOC_";
    quota_redis 127.0.0.1:$port timeout=$timeout;
    quota_metric a;
    quota_plan p { limit a 1000000; concurrency $conc lease=60s; }
    quota_default_plan p;
    log_format st '\$http_x_t \$status "\$quota_status"';
_EOC_
}

# DEBUG SLEEP from a child with its own connection, so the test goes on
sub redis_sleep {
    my ($port, $secs) = @_;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $port) or POSIX::_exit(1);
        print $s "*3\r\n\$5\r\nDEBUG\r\n\$5\r\nSLEEP\r\n\$" . length($secs)
                 . "\r\n$secs\r\n";
        my $line = <$s>;
        POSIX::_exit(0);
    }
    sleep 0.1;    # let the sleep begin
    return $pid;
}

# requests sent at once, one child each: tenant => [status, X-Status]
sub concurrent {
    my ($port, $timeout, @reqs) = @_;
    my %kid;
    for my $q (@reqs) {
        my ($path, $tenant) = @$q;
        pipe(my $r, my $w) or die "pipe: $!";
        my $pid = fork;
        die "fork: $!" unless defined $pid;
        if ($pid == 0) {
            close $r;
            my $res = QuotaTest::http_request($port, 'POST', $path,
                                              { 'X-T' => $tenant }, '', $timeout);
            print $w ($res->{status} // ''), ' ',
                     ($res->{headers}{'x-status'} // '-');
            close $w;
            POSIX::_exit(0);
        }
        close $w;
        $kid{$tenant} = [$pid, $r];
    }
    my %out;
    for my $t (keys %kid) {
        my ($pid, $r) = @{ $kid{$t} };
        local $/;
        my $line = <$r>;
        waitpid($pid, 0);
        $out{$t} = [split ' ', $line // ''];
    }
    return \%out;
}

sub used { my ($rs, $t) = @_; $rs->cmd('HGET', "quota:{$t}:usage:$start", 'a') // 0 }
sub slots { my ($rs, $t) = @_; $rs->cmd('ZCARD', "quota:{$t}:inflight") }
# the daily breakdown of metric a, summed over its days
sub daily_sum {
    my ($rs, $t) = @_;
    my %d = @{ $rs->cmd('HGETALL', "quota:{$t}:daily:$start") || [] };
    my $n = 0;
    $n += $d{$_} for grep { /^a:\d{4}-\d\d-\d\d$/ } keys %d;
    return $n;
}

# wait until Redis answers again and the voids had time to arrive
sub settle {
    my ($rs, $pid) = @_;
    waitpid($pid, 0);
    $rs->cmd('PING');
    sleep($valgrind ? 4 : 2);
}


# 1. F1: every request answered FAIL_OPEN or 503 while Redis slept past the
#    timeout is charged nothing and holds no slot; those ALLOWED are charged
#    once.  Distinct tenant per request, as in the chaos report's trace.
{
    my $rs = start_redis(args => ['--enable-debug-command', 'local']);
    my $res;
    my $log = nginx_run(
        no_root_location => 1,
        http_config => http_config($rs->{port}, '100ms', 5),
        config => server_config(),
        code => sub {
            my ($port) = @_;
            my $r = QuotaTest::http_request($port, 'POST', '/api/x', { 'X-T' => 'warm' }, '');
            is($r->{headers}{'x-status'}, 'ALLOWED', 'F1: Redis answers before the sleep');

            my $pid = redis_sleep($rs->{port}, 1.5);
            my @reqs = map { [($_ % 2 ? '/closed/x' : '/api/x'), "f1-$_"] } 1 .. 24;
            $res = concurrent($port, 10, @reqs);
            # a second wave, on the connection that replaced the dropped one
            sleep 0.3;
            my $more = concurrent($port, 10,
                map { [($_ % 2 ? '/closed/x' : '/api/x'), "f1b-$_"] } 1 .. 12);
            %$res = (%$res, %$more);
            settle($rs, $pid);
        },
    );

    my (%by, @charged, @slotted);
    for my $t (sort keys %$res) {
        my ($status, $xs) = @{ $res->{$t} };
        $xs //= '-';
        $by{$xs}++;
        my $u = used($rs, $t);
        my $d = daily_sum($rs, $t);
        push @charged, "$t $xs used=$u but daily=$d" if $d != $u;
        if ($xs eq 'ALLOWED') {
            push @charged, "$t ALLOWED used=$u" if $u != 1;
        } else {
            push @charged, "$t $status $xs used=$u" if $u != 0;
        }
        push @slotted, $t if slots($rs, $t);
    }
    diag(join ', ', map { "$_: $by{$_}" } sort keys %by);
    ok(($by{FAIL_OPEN} // 0) + ($by{FAIL_CLOSED} // 0) >= 12,
       'F1: most requests gave up waiting');
    is(scalar @charged, 0, 'F1: a request answered FAIL_OPEN/FAIL_CLOSED is charged nothing, an ALLOWED one once')
        or diag(join "\n", @charged);
    is(scalar @slotted, 0, 'F1: no slot left behind') or diag("@slotted");
    unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'F1: no alert, no crash');
    stop_redis($rs);
}


# 2. D1: a concurrency 1 tenant after a timed-out reply gets 200 on the next
#    request (the slot the late charge took is voided)
{
    my $rs = start_redis(args => ['--enable-debug-command', 'local']);
    my ($first, $next, $metrics);
    my $log = nginx_run(
        no_root_location => 1,
        http_config => http_config($rs->{port}, '100ms', 1),
        config => server_config(),
        code => sub {
            my ($port) = @_;
            my $pid = redis_sleep($rs->{port}, 0.6);
            $first = QuotaTest::http_request($port, 'POST', '/api/x', { 'X-T' => 'd1a' }, '');
            settle($rs, $pid);
            $next = QuotaTest::http_request($port, 'POST', '/api/x', { 'X-T' => 'd1a' }, '');
        },
    );
    is($first->{headers}{'x-status'}, 'FAIL_OPEN', 'D1 timeout: FAIL_OPEN while Redis sleeps');
    is($next->{status}, 200, 'D1 timeout: the next request of a concurrency 1 tenant is served');
    is($next->{headers}{'x-status'}, 'ALLOWED', 'D1 timeout: ALLOWED');
    is(used($rs, 'd1a'), 1, 'D1 timeout: only the served request is charged');
    is(slots($rs, 'd1a'), 0, 'D1 timeout: no slot left')
        or diag(explain($rs->cmd('ZRANGE', 'quota:{d1a}:inflight', 0, -1, 'WITHSCORES')), $log);
    like($log, qr/quota: voiding charge [0-9a-f]{17,} of tenant "d1a"/, 'D1 timeout: the void is logged');
    stop_redis($rs);
}


# 3. D1 + D13: the client goes away while Redis is slow (timeout 5s): the
#    slot is freed, nothing charged, and the request is neither counted as
#    UNMETERED nor given any $quota_status
sub abort_case {
    my ($name) = @_;
    my $rs = start_redis(args => ['--enable-debug-command', 'local']);
    my ($next, $metrics, $t_abort, $status_log);
    my $log = nginx_run(
        no_root_location => 1,
        http_config => http_config($rs->{port}, '5s', 1),
        config => server_config(),
        code => sub {
            my ($port, $root) = @_;
            my $pid = redis_sleep($rs->{port}, 1.5);
            my $t0 = time;
            my $r = QuotaTest::http_request($port, 'POST', '/api/x', { 'X-T' => "ab-$name" }, '', 0.2);
            ok($r->{timed_out} || !$r->{status}, "$name: the client gave up first");
            settle($rs, $pid);
            $next = QuotaTest::http_request($port, 'POST', '/api/x', { 'X-T' => "ab-$name" }, '');
            $metrics = QuotaTest::http_get($port, '/metrics')->{body};
            $status_log = QuotaTest::_slurp("$root/logs/status.log");
        },
    );
    is($next->{status}, 200, "$name: the next request of a concurrency 1 tenant is served");
    is(used($rs, "ab-$name"), 1, "$name: only the served request is charged");
    is(slots($rs, "ab-$name"), 0, "$name: no slot left");
    like($metrics, qr/^quota_decisions_total\{status="UNMETERED"\} 0$/m,
         "$name: the aborted request is not counted as UNMETERED");
    like($metrics, qr/^quota_decisions_total\{status="ABORTED"\} 1$/m,
         "$name: it is counted as ABORTED");
    like($status_log, qr/^ab-\Q$name\E 499 "ABORTED"$/m, "$name: \$quota_status ABORTED");
    unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, "$name: no alert, no crash");
    stop_redis($rs);
    return $log;
}

abort_case('abort');

# 4. D19: under "use poll" the hang-up is seen while the request waits
#    (its read event is armed on suspend), so the charge is voided then;
#    Debian's nginx is built without the poll module: skipped there
sub poll_supported {
    my $dir = File::Temp::tempdir(CLEANUP => 1);
    open my $fh, '>', "$dir/nginx.conf" or die $!;
    print $fh "error_log stderr;\npid $dir/nginx.pid;\nevents { use poll; }\n";
    close $fh;
    my $bin = $ENV{TEST_NGINX_BINARY} || 'nginx';
    return system("$bin -t -p $dir/ -c $dir/nginx.conf >/dev/null 2>&1") == 0;
}

SKIP: {
    skip 'nginx has no poll module (D19 needs "use poll")', 8 unless poll_supported();
    local $ENV{TEST_NGINX_EVENT_TYPE} = 'poll';
    abort_case('poll');
}

# 5. D18: charge ids (= slot members) carry a random per-worker prefix: two
#    gateways whose workers share pid and sequence still name them apart
{
    my $rs = start_redis();
    my @ids;
    for my $n (1 .. 2) {
        nginx_run(
            no_root_location => 1,
            http_config => http_config($rs->{port}, '3s', 5),
            config => server_config() . <<'_EOC_',
    location /hold/ {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }
_EOC_
            code => sub {
                my ($port) = @_;
                QuotaTest::http_request($port, 'POST', '/api/x', { 'X-T' => 'd18' }, '');
                # the charge's record: field ID of P{T}:r:BUCKET (10 s+)
                push @ids, map { "quota:{d18}:c:$_" } grep { $_ ne '_' }
                           map { @{ $rs->cmd('HKEYS', $_) } }
                           @{ $rs->cmd('KEYS', 'quota:{d18}:r:*') };
            },
        );
    }
    my %seen;
    my $keys = [grep { !$seen{$_}++ } @ids];
    is(scalar @$keys, 2, 'D18: two charges, two distinct records');
    my @p = map { /:c:([0-9a-f]{16})/ ? $1 : '' } @$keys;
    isnt($p[0], $p[1], 'D18: different per-worker prefixes');
    like($keys->[0], qr/^quota:\{d18\}:c:[0-9a-f]{16}[0-9a-f]+$/, 'D18: id is 16 hex digits of prefix and a hex sequence');
    stop_redis($rs);
}


# an upstream that answers after ?ms= milliseconds, one child per request
sub slow_upstream {
    my $l = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Listen => 64, ReuseAddr => 1) or die $!;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        $SIG{CHLD} = 'IGNORE';
        alarm 30;
        while (my $c = $l->accept) {
            next if fork;
            my $req = '';
            while (defined(my $line = <$c>)) { $req .= $line; last if $line eq "\r\n" }
            my ($ms) = $req =~ /ms=(\d+)/;
            sleep(($ms // 0) / 1000);
            print $c "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
            close $c;
            POSIX::_exit(0);
        }
        POSIX::_exit(0);
    }
    my $port = $l->sockport;
    close $l;
    return ($pid, $port);
}


# a TCP proxy to Redis: SIGUSR1 closes every connection and stops
# listening (connects are refused), SIGUSR2 listens again.  SIGTERM drains
# it: once nginx has exited, whatever nginx wrote (the last slot release is
# written just before the response) is forwarded, and each Redis side is
# half-closed and read until Redis closes it, i.e. until Redis has run every
# command; then the proxy exits.  Killing it instead could drop a release
# still in its buffers (the flake of 'F2: no slot left').
sub down_proxy {
    my ($rport) = @_;
    my $l = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Listen => 16, ReuseAddr => 1) or die $!;
    my $pport = $l->sockport;
    my $ppid = fork;
    die "fork: $!" unless defined $ppid;
    if ($ppid == 0) {
        my ($down, $up, $stop) = (0, 0, 0);
        local $SIG{USR1} = sub { $down = 1 };
        local $SIG{USR2} = sub { $up = 1 };
        local $SIG{TERM} = sub { $stop = 1 };
        local $SIG{PIPE} = 'IGNORE';    # nginx may be gone: EPIPE, not death
        alarm 30;
        my $sel = IO::Select->new($l);
        my (%peer, %redis_side);
        while (1) {
            if ($stop && $l) {
                $sel->remove($l);
                close $l;
                $l = undef;
            }
            POSIX::_exit(0) if $stop && !$sel->count;
            if ($down) {
                $down = 0;
                for my $h ($sel->handles) { $sel->remove($h); close $h }
                %peer = ();
                %redis_side = ();
                $l = undef;
            }
            if ($up) {
                $up = 0;
                $l = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                           LocalPort => $pport, Listen => 16,
                                           ReuseAddr => 1) or die $!;
                $sel->add($l);
            }
            my @ready = $sel->can_read(0.01);
            for my $h (@ready) {
                if ($l && $h == $l) {
                    my $c = $l->accept or next;
                    my $u = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                                  PeerPort => $rport) or next;
                    $peer{$c} = $u; $peer{$u} = $c;
                    $redis_side{$u} = 1;
                    $sel->add($c, $u);
                    next;
                }
                next unless defined fileno($h);    # its peer closed it
                my $buf;
                my $n = sysread($h, $buf, 65536);
                if (!$n && !$redis_side{$h} && $peer{$h}) {
                    # nginx closed: Redis still runs what was forwarded,
                    # its side stays open until Redis closes it
                    my $o = delete $peer{$h};
                    delete $peer{$o};
                    $sel->remove($h);
                    close $h;
                    shutdown($o, 1);
                    next;
                }
                if (!$n) {
                    my $o = delete $peer{$h};
                    delete $peer{$o} if $o;
                    delete $redis_side{$h};
                    delete $redis_side{$o} if $o;
                    $sel->remove($h); $sel->remove($o) if $o;
                    close $h; close $o if $o;
                    next;
                }
                syswrite($peer{$h}, $buf) if $peer{$h};
            }
        }
    }
    close $l;
    return ($ppid, $pport);
}


# 6. F2: a slot released while no connection to Redis is up is sent after
#    the reconnect, not lost: the concurrency 1 tenant is served at once
{
    my $rs = start_redis();
    my ($up_pid, $up_port) = slow_upstream();
    my ($ppid, $pport) = down_proxy($rs->{port});
    my ($held, $during, $next);
    my $log = nginx_run(
        no_root_location => 1,
        http_config => http_config($pport, '1s', 1),
        config => server_config() . <<"_EOC_",
    location /slow/ {
        quota_route POST /slow/** a=1;
        proxy_pass http://127.0.0.1:$up_port;
    }
_EOC_
        code => sub {
            my ($port) = @_;
            my $kid = fork;
            die "fork: $!" unless defined $kid;
            if ($kid == 0) {
                # admitted at once, holds its slot for 1 s
                my $r = QuotaTest::http_request($port, 'POST', '/slow/x?ms=1000',
                                                { 'X-T' => 'f2' }, '', 10);
                POSIX::_exit($r->{status} == 200 ? 0 : 1);
            }
            sleep 0.3;
            kill 'USR1', $ppid;    # Redis unreachable while the slot is given back
            waitpid($kid, 0);
            $held = $? >> 8;
            $during = QuotaTest::http_request($port, 'POST', '/api/x', { 'X-T' => 'f2-other' }, '');
            kill 'USR2', $ppid;
            my $deadline = time + ($valgrind ? 10 : 5);
            while (time < $deadline) {
                my $r = QuotaTest::http_request($port, 'POST', '/api/x', { 'X-T' => 'f2-probe' }, '');
                last if ($r->{headers}{'x-status'} // '') eq 'ALLOWED';
                sleep 0.05;
            }
            sleep 0.2;
            $next = QuotaTest::http_request($port, 'POST', '/slow/x?ms=0', { 'X-T' => 'f2' }, '');
        },
    );
    # nginx has exited: the proxy forwards what it still holds, then exits
    kill 'TERM', $ppid;
    waitpid($ppid, 0);
    kill 'TERM', $up_pid;
    waitpid($up_pid, 0);
    is($held, 0, 'F2: the slot holder was served');
    is($during->{headers}{'x-status'}, 'FAIL_OPEN', 'F2: Redis was unreachable at its end');
    is($next->{status}, 200, 'F2: the next request of the concurrency 1 tenant is served');
    is(slots($rs, 'f2'), 0, 'F2: no slot left');
    unlike($log, qr/in-flight slot not released/, 'F2: no release lost');
    unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'F2: no alert, no crash');
    stop_redis($rs);
}

done_testing();

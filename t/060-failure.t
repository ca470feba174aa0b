# Redis trouble follows quota_failure_mode, never a crash: unreachable,
# slow (timeout), restarted (reconnect without reload), script cache
# flushed (NOSCRIPT answered by one EVAL), and a client that leaves while
# its reply is pending.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaTime;
use IO::Socket::INET;
use IO::Select;
use Time::HiRes qw(time sleep);

my $start = month_start();

# a server block metering POST /api/** for tenant $http_x_api_key
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
_EOC_
}

sub http_config {
    my ($port, $timeout) = @_;
    return <<"_EOC_";
    quota_redis 127.0.0.1:$port timeout=$timeout;
    quota_metric api_requests;
    quota_plan free { limit api_requests 100; }
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
    $res->{start} = $t0;
    return $res;
}

# Redis answers nothing for $secs (CLIENT PAUSE ALL): the pause is in
# effect once its OK is read, so the requests sent next surely wait, on
# however loaded a machine (a DEBUG SLEEP sent by a child 50 ms earlier
# could begin after them). Returns the time the pause ends.
sub redis_pause {
    my ($rs, $secs) = @_;
    $rs->cmd('CLIENT', 'PAUSE', int($secs * 1000), 'ALL');
    return time + $secs;
}

sub wait_until_time {
    my ($t) = @_;
    my $left = $t - time;
    sleep $left if $left > 0;
}

my $valgrind = $ENV{TEST_NGINX_USE_VALGRIND};
my $slack = $valgrind ? 3 : 1;


# 1. nothing listens on the Redis port: open passes at once, closed is 503
{
    my $dead = free_port();
    my $log = nginx_run(
        no_root_location => 1,
        http_config => http_config($dead, '100ms'),
        config => server_config(),
        code => sub {
            my ($port) = @_;
            sleep 0.1;    # the first connect attempt has failed by now
            my $r = post($port, '/api/x', 'down');
            is($r->{status}, 200, 'unreachable, open: 200');
            is($r->{headers}{'x-status'}, 'FAIL_OPEN', 'unreachable, open: FAIL_OPEN');
            ok(!exists $r->{headers}{'x-quota-used'}, 'unreachable, open: no usage headers');
            ok($r->{elapsed} < 0.1 * $slack + 0.2, 'unreachable, open: no waiting')
                or diag "took $r->{elapsed}s";

            $r = post($port, '/closed/x', 'down');
            is($r->{status}, 503, 'unreachable, closed: 503');
            is($r->{headers}{'x-status'}, 'FAIL_CLOSED', 'unreachable, closed: FAIL_CLOSED');
            is($r->{headers}{'content-type'}, 'application/json', 'unreachable, closed: JSON');
            like($r->{body}, qr/^\{"error":"QUOTA_UNAVAILABLE","message":"[^"]+"\}$/,
                 'unreachable, closed: QUOTA_UNAVAILABLE body');
        },
    );
    like($log, qr/quota: redis connect failed/, 'unreachable: logged');
    unlike($log, qr/\[(alert|crit|emerg)\]/, 'unreachable: no alert');
}


# 2. Redis answers too late: the timeout decides, the late reply is dropped
{
    my $rs = start_redis();
    my $log = nginx_run(
        no_root_location => 1,
        http_config => http_config($rs->{port}, '200ms'),
        config => server_config(),
        code => sub {
            my ($port) = @_;
            warm($port);
            my $r = post($port, '/api/x', 'slow');
            is($r->{headers}{'x-status'}, 'ALLOWED', 'slow: first request charged');

            my $until = redis_pause($rs, 1);
            $r = post($port, '/api/x', 'slow');
            is($r->{status}, 200, 'slow, open: 200');
            is($r->{headers}{'x-status'}, 'FAIL_OPEN', 'slow, open: FAIL_OPEN');
            ok($r->{elapsed} >= 0.15 && $r->{elapsed} < 0.2 + $slack,
               'slow, open: answered after the 200ms timeout')
                or diag "took $r->{elapsed}s";

            $r = post($port, '/closed/x', 'slow');
            is($r->{status}, 503, 'slow, closed: 503');
            wait_until_time($until);

            # Redis is back: the late replies were dropped, new ones count
            $r = post($port, '/api/x', 'slow');
            is($r->{headers}{'x-status'}, 'ALLOWED', 'slow: charging goes on after the stall');
        },
    );
    like($log, qr/quota: redis did not answer within 200ms/, 'slow: timeout logged');
    unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'slow: no alert, no crash');
    stop_redis($rs);
}


# 3. Redis restarts: charging resumes without a reload; SCRIPT FLUSH is
#    invisible to clients
{
    my $rs = start_redis();
    my $rport = $rs->{port};
    my $log = nginx_run(
        no_root_location => 1,
        http_config => http_config($rport, '1s'),
        config => server_config(),
        code => sub {
            my ($port) = @_;
            warm($port);
            my $r = post($port, '/api/x', 'restart');
            is($r->{headers}{'x-quota-used'}, 1, 'restart: charged before');

            $rs->cmd('SCRIPT', 'FLUSH');
            $r = post($port, '/api/x', 'restart');
            is($r->{status}, 200, 'script flush: 200');
            is($r->{headers}{'x-quota-used'}, 2, 'script flush: charged once');

            stop_redis($rs);
            $r = post($port, '/api/x', 'restart');
            is($r->{headers}{'x-status'}, 'FAIL_OPEN', 'restart: FAIL_OPEN while down');

            $rs = start_redis(port => $rport);
            my $status = '';
            my $deadline = time + 5;
            while (time < $deadline) {
                $r = post($port, '/api/x', 'restart');
                $status = $r->{headers}{'x-status'} // '';
                last if $status eq 'ALLOWED';
                sleep 0.1;
            }
            is($status, 'ALLOWED', 'restart: charging resumes without a reload');
            is($r->{headers}{'x-quota-used'}, 1, 'restart: new server, new count');
        },
    );
    like($log, qr/NOSCRIPT, sending EVAL/, 'script flush: EVAL fallback used');
    like($log, qr/redis connection lost/, 'restart: loss logged');
    unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'restart: no alert, no crash');
    stop_redis($rs);
}


# 4. the client leaves while its reply is pending
{
    my $rs = start_redis();
    my $log = nginx_run(
        no_root_location => 1,
        http_config => http_config($rs->{port}, '3s'),
        config => server_config(),
        code => sub {
            my ($port) = @_;
            warm($port);
            my $r = post($port, '/api/x', 'leaver');
            is($r->{headers}{'x-quota-used'}, 1, 'leaver: connected');

            my $until = redis_pause($rs, 0.6);
            for (1 .. 5) {
                my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                              PeerPort => $port) or die $!;
                print $c "POST /api/x HTTP/1.1\r\nHost: x\r\nX-API-Key: leaver\r\n"
                         . "Content-Length: 0\r\n\r\n";
                sleep 0.02;
                close $c;    # gone before Redis answers
            }
            wait_until_time($until);
            sleep 0.2;

            $r = post($port, '/api/x', 'leaver');
            is($r->{status}, 200, 'leaver: the worker still serves');
            is($r->{headers}{'x-status'}, 'ALLOWED', 'leaver: and still charges');
        },
    );
    like($log, qr/client prematurely closed connection/, 'leaver: 499 noticed while waiting');
    unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal|\[error\]/, 'leaver: no alert, no error');
    stop_redis($rs);
}

# 5. AUTH and SELECT: password= and db= reach Redis before any charge; a
#    wrong password is logged and follows quota_failure_mode
{
    my $rs = start_redis(args => ['--requirepass', 's3cret']);
    my $rport = $rs->{port};
    my ($good, $bad);
    nginx_run(
        no_root_location => 1,
        http_config => "    quota_redis 127.0.0.1:$rport password=s3cret db=3 timeout=2s;\n"
                       . "    quota_metric api_requests;\n",
        config => server_config(),
        code => sub { $good = post($_[0], '/api/x', 'authed') },
    );
    is($good->{headers}{'x-status'}, 'ALLOWED', 'password=: charged');
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $rport) or die $!;
    print $s "*2\r\n\$4\r\nAUTH\r\n\$6\r\ns3cret\r\n*2\r\n\$6\r\nSELECT\r\n\$1\r\n3\r\n"
           . "*3\r\n\$4\r\nHGET\r\n\$" . length("quota:{authed}:usage:$start")
           . "\r\nquota:{authed}:usage:$start\r\n\$12\r\napi_requests\r\n";
    my @lines = map { scalar <$s> } 1 .. 4;
    is($lines[3], "1\r\n", 'db=3: the usage is in database 3');

    my $log = nginx_run(
        no_root_location => 1,
        http_config => "    quota_redis 127.0.0.1:$rport password=wrong timeout=2s;\n"
                       . "    quota_metric api_requests;\n",
        config => server_config(),
        code => sub { sleep 0.2; $bad = post($_[0], '/closed/x', 'authed') },
    );
    is($bad->{status}, 503, 'wrong password: quota_failure_mode closed answers 503');
    like($log, qr/quota: redis AUTH failed/, 'wrong password: logged');
    stop_redis($rs);
}

# 6. a connection that goes silent (a peer gone without a reset: here a
#    proxy that stops forwarding) is dropped once it has sent nothing for
#    the dead-peer threshold (10 x timeout=, at least connect_timeout=)
#    with commands waiting; later requests fail at once instead of each
#    waiting (the new connection is not ready); it comes back by itself
{
    my $rs = start_redis();
    my $l = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Listen => 16, ReuseAddr => 1) or die $!;
    my $pport = $l->sockport;
    my $ppid = fork;
    die "fork: $!" unless defined $ppid;
    if ($ppid == 0) {
        # SIGUSR1 freezes every connection, SIGUSR2 thaws them
        my $frozen = 0;
        local $SIG{USR1} = sub { $frozen = 1 };
        local $SIG{USR2} = sub { $frozen = 0 };
        alarm 30;
        my $sel = IO::Select->new($l);
        my %peer;
        while (1) {
            my @ready = $sel->can_read(0.01);
            for my $h (@ready) {
                if ($h == $l) {
                    my $c = $l->accept or next;
                    my $u = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                                  PeerPort => $rs->{port}) or next;
                    $peer{$c} = $u; $peer{$u} = $c;
                    $sel->add($c, $u);
                    next;
                }
                next unless $h->opened && $peer{$h};
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

    my (@during, $first, $back, $elapsed_back, $frozen);
    my $log = nginx_run(
        no_root_location => 1,
        http_config => "    quota_redis 127.0.0.1:$pport timeout=150ms connect_timeout=300ms;\n"
                       . "    quota_metric api_requests;\n",
        config => server_config(),
        code => sub {
            my ($port) = @_;
            warm($port);
            $first = post($port, '/api/x', 'silent');
            $frozen = time;
            kill 'USR1', $ppid;
            sleep 0.05;
            # each waits its 150ms until the 1.5s threshold, then none waits
            my $until = time + 4 * $slack;
            while (time < $until) {
                push @during, post($port, '/api/x', 'silent');
                last if @during >= 3
                        && 3 == grep { $_->{elapsed} < 0.1 } @during[-3 .. -1];
            }
            kill 'USR2', $ppid;
            my $deadline = time + 5;
            while (time < $deadline) {
                $back = post($port, '/api/x', 'silent');
                last if ($back->{headers}{'x-status'} // '') eq 'ALLOWED';
                sleep 0.05;
            }
        },
    );
    kill 'KILL', $ppid;
    waitpid $ppid, 0;
    stop_redis($rs);

    is($first->{headers}{'x-status'}, 'ALLOWED', 'silent peer: charged before');
    is(scalar(grep { ($_->{headers}{'x-status'} // '') eq 'FAIL_OPEN' } @during),
       scalar(@during), 'silent peer: every request follows the failure mode');
    my @fast = grep { $_->{elapsed} < 0.1 } @during;
    ok(@fast >= 3, 'silent peer: once the connection is dropped, requests no longer wait ('
                   . scalar(@fast) . ' of ' . scalar(@during) . ' answered at once)')
        or diag join ' ', map { sprintf '%.3f', $_->{elapsed} } @during;
    # the first request answered in less than its timeout was answered
    # once the connection was dropped (the one in flight then, or one
    # after): after the threshold, 1.5 s of silence with commands waiting
    # from the first one sent after the freeze, however many requests fit
    # before it on a busy machine
    my ($first_fast) = grep { $_->{elapsed} < 0.1 } @during;
    my $dropped = $first_fast
                  ? $first_fast->{start} + $first_fast->{elapsed} - $frozen
                  : -1;
    ok($dropped >= 1.5, 'silent peer: not dropped before the threshold ('
                        . sprintf('%.3f', $dropped) . ' s after the freeze, '
                        . scalar(@during) . ' requests)');
    like($log, qr/quota: redis connection #0 dead peer: nothing received for \d+ms/,
         'silent peer: logged');
    is($back->{headers}{'x-status'}, 'ALLOWED', 'silent peer: charging resumes when it answers again');
    unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'silent peer: no alert, no crash');
}

done_testing();

# quota_reconcile: estimate before, actual after the response (AI tokens).
# The correction is sent from the log phase, fire and forget: it never
# delays the response, a smaller actual refunds, bad values are ignored.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
BEGIN { *redis_at = \&QuotaTest::redis_at }
use QuotaTime;
use IO::Socket::INET;
use POSIX ();
use File::Temp ();
use Time::HiRes qw(time sleep);

my $start = month_start();
my $today = today();

my $rs = start_redis(args => ['--enable-debug-command', 'yes']);
my $rport = $rs->{port};

my $http = <<"_EOC_";
    quota_redis 127.0.0.1:$rport timeout=3s;
    quota_metric ai_tokens;
    quota_metric api_requests;
    quota_plan p {
        limit ai_tokens 1000000;
        limit api_requests 100;
        overage ai_tokens 0.000002;
    }
    quota_default_plan p;
_EOC_

my $server = <<'_EOC_';
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /ai/** ai_tokens=100 api_requests=1;
    quota_reconcile ai_tokens $upstream_http_x_ai_tokens_used;
    quota_bypass $arg_shadow;

    location /dry/ {
        quota_dry_run on;
        quota_route POST /dry/** ai_tokens=100;
        add_header X-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location / {
        add_header X-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /slow/ {
        quota_route POST /slow/** ai_tokens=100;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SLOW_PORT;
        proxy_read_timeout 5s;
    }

    location /origin {
        quota off;
        add_header X-AI-Tokens-Used $arg_used;
        return 200 "ok\n";
    }
_EOC_

sub used { my ($t, $m) = @_; redis_at($rport, 'HGET', "quota:{$t}:usage:$start", $m // 'ai_tokens') }

sub settle {
    my ($t, $want, $secs) = @_;
    my $deadline = time + ($secs || 3);
    my $v;
    while (time < $deadline) {
        $v = used($t);
        last if defined $v && $v == $want;
        sleep 0.02;
    }
    return $v;
}

# an upstream that answers after 400 ms, reporting ?used= tokens.  For
# tenant "delay" it puts Redis to sleep for 2 s first (DEBUG SLEEP on its
# own connection, reply not read) and writes the time it did so into
# $slept: it has the request, so the charge is done, and the correction
# (sent when the response is) finds Redis asleep
my $SLEEP = 2;
my $slept = File::Temp::tempdir(CLEANUP => 1) . '/slept';
my $l = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                              Listen => 16, ReuseAddr => 1) or die $!;
$ENV{TEST_NGINX_SLOW_PORT} = $l->sockport;
my $upid = fork;
if ($upid == 0) {
    alarm 20;
    my $s;
    while (my $c = $l->accept) {
        my $req = '';
        while (defined(my $line = <$c>)) { $req .= $line; last if $line eq "\r\n" }
        my ($used) = $req =~ /used=(\d+)/;
        if ($req =~ /^X-T: delay\r$/mi) {
            $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $rport)
                or die $!;
            $s->autoflush(1);
            print $s "*3\r\n\$5\r\nDEBUG\r\n\$5\r\nSLEEP\r\n\$1\r\n$SLEEP\r\n";
            my $t = time;
            open my $f, '>', "$slept.tmp" or die $!;
            print $f $t;
            close $f;
            rename "$slept.tmp", $slept;
        }
        sleep 0.4;
        print $c "HTTP/1.1 200 OK\r\nX-AI-Tokens-Used: $used\r\nContent-Length: 3\r\n"
                 . "Connection: close\r\n\r\nok\n";
        close $c;
    }
    POSIX::_exit(0);
}
close $l;

my $log = nginx_run(
    no_root_location => 1,
    http_config => $http,
    config => $server,
    code => sub {
        my ($port) = @_;

        # the worker's connection is ready (it may take long under valgrind)
        my $deadline = time + 30;
        while (time < $deadline) {
            my $w = http_request($port, 'POST', '/ai/chat?used=1', { 'X-T' => 'warm' }, '');
            last if ($w->{headers}{'x-status'} // '') eq 'ALLOWED';
            sleep 0.2;
        }

        # estimate 100, upstream reports 250 -> 250
        my $r = http_request($port, 'POST', '/ai/chat?used=250', { 'X-T' => 'recon' }, '');
        is($r->{status}, 200, 'reconcile: admitted');
        is($r->{headers}{'x-quota-used'}, 100, 'reconcile: the estimate was charged first');
        is(settle('recon', 250), 250, 'reconcile: usage 250 shortly after the response');
        is(used('recon', 'api_requests'), 1, 'reconcile: other metrics untouched');
        is(redis_at($rport, 'HGET', "quota:{recon}:daily:$start", "ai_tokens:$today"), 250,
           'reconcile: the daily counter follows');

        # actual below the estimate refunds
        http_request($port, 'POST', '/ai/chat?used=40', { 'X-T' => 'recon' }, '');
        is(settle('recon', 290), 290, 'reconcile: 40 of an estimated 100 refunds 60');

        # empty and invalid values change nothing
        http_request($port, 'POST', '/ai/chat', { 'X-T' => 'recon' }, '');
        http_request($port, 'POST', '/ai/chat?used=-5', { 'X-T' => 'recon' }, '');
        http_request($port, 'POST', '/ai/chat?used=12abc', { 'X-T' => 'recon' }, '');
        is(settle('recon', 590), 590, 'reconcile: empty or invalid actuals keep the estimate');

        # with overage on, reconciled units past the limit are priced too
        redis_at($rport, 'HSET', 'quota:{over}:account', 'overage', 1, 'limit:ai_tokens', 150);
        http_request($port, 'POST', '/ai/chat?used=250', { 'X-T' => 'over' }, '');
        is(settle('over', 250), 250, 'reconcile overage: usage 250');
        # that correction went out after those of the empty and invalid
        # values: had they sent one, it would show by now
        is(used('recon'), 590, 'reconcile: still 590 after a later correction landed');
        is(used('over', 'ai_tokens:overage'), 100, 'reconcile overage: 100 units past the limit of 150');
        is(used('over', 'overage_cost'), 200, 'reconcile overage: priced at 2 micro-USD each');

        # only admitted, charged requests are reconciled (SPEC 4a): not a
        # rejected one, not a shadow (bypass) one, not a dry-run refusal.
        # Each reports 250 for an estimate of 100: a wrong reconcile adds 150
        redis_at($rport, 'HSET', 'quota:{capped}:account', 'limit:ai_tokens', 50);
        $r = http_request($port, 'POST', '/ai/chat?used=250', { 'X-T' => 'capped' }, '');
        is($r->{status}, 402, 'reconcile: a rejected request');
        $r = http_request($port, 'POST', '/ai/chat?used=250&shadow=1', { 'X-T' => 'shadow' }, '');
        is($r->{headers}{'x-status'}, 'BYPASS', 'reconcile: a shadow request');
        redis_at($rport, 'HSET', 'quota:{dry}:account', 'limit:ai_tokens', 50);
        $r = http_request($port, 'POST', '/dry/chat?used=250', { 'X-T' => 'dry' }, '');
        is($r->{headers}{'x-status'}, 'DRY_RUN_REJECT', 'reconcile: a dry-run refusal');
        # then an admitted dry-run request: reconciled.  Corrections go out
        # in order on the worker's connection, so once this one landed a
        # wrong earlier one would have landed too: no sleep, no race
        $r = http_request($port, 'POST', '/dry/chat?used=300', { 'X-T' => 'dryok' }, '');
        is($r->{headers}{'x-status'}, 'ALLOWED', 'reconcile: an admitted dry-run request');
        is(settle('dryok', 300), 300, 'reconcile: the admitted dry-run request is reconciled');
        is(used('capped'), undef, 'reconcile: never applied to a rejected request');
        is(used('shadow'), undef, 'reconcile: never applied to a shadow request');
        is(used('dry'), undef, 'reconcile: never applied to a dry-run refusal');

        # a refund never takes a counter below zero: the billing backend
        # lowers the counters while the request is at the upstream, then
        # the upstream reports 0 of the 100 estimated
        {
            my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port) or die $!;
            print $c "POST /slow/chat?used=0 HTTP/1.1\r\nHost: x\r\nX-T: clamp\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            my $deadline = time + 3;
            sleep 0.01 until defined used('clamp') || time > $deadline;
            is(used('clamp'), 100, 'refund clamp: the estimate was charged');
            redis_at($rport, 'HSET', "quota:{clamp}:usage:$start", 'ai_tokens', 30);
            redis_at($rport, 'HSET', "quota:{clamp}:daily:$start", "ai_tokens:$today", 20);
            local $/;
            my $resp = <$c>;
            like($resp, qr{^HTTP/1\.1 200}, 'refund clamp: 200');
            is(settle('clamp', 0), 0, 'refund clamp: 100 refunded from 30 stops at 0, not -70');
            is(redis_at($rport, 'HGET', "quota:{clamp}:daily:$start", "ai_tokens:$today"), 0,
               'refund clamp: the daily counter stops at 0 too');
        }

        # the response is not delayed when Redis is slow to take the correction:
        # the charge is done, then Redis stalls for 2 s (from the upstream,
        # once it has the request: not before the charge, however loaded
        # the machine) and the upstream answers 0.4 s into it
        my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port) or die $!;
        print $c "POST /slow/chat?used=700 HTTP/1.1\r\nHost: x\r\nX-T: delay\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        local $/;
        my $resp = <$c>;
        my $t_resp = time;
        like($resp, qr{^HTTP/1\.1 200}, 'not delayed: 200');
        my $t_sleep = -e $slept ? QuotaTest::_slurp($slept) : undef;
        ok(defined $t_sleep, 'not delayed: the upstream put Redis to sleep');
        # a response held for the correction comes when Redis wakes, >= 2 s
        my $elapsed = $t_resp - ($t_sleep // 0);
        ok($elapsed < $SLEEP - 0.8, "not delayed: the response completed while Redis slept "
           . "(${\ sprintf '%.2f', $elapsed}s into its ${SLEEP}s sleep)");
        is(settle('delay', 700, $SLEEP + 3), 700,
           'not delayed: the correction landed after Redis woke up');
    },
);

like($log, qr/ignored quota_reconcile value "-5"/, 'reconcile: an invalid value is logged at warn');
unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'reconcile: no alert');


# D4, D5: keys reconcile creates expire; a line it crosses fires its alert,
# and the first refusal fires quota_exceeded even if no charge crossed it
{
    my $h = <<"_EOC_";
    quota_redis 127.0.0.1:$rport timeout=3s;
    quota_metric tok;
    quota_metric calls period=day;
    quota_plan q { limit tok 10; limit calls 10; overage tok 0.01; }
    quota_default_plan q;
    quota_events alerts;
_EOC_
    my $srv = <<'_EOC_';
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /r/** tok=0 calls=0;
    quota_route POST /one/** tok=1;
    quota_reconcile tok $upstream_http_x_ai_tokens_used;
    quota_reconcile calls $upstream_http_x_ai_tokens_used;

    location / {
        add_header X-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        add_header X-AI-Tokens-Used $arg_used;
        return 200 "ok\n";
    }
_EOC_
    my (@refused, $after_refusals);
    my $log = nginx_run(
        no_root_location => 1, http_config => $h, config => $srv,
        code => sub {
            my ($port) = @_;
            http_request($port, 'POST', '/r/x?used=7', { 'X-T' => 'd4' }, '');
            settle_key("quota:{d4}:usage:$start", 'tok', 7);

            # 0 -> 14 of 10 by reconcile, then refusals
            http_request($port, 'POST', '/r/x?used=14', { 'X-T' => 'd5' }, '');
            settle_key("quota:{d5}:usage:$start", 'tok', 14);
            push @refused, http_request($port, 'POST', '/one/x', { 'X-T' => 'd5' }, '')->{status}
                for 1 .. 2;
            $after_refusals = redis_at($rport, 'XLEN', 'quota:{d5}:alerts');

            # overage on: reconcile past the limit starts overage
            redis_at($rport, 'HSET', 'quota:{d5o}:account', 'overage', 1);
            http_request($port, 'POST', '/r/x?used=12', { 'X-T' => 'd5o' }, '');
            settle_key("quota:{d5o}:usage:$start", 'tok', 12);

            # usage at the limit set by the backend, no alert fired yet:
            # the first refusal fires quota_exceeded
            redis_at($rport, 'HSET', "quota:{d5r}:usage:$start", 'tok', 10);
            http_request($port, 'POST', '/one/x', { 'X-T' => 'd5r' }, '');
        },
    );
    my $ttl = redis_at($rport, 'TTL', "quota:{d4}:usage:$start");
    ok($ttl > 62 * 86400, 'D4: the usage key reconcile created expires') or diag "TTL $ttl";
    $ttl = redis_at($rport, 'TTL', "quota:{d4}:daily:$start");
    ok($ttl > 62 * 86400, 'D4: the daily key too') or diag "TTL $ttl";
    is(redis_at($rport, 'HGET', "quota:{d4}:daily:$start", "calls:$today"), 7,
       'D4: a day metric is reconciled in its daily field');

    my @types = map { { @{ $_->[1] } }->{type} }
                @{ redis_at($rport, 'XRANGE', 'quota:{d5}:alerts', '-', '+') };
    is_deeply([sort @types], [sort qw(approaching_limit quota_exceeded approaching_limit quota_exceeded)],
              'D5: crossing 80% and 100% by reconcile fires both alerts (tok and calls)');
    is_deeply(\@refused, [402, 402], 'D5: the tenant is refused afterwards');
    is($after_refusals, 4, 'D5: refusals add no duplicate');
    @types = map { { @{ $_->[1] } }->{type} }
             @{ redis_at($rport, 'XRANGE', 'quota:{d5o}:alerts', '-', '+') };
    ok((grep { $_ eq 'overage_started' } @types), 'D5: reconcile past the limit starts overage')
        or diag "@types";
    @types = map { { @{ $_->[1] } }->{type} }
             @{ redis_at($rport, 'XRANGE', 'quota:{d5r}:alerts', '-', '+') };
    is_deeply(\@types, ['quota_exceeded'], 'D5: the first refusal fires quota_exceeded');
    unlike($log, qr/\[(alert|crit|emerg)\]/, 'D4/D5: no alert');
}

sub settle_key {
    my ($key, $field, $want) = @_;
    my $deadline = time + 3;
    while (time < $deadline) {
        my $v = redis_at($rport, 'HGET', $key, $field);
        return $v if defined $v && $v == $want;
        sleep 0.02;
    }
    return undef;
}

kill 'TERM', $upid;
waitpid $upid, 0;
stop_redis($rs);
done_testing();

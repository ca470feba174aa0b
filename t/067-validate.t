# The charge is all or nothing: every value is checked before the first
# write.  A counter that would pass 2^53 - 1 gets 400 BAD_COST and nothing
# is written (chaos report F4, review D2); data the script cannot count
# with, or a script that fails, gets 503 in both failure modes, never a
# free admit; a zero cost is never refused by quota or cap (SPEC 4a, S3).
# Also: the NOSCRIPT resend keeps its calendar (D10), and a period=day
# metric does not share the month's usage key on the 1st (D11).

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaTime;
use IO::Socket::INET;
use IO::Select;
use POSIX ();
use Time::HiRes qw(time sleep);

redis_flush();
my $start = month_start();
my $today = today();
my $MAX = '9007199254740991';    # 2^53 - 1

my $http = <<'_EOC_';
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric a;
    quota_metric b;
    quota_plan p { limit a 100; concurrency 1 lease=60s; }
    quota_plan free { }
    quota_plan paid { limit a 10; overage a 0.01; concurrency 5; }
    quota_default_plan p;
_EOC_

my $server = <<'_EOC_';
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /ab b=1 a=$http_x_cost;
    quota_route POST /b b=$http_x_cost;
    quota_route POST /zero a=0;
    quota_route POST /a a=1;

    location / {
        add_header X-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /open/ {
        quota_route POST /open/b b=$http_x_cost;
        quota_route POST /open/a a=1;
        add_header X-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /closed/ {
        quota_failure_mode closed;
        quota_route POST /closed/b b=$http_x_cost;
        quota_route POST /closed/a a=1;
        add_header X-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_

sub acct { my ($t, @kv) = @_; redis('HSET', "quota:{$t}:account", @kv) }
sub usage { my ($t, $f) = @_; redis('HGET', "quota:{$t}:usage:$start", $f) }
sub slots { redis('ZCARD', "quota:{$_[0]}:inflight") }

my %r;
my $log = nginx_run(
    no_root_location => 1, http_config => $http, config => $server,
    code => sub {
        my ($port) = @_;
        my $req = sub {
            my ($path, $t, $cost) = @_;
            return QuotaTest::http_request($port, 'POST', $path,
                { 'X-T' => $t, (defined $cost ? ('X-Cost' => $cost) : ()) }, '');
        };

        # F4, as the chaos report: a metric with no limit, cost 2^53 - 1,
        # the counter where 1,024 such requests had left it
        for my $mode ('open', 'closed') {
            acct("f4$mode", plan => 'free');
            redis('HSET', "quota:{f4$mode}:usage:$start", 'b', '9223372036854774784');
            $r{"f4$mode"} = $req->("/$mode/b", "f4$mode", $MAX);
        }
        # near 2^53: up to it is charged, past it is not
        acct('f4near', plan => 'free');
        redis('HSET', "quota:{f4near}:usage:$start", 'b', '9007199254740989');
        $r{near1} = $req->('/b', 'f4near', 2);
        $r{near2} = $req->('/b', 'f4near', 1);
        $r{near3} = $req->('/b', 'f4near', $MAX);

        # D2, as the review: a trial account, "a" near INT64_MAX, a rule
        # charging b=1 then a=$http_x_cost, concurrency 1
        acct('d2', status => 'trial');
        redis('HSET', "quota:{d2}:usage:$start", 'a', '9223372036854775000');
        $r{d2} = $req->('/ab', 'd2', 1000);
        $r{d2b} = usage('d2', 'b');
        $r{d2next} = $req->('/ab', 'd2', 0);

        # corrupt data: 503 in both failure modes, nothing written
        for my $mode ('open', 'closed') {
            acct("seats$mode", seats => 'abc');
            $r{"seats$mode"} = $req->("/$mode/a", "seats$mode");
            redis('HSET', "quota:{used$mode}:usage:$start", 'a', 'x1');
            $r{"used$mode"} = $req->("/$mode/a", "used$mode");
            # a key of the wrong type fails the script after its first
            # write: the void undoes it
            redis('SET', "quota:{wrong$mode}:daily:$start", 'not a hash');
            $r{"wrong$mode"} = $req->("/$mode/a", "wrong$mode");
            # the alerts stream of the wrong type: the script fails after
            # it charged (approaching_limit at 80 of 100); the void undoes
            redis('SET', "quota:{late$mode}:alerts", 'not a stream');
            redis('HSET', "quota:{late$mode}:usage:$start", 'a', 79);
            $r{"late$mode"} = $req->("/$mode/a", "late$mode");
        }

        # S3: a zero cost is never refused by quota or cap
        redis('HSET', "quota:{s3}:usage:$start", 'a', 150);
        $r{s3} = $req->('/zero', 's3');
        $r{s3pos} = $req->('/a', 's3');
        acct('s3cap', plan => 'paid', overage => 1, cap => '0.05');
        redis('HSET', "quota:{s3cap}:usage:$start", 'a', 15, 'overage_cost', 50000);
        $r{s3cap} = $req->('/zero', 's3cap');
        $r{s3cappos} = $req->('/a', 's3cap');
        acct('s3susp', status => 'suspended');
        $r{s3susp} = $req->('/zero', 's3susp');
    },
);

for my $mode ('open', 'closed') {
    my $x = $r{"f4$mode"};
    is($x->{status}, 400, "F4 $mode: a charge past 2^53 - 1 gets 400");
    like($x->{body}, qr/^\{"error":"BAD_COST","message":"Cost for metric b cannot be charged: the counter would pass 9007199254740991\.","metric":"b"\}$/,
         "F4 $mode: BAD_COST body");
    is($x->{headers}{'x-status'}, 'BAD_REQUEST', "F4 $mode: \$quota_status BAD_REQUEST");
    is(usage("f4$mode", 'b'), '9223372036854774784', "F4 $mode: counter unchanged");
}
is($r{near1}{status}, 200, 'F4: a charge up to 2^53 - 1 passes');
is($r{near2}{status}, 400, 'F4: one unit more does not');
is($r{near3}{status}, 400, 'F4: nor 2^53 - 1 more');
is(usage('f4near', 'b'), $MAX, 'F4: the counter stops at 2^53 - 1, exact');

is($r{d2}{status}, 400, 'D2: a charge that would overflow is refused');
is($r{d2b}, undef, 'D2: nothing charged on the other metric');
is(usage('d2', 'a'), '9223372036854775000', 'D2: the big counter unchanged');
is($r{d2next}{status}, 200, 'D2: no slot left behind (concurrency 1, next request served)');
is(slots('d2'), 0, 'D2: no slot');

for my $mode ('open', 'closed') {
    for my $case ("seats$mode", "used$mode", "wrong$mode", "late$mode") {
        is($r{$case}{status}, 503, "$case: 503 whatever the failure mode");
        like($r{$case}{body}, qr/"error":"QUOTA_UNAVAILABLE"/, "$case: JSON");
        is($r{$case}{headers}{'x-status'}, 'FAIL_CLOSED', "$case: FAIL_CLOSED");
    }
    is(usage("seats$mode", 'a'), undef, "seats$mode: nothing charged");
    is(usage("used$mode", 'a'), 'x1', "used$mode: nothing charged");
    is(usage("wrong$mode", 'a'), undef, "wrong$mode: nothing charged");
    is(slots("wrong$mode"), 0, "wrong$mode: slot voided");
    is(usage("late$mode", 'a'), 79, "late$mode: the charge before the failure was voided");
    is(slots("late$mode"), 0, "late$mode: slot voided");
}
like($log, qr/\[error\].*not a number: key and field "quota:\{seatsopen\}:account seats"/,
     'corrupt account field logged at error with the key');
like($log, qr/\[error\].*not a number: key and field "quota:\{usedclosed\}:usage:\Q$start\E a"/,
     'corrupt counter logged at error with the key');

is($r{s3}{status}, 200, 'S3: a zero cost past the limit is served');
is($r{s3}{headers}{'x-status'}, 'ALLOWED', 'S3: ALLOWED');
is($r{s3pos}{status}, 402, 'S3: a positive cost is still refused');
is($r{s3cap}{status}, 200, 'S3: a zero cost at the spending cap is served');
is($r{s3cappos}{status}, 402, 'S3: a positive cost at the cap is refused');
is($r{s3susp}{status}, 402, 'S3: suspended still applies to a zero cost');
is(usage('s3', 'a'), 150, 'S3: nothing charged');
unlike($log, qr/\[(alert|crit|emerg)\]/, 'no alert');


# S5: event numbers are exact digits, not cjson's 14 significant digits
{
    my $sub = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                    PeerPort => $ENV{TEST_NGINX_REDIS_PORT}) or die $!;
    print $sub "SUBSCRIBE quota:events\r\n";
    my $ack = '';
    sysread($sub, $ack, 4096) for 1;
    (my $h = $http) =~ s/quota_default_plan p;/quota_default_plan p;\n    quota_events on;/;
    acct('s5', plan => 'free');
    redis('HSET', "quota:{s5}:usage:$start", 'b', '9007199254740000');
    nginx_run(no_root_location => 1, http_config => $h, config => $server,
              code => sub {
                  QuotaTest::http_request($_[0], 'POST', '/b', { 'X-T' => 's5', 'X-Cost' => 991 }, '');
              });
    my ($buf, $deadline) = ('', time + 5);
    my $sel = IO::Select->new($sub);
    while (time < $deadline && $buf !~ /usage_update.*\r\n/s) {
        last unless $sel->can_read(0.5);
        sysread($sub, $buf, 4096, length $buf) or last;
    }
    like($buf, qr/"used":9007199254740991[,}]/, 'S5: the event says used 9007199254740991, every digit')
        or diag $buf;
    close $sub;
}

# D10 and D11 run nginx at fixed instants (libfaketime, as t/085)
my ($faketime) = grep { -e } map { "$_/faketime/libfaketime.so.1" }
                 '/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu',
                 '/usr/lib';

SKIP: {
    skip 'libfaketime not installed', 4 unless $faketime;

    my $periods = <<'_EOC_';
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric a;
    quota_metric calls period=day;
    quota_plan p { limit a 100; limit calls 100; }
    quota_default_plan p;
_EOC_
    my $srv = <<'_EOC_';
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /a a=1;
    quota_route POST /d calls=1;
    location / {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }
    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_

    # D11: on the 1st the month's key keeps the month's TTL, and the day
    # metric's count is not a field of the month's usage hash
    {
        local $ENV{LD_PRELOAD} = $faketime;
        local $ENV{FAKETIME} = '@2026-12-01 10:00:00';
        local $ENV{FAKETIME_DONT_FAKE_MONOTONIC} = 1;
        nginx_run(http_config => $periods, config => $srv, no_root_location => 1,
                  code => sub {
                      my ($port) = @_;
                      QuotaTest::http_request($port, 'POST', '/a', { 'X-T' => 'd11' }, '');
                      QuotaTest::http_request($port, 'POST', '/d', { 'X-T' => 'd11' }, '');
                  });
    }
    # Jan 1 - Dec 1 10:00 = 30 d 14 h, plus 62 days
    my $ttl = redis('TTL', 'quota:{d11}:usage:2026-12-01');
    ok($ttl > (30 * 86400 + 13 * 3600) + 62 * 86400,
       "D11: the month's usage key keeps the month's TTL on the 1st") or diag "TTL $ttl";
    is(redis('HGET', 'quota:{d11}:usage:2026-12-01', 'calls'), undef,
       "D11: the day metric is not counted in the month's usage hash");
    is(redis('HGET', 'quota:{d11}:daily:2026-12-01', 'calls:2026-12-01'), 1,
       'D11: it is counted in its daily field');

    # D10: NOSCRIPT answered after a month boundary passed, and after
    # another request rebuilt the calendar: the EVAL still charges the
    # month the request was sent in
    my $rs = start_redis(args => ['--enable-debug-command', 'local']);
    (my $p2 = $periods) =~ s/\$TEST_NGINX_REDIS_PORT/$rs->{port}/;
    {
        local $ENV{LD_PRELOAD} = $faketime;
        local $ENV{FAKETIME} = '@2026-11-30 23:59:57';
        local $ENV{FAKETIME_DONT_FAKE_MONOTONIC} = 1;
        nginx_run(http_config => $p2, config => $srv . <<'_EOC_', no_root_location => 1,
    location = /now { quota off; return 200; }
_EOC_
                  code => sub {
                      my ($port) = @_;
                      # wait for the gateway's second 23:59:59
                      my $deadline = time + 30;
                      while (time < $deadline) {
                          my $d = QuotaTest::http_get($port, '/now')->{headers}{date} // '';
                          last if $d =~ /23:59:59/;
                          sleep 0.02;
                      }
                      $rs->cmd('SCRIPT', 'FLUSH');
                      my $pid = fork;
                      die "fork: $!" unless defined $pid;
                      if ($pid == 0) {
                          my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                                        PeerPort => $rs->{port}) or POSIX::_exit(1);
                          print $s "*3\r\n\$5\r\nDEBUG\r\n\$5\r\nSLEEP\r\n\$3\r\n1.6\r\n";
                          my $line = <$s>;
                          POSIX::_exit(0);
                      }
                      sleep 0.05;
                      my $kid = fork;
                      die "fork: $!" unless defined $kid;
                      if ($kid == 0) {
                          QuotaTest::http_request($port, 'POST', '/a', { 'X-T' => 'd10a' }, '', 10);
                          POSIX::_exit(0);
                      }
                      sleep 1.1;    # the next month: this request rebuilds the calendar
                      QuotaTest::http_request($port, 'POST', '/a', { 'X-T' => 'd10b' }, '', 10);
                      waitpid($kid, 0);
                      waitpid($pid, 0);
                  });
    }
    is($rs->cmd('HGET', 'quota:{d10a}:usage:2026-11-01', 'a'), 1,
       'D10: the resent charge counts in the month it was sent in')
        or diag explain $rs->cmd('KEYS', '*d10*');
    stop_redis($rs);
}

done_testing();

# quota_fallback across midnight (review L9): units admitted in fallback
# are charged (FORCE) in the day and the billing period they were
# admitted in, not in those of the flush.  nginx runs under libfaketime
# (the clock runs, "env FAKETIME" keeps it in the workers); Redis is
# stopped (SIGSTOP) some seconds before midnight, the tenant is admitted
# in fallback before and (same period) after midnight, and Redis is
# continued after midnight: the probe closes the circuit and the flush
# charges what was admitted.
#   1. Nov 29 -> Nov 30: units of both days are pending at once: each day
#      gets its own.
#   2. Nov 30 -> Dec 1: a period ends; November's fallback units are
#      November's usage (December's snapshot is unknown: nothing is
#      admitted in fallback on Dec 1).

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaFallback;
use Time::HiRes qw(sleep time);

my ($faketime) = grep { -e } map { "$_/faketime/libfaketime.so.1" }
                 '/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu',
                 '/usr/lib';
ok($faketime, 'libfaketime is installed (apt-get install faketime)')
    or do { done_testing(); exit 1 };

my $rs = start_redis();
my $rport = $rs->{port};

my $http = <<"_EOC_";
    quota_redis 127.0.0.1:$rport timeout=300ms connect_timeout=300ms;
    quota_zone q:1m;
    quota_fallback local nodes=1;
    quota_metric a;
    quota_plan p { limit a 100000; }
    quota_default_plan p;
_EOC_

my $server = <<'_EOC_';
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /a a=1;
    location / {
        add_header X-Quota-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }
    location /origin { quota off; return 200 "ok\n"; }
_EOC_

# one run: the fake clock starts at "$day1 23:59:40"; Redis is stopped at
# 23:59:50, $before requests then, $after requests once the date says
# $day2; Redis continued, until $charged->() is true (the flush charged
# what was admitted; at most 20 s) and half a second more (nothing is
# charged twice).  Returns the FALLBACK admissions per day, the first
# request's status and whether the plan held.
sub run {
    my ($t, $day1, $day2, $before, $after, $charged) = @_;
    my (%fb, $first, $planned);
    local $ENV{LD_PRELOAD} = $faketime;
    local $ENV{FAKETIME} = "\@$day1 23:59:40";
    local $ENV{FAKETIME_DONT_FAKE_MONOTONIC} = 1;
    nginx_run(workers => 1, master => 1, http_config => $http,
              main_config => "env FAKETIME;\n"
                             . "env FAKETIME_DONT_FAKE_MONOTONIC;",
              config => $server, no_root_location => 1, code => sub {
        my ($port, $root) = @_;
        # the worker's first Redis handshake (connect_timeout=300ms) may
        # time out on a loaded machine, under libfaketime and the
        # sanitizers, and be tried again after a backoff: the first
        # request must be decided by Redis for the zone to learn the tenant
        QuotaFallback::wait_ready($root, 1);
        my $date = sub { http_get($port, '/origin/')->{headers}{date} // '' };
        my $post = sub {
            my $r = http_request($port, 'POST', '/a', { 'X-T' => $t }, '',
                                 10);
            my ($d) = ($r->{headers}{date} // '') =~ /, (\d\d \w\w\w) /;
            $fb{$d // '?'}++
                if ($r->{headers}{'x-quota-status'} // '') eq 'FALLBACK';
        };
        $first = http_request($port, 'POST', '/a', { 'X-T' => $t }, '',
                              10)->{headers}{'x-quota-status'};
        my $deadline = time + 40;
        sleep 0.05 while $date->() !~ / 23:59:5\d / && time < $deadline;
        $planned = $date->() =~ / 23:59:5[0-4] /;
        kill 'STOP', $rs->{pid};
        $post->() for 1 .. $before;
        $planned &&= $date->() =~ / 23:59:5\d /;
        sleep 0.05 while $date->() !~ / 00:00:0\d / && time < $deadline;
        $post->() for 1 .. $after;
        kill 'CONT', $rs->{pid};
        # the probe closes the circuit, the flush charges
        QuotaFallback::wait_for(20, $charged);
        sleep 0.5;
    });
    kill 'CONT', $rs->{pid};
    return (\%fb, $first, $planned);
}

# 1. a new day in the same period
{
    my ($fb, $first, $planned) = run('d', '2026-11-29', '2026-11-30', 6, 4,
        sub { ($rs->cmd('HGET', 'quota:{d}:usage:2026-11-01', 'a') // 0)
              == 11 });
    SKIP: {
        skip 'the fake clock did not run as planned (slow start)', 5
            unless $planned;
        is($first, 'ALLOWED', '1: the zone learned the tenant');
        is($fb->{'29 Nov'}, 6, '1: 6 admitted in fallback on Nov 29');
        is($fb->{'30 Nov'}, 4, '1: 4 admitted in fallback on Nov 30');
        my %d = @{ $rs->cmd('HGETALL', 'quota:{d}:daily:2026-11-01') };
        is(($d{'a:2026-11-29'} // 0) . ' ' . ($d{'a:2026-11-30'} // 0),
           '7 4', '1: daily: Nov 29 counts 1 + its 6, Nov 30 its 4');
        is($rs->cmd('HGET', 'quota:{d}:usage:2026-11-01', 'a'), 11,
           '1: November usage exact');
    }
}

# 2. a period ends
{
    my ($fb, $first, $planned) = run('m', '2026-11-30', '2026-12-01', 8, 2,
        sub { ($rs->cmd('HGET', 'quota:{m}:usage:2026-11-01', 'a') // 0)
              == 9 });
    SKIP: {
        skip 'the fake clock did not run as planned (slow start)', 5
            unless $planned;
        is($first, 'ALLOWED', '2: the zone learned the tenant');
        is($fb->{'30 Nov'}, 8, '2: 8 admitted in fallback on Nov 30');
        ok(!$fb->{'01 Dec'}, '2: none in fallback on Dec 1 (a new period)');
        is($rs->cmd('HGET', 'quota:{m}:usage:2026-11-01', 'a') // 0, 9,
           '2: November usage: 1 + the 8 admitted in November');
        is($rs->cmd('HGET', 'quota:{m}:usage:2026-12-01', 'a') // 0, 0,
           '2: December usage: nothing admitted in fallback in December');
    }
}

stop_redis($rs);

done_testing();

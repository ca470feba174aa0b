# Everything that depends on the date, at pinned instants (SPEC 4a Times,
# 6 counters expire after their period, IETF w= and t=, 7 projected
# overage), so no assertion depends on the day the suite runs.
#
# nginx runs under libfaketime with a STOPPED wall clock (FAKETIME without
# "@"): ngx_time() is exactly the pinned second however slowly nginx starts
# (valgrind), while the monotonic clock, which nginx's timers use, stays
# real.  Redis keeps the real clock: a TTL the module sets is relative, so
# it is checked against the pinned "now".

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use POSIX ();

my ($faketime) = grep { -e } map { "$_/faketime/libfaketime.so.1" }
                 '/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu',
                 '/usr/lib';

# a missing library is a failure, not a silent skip: scripts/setup installs it
ok($faketime, 'libfaketime is installed (apt-get install faketime)')
    or do { done_testing(); exit 1 };

redis_flush();

my $KEEP = 62 * 86400;    # counters live this long after their period

my $http = <<'_EOC_';
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric a;
    quota_metric calls period=day;
    quota_plan p { limit a 100; limit calls 100; rate 120r/m; concurrency 3; }
    quota_plan team { limit a 4 per_seat; overage a 0.5; }
    quota_default_plan p;
_EOC_

my $server = <<'_EOC_';
    quota on;
    quota_tenant $http_x_t;
    quota_ratelimit_headers on;
    quota_route POST /a a=1;
    quota_route POST /d calls=1;

    location = /usage {
        quota_usage;
    }

    location / {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_

# epoch seconds of a UTC "YYYY-MM-DD HH:MM:SS"
sub epoch {
    my ($s) = @_;
    my ($y, $mo, $d, $h, $mi, $se) = $s =~ /^(\d+)-(\d+)-(\d+) (\d+):(\d+):(\d+)$/
        or die "bad instant $s\n";
    local $ENV{TZ} = 'UTC';
    POSIX::tzset();
    return POSIX::mktime($se, $mi, $h, $d, $mo - 1, $y - 1900);
}

# requests at a pinned instant, one nginx: at($instant, [tenant, method,
# path], ...) returns the responses
sub at {
    my ($instant, @reqs) = @_;
    local $ENV{LD_PRELOAD} = $faketime;
    local $ENV{FAKETIME} = $instant;
    local $ENV{FAKETIME_DONT_FAKE_MONOTONIC} = 1;
    my @res;
    nginx_run(http_config => $http, config => $server, no_root_location => 1,
              code => sub {
                  for my $q (@reqs) {
                      my ($t, $m, $p) = @$q;
                      push @res, http_request($_[0], $m, $p, { 'X-T' => $t },
                                              $m eq 'POST' ? '' : undef);
                  }
              });
    return wantarray ? @res : $res[0];
}

sub account { my ($t, @kv) = @_; redis('HSET', "quota:{$t}:account", @kv) }

# a TTL set at the pinned instant $now to expire at $end + KEEP; Redis'
# clock runs on meanwhile, so allow the seconds the test itself took
sub ttl_is {
    my ($key, $now, $end, $name) = @_;
    my $ttl = redis('TTL', $key);
    my $want = $end - $now + $KEEP;
    ok($ttl <= $want && $ttl > $want - 60, "$name: TTL $ttl, want $want")
        or diag("TTL of $key is $ttl, expected $want (end $end - now $now"
                . " + 62 days)");
}


# --- the anchored period's first second (SPEC 4a Times: period_start is
# the period's first second) -------------------------------------------

account('first15', anchor => 15);
my $r = at('2026-11-15 00:00:00', ['first15', 'POST', '/a']);
is($r->{status}, 200, 'anchor 15, Nov 15 00:00:00: admitted');
is($r->{headers}{'x-quota-reset'}, '2026-12-15T00:00:00Z',
   'anchor 15, at its first second the new period runs: resets Dec 15');
is(redis('HGET', 'quota:{first15}:usage:2026-11-15', 'a'), 1,
   'anchor 15, first second: counted in the period from Nov 15');
is(redis('EXISTS', 'quota:{first15}:usage:2026-10-15'), 0,
   'anchor 15, first second: nothing in the period from Oct 15');

$r = at('2026-11-14 23:59:59', ['first15', 'POST', '/a']);
is($r->{headers}{'x-quota-reset'}, '2026-11-15T00:00:00Z',
   'anchor 15, one second earlier: the old period, resets Nov 15');
is(redis('HGET', 'quota:{first15}:usage:2026-10-15', 'a'), 1,
   'anchor 15, its last second: counted in the period from Oct 15');

# anchor 31 clamped to Feb 28: the first second of Feb 28 starts a period
account('first31', anchor => 31);
$r = at('2027-02-28 00:00:00', ['first31', 'POST', '/a'],
        ['first31', 'GET', '/usage']);
is($r->{headers}{'x-quota-reset'}, '2027-03-31T00:00:00Z',
   'anchor 31, Feb 28 2027 00:00:00: resets Mar 31');
is(redis('HGET', 'quota:{first31}:usage:2027-02-28', 'a'), 1,
   'anchor 31, first second of Feb 28: key of Feb 28');

# the calendar month's first second
$r = at('2026-12-01 00:00:00', ['cal1', 'POST', '/a'], ['cal1', 'GET', '/usage']);
is($r->{headers}{'x-quota-reset'}, '2027-01-01T00:00:00Z',
   'calendar month, Dec 1 00:00:00: resets Jan 1');
is(redis('HGET', 'quota:{cal1}:usage:2026-12-01', 'a'), 1,
   'calendar month, first second: December key');


# --- counters expire a while after their period ends (SPEC 6), exactly
# the period end + 62 days, not 62 days from the charge ---------------

my $now = epoch('2026-11-10 12:00:00');
at('2026-11-10 12:00:00', ['ttl', 'POST', '/a'], ['ttl', 'POST', '/d']);
ttl_is('quota:{ttl}:usage:2026-11-01', $now, epoch('2026-12-01 00:00:00'),
       'month counter');
ttl_is('quota:{ttl}:daily:2026-11-01', $now, epoch('2026-12-01 00:00:00'),
       'daily breakdown');
# a period=day metric: a key of its own expires after its day; counted in
# the month's daily hash instead, it expires with that hash (checked above)
if (redis('EXISTS', 'quota:{ttl}:usage:2026-11-10')) {
    ttl_is('quota:{ttl}:usage:2026-11-10', $now, epoch('2026-11-11 00:00:00'),
           'day metric counter');
} else {
    is(redis('HGET', 'quota:{ttl}:daily:2026-11-01', 'calls:2026-11-10'), 1,
       'day metric: counted in the daily hash, which expires with the month');
}

account('ttl15', anchor => 15);
$now = epoch('2026-11-20 08:30:00');
at('2026-11-20 08:30:00', ['ttl15', 'POST', '/a']);
ttl_is('quota:{ttl15}:usage:2026-11-15', $now, epoch('2026-12-15 00:00:00'),
       'anchored month counter');


# --- RateLimit-Policy w= is the period's length, RateLimit t= the
# seconds to its end (SPEC 4a IETF fields) ------------------------------

for my $case (['2026-11-10 12:00:00', 'w30',  undef, 30, '2026-12-01 00:00:00'],
              ['2026-12-31 23:59:59', 'w31',  undef, 31, '2027-01-01 00:00:00'],
              ['2027-02-01 00:00:00', 'w28',  undef, 28, '2027-03-01 00:00:00'],
              ['2028-02-10 00:00:00', 'w29',  undef, 29, '2028-03-01 00:00:00'],
              ['2027-02-28 06:00:00', 'wa31', 31,    31, '2027-03-31 00:00:00'],
              ['2027-03-20 06:00:00', 'wa30', 30,    30, '2027-03-30 00:00:00'])
{
    my ($instant, $t, $anchor, $days, $end) = @$case;
    account($t, anchor => $anchor) if $anchor;
    $r = at($instant, [$t, 'POST', '/a']);
    my $w = $days * 86400;
    my $left = epoch($end) - epoch($instant);
    is($r->{headers}{'ratelimit-policy'},
       qq{"a";q=100;w=$w, "rate";q=120;w=60, "concurrency";q=3;qu="concurrent-requests"},
       "$instant" . ($anchor ? " anchor $anchor" : '') . ": w=$w ($days days)");
    is($r->{headers}{'ratelimit'}, qq{"a";r=99;t=$left},
       "$instant" . ($anchor ? " anchor $anchor" : '') . ": t=$left");
}

# a day metric: w is one day, t the seconds to midnight
$r = at('2026-11-20 23:30:00', ['wday', 'POST', '/d']);
like($r->{headers}{'ratelimit-policy'}, qr/^"calls";q=100;w=86400,/,
     'day metric: w=86400');
like($r->{headers}{'ratelimit'}, qr/^"calls";r=99;t=1800$/,
     'day metric: t=1800 at 23:30');


# --- projected overage (SPEC 7): this period's usage extrapolated to its
# end, priced past the limit; exact at pinned instants -----------------

# team: limit 4 per seat x 2 seats = 8, 0.5 USD per unit past it
account('proj', plan => 'team', seats => 2, overage => 1, cap => 100);
redis('HSET', 'quota:{proj}:usage:2026-12-01', 'a', 3);

# Dec 2 00:00:00: 1 day of 31 elapsed, 3 units -> 93 projected, 85 past
# the limit, 42.5 USD
$r = at('2026-12-02 00:00:00', ['proj', 'GET', '/usage']);
like($r->{body}, qr/"period_start":"2026-12-01T00:00:00Z","period_end":"2026-12-31T23:59:59Z","quota_reset_date":"2027-01-01T00:00:00Z",/,
     'Dec 2: the December period');
like($r->{body}, qr/"spending_cap":100,"projected_overage":42\.5,/,
     'Dec 2: projected overage (3 x 31 / 1 - 8) x 0.5 = 42.5');

# Dec 11 00:00:00: 10 days elapsed -> 9.3 projected, 1.3 past, 0.65 USD
$r = at('2026-12-11 00:00:00', ['proj', 'GET', '/usage']);
like($r->{body}, qr/"projected_overage":0\.65,/,
     'Dec 11: projected overage (3 x 31 / 10 - 8) x 0.5 = 0.65');

# Dec 25: 24 days elapsed -> 3.875 projected, under the limit
$r = at('2026-12-25 00:00:00', ['proj', 'GET', '/usage']);
like($r->{body}, qr/"projected_overage":0,/, 'Dec 25: nothing projected');

# the cap bounds it
account('proj', cap => 20);
$r = at('2026-12-02 00:00:00', ['proj', 'GET', '/usage']);
like($r->{body}, qr/"spending_cap":20,"projected_overage":20,/,
     'Dec 2: projected overage clamped to the cap');

done_testing();

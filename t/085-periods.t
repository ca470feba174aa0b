# Billing periods end to end, at fixed instants.
#
# The seam: the module takes "now" from the gateway's clock (ngx_time),
# so these tests run nginx under libfaketime (Debian package faketime,
# LD_PRELOAD) with a fixed start instant.  Nothing in the module knows
# about it; production behaviour is unchanged.  The calendar math itself is
# unit-tested in t/unit/test_period.c.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;

my ($faketime) = grep { -e } map { "$_/faketime/libfaketime.so.1" }
                 '/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu',
                 '/usr/lib';
# a missing library fails (scripts/setup installs it): a skipped period
# suite would pass without checking anything
ok($faketime, 'libfaketime is installed (apt-get install faketime)')
    or do { done_testing(); exit 1 };

redis_flush();

my $http = <<'_EOC_';
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric a;
    quota_metric calls period=day;
    quota_plan p { limit a 100; limit calls 100; }
    quota_default_plan p;
_EOC_

my $server = <<'_EOC_';
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

# one request at a fixed instant; returns the response
sub at {
    my ($instant, $tenant, $path) = @_;
    local $ENV{LD_PRELOAD} = $faketime;
    local $ENV{FAKETIME} = $instant;    # stopped: exact under valgrind too
    local $ENV{FAKETIME_DONT_FAKE_MONOTONIC} = 1;
    my $res;
    nginx_run(http_config => $http, config => $server, no_root_location => 1,
              code => sub {
                  $res = http_request($_[0], 'POST', $path // '/a',
                                      { 'X-T' => $tenant }, '');
              });
    return $res;
}

sub account { my ($t, @kv) = @_; redis('HSET', "quota:{$t}:account", @kv) }

# anchor 15: resets on the 15th, X-Quota-Reset names the next 15th
account('a15', anchor => 15);
my $r = at('2026-11-14 23:59:59', 'a15');
is($r->{headers}{'x-quota-reset'}, '2026-11-15T00:00:00Z', 'anchor 15, Nov 14: resets Nov 15');
is($r->{headers}{'x-quota-used'}, 1, 'anchor 15, Nov 14: first unit');
is(redis('HGET', 'quota:{a15}:usage:2026-10-15', 'a'), 1, 'anchor 15, Nov 14: counted in the period from Oct 15');
$r = at('2026-11-15 00:00:01', 'a15');
is($r->{headers}{'x-quota-reset'}, '2026-12-15T00:00:00Z', 'anchor 15, Nov 15: resets Dec 15');
is($r->{headers}{'x-quota-used'}, 1, 'anchor 15, Nov 15: usage started again');
is(redis('HGET', 'quota:{a15}:usage:2026-11-15', 'a'), 1, 'anchor 15, Nov 15: new key');

# anchor 31 in February: the period starts on the last day
account('a31', anchor => 31);
$r = at('2027-02-27 12:00:00', 'a31');
is($r->{headers}{'x-quota-reset'}, '2027-02-28T00:00:00Z', 'anchor 31, Feb 27 2027: resets on Feb 28');
is(redis('HGET', 'quota:{a31}:usage:2027-01-31', 'a'), 1, 'anchor 31, Feb 27: period from Jan 31');
$r = at('2027-02-28 10:00:00', 'a31');
is($r->{headers}{'x-quota-reset'}, '2027-03-31T00:00:00Z', 'anchor 31, Feb 28 2027: resets Mar 31');
is($r->{headers}{'x-quota-used'}, 1, 'anchor 31, Feb 28: reset on the last day of February');
is(redis('HGET', 'quota:{a31}:usage:2027-02-28', 'a'), 1, 'anchor 31, Feb 28: key of Feb 28');

# leap year: anchor 30 on Feb 29 2028
account('leap', anchor => 30);
$r = at('2028-02-29 10:00:00', 'leap');
is($r->{headers}{'x-quota-reset'}, '2028-03-30T00:00:00Z', 'anchor 30, Feb 29 2028: resets Mar 30');
is(redis('HGET', 'quota:{leap}:usage:2028-02-29', 'a'), 1, 'anchor 30, Feb 29 2028: period from Feb 29');

# the calendar month: December to January
$r = at('2026-12-31 23:59:59', 'cal');
is($r->{headers}{'x-quota-reset'}, '2027-01-01T00:00:00Z', 'Dec 31: resets Jan 1 next year');
is(redis('HGET', 'quota:{cal}:usage:2026-12-01', 'a'), 1, 'Dec 31: December key');
is(redis('HGET', 'quota:{cal}:daily:2026-12-01', 'a:2026-12-31'), 1, 'Dec 31: daily field');
$r = at('2027-01-01 00:00:00', 'cal');
is($r->{headers}{'x-quota-used'}, 1, 'Jan 1: usage reset');
is($r->{headers}{'x-quota-reset'}, '2027-02-01T00:00:00Z', 'Jan 1: resets Feb 1');

# the 402 body names the anchored reset date
account('a15cap', anchor => 15, 'limit:a' => 0);
$r = at('2026-11-20 08:00:00', 'a15cap');
is($r->{status}, 402, 'anchored 402');
like($r->{body}, qr/Quota resets on 2026-12-15\.","metric":"a","current_usage":0,"quota_limit":0,"quota_reset_date":"2026-12-15T00:00:00Z"/,
     'anchored 402 body');

# period=day metrics: their own UTC day, whatever the anchor
$r = at('2026-11-20 23:30:00', 'a15', '/d');
is($r->{headers}{'x-quota-reset'}, '2026-11-21T00:00:00Z', 'day metric: resets at midnight');
is(redis('HGET', 'quota:{a15}:daily:2026-11-15', 'calls:2026-11-20'), 1, 'day metric: counted in the daily field of its day');
is(redis('EXISTS', 'quota:{a15}:usage:2026-11-20'), 0, 'day metric: no usage key named by the day');

done_testing();

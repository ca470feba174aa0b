# quota_lease: a lease never spans a day (SPEC 9, "Daily exactness").
# nginx runs under libfaketime from just before midnight (the clock runs);
# requests before and after midnight spend leases (ttl 60 s, so only the
# day check can end the first lease), and once nginx has quit, each day's
# counter holds exactly the requests admitted that day.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use Time::HiRes qw(sleep time);

my ($faketime) = grep { -e } map { "$_/faketime/libfaketime.so.1" }
                 '/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu',
                 '/usr/lib';
ok($faketime, 'libfaketime is installed (apt-get install faketime)')
    or do { done_testing(); exit 1 };

redis_flush();

my $http = <<'_EOC_';
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_zone q:1m;
    quota_metric a;
    quota_metric calls period=day;
    quota_plan p { limit a 100000; limit calls 100000; }
    quota_default_plan p;
_EOC_

my $server = <<'_EOC_';
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /a a=1;
    quota_route POST /d calls=1;
    quota_lease 50 ttl=60s;

    location / {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_

my (%day, $late);
{
    local $ENV{LD_PRELOAD} = $faketime;
    local $ENV{FAKETIME} = '@2026-11-14 23:59:55';    # and the clock runs
    local $ENV{FAKETIME_DONT_FAKE_MONOTONIC} = 1;
    # nginx clears the workers' environment and libfaketime reads FAKETIME
    # again every 10 s: without "env" the workers fall back to the real
    # clock (review L2)
    nginx_run(workers => 2, http_config => $http, config => $server,
              main_config => "env FAKETIME;\nenv FAKETIME_DONT_FAKE_MONOTONIC;",
              no_root_location => 1, code => sub {
        my ($port) = @_;
        my $date = sub { http_get($port, '/origin/')->{headers}{date} // '' };
        for my $path ('/a', '/d') {
            for (1 .. 10) {
                my $r = http_request($port, 'POST', $path, { 'X-T' => 'day' }, '', 10);
                $day{"14$path"}++ if $r->{status} eq '200';
            }
        }
        # the start took longer than the 5 s to midnight (valgrind)
        $late = 1 if $date->() =~ / 15 Nov /;
        my $deadline = time + 30;
        sleep 0.2 while $date->() !~ / 15 Nov / && time < $deadline;
        for my $path ('/a', '/d') {
            for (1 .. 7) {
                my $r = http_request($port, 'POST', $path, { 'X-T' => 'day' }, '', 10);
                $day{"15$path"}++ if $r->{status} eq '200';
            }
        }
    });
}

SKIP: {
    skip 'nginx started after midnight (fake clock): nothing to compare', 6 if $late;
    is_deeply(\%day, { '14/a' => 10, '14/d' => 10, '15/a' => 7, '15/d' => 7 },
              'every request admitted');
    my %d = @{ redis('HGETALL', 'quota:{day}:daily:2026-11-01') };
    is($d{'a:2026-11-14'}, 10, 'monthly metric: Nov 14 counts the requests of Nov 14');
    is($d{'a:2026-11-15'}, 7, 'monthly metric: Nov 15 counts the requests of Nov 15');
    is($d{'calls:2026-11-14'}, 10, 'daily metric: Nov 14 exact');
    is($d{'calls:2026-11-15'}, 7, 'daily metric: Nov 15 exact');
    is(redis('HGET', 'quota:{day}:usage:2026-11-01', 'a'), 17,
       'the month counts both days');
}

done_testing();

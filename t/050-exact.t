# Exactness under concurrency: 2 workers, 600 concurrent requests for one
# tenant with limit 200: exactly 200 admitted, usage exactly 200.  The
# check-and-charge is one Redis script, so no interleaving can over-admit.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaTime;

redis_flush();

my $start = month_start();
my @codes;

nginx_run(
    workers => 2,
    no_root_location => 1,
    http_config => <<'_EOC_',
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=5s;
    quota_metric api_requests;
    quota_plan free { limit api_requests 200; }
    quota_default_plan free;
_EOC_
    config => <<'_EOC_',
    quota on;
    quota_tenant $http_x_api_key;
    quota_route POST /api/** api_requests=1;

    location / {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_
    code => sub {
        my ($port) = @_;
        @codes = http_concurrent($port, 600,
            "POST /api/x HTTP/1.1\r\nHost: localhost\r\nX-API-Key: exact\r\n"
            . "Content-Length: 0\r\nConnection: close\r\n\r\n", 30);
    },
);

my %n;
$n{$_}++ for @codes;

is(scalar @codes, 600, '600 responses');
is($n{200} // 0, 200, 'exactly 200 admitted');
is($n{402} // 0, 400, 'the other 400 rejected with 402');
is(redis('HGET', "quota:{exact}:usage:$start", 'api_requests'), 200,
   'usage is exactly 200');
diag(join ', ', map { "$_: $n{$_}" } sort keys %n);

# the same with the whole billing model switched on: per-seat pool (2 x 100),
# rate and concurrency limits far away, overage priced but off, warning and
# RateLimit headers, shadow mode and reconcile configured; still exactly
# 200, and still one EVALSHA per request (Redis INFO commandstats)
my %stats;
@codes = ();
use Digest::SHA qw(sha256_hex);
my $t = sha256_hex('exact2');
redis('HSET', "quota:{$t}:account", 'plan', 'team', 'seats', 2);

nginx_run(
    workers => 2,
    no_root_location => 1,
    http_config => <<'_EOC_',
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=5s;
    quota_metric api_requests;
    quota_metric tokens;
    quota_plan team {
        limit api_requests 100 per_seat;
        rate 100000r/s;
        concurrency 5000;
        overage api_requests 0.01;
    }
    quota_default_plan team;
    map $arg_mode $shadow { shadow 1; default 0; }
_EOC_
    config => <<'_EOC_',
    quota on;
    quota_tenant $http_x_api_key hash;
    quota_bypass $shadow;
    quota_warning_header X-Quota-Warning "$quota_percent%";
    quota_ratelimit_headers on;
    quota_route POST /api/** api_requests=1 tokens=0;
    quota_reconcile tokens $upstream_http_x_tokens;

    location / {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_
    code => sub {
        my ($port) = @_;
        redis('CONFIG', 'RESETSTAT');
        @codes = http_concurrent($port, 600,
            "POST /api/x HTTP/1.1\r\nHost: localhost\r\nX-API-Key: exact2\r\n"
            . "Content-Length: 0\r\nConnection: close\r\n\r\n", 30);
        for (split /\r?\n/, redis('INFO', 'commandstats')) {
            $stats{$1} = $2 if /^cmdstat_(\w+):calls=(\d+)/;
        }
    },
);

%n = ();
$n{$_}++ for @codes;
diag(join ', ', map { "$_: $n{$_}" } sort keys %n);

is($n{200} // 0, 200, 'billing model on: exactly 200 admitted');
is($n{402} // 0, 400, 'billing model on: 400 refused');

is(redis('HGET', "quota:{$t}:usage:$start", 'api_requests'), 200,
   'billing model on: usage exactly 200, under the hashed tenant id');
diag("commandstats: " . join ', ', map { "$_=$stats{$_}" } sort keys %stats);
is($stats{evalsha}, 600, 'one EVALSHA per metered request');
ok(!$stats{eval}, 'no EVAL fallback');
is($stats{zrem}, 200, 'an in-flight slot released (ZREM, fire and forget) for each admitted request only');

done_testing();

# Review D9 (overflow-safe percentages), D17 (HTTP details) and the runtime
# side of D16 (an endpoint works without "quota on").

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaTime;

QuotaTest::redis_flush();

my $start = month_start();

my $http_config = <<'_EOC_';
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric a;
    quota_plan p { limit a 10; rate 1000r/s; }
    quota_default_plan p;
_EOC_

my $server = <<'_EOC_';
    quota on;
    quota_tenant $http_x_api_key;
    quota_apikey_header X-API-Key;

    location /pct/ {
        quota_route POST /pct/** a=1;
        quota_warning_header X-W "w";
        add_header X-P $quota_percent always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /empty/ {
        quota_route POST /empty/** a=1;
        quota_warning_threshold 0%;
        quota_warning_header X-W $http_x_nothing;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    # the upstream sends the names we send too: ours win, theirs go
    location /dup/ {
        quota_route POST /dup/** a=1;
        quota_warning_threshold 0%;
        quota_warning_header X-W "ours";
        quota_ratelimit_headers on;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/updup;
    }

    location = /usage {
        quota_usage;
    }

    location = /alerts {
        quota_alerts;
    }

    location = /metrics {
        quota_metrics;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }

    location /updup {
        quota off;
        add_header X-Quota-Used 999;
        add_header x-quota-limit 5;
        add_header RateLimit "up;r=1;t=1";
        add_header RateLimit-Policy "up;q=1;w=1";
        add_header X-W theirs;
        return 200 "ok\n";
    }
_EOC_

# used * 100 passes 2^63 here: 2^64 / 100, rounded up, wraps to a small
# positive product, so a wrapping computation gives a plausible low percent
my $big = '184467440737095517';
QuotaTest::redis('HSET', "quota:{big}:usage:$start", 'a', $big);
QuotaTest::redis('XADD', 'quota:{big}:alerts', '*', 'type',
                 'approaching_limit', 'metric', 'a', 'used', $big,
                 'limit', 10, 'at', '2026-11-01T00:00:00Z');

# an alert kind that is only a prefix of a known one keeps its own text
QuotaTest::redis('XADD', 'quota:{pfx}:alerts', '*', 'type', 'approaching',
                 'metric', 'a', 'used', 5, 'limit', 10);

# S7: text a backend wrote into Redis is not valid UTF-8
QuotaTest::redis('HSET', 'quota:{utf}:account', 'status', "\xffbad");
QuotaTest::redis('XADD', 'quota:{utf}:alerts', '*', 'type', 'quota_exceeded',
                 'metric', "\xe9t\xe9", 'used', 5, 'limit', 10);

my %r;
my $log = QuotaTest::nginx_run(
    http_config => $http_config,
    config      => $server,
    no_root_location => 1,
    code        => sub {
        my ($port) = @_;
        my $k = { 'X-API-Key' => 'big' };
        $r{pct} = QuotaTest::http_request($port, 'POST', '/pct/x', $k);
        $r{usage} = QuotaTest::http_get($port, '/usage', $k);
        $r{alerts} = QuotaTest::http_get($port, '/alerts', $k);
        $r{pfx} = QuotaTest::http_get($port, '/alerts', { 'X-API-Key' => 'pfx' });
        $r{utfu} = QuotaTest::http_get($port, '/usage', { 'X-API-Key' => 'utf' });
        $r{utfa} = QuotaTest::http_get($port, '/alerts', { 'X-API-Key' => 'utf' });
        $r{empty} = QuotaTest::http_request($port, 'POST', '/empty/x',
                                            { 'X-API-Key' => 'e' });
        $r{dup} = QuotaTest::http_request($port, 'POST', '/dup/x',
                                          { 'X-API-Key' => 'd' });
        $r{u401} = QuotaTest::http_get($port, '/usage');
        $r{a401} = QuotaTest::http_get($port, '/alerts');
        $r{m405} = QuotaTest::http_request($port, 'POST', '/metrics');
    });

# D9: the percent is floor(used * 100 / limit) however large used is
my $used = $r{pct}{headers}{'x-quota-used'} // '';
is($r{pct}{status}, 402, 'D9: over the limit: 402');
like($used, qr/^18446744073709\d{4}$/, 'D9: X-Quota-Used is the huge usage');
is($r{pct}{headers}{'x-p'}, $used . '0', 'D9: $quota_percent = used * 10 (limit 10)');
is($r{pct}{headers}{'x-w'}, 'w', 'D9: the warning header is due');
like($r{usage}{body}, qr/"approaching_limit":true/,
     'D9: quota_usage: approaching_limit');
like($r{alerts}{body}, qr/"message":"a usage reached 1844674407370955170% of the limit/,
     'D9: quota_alerts: the alert message percent');

like($r{pfx}{body}, qr/"type":"approaching","metric":"a","message":"approaching"/,
     'alerts: a kind is matched whole, not as a prefix of a known kind');

is($r{utfu}{status}, 200, 'S7: usage with a non-UTF-8 account status answers');
like($r{utfu}{body}, qr/"status":null,/, 'S7: ... with status null');
is($r{utfa}{status}, 200, 'S7: alerts with a non-UTF-8 metric answer');
like($r{utfa}{body}, qr/"metric":null,"message":null,/, 'S7: ... with metric and message null');
ok($r{utfu}{body} !~ /[\x80-\xff]/ && $r{utfa}{body} !~ /[\x80-\xff]/,
   'S7: no invalid UTF-8 in the JSON');

# D17
is($r{empty}{status}, 200, 'D17: empty warning value: admitted');
ok(!exists $r{empty}{headers}{'x-w'}, 'D17: an empty warning header is not sent');

is($r{dup}{status}, 200, 'D17: upstream with our header names: admitted');
is($r{dup}{headers}{'x-quota-used'}, 1, 'D17: one X-Quota-Used, ours');
is($r{dup}{headers}{'x-quota-limit'}, 10, 'D17: one X-Quota-Limit, ours (any case)');
is($r{dup}{headers}{'x-w'}, 'ours', 'D17: one warning header, ours');
like($r{dup}{headers}{'ratelimit'}, qr/^"a";r=9;t=\d+$/, 'D17: one RateLimit, ours');
like($r{dup}{headers}{'ratelimit-policy'}, qr/^"a";q=10;w=\d+, "rate";q=1000;w=1$/,
     'D17: one RateLimit-Policy, ours');

for my $ep ('u401', 'a401') {
    is($r{$ep}{status}, 401, "D17: $ep: 401");
    is($r{$ep}{headers}{'www-authenticate'}, 'ApiKey realm="quota", header="X-API-Key"',
       "D17: $ep: WWW-Authenticate names the key header");
}

is($r{m405}{status}, 405, 'D17: metrics POST: 405');
is($r{m405}{headers}{'allow'}, 'GET, HEAD', 'D17: metrics 405 has Allow');

unlike($log, qr/\[(?:alert|crit|emerg)\]/, 'no [alert]');

# D16: quota_usage needs a Redis connection even where no "quota on" is
QuotaTest::redis('HSET', "quota:{solo}:usage:$start", 'a', 3);
my $solo;
QuotaTest::nginx_run(
    http_config => $http_config,
    config      => <<'_EOC_',
    location = /usage {
        quota_tenant $http_x_api_key;
        quota_usage;
    }
_EOC_
    no_root_location => 1,
    code        => sub {
        my ($port) = @_;
        # the worker connects right after start: allow it a moment
        for (1 .. 50) {
            $solo = QuotaTest::http_get($port, '/usage', { 'X-API-Key' => 'solo' });
            last if $solo->{status} eq '200';
            select(undef, undef, undef, 0.05);
        }
    });
is($solo->{status}, 200, 'D16: quota_usage without "quota on" anywhere answers');
like($solo->{body}, qr/"a":\{"used":3,/, 'D16: with the usage');

done_testing();

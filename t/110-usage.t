# quota_usage (SPEC 7): the requesting tenant's usage as JSON, not charged;
# ?daily=1 adds the daily breakdown; 405, 401, 403 answers.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::Nginx::Socket 'no_plan';
use QuotaTest;
use QuotaTime;

our $start = month_start();
our $pstart = "${start}T00:00:00Z";
our $pend = month_last_second();
our $reset = next_month_reset();
our $today = today();

redis_flush();

add_block_preprocessor(sub {
    my $block = shift;

    $block->set_value('http_config', <<'_EOC_') unless defined $block->http_config;
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric a;
    quota_metric b;
    quota_plan basic { limit a 10; }
    quota_plan team { limit a 4 per_seat; limit b 100; overage a 0.5; }
    quota_default_plan basic;
_EOC_

    # an endpoint answers once: never "header already sent" (review D3)
    $block->set_value('no_error_log', "[alert]\n[crit]\n[emerg]\n")
        unless defined $block->no_error_log;

    $block->set_value('config', ($block->config // '') . <<'_EOC_');
    location / {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location = /api/v1/usage {
        quota_usage;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_
});

no_shuffle();
no_root_location();
run_tests();

is(redis('HGET', "quota:{acme}:usage:$start", 'a'), 3, 'usage calls charged nothing');

__DATA__

=== TEST 1: after 3 charged requests the usage endpoint shows used 3, and calling it charges nothing
--- config
    quota on;
    quota_tenant $http_x_api_key;
    quota_route * /** a=1;
--- more_headers
X-API-Key: acme
--- request eval
["POST /x", "POST /x", "POST /x", "GET /api/v1/usage", "GET /api/v1/usage"]
--- error_code eval
[200, 200, 200, 200, 200]
--- response_headers eval
["X-Quota-Used: 1", "X-Quota-Used: 2", "X-Quota-Used: 3", "Content-Type: application/json\n!X-Quota-Used", "Content-Type: application/json"]
--- response_body eval
["ok\n", "ok\n", "ok\n",
 qq{{"tenant_id":"acme","plan":"basic","status":"active","seats":1,"period_start":"$::pstart","period_end":"$::pend","quota_reset_date":"$::reset","approaching_limit":false,"overage_enabled":false,"spending_cap":null,"projected_overage":0,"metrics":{"a":{"used":3,"limit":10,"remaining":7,"overage":0},"b":{"used":0,"limit":null,"remaining":null,"overage":0}}}},
 qq{{"tenant_id":"acme","plan":"basic","status":"active","seats":1,"period_start":"$::pstart","period_end":"$::pend","quota_reset_date":"$::reset","approaching_limit":false,"overage_enabled":false,"spending_cap":null,"projected_overage":0,"metrics":{"a":{"used":3,"limit":10,"remaining":7,"overage":0},"b":{"used":0,"limit":null,"remaining":null,"overage":0}}}}]



=== TEST 2: another tenant sees its own numbers, plan, seats, cap; daily=1 adds the breakdown
--- init
QuotaTest::redis('HSET', 'quota:{other}:account', 'plan', 'team', 'seats', 2, 'overage', 1, 'cap', '12.5', 'status', 'trial');
--- config
    quota on;
    quota_tenant $http_x_api_key;
    quota_route * /** a=2 b=1;
--- more_headers
X-API-Key: other
--- request eval
["POST /x", "GET /api/v1/usage?daily=1"]
--- response_body_like eval
# projected_overage depends on the day of the month (2 units extrapolated
# from the elapsed part of it): t/086-pinned-time.t checks it exactly at
# pinned instants; here any amount up to the cap
["^ok\n\$",
 '^' . CORE::join('"projected_overage":(?:0|[1-9]\d*(?:\.\d+)?|0\.\d+),',
            map { quotemeta } split /"projected_overage":0,/,
 qq{{"tenant_id":"other","plan":"team","status":"trial","seats":2,"period_start":"$::pstart","period_end":"$::pend","quota_reset_date":"$::reset","approaching_limit":false,"overage_enabled":true,"spending_cap":12.5,"projected_overage":0,"metrics":{"a":{"used":2,"limit":8,"remaining":6,"overage":0},"b":{"used":1,"limit":100,"remaining":99,"overage":0}},"daily":[{"date":"$::today","a":2,"b":1}]}}) . '$']



=== TEST 3: approaching_limit from the warning threshold on
--- init
QuotaTest::redis('HSET', "quota:{near}:usage:$main::start", 'a', 8);
--- config
    quota on;
    quota_tenant $http_x_api_key;
    quota_route * /** a=1;
--- more_headers
X-API-Key: near
--- request
GET /api/v1/usage
--- response_body_like chop
"approaching_limit":true,



=== TEST 4: hashed tenants see their hashed id
--- config
    quota on;
    quota_tenant $http_x_api_key hash;
    quota_route * /** a=1;
--- more_headers
X-API-Key: secret
--- request
GET /api/v1/usage
--- response_body_like chop
^\{"tenant_id":"2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b","plan":"basic",



=== TEST 5: other methods get 405, no tenant 401, a bad raw tenant 400
--- config
    quota on;
    quota_tenant $http_x_api_key;
    quota_route * /** a=1;
--- more_headers eval
["X-API-Key: acme", "", "X-API-Key: a{b}"]
--- request eval
["POST /api/v1/usage", "GET /api/v1/usage", "GET /api/v1/usage"]
--- error_code eval
[405, 401, 400]
--- response_headers eval
["Allow: GET, HEAD\nContent-Type: application/json", "Content-Type: application/json", "Content-Type: application/json"]
--- response_body_like eval
[qr/^\{"error":"METHOD_NOT_ALLOWED",/, qr/^\{"error":"MISSING_TENANT",/, qr/^\{"error":"BAD_TENANT",/]



=== TEST 6: quota_require_account: an unknown tenant gets 403 and no key
--- config
    quota on;
    quota_require_account on;
    quota_tenant $http_x_api_key;
    quota_route * /** a=1;
--- more_headers
X-API-Key: nobody
--- request
GET /api/v1/usage
--- error_code: 403
--- response_body chomp
{"error":"UNKNOWN_TENANT","message":"Unknown tenant."}



=== TEST 7: Redis unreachable: 503 QUOTA_UNAVAILABLE, whatever quota_failure_mode says
--- http_config
    quota_redis 127.0.0.1:1 timeout=3s connect_timeout=100ms;
    quota_metric a;
--- config
    quota on;
    quota_tenant $http_x_api_key;
--- more_headers
X-API-Key: acme
--- request
GET /api/v1/usage
--- error_code: 503
--- response_body_like chop
^\{"error":"QUOTA_UNAVAILABLE",



=== TEST 8: projected overage: extrapolated, priced, bounded by the cap; usage past the limit shows
--- init
QuotaTest::redis('HSET', 'quota:{proj}:account', 'plan', 'team', 'overage', 1, 'cap', 3);
QuotaTest::redis('HSET', "quota:{proj}:usage:$main::start", 'a', 10, 'a:overage', 6, 'overage_cost', 3000000);
--- config
    quota on;
    quota_tenant $http_x_api_key;
    quota_route * /** a=1;
--- more_headers
X-API-Key: proj
--- request
GET /api/v1/usage
--- response_body_like chop
"overage_enabled":true,"spending_cap":3,"projected_overage":3,"metrics":\{"a":\{"used":10,"limit":4,"remaining":0,"overage":6\}

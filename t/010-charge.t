# Monthly quota: charge, headers, the 402 body, and that a rejected request
# never reaches the upstream.
#
# The "upstream" is a location of the same server that is itself metered
# for a fixed tenant "upstream" (metric "hits"): its counter in Redis is the
# number of requests that really got through.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }    # fallback runner comes last
use Test::Nginx::Socket 'no_plan';
use QuotaTest;
use QuotaTime;
use Time::Local ();

our $reset = next_month_reset();
our $start = month_start();

redis_flush();

no_shuffle();
no_root_location();
run_tests();

# what the upstream saw, per block (tenants are distinct per block)
is(redis('HGET', "quota:{upstream1}:usage:$start", 'hits'), 5,
   'TEST 1: the upstream saw exactly the 5 admitted requests');
is(redis('HGET', "quota:{acme}:usage:$start", 'api_requests'), 5,
   'TEST 1: usage is 5 after the rejected 6th');
is(redis('HGET', "quota:{acme}:daily:$start", 'api_requests:' . today()), 5,
   'TEST 1: daily counter');
# the period end + 62 days (exact at pinned instants in t/086-pinned-time.t)
{
    my $ttl = redis('TTL', "quota:{acme}:usage:$start");
    my ($y, $m) = $reset =~ /^(\d{4})-(\d\d)/;
    my $want = Time::Local::timegm(0, 0, 0, 1, $m - 1, $y) + 62 * 86400 - time;
    ok($ttl <= $want + 1 && $ttl > $want - 120,
       "TEST 1: usage key expires 62 days after its period ends ($ttl s)")
        or diag("TTL $ttl, want about $want");
}
is(redis('HGET', "quota:{other}:usage:$start", 'api_requests'), 1,
   'TEST 2: another tenant has its own counter');

__DATA__

=== TEST 1: limit 5: five POSTs answer 200 with Remaining 4..0, the 6th 402
--- http_config
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric api_requests;
    quota_metric hits;
    quota_plan free { limit api_requests 5; }
    quota_default_plan free;
--- config
    quota on;
    quota_tenant $http_x_api_key;
    quota_route POST /api/v2/:project/tests api_requests=1;

    location /api/ {
        add_header X-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend/;
    }

    location /backend/ {
        quota_tenant upstream1;
        quota_route * /backend/** hits=1;
        quota_headers off;
        add_header X-Backend hit;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
--- more_headers
X-API-Key: acme
--- request eval
[("POST /api/v2/p1/tests") x 6]
--- error_code eval
[200, 200, 200, 200, 200, 402]
--- response_headers eval
[map({ "X-Quota-Limit: 5\nX-Quota-Remaining: " . (4 - $_) . "\nX-Quota-Used: " . ($_ + 1) . "\nX-Quota-Reset: $::reset\nX-Backend: hit\nX-Status: ALLOWED" } 0 .. 4),
 "X-Quota-Limit: 5\nX-Quota-Remaining: 0\nX-Quota-Used: 5\nX-Quota-Reset: $::reset\n!X-Backend\nX-Status: REJECTED_QUOTA\nContent-Type: application/json"]
--- response_body_like eval
[(qr/^ok$/) x 5,
 qr/^\Q{"error":"QUOTA_EXCEEDED","message":"Monthly api_requests quota exhausted. Quota resets on \E\d{4}-\d\d-01\.","metric":"api_requests","current_usage":5,"quota_limit":5,"quota_reset_date":"\Q$::reset\E"}$/]
--- no_error_log
[error]
[alert]



=== TEST 2: GET is not metered, another tenant is counted apart, unknown paths pass
--- http_config
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric api_requests;
    quota_plan free { limit api_requests 5; }
    quota_default_plan free;
--- config
    quota on;
    quota_tenant $http_x_api_key;
    quota_route POST /api/v2/:project/tests api_requests=1;

    location / {
        add_header X-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
--- more_headers
X-API-Key: other
--- request eval
["GET /api/v2/p1/tests", "POST /api/v2/p1/tests", "POST /elsewhere"]
--- error_code eval
[200, 200, 200]
--- response_headers eval
["!X-Quota-Used\nX-Status: UNMETERED",
 "X-Quota-Used: 1\nX-Quota-Remaining: 4\nX-Status: ALLOWED",
 "!X-Quota-Used\nX-Status: UNMETERED"]
--- no_error_log
[error]



=== TEST 3: variables and a custom header prefix
--- http_config
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric api_requests;
    quota_plan free { limit api_requests 3; }
    quota_default_plan free;
--- config
    quota on;
    quota_tenant $http_x_api_key;
    quota_header_prefix X-GaaS-Quota-;
    quota_route POST /v/** api_requests=2;

    location / {
        add_header X-Vars "$quota_status $quota_tenant $quota_metric $quota_cost $quota_used $quota_limit $quota_remaining $quota_percent $quota_reset" always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
--- more_headers
X-API-Key: vars
--- request eval
["POST /v/a", "POST /v/b"]
--- error_code eval
[200, 402]
--- response_headers eval
["X-GaaS-Quota-Limit: 3\nX-GaaS-Quota-Remaining: 1\nX-GaaS-Quota-Used: 2\n!X-Quota-Used\nX-Vars: ALLOWED vars api_requests 2 2 3 1 66 $::reset",
 "X-GaaS-Quota-Remaining: 1\nX-GaaS-Quota-Used: 2\nX-Vars: REJECTED_QUOTA vars api_requests 2 2 3 1 66 $::reset"]



=== TEST 4: quota_headers off and quota_status 429
--- http_config
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric api_requests;
    quota_plan free { limit api_requests 0; }
    quota_default_plan free;
--- config
    quota on;
    quota_tenant $http_x_api_key;
    quota_headers off;
    quota_status 429;
    quota_route POST /** api_requests=1;

    location / {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
--- more_headers
X-API-Key: noheaders
--- request
POST /x
--- error_code: 429
--- response_headers
!X-Quota-Limit
!X-Quota-Used
Content-Type: application/json



=== TEST 5: error_page takes over the 402 and the page still carries the headers
--- http_config
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric api_requests;
    quota_plan free { limit api_requests 0; }
    quota_default_plan free;
--- config
    quota on;
    quota_tenant $http_x_api_key;
    quota_route POST /** api_requests=1;

    location / {
        error_page 402 = /over;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location = /over {
        add_header X-Page over always;
        return 200 "over\n";
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
--- more_headers
X-API-Key: errpage
--- request
POST /x
--- error_code: 200
--- response_headers
X-Page: over
X-Quota-Limit: 0
X-Quota-Used: 0

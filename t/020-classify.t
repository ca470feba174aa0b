# Classification: weighted costs by method, template, auth type and version;
# rule precedence (SPEC 4a); variable costs; all-or-nothing charges.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::Nginx::Socket 'no_plan';
use QuotaTest;
use QuotaTime;

our $start = month_start();

redis_flush();

# every block shares the metrics and plan; a block's --- config holds only
# its quota_* lines and gets the proxying locations appended
add_block_preprocessor(sub {
    my $block = shift;

    $block->set_value('http_config', <<'_EOC_') unless defined $block->http_config;
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric a;
    quota_metric b;
    quota_plan p { limit a 100; limit b 3; }
    quota_default_plan p;
_EOC_

    my $config = $block->config // '';
    $config .= <<'_EOC_' unless $config =~ /location/;
    location / {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }
_EOC_
    $config .= <<'_EOC_';
    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_
    $block->set_value('config', $config);
});

no_shuffle();
no_root_location();
run_tests();

sub usage { my ($t, $m) = @_; return redis('HGET', "quota:{$t}:usage:$start", $m // 'a') }

is(usage('weights', 'api_requests'), 3, 'weights: v2 write 1 + v1 write with Authorization 2, nothing else');
is_deeply(redis('HGETALL', "quota:{weights}:daily:$start"),
          ['api_requests:' . today(), 3], 'weights: daily hash holds the same 3 units');
is(usage('allornothing', 'a'), 1, 'all-or-nothing: a charged once (second request rejected on b)');
is(usage('allornothing', 'b'), 2, 'all-or-nothing: b charged once');
is(usage('badcost'), 7, 'bad costs charged nothing, the good one 7');

__DATA__

=== TEST 1: weights: v2 write costs 1
--- config
    quota on;
    quota_tenant $http_x_api_key;
    quota_route POST,PATCH,PUT,DELETE /api/v2/:project/tests/:id api_requests=1;
    quota_route POST,PATCH,PUT,DELETE "/api/{project}/tests/{id}" api_requests=2 auth=header;
--- http_config
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric api_requests;
    quota_plan p { limit api_requests 100; }
    quota_default_plan p;
--- more_headers
X-API-Key: weights
--- request
PATCH /api/v2/proj/tests/7
--- error_code: 200
--- response_headers
X-Quota-Used: 1



=== TEST 2: weights: v1 write with an Authorization header costs 2
--- config
    quota on;
    quota_tenant $http_x_api_key;
    quota_route POST,PATCH,PUT,DELETE /api/v2/:project/tests/:id api_requests=1;
    quota_route POST,PATCH,PUT,DELETE "/api/{project}/tests/{id}" api_requests=2 auth=header;
--- http_config
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric api_requests;
    quota_plan p { limit api_requests 100; }
    quota_default_plan p;
--- more_headers
X-API-Key: weights
Authorization: Bearer x
--- request
POST /api/proj/tests/7
--- error_code: 200
--- response_headers
X-Quota-Used: 3



=== TEST 3: weights: v1 write with only a cookie is not metered
--- config
    quota on;
    quota_tenant $http_x_api_key;
    quota_route POST,PATCH,PUT,DELETE /api/v2/:project/tests/:id api_requests=1;
    quota_route POST,PATCH,PUT,DELETE "/api/{project}/tests/{id}" api_requests=2 auth=header;
--- http_config
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric api_requests;
    quota_plan p { limit api_requests 100; }
    quota_default_plan p;
--- more_headers
X-API-Key: weights
Cookie: session=abc
--- request
DELETE /api/proj/tests/7
--- error_code: 200
--- response_headers
!X-Quota-Used



=== TEST 4: weights: GET on the same routes is not metered
--- config
    quota on;
    quota_tenant $http_x_api_key;
    quota_route POST,PATCH,PUT,DELETE /api/v2/:project/tests/:id api_requests=1;
    quota_route POST,PATCH,PUT,DELETE "/api/{project}/tests/{id}" api_requests=2 auth=header;
--- http_config
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric api_requests;
    quota_plan p { limit api_requests 100; }
    quota_default_plan p;
--- more_headers
X-API-Key: weights
Authorization: Bearer x
--- request eval
["GET /api/v2/proj/tests/7", "GET /api/proj/tests/7"]
--- error_code eval
[200, 200]
--- response_headers eval
["!X-Quota-Used", "!X-Quota-Used"]



=== TEST 5: a literal segment beats :name, declared after it
--- config
    quota on;
    quota_tenant $http_x_api_key;
    quota_route POST /p/:id a=1;
    quota_route POST /p/special a=5;
--- more_headers
X-API-Key: prec1
--- request eval
["POST /p/special", "POST /p/other"]
--- response_headers eval
["X-Quota-Used: 5", "X-Quota-Used: 6"]



=== TEST 6: a literal segment beats :name, declared before it
--- config
    quota on;
    quota_tenant $http_x_api_key;
    quota_route POST /p/special a=5;
    quota_route POST /p/:id a=1;
--- more_headers
X-API-Key: prec2
--- request eval
["POST /p/special", "POST /p/other"]
--- response_headers eval
["X-Quota-Used: 5", "X-Quota-Used: 6"]



=== TEST 7: :name beats **, which also matches zero segments
--- config
    quota on;
    quota_tenant $http_x_api_key;
    quota_route POST /p/** a=7;
    quota_route POST /p/:id a=1;
--- more_headers
X-API-Key: prec3
--- request eval
["POST /p/x", "POST /p/x/y/z", "POST /p", "POST /q"]
--- response_headers eval
["X-Quota-Used: 1", "X-Quota-Used: 8", "X-Quota-Used: 15", "!X-Quota-Used"]



=== TEST 8: same template: the first rule whose conditions hold; else the next template
--- config
    quota on;
    quota_tenant $http_x_api_key;
    quota_route POST /r/lit a=3 auth=header;
    quota_route POST /r/:id a=4;
    quota_route POST /r/:id a=10 auth=header;
--- more_headers
X-API-Key: prec4
--- request eval
["POST /r/lit", "POST /r/other"]
--- response_headers eval
["X-Quota-Used: 4", "X-Quota-Used: 8"]



=== TEST 9: a location's rules replace the server's
--- config
    quota on;
    quota_tenant $http_x_api_key;
    quota_route POST /** a=1;

    location /loc/ {
        quota_route POST /loc/special a=9;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location / {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }
--- more_headers
X-API-Key: inherit
--- request eval
["POST /loc/other", "POST /loc/special", "POST /elsewhere"]
--- response_headers eval
["!X-Quota-Used", "X-Quota-Used: 9", "X-Quota-Used: 10"]



=== TEST 10: version= reads quota_api_version; auth=apikey reads quota_apikey_header
--- config
    quota on;
    quota_tenant $http_x_tenant;
    quota_api_version $http_x_api_version;
    quota_apikey_header X-Key;
    quota_route POST /v/** a=1 version=2;
    quota_route POST /v/** a=5 version=1 auth=apikey;
--- more_headers eval
"X-Tenant: versions\nX-Api-Version: 1\nX-Key: k"
--- request
POST /v/x
--- response_headers
X-Quota-Used: 5



=== TEST 11: version=2 rule, and no rule without a matching version
--- config
    quota on;
    quota_tenant $http_x_tenant;
    quota_api_version $arg_v;
    quota_route POST /v/** a=1 version=2;
--- more_headers
X-Tenant: versions2
--- request eval
["POST /v/x?v=2", "POST /v/x?v=3", "POST /v/x", "POST /v/x?v=22", "POST /v/x?v=", "POST /v/x?v=2"]
--- error_code eval
[(200) x 6]
--- response_headers eval
["X-Quota-Used: 1", ("!X-Quota-Used") x 4, "X-Quota-Used: 2"]



=== TEST 12: several metrics in one rule are all-or-nothing
--- config
    quota on;
    quota_tenant $http_x_api_key;
    quota_route POST /m a=1 b=2;
--- more_headers
X-API-Key: allornothing
--- request eval
["POST /m", "POST /m"]
--- error_code eval
[200, 402]
--- response_body_like eval
["ok", qr/"metric":"b","current_usage":2,"quota_limit":3/]



=== TEST 13: variable costs: integers charged, anything else is 400 BAD_COST
--- config
    quota on;
    quota_tenant $http_x_api_key;
    quota_route POST /cost a=$arg_c;
--- more_headers
X-API-Key: badcost
--- request eval
["POST /cost?c=abc", "POST /cost?c=-1", "POST /cost?c=1.5", "POST /cost?c=9007199254740992", "POST /cost?c=", "POST /cost?c=%20", "POST /cost?c=7"]
--- error_code eval
[400, 400, 400, 400, 400, 400, 200]
--- response_body_like eval
[(qr/^\{"error":"BAD_COST","message":"Invalid cost for metric a: [^"]+","metric":"a"\}$/) x 6, "ok"]
--- no_error_log
[error]



=== TEST 14: methods: "*" matches any method, odd ones included
--- config
    quota on;
    quota_tenant $http_x_api_key;
    quota_route * /any a=1;
    quota_route PROPFIND,POST /dav a=2;
--- more_headers
X-API-Key: methods
--- request eval
["GET /any", "FOO /any", "PROPFIND /dav", "PUT /dav"]
--- response_headers eval
["X-Quota-Used: 1", "X-Quota-Used: 2", "X-Quota-Used: 4", "!X-Quota-Used"]



=== TEST 15: auth=cookie: a Cookie without Authorization
--- config
    quota on;
    quota_tenant $arg_t;
    quota_route POST /auth a=2 auth=cookie;
    quota_route POST /auth a=3 auth=apikey;
    quota_route POST /auth a=1 auth=header;
    quota_route POST /auth a=4 auth=none;
--- more_headers
Cookie: session=1
--- request
POST /auth?t=cookie1
--- error_code: 200
--- response_headers
X-Quota-Used: 2



=== TEST 16: auth=cookie does not hold with Authorization, even listed first: auth=header
--- config
    quota on;
    quota_tenant $arg_t;
    quota_route POST /auth a=2 auth=cookie;
    quota_route POST /auth a=3 auth=apikey;
    quota_route POST /auth a=1 auth=header;
    quota_route POST /auth a=4 auth=none;
--- more_headers
Cookie: session=1
Authorization: Bearer x
--- request
POST /auth?t=cookie2
--- error_code: 200
--- response_headers
X-Quota-Used: 1



=== TEST 17: auth=apikey reads the default header X-API-Key
--- config
    quota on;
    quota_tenant $arg_t;
    quota_route POST /auth a=2 auth=cookie;
    quota_route POST /auth a=3 auth=apikey;
    quota_route POST /auth a=1 auth=header;
    quota_route POST /auth a=4 auth=none;
--- more_headers
X-API-Key: k
--- request
POST /auth?t=apikey1
--- error_code: 200
--- response_headers
X-Quota-Used: 3



=== TEST 18: the default apikey header matches in any case; apikey listed before header wins
--- config
    quota on;
    quota_tenant $arg_t;
    quota_route POST /auth a=2 auth=cookie;
    quota_route POST /auth a=3 auth=apikey;
    quota_route POST /auth a=1 auth=header;
    quota_route POST /auth a=4 auth=none;
--- more_headers
x-api-key: k
Authorization: Bearer x
--- request
POST /auth?t=apikey2
--- error_code: 200
--- response_headers
X-Quota-Used: 3



=== TEST 19: auth=none: no Authorization, Cookie or API key
--- config
    quota on;
    quota_tenant $arg_t;
    quota_route POST /auth a=2 auth=cookie;
    quota_route POST /auth a=3 auth=apikey;
    quota_route POST /auth a=1 auth=header;
    quota_route POST /auth a=4 auth=none;
--- more_headers
X-Other: 1
--- request
POST /auth?t=none1
--- error_code: 200
--- response_headers
X-Quota-Used: 4



=== TEST 20: auth=none does not hold with only a Cookie under another rule order
--- config
    quota on;
    quota_tenant $arg_t;
    quota_route POST /auth a=4 auth=none;
    quota_route POST /auth a=2 auth=cookie;
--- more_headers
Cookie: a=b
--- request
POST /auth?t=none2
--- error_code: 200
--- response_headers
X-Quota-Used: 2



=== TEST 21: a header named like the API key but different is no API key
--- config
    quota on;
    quota_tenant $arg_t;
    quota_route POST /auth a=2 auth=cookie;
    quota_route POST /auth a=3 auth=apikey;
    quota_route POST /auth a=1 auth=header;
    quota_route POST /auth a=4 auth=none;
--- more_headers
X-API-Keys: k
--- request
POST /auth?t=none3
--- error_code: 200
--- response_headers
X-Quota-Used: 4



=== TEST 22: auth=none does not hold with an API key (default header), even listed first
--- config
    quota on;
    quota_tenant $arg_t;
    quota_route POST /auth a=4 auth=none;
    quota_route POST /auth a=3 auth=apikey;
    quota_route POST /auth a=1 auth=header;
--- more_headers
X-API-Key: k
--- request
POST /auth?t=none4
--- error_code: 200
--- response_headers
X-Quota-Used: 3



=== TEST 23: auth=none does not hold with an Authorization header, even listed first
--- config
    quota on;
    quota_tenant $arg_t;
    quota_route POST /auth a=4 auth=none;
    quota_route POST /auth a=3 auth=apikey;
    quota_route POST /auth a=1 auth=header;
--- more_headers
Authorization: Bearer x
--- request
POST /auth?t=none5
--- error_code: 200
--- response_headers
X-Quota-Used: 1

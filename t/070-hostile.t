# Hostile input gets a clear 4xx or normal handling, never a 5xx, never a
# corrupted counter, never a raw tenant value in Redis under "hash".

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::Nginx::Socket 'no_plan';
use QuotaTest;
use QuotaTime;
use Digest::SHA qw(sha256_hex);

our $start = month_start();
our $long = 'k' x 7900;
# rejected without "hash" (SPEC 4a); a "%" is printable ASCII and allowed
our @bad = ("a{b}", "a}b", "with space", "x" x 257, $long, "tab\there",
            "caf\xc3\xa9");
our @hostile = (@bad, "50%off");

redis_flush();

add_block_preprocessor(sub {
    my $block = shift;
    my ($prefix) = ($block->config // '') =~ /#\s*prefix:\s*(\S+)/;
    $prefix //= 'quota:';
    $block->set_value('http_config', <<"_EOC_");
    quota_redis 127.0.0.1:\$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_redis_prefix $prefix;
    quota_metric a;
    quota_plan p { limit a 1000; }
    quota_default_plan p;
_EOC_
    $block->set_value('config', $block->config . <<'_EOC_');
    location / {
        add_header X-Status $quota_status always;
        add_header X-Tenant $quota_tenant always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
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

my $hashed = redis('KEYS', 'h:*');
ok(scalar @$hashed >= scalar @hostile, 'hash: one key set per hostile value');
is(scalar(grep { !/^h:\{[0-9a-f]{64}\}:((usage|daily):\d{4}-\d\d-\d\d|c:[0-9a-f]+|r:\d+)$/ } @$hashed), 0,
   'hash: every key is named by a hex SHA-256, nothing raw')
    or diag explain $hashed;
for my $v (@hostile) {
    is(redis('HGET', 'h:{' . sha256_hex($v) . "}:usage:$start", 'a'), 1,
       'hash: ' . substr($v, 0, 12) . '... charged once under its SHA-256');
}
is(scalar @{ redis('KEYS', 'raw:*') }, 0, 'no hash: hostile values wrote nothing');
is(redis('HGET', "q2:{ok-tenant_1.2}:usage:$start", 'a'), 2, 'no hash: plain ids are used as is');
is(redis('HGET', "q3:{paths}:usage:$start", 'a'), 3, 'paths: long and odd paths charged normally');

__DATA__

=== TEST 1: without hash, tenant values with braces, spaces, %, non-ASCII or > 256 bytes get 400 BAD_TENANT
--- config
    # prefix: raw:
    quota on;
    quota_tenant $http_x_t;
    quota_route * /** a=1;
--- request eval
[("POST /x") x 7]
--- more_headers eval
[map { "X-T: $_" } @::bad]
--- error_code eval
[(400) x 7]
--- response_body eval
[('{"error":"BAD_TENANT","message":"Invalid tenant id: at most 256 printable ASCII characters without spaces or braces."}') x 7]
--- response_headers eval
[("X-Status: BAD_REQUEST\nContent-Type: application/json") x 7]



=== TEST 2: with hash, the same values are charged under their SHA-256
--- config
    # prefix: h:
    quota on;
    quota_tenant $http_x_t hash;
    quota_route * /** a=1;
--- request eval
[("POST /x") x 8]
--- more_headers eval
[map { "X-T: $_" } @::hostile]
--- error_code eval
[(200) x 8]
--- response_headers eval
[("X-Status: ALLOWED\nX-Quota-Used: 1") x 8]



=== TEST 3: plain ids pass, "%" included; $quota_tenant shows the id
--- config
    # prefix: q2:
    quota on;
    quota_tenant $http_x_t;
    quota_route * /** a=1;
--- more_headers eval
["X-T: ok-tenant_1.2", "X-T: ok-tenant_1.2", "X-T: 50%off"]
--- request eval
["POST /x", "GET /y", "POST /z"]
--- response_headers eval
["X-Quota-Used: 1\nX-Tenant: ok-tenant_1.2", "X-Quota-Used: 2", "X-Quota-Used: 1\nX-Tenant: 50%off"]



=== TEST 4: a header too large for nginx is nginx's own 400, not ours, not a 5xx
--- config
    # prefix: raw:
    quota on;
    quota_tenant $http_x_t hash;
    quota_route * /** a=1;
--- more_headers eval
"X-T: " . ("z" x 9000)
--- request
POST /x
--- error_code: 400



=== TEST 5: odd methods are handled, never 5xx
--- config
    # prefix: q4:
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /** a=1;
--- more_headers
X-T: methods
--- request eval
["FOO /x", "M-SEARCH /x", "PROPPATCH /x", "TRACE /x"]
--- error_code eval
[200, 200, 200, 405]
--- response_headers eval
[("X-Status: UNMETERED") x 3, "!X-Quota-Used"]



=== TEST 6: 4 KB paths, encoded braces and many segments are charged normally
--- config
    # prefix: q3:
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /api/:p/tests a=1;
    quota_route POST /deep/** a=1;
--- more_headers
X-T: paths
--- request eval
["POST /deep/" . ("seg/" x 1000), "POST /api/%7Bx%7D/tests", "POST /api/" . ("p" x 4000) . "/tests", "POST /api/a/b/tests"]
--- error_code eval
[200, 200, 200, 200]
--- response_headers eval
["X-Quota-Used: 1", "X-Quota-Used: 2", "X-Quota-Used: 3", "X-Status: UNMETERED"]

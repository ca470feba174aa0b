# Where enforcement runs (SPEC 4a): after allow/deny, auth_basic and
# auth_request under "satisfy all" and "satisfy any"; with auth_request_set
# variables visible; never for subrequests; once across internal redirects.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::Nginx::Socket 'no_plan';
use QuotaTest;
use QuotaTime;

our $start = month_start();
$ENV{TEST_NGINX_DATA_DIR} = "$FindBin::Bin/data";

redis_flush();

add_block_preprocessor(sub {
    my $block = shift;

    $block->set_value('http_config', <<'_EOC_') unless defined $block->http_config;
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric a;
    quota_plan p { limit a 100; }
    quota_default_plan p;
_EOC_

    $block->set_value('config', ($block->config // '') . <<'_EOC_');
    location /origin {
        quota off;
        return 200 "ok\n";
    }

    location /origin404 {
        quota off;
        return 404;
    }

    location /authorigin {
        quota off;
        add_header X-Tenant from-auth;
        return 200;
    }

    location /authdeny {
        quota off;
        return 403;
    }
_EOC_
});

no_shuffle();
no_root_location();
run_tests();

sub usage { my ($t) = @_; return redis('HGET', "quota:{$t}:usage:$start", 'a') }

is(usage('denied'), undef, 'deny all: nothing charged');
is(usage('basic-fail'), undef, 'failed auth_basic: nothing charged');
is(usage('basic-ok'), 1, 'auth_basic with good credentials: charged');
is(usage('authreq-fail'), undef, 'failed auth_request: nothing charged');
is(usage('from-auth'), 1, 'auth_request_set variable used as the tenant');
is(usage('authsub'), undef, "auth_request's subrequest is never metered");
is(usage('any'), 1, 'satisfy any with an allowed address: metered');
is(usage('errpage'), 1, 'error_page redirect: charged once');
is(usage('tryfiles'), 1, 'try_files fallback: charged once');
is(scalar @{ redis('KEYS', 'quota:{authsub}*') }, 0, 'no key at all for the subrequest tenant');

__DATA__

=== TEST 1: deny all answers 403 and charges nothing
--- config
    quota on;
    quota_tenant denied;
    quota_route * /** a=1;

    location / {
        deny all;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }
--- request
POST /x
--- error_code: 403
--- response_headers
!X-Quota-Used



=== TEST 2: failed auth_basic answers 401 and charges nothing
--- config
    quota on;
    quota_tenant basic-fail;
    quota_route * /** a=1;

    location / {
        auth_basic "api";
        auth_basic_user_file $TEST_NGINX_DATA_DIR/htpasswd;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }
--- more_headers
Authorization: Basic YWxpY2U6d3Jvbmc=
--- request
POST /x
--- error_code: 401
--- response_headers
!X-Quota-Used



=== TEST 3: auth_basic with good credentials is metered
--- config
    quota on;
    quota_tenant basic-ok;
    quota_route * /** a=1;

    location / {
        auth_basic "api";
        auth_basic_user_file $TEST_NGINX_DATA_DIR/htpasswd;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }
--- more_headers
Authorization: Basic YWxpY2U6c2VjcmV0
--- request
POST /x
--- error_code: 200
--- response_headers
X-Quota-Used: 1



=== TEST 4: failed auth_request answers 403 and charges nothing
--- config
    quota on;
    quota_tenant authreq-fail;
    quota_route * /** a=1;

    location / {
        auth_request /auth;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location = /auth {
        internal;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/authdeny;
    }
--- request
POST /x
--- error_code: 403
--- response_headers
!X-Quota-Used



=== TEST 5: auth_request_set is visible to quota_tenant; the subrequest is not metered
--- config
    quota on;
    quota_route * /** a=1;

    location / {
        auth_request /auth;
        auth_request_set $tenant $upstream_http_x_tenant;
        quota_tenant $tenant;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location = /auth {
        internal;
        quota_tenant authsub;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/authorigin;
    }
--- request
POST /x
--- error_code: 200
--- response_headers
X-Quota-Used: 1
--- response_body
ok



=== TEST 6: satisfy any with an allowed address is still metered
--- config
    quota on;
    quota_tenant any;
    quota_route * /** a=1;

    location / {
        satisfy any;
        allow 127.0.0.1;
        deny all;
        auth_basic "api";
        auth_basic_user_file $TEST_NGINX_DATA_DIR/htpasswd;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }
--- request
POST /x
--- error_code: 200
--- response_headers
X-Quota-Used: 1



=== TEST 7: an error_page redirect does not charge twice
--- config
    quota on;
    quota_tenant errpage;
    quota_route * /** a=1;

    location /e {
        proxy_intercept_errors on;
        error_page 404 = /fallback;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin404;
    }

    location /fallback {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }
--- request
POST /e
--- error_code: 200
--- response_headers
X-Quota-Used: 1
--- response_body
ok



=== TEST 8: a try_files fallback does not charge twice
--- config
    quota on;
    quota_tenant tryfiles;
    quota_route * /** a=1;

    location /tf {
        root $TEST_NGINX_DATA_DIR;
        try_files $uri @fallback;
    }

    location @fallback {
        rewrite ^ /origin break;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT;
    }
--- request
POST /tf/missing
--- error_code: 200
--- response_headers
X-Quota-Used: 1
--- response_body
ok

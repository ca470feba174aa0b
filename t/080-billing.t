# The billing model (SPEC 1, 4, 4a): grace, per-seat pools, custom limits,
# overage with a spending cap, trial, suspended, unknown tenants, scheduled
# plan changes, shadow (bypass), dry run, the warning header, the IETF
# RateLimit fields.  Accounts are written to Redis by --- init, the way a
# billing backend would.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::Nginx::Socket 'no_plan';
use QuotaTest;
use QuotaTime;

our $start = month_start();
our $reset = next_month_reset();

redis_flush();

sub account { my ($t, @kv) = @_; redis('DEL', "quota:{$t}:account"); redis('HSET', "quota:{$t}:account", @kv) if @kv }
sub usage { my ($t, $f) = @_; return redis('HGET', "quota:{$t}:usage:$start", $f // 'a') }

add_block_preprocessor(sub {
    my $block = shift;

    $block->set_value('http_config', <<'_EOC_') unless defined $block->http_config;
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric a;
    quota_metric b;
    quota_plan basic { limit a 10; limit b 10; }
    quota_plan graceful { limit a 10; grace 10%; }
    quota_plan team { limit a 2 per_seat; }
    quota_plan metered {
        limit a 5;
        limit b 100;
        overage a 1.0;
        overage b 1.0;
    }
    quota_plan big { limit a 100; }
    quota_plan tiny { limit a 1; }
    quota_default_plan basic;
_EOC_

    my $config = $block->config // '';
    $config .= <<'_EOC_' unless $config =~ /location/;
    location / {
        add_header X-Status $quota_status always;
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

is(usage('grace'), 11, 'grace: 11 charged, the 12th refused and not charged');
is(usage('seats'), 8, 'per_seat: 6 then 2 more after seats went to 4');
is(usage('custom'), 3, 'custom limit:a 3 overrides the plan');
is(usage('over'), 8, 'overage: 8 units charged in all');
is(usage('over', 'a:overage'), 3, 'overage: units 6-8 counted as overage');
is(usage('over', 'overage_cost'), 3000000, 'overage: cost 3 USD in micro-USD');
is(usage('over', 'b'), undef, 'cap: the other metric charged nothing');
is(usage('capraise'), 7, 'cap raised: one more unit admitted at once');
is(usage('nooverage'), 5, 'overage off: the 6th is refused');
is(usage('trial'), 15, 'trial: never blocked, still counted');
is(usage('suspended'), undef, 'suspended: nothing charged');
is(scalar @{ redis('KEYS', 'quota:{stranger}*') }, 0, 'unknown tenant: no key created');
is(usage('known'), 1, 'require_account: a tenant with an account is charged');
is(usage('shadow'), 2, 'bypass: the two shadow requests not counted');
is(usage('dry'), 1, 'dry run: only what would be admitted is charged');
is(usage('warn'), 9, 'warning: 9 charged');

__DATA__

=== TEST 1: grace 10% with limit 10: 11 admitted, the 12th 402; headers say limit 10, remaining 0 inside the grace
--- init
main::account('grace', plan => 'graceful');
--- config
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /** a=1;
--- more_headers
X-T: grace
--- request eval
[("POST /x") x 12]
--- error_code eval
[(200) x 11, 402]
--- response_headers eval
[(map { "X-Quota-Limit: 10\nX-Quota-Used: $_\nX-Quota-Remaining: " . ($_ > 10 ? 0 : 10 - $_) } 1 .. 11),
 "X-Quota-Limit: 10\nX-Quota-Used: 11\nX-Quota-Remaining: 0"]
--- response_body_like eval
[("ok") x 11, qr/"current_usage":11,"quota_limit":10,/]



=== TEST 2: per_seat: 3 seats x 2 = 6 admitted
--- init
main::account('seats', plan => 'team', seats => 3);
--- config
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /** a=1;
--- more_headers
X-T: seats
--- request eval
[("POST /x") x 7]
--- error_code eval
[(200) x 6, 402]
--- response_headers eval
[(map { "X-Quota-Limit: 6\nX-Quota-Used: $_" } 1 .. 6), "X-Quota-Limit: 6"]



=== TEST 3: per_seat: seats raised to 4 in Redis admits 2 more (nginx restarts between blocks: t/087 changes accounts under a running nginx)
--- init
QuotaTest::redis('HSET', 'quota:{seats}:account', 'seats', 4);
--- config
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /** a=1;
--- more_headers
X-T: seats
--- request eval
[("POST /x") x 3]
--- error_code eval
[200, 200, 402]
--- response_headers eval
["X-Quota-Limit: 8\nX-Quota-Used: 7", "X-Quota-Used: 8", "X-Quota-Remaining: 0"]



=== TEST 4: a custom limit:METRIC overrides the plan (absolute, not per seat)
--- init
main::account('custom', plan => 'team', seats => 10, 'limit:a' => 3);
--- config
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /** a=1;
--- more_headers
X-T: custom
--- request eval
[("POST /x") x 4]
--- error_code eval
[200, 200, 200, 402]
--- response_headers eval
[("X-Quota-Limit: 3") x 4]



=== TEST 5: overage on, price 1.0, cap 3, limit 5: 6-8 admitted as overage, the 9th SPENDING_CAP_REACHED, the other metric too
--- init
main::account('over', plan => 'metered', overage => 1, cap => 3);
--- config
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /a a=1;
    quota_route POST /b b=1;
--- more_headers
X-T: over
--- request eval
[("POST /a") x 9, "POST /b"]
--- error_code eval
[(200) x 8, 402, 402]
--- response_headers eval
[(map { "X-Status: ALLOWED\nX-Quota-Used: $_" } 1 .. 8), "X-Status: REJECTED_CAP", "X-Status: REJECTED_CAP"]
--- response_body_like eval
[("ok") x 8,
 qr/^\{"error":"SPENDING_CAP_REACHED","message":"Spending cap reached for this billing period\. Quota resets on \d{4}-\d\d-\d\d\.","metric":"a","current_usage":8,"quota_limit":5,"quota_reset_date":"[^"]+"\}$/,
 qr/^\{"error":"SPENDING_CAP_REACHED",.*"metric":"b","current_usage":0,"quota_limit":100,/]



=== TEST 6: at the cap: blocked (t/087 raises the cap under a running nginx)
--- init
main::account('capraise', plan => 'metered', overage => 1, cap => 1);
--- config
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /a a=1;
--- more_headers
X-T: capraise
--- request eval
[("POST /a") x 7, "POST /a"]
--- error_code eval
[(200) x 6, 402, 402]



=== TEST 7: cap raised: one more admitted
--- init
QuotaTest::redis('HSET', 'quota:{capraise}:account', 'cap', '2');
--- config
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /a a=1;
--- more_headers
X-T: capraise
--- request eval
["POST /a", "POST /a"]
--- error_code eval
[200, 402]
--- response_body_like eval
["ok", qr/SPENDING_CAP_REACHED/]



=== TEST 8: overage off: the 6th is QUOTA_EXCEEDED
--- init
main::account('nooverage', plan => 'metered', overage => 0, cap => 3);
--- config
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /a a=1;
--- more_headers
X-T: nooverage
--- request eval
[("POST /a") x 6]
--- error_code eval
[(200) x 5, 402]
--- response_body_like eval
[("ok") x 5, qr/"error":"QUOTA_EXCEEDED"/]



=== TEST 9: trial: never blocked, usage still counted
--- init
main::account('trial', plan => 'tiny', status => 'trial');
--- config
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /** a=3;
--- more_headers
X-T: trial
--- request eval
[("POST /x") x 5]
--- error_code eval
[(200) x 5]
--- response_headers eval
[map { "X-Quota-Used: " . 3 * $_ . "\nX-Quota-Limit: 1\nX-Quota-Remaining: 0" } 1 .. 5]



=== TEST 10: suspended: 402 ACCOUNT_SUSPENDED
--- init
main::account('suspended', plan => 'big', status => 'suspended');
--- config
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /** a=1;
--- more_headers
X-T: suspended
--- request
POST /x
--- error_code: 402
--- response_body chomp
{"error":"ACCOUNT_SUSPENDED","message":"Account suspended."}
--- response_headers
X-Status: REJECTED_SUSPENDED



=== TEST 11: quota_require_account: no account, 403 UNKNOWN_TENANT and no key
--- init
main::account('known', plan => 'big');
--- config
    quota on;
    quota_require_account on;
    quota_tenant $http_x_t;
    quota_route POST /** a=1;
--- more_headers eval
["X-T: stranger", "X-T: known"]
--- request eval
["POST /x", "POST /x"]
--- error_code eval
[403, 200]
--- response_body eval
["{\"error\":\"UNKNOWN_TENANT\",\"message\":\"Unknown tenant.\"}", "ok\n"]
--- response_headers eval
["X-Status: REJECTED_UNKNOWN\n!X-Quota-Used", "X-Status: ALLOWED"]



=== TEST 12: a scheduled downgrade waits for next_plan_at
--- init
main::account('sched', plan => 'big', next_plan => 'tiny', next_plan_at => time + 3600);
--- config
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /** a=1;
--- more_headers
X-T: sched
--- request
POST /x
--- response_headers
X-Quota-Limit: 100



=== TEST 13: ... and applies from that instant on
--- init
QuotaTest::redis('HSET', 'quota:{sched}:account', 'next_plan_at', time - 1);
--- config
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /** a=1;
--- more_headers
X-T: sched
--- request
POST /x
--- error_code: 402
--- response_headers
X-Quota-Limit: 1



=== TEST 14: shadow mode through a map: evaluated, headers set, nothing charged
--- http_config
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric a;
    quota_plan basic { limit a 10; }
    quota_default_plan basic;
    map $arg_mode $shadow { shadow 1; default 0; }
--- config
    quota on;
    quota_tenant $http_x_t;
    quota_bypass $shadow;
    quota_route POST /** a=1;
--- more_headers
X-T: shadow
--- request eval
["POST /x", "POST /x?mode=shadow", "POST /x?mode=shadow", "POST /x?mode=other"]
--- response_headers eval
["X-Status: ALLOWED\nX-Quota-Used: 1", "X-Status: BYPASS\nX-Quota-Used: 1\nX-Quota-Limit: 10", "X-Status: BYPASS\nX-Quota-Used: 1", "X-Status: ALLOWED\nX-Quota-Used: 2"]



=== TEST 15: dry run never rejects, marks DRY_RUN_REJECT and charges only what would pass
--- init
main::account('dry', plan => 'tiny');
--- config
    quota on;
    quota_dry_run on;
    quota_tenant $http_x_t;
    quota_route POST /** a=1;
--- more_headers
X-T: dry
--- request eval
[("POST /x") x 3]
--- error_code eval
[200, 200, 200]
--- response_headers eval
["X-Status: ALLOWED\nX-Quota-Used: 1", "X-Status: DRY_RUN_REJECT\nX-Quota-Used: 1", "X-Status: DRY_RUN_REJECT"]



=== TEST 16: the warning header is absent below 80 % and present from the request that reaches it
--- init
main::account('warn', plan => 'basic');
--- config
    quota on;
    quota_tenant $http_x_t;
    quota_warning_header X-Quota-Warning "Approaching quota limit ($quota_percent% used)";
    quota_route POST /** a=1;
--- more_headers
X-T: warn
--- request eval
[("POST /x") x 9]
--- response_headers eval
[(map { "!X-Quota-Warning\nX-Quota-Used: $_" } 1 .. 7),
 "X-Quota-Warning: Approaching quota limit (80% used)",
 "X-Quota-Warning: Approaching quota limit (90% used)"]



=== TEST 17: quota_warning_threshold moves it
--- init
main::account('warn50', plan => 'basic');
--- config
    quota on;
    quota_tenant $http_x_t;
    quota_warning_threshold 50%;
    quota_warning_header X-W "$quota_percent";
    quota_route POST /** a=$arg_n;
--- more_headers
X-T: warn50
--- request eval
["POST /x?n=4", "POST /x?n=1", "POST /x?n=1"]
--- response_headers eval
["!X-W\nX-Quota-Used: 4", "X-W: 50", "X-W: 60"]



=== TEST 18: IETF RateLimit-Policy and RateLimit fields
--- http_config
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric api_requests;
    quota_plan pro { limit api_requests 5000; rate 120r/m; concurrency 3; }
    quota_default_plan pro;
--- config
    quota on;
    quota_tenant $http_x_t;
    quota_ratelimit_headers on;
    quota_route POST /** api_requests=1;
--- more_headers
X-T: ietf
--- request
POST /x
--- response_headers_like eval
# w = this month's length in seconds (every month at pinned instants and
# the exact t= in t/086-pinned-time.t)
my ($days) = QuotaTime::month_last_second() =~ /-(\d\d)T/;
my $w = $days * 86400;
qq{RateLimit-Policy: ^"api_requests";q=5000;w=$w, "rate";q=120;w=60, "concurrency";q=3;qu="concurrent-requests"\$
RateLimit: ^"api_requests";r=4999;t=\\d+\$}

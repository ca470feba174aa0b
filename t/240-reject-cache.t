# quota_reject_cache (SPEC 9): a refused tenant's requests that would meet
# the same refusal are answered from the zone for T, byte for byte the
# answer Redis gave (Date aside), with no script run (INFO commandstats);
# requests that would not meet it still go to Redis; a raised limit lifts it
# within T; quota_local_decisions_total{kind="reject_cache"} counts them.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaTime;
use Time::HiRes qw(time sleep);

redis_flush();

my $start = month_start();

# how late a request may be on a loaded machine (valgrind: slower still)
my $margin = $ENV{TEST_NGINX_USE_VALGRIND} ? 3 : 1.5;

sub scripts {
    my %s;
    for (split /\r?\n/, redis('INFO', 'commandstats')) {
        $s{$1} = $2 if /^cmdstat_(\w+):calls=(\d+)/;
    }
    return ($s{evalsha} // 0) + ($s{eval} // 0);
}

sub post {
    my ($port, $path, $tenant, %h) = @_;
    return http_request($port, 'POST', $path,
                        { 'X-API-Key' => $tenant, %h }, '', 10);
}

# the answer without what may differ between two answers of the same kind
sub canon {
    my ($raw) = @_;
    $raw =~ s/^Date: [^\r\n]*\r\n//mi;
    # RateLimit's t= counts the seconds to the reset: it moves with the clock
    $raw =~ s/;t=\d+/;t=T/g;
    return $raw;
}

sub metric {
    my ($port, $name) = @_;
    my $r = http_request($port, 'GET', '/metrics', {}, undef, 10);
    return $r->{body} =~ /^\Q$name\E (\d+)$/m ? $1 : undef;
}

my $http = <<'_EOC_';
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=5s;
    quota_zone quota:1m;
    quota_metric api_requests;
    quota_metric reports;
    quota_plan p {
        limit api_requests 3;
        limit reports 100;
        grace 50%;
        overage reports 0.5;
    }
    quota_default_plan p;
_EOC_

my $config = <<'_EOC_';
    quota on;
    quota_tenant $http_x_api_key;
    quota_reject_cache 2s;
    quota_warning_header X-Quota-Warning "$quota_percent% used";
    quota_ratelimit_headers on;
    quota_route POST /one       api_requests=1;
    quota_route POST /free      api_requests=0;
    quota_route POST /var       api_requests=$http_x_cost;
    quota_route POST /reports   reports=$http_x_cost;
    quota_route POST /both      reports=1 api_requests=1;

    location / {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /strict/ {
        quota_require_account on;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /nocache/ {
        quota_reject_cache 0;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /dry/ {
        quota_dry_run on;
        add_header X-Quota-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /shadow/ {
        quota_bypass $http_x_shadow;
        add_header X-Quota-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }

    location = /metrics { quota_metrics; }
_EOC_

# the same routes below /strict/, /nocache/, /dry/ and /shadow/
$config =~ s{(quota_route POST )/(\w+)(\s+[^;]+;)}
            {join "\n    ", "$1/$2$3",
                 map { "quota_route POST /$_/$2$3" }
                     qw(strict nocache dry shadow)}ge;

nginx_run(
    workers => 2,
    no_root_location => 1,
    http_config => $http,
    config => $config,
    code => sub {
        my ($port) = @_;
        my $r;

        # QUOTA_EXCEEDED: 3 admitted (limit 3, grace 50%: enforcement at 4)
        is(post($port, '/one', 'rc-q')->{status}, 200, "charge $_")
            for 1 .. 4;

        my $before = scripts();
        my $first = post($port, '/one', 'rc-q');
        is($first->{status}, 402, 'the 5th is refused by Redis');
        like($first->{body}, qr/"error":"QUOTA_EXCEEDED"/, 'QUOTA_EXCEEDED');
        is(scripts() - $before, 1, 'that refusal ran the script');

        $before = scripts();
        my $same = 0;
        for (1 .. 20) {
            $r = post($port, '/one', 'rc-q');
            $same++ if canon($r->{raw}) eq canon($first->{raw});
        }
        is($same, 20, '20 more: the same status, headers and body, '
                      . 'byte for byte but the Date');
        is(scripts() - $before, 0, '... with no script run');
        is(canon($r->{raw}), canon($first->{raw}), 'the last one, in full')
            or diag("redis:\n$first->{raw}\ncache:\n$r->{raw}");

        # only what would meet the same refusal: a zero cost, another
        # metric, a cost that still fits under the enforcement point
        $before = scripts();
        is(post($port, '/free', 'rc-q')->{status}, 200,
           'a zero-cost request is admitted (never refused by quota)');
        is(post($port, '/reports', 'rc-q', 'X-Cost' => 1)->{status}, 200,
           'a request charging another metric is admitted');
        is(scripts() - $before, 2, '... both by Redis');

        # grace band: used 4, enforcement point 4; a tenant at 2 of 3
        is(post($port, '/var', 'rc-g', 'X-Cost' => 2)->{status}, 200,
           'grace tenant: cost 2 admitted (2 of 3)');
        $r = post($port, '/var', 'rc-g', 'X-Cost' => 3);
        is($r->{status}, 402, 'cost 3 refused (5 > 4)');
        $before = scripts();
        is(post($port, '/var', 'rc-g', 'X-Cost' => 5)->{status}, 402,
           'cost 5 refused from the cache');
        is(scripts() - $before, 0, '... no script run');
        is(post($port, '/var', 'rc-g', 'X-Cost' => 2)->{status}, 200,
           'cost 2 would fit (4 <= 4): Redis admits it');
        is(scripts() - $before, 1, '... one script run');

        # a raised limit lifts the refusal within T (2 s)
        redis('HSET', 'quota:{rc-q}:account', 'limit:api_requests', 100);
        $r = post($port, '/one', 'rc-q');
        is($r->{status}, 402, 'right after the raise: still the cached 402');
        my $t0 = time;
        my $lifted;
        while (time - $t0 < 2 + 3 * $margin) {
            $r = post($port, '/one', 'rc-q');
            if ($r->{status} == 200) { $lifted = time - $t0; last }
            sleep 0.05;
        }
        ok(defined $lifted && $lifted <= 2 + $margin,
           'admitted again within T (2 s) of the raise')
            or diag("lifted after " . ($lifted // 'never'));

        # a location without the cache always asks Redis
        $before = scripts();
        is(post($port, '/nocache/one', 'rc-q2')->{status}, 200, 'nocache 1')
            for 1 .. 4;
        is(post($port, '/nocache/one', 'rc-q2')->{status}, 402, "nocache $_")
            for 5 .. 7;
        is(scripts() - $before, 7, 'quota_reject_cache 0: a script run each');

        # dry run: a cached refusal passes as DRY_RUN_REJECT, as Redis'
        # would; bypass (shadow) requests always ask Redis
        is(post($port, '/one', 'rc-d')->{status}, 200, "rc-d $_")
            for 1 .. 4;
        $r = post($port, '/dry/one', 'rc-d');
        is($r->{headers}{'x-quota-status'}, 'DRY_RUN_REJECT',
           'dry run: refused by Redis, passed');
        $before = scripts();
        $r = post($port, '/dry/one', 'rc-d');
        is("$r->{status} $r->{headers}{'x-quota-status'}",
           '200 DRY_RUN_REJECT', 'dry run again: the cached refusal passes');
        is(post($port, '/one', 'rc-d')->{status}, 402,
           'and is refused where dry run is off');
        is(scripts() - $before, 0, '... both from the zone');
        $r = post($port, '/shadow/one', 'rc-d', 'X-Shadow' => 1);
        is("$r->{status} $r->{headers}{'x-quota-status'}", '200 BYPASS',
           'shadow traffic of the refused tenant: BYPASS');
        is(scripts() - $before, 1, '... asked Redis (its numbers)');

        # ACCOUNT_SUSPENDED: every metered request, zero cost included
        redis('HSET', 'quota:{rc-s}:account', 'status', 'suspended');
        my $s1 = post($port, '/one', 'rc-s');
        is($s1->{status}, 402, 'suspended: 402');
        like($s1->{body}, qr/ACCOUNT_SUSPENDED/, 'ACCOUNT_SUSPENDED');
        # the headers describe the rule's metric: Redis tells it once
        like(post($port, '/reports', 'rc-s', 'X-Cost' => 1)->{body},
             qr/ACCOUNT_SUSPENDED/, 'another metric: refused by Redis');
        $before = scripts();
        is(canon(post($port, '/one', 'rc-s')->{raw}), canon($s1->{raw}),
           'suspended again: the same answer from the cache');
        like(post($port, '/free', 'rc-s')->{body}, qr/ACCOUNT_SUSPENDED/,
             'a zero-cost request of a suspended tenant: refused too');
        like(post($port, '/reports', 'rc-s', 'X-Cost' => 1)->{body},
             qr/ACCOUNT_SUSPENDED/, 'another metric again: refused too');
        is(scripts() - $before, 0, '... none of them ran the script');

        # UNKNOWN_TENANT where the account is required, only there
        my $u1 = post($port, '/strict/one', 'rc-u');
        is($u1->{status}, 403, 'no account under quota_require_account: 403');
        $before = scripts();
        is(canon(post($port, '/strict/one', 'rc-u')->{raw}),
           canon($u1->{raw}), 'again: the same 403 from the cache');
        is(canon(post($port, '/strict/free', 'rc-u')->{raw}),
           canon($u1->{raw}), 'a zero cost: the same 403');
        is(scripts() - $before, 0, '... no script run');
        is(post($port, '/one', 'rc-u')->{status}, 200,
           'where no account is required the tenant is admitted (by Redis)');
        is(scripts() - $before, 1, '... one script run');

        # SPENDING_CAP_REACHED: overage on reports, cap 1 USD = 2 units
        redis('HSET', 'quota:{rc-c}:account', 'overage', 1, 'cap', 1);
        is(post($port, '/reports', 'rc-c', 'X-Cost' => 102)->{status}, 200,
           'cap: 100 + 2 overage units (1 USD) admitted');
        my $c1 = post($port, '/reports', 'rc-c', 'X-Cost' => 1);
        is($c1->{status}, 402, 'at the cap: 402');
        like($c1->{body}, qr/SPENDING_CAP_REACHED/, 'SPENDING_CAP_REACHED');
        $before = scripts();
        is(canon(post($port, '/reports', 'rc-c', 'X-Cost' => 1)->{raw}),
           canon($c1->{raw}), 'again: the same answer from the cache');
        is(post($port, '/free', 'rc-c')->{status}, 200,
           'a zero-cost request at the cap is admitted');
        is(scripts() - $before, 1, '... by Redis (one script run)');

        # a raised cap lifts it within T too
        redis('HSET', 'quota:{rc-c}:account', 'cap', 10);
        is(post($port, '/reports', 'rc-c', 'X-Cost' => 1)->{status}, 402,
           'right after the cap is raised: still the cached 402');
        $t0 = time;
        undef $lifted;
        while (time - $t0 < 2 + 3 * $margin) {
            $r = post($port, '/reports', 'rc-c', 'X-Cost' => 1);
            if ($r->{status} == 200) { $lifted = time - $t0; last }
            sleep 0.05;
        }
        ok(defined $lifted && $lifted <= 2 + $margin,
           'admitted again within T (2 s) of the raised cap')
            or diag("lifted after " . ($lifted // 'never'));

        my $n = metric($port,
                       'quota_local_decisions_total{kind="reject_cache"}');
        ok(defined $n && $n >= 32,
           'quota_local_decisions_total{kind="reject_cache"} counts them')
            or diag("got " . ($n // 'none'));
    },
);

is(redis('HGET', "quota:{rc-q}:usage:$start", 'api_requests'), 4 + 1,
   'rc-q: usage counts only what was admitted');
is(redis('HGET', "quota:{rc-g}:usage:$start", 'api_requests'), 4,
   'rc-g: 2 + 2, the refused 3 and 5 charged nothing');

done_testing();

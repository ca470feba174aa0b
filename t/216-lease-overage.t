# Overage at rest with leases (review L1): leases of two cost vectors
# interleave around the limit; the graceful quit settles the first lease's
# unspent units, which were granted partly within the limit.  At rest the
# overage units must be max(0, used - limit) and the overage cost those
# units x the price, as with the exact path (quota_lease off gives the
# same numbers): the settle gives back overage against the counter as it
# is when the settle runs, not the lease's own overage units.
#
# limit a 100, overage 0.001 USD, usage 90, `quota_lease 20 ttl=60s`:
# /x (a=1): a lease of 20 from 90 (10 of its units past the limit), 1 spent;
# /y (a=2): a lease of 10 x 2 from 110 (all 20 overage), all 10 spent;
# the quit returns /x's 19 units: at rest 111 used, 11 overage units.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaTime;

my $start = month_start();

my $http = <<'_EOC_';
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_zone q:1m;
    quota_metric a;
    quota_plan m { limit a 100; overage a 0.001; }
    quota_default_plan m;
_EOC_

for my $lease ('off', '20 ttl=60s') {
    redis_flush();
    my $t = 'l1';
    redis('HSET', "quota:{$t}:account", plan => 'm', overage => 1);
    redis('HSET', "quota:{$t}:usage:$start", a => 90);
    my $server = <<"_EOC_";
    quota on;
    quota_tenant \$http_x_t;
    quota_route POST /x a=1;
    quota_route POST /y a=2;
    quota_lease $lease;
    location / { proxy_pass http://127.0.0.1:\$TEST_NGINX_SERVER_PORT/origin; }
    location /origin { quota off; return 200 "ok\\n"; }
_EOC_
    my %n = (x => 0, y => 0);
    nginx_run(workers => 1, master => 1, http_config => $http,
              config => $server, no_root_location => 1, code => sub {
        my ($port) = @_;
        my $r = http_request($port, 'POST', '/x', { 'X-T' => $t }, '', 10);
        $n{x}++ if $r->{status} eq '200';
        for (1 .. 10) {
            $r = http_request($port, 'POST', '/y', { 'X-T' => $t }, '', 10);
            $n{y}++ if $r->{status} eq '200';
        }
    });
    # the graceful quit (nginx_run's stop) settled what was not spent
    my $u = "quota:{$t}:usage:$start";
    is($n{x} + 2 * $n{y}, 21, "quota_lease $lease: admitted 1 x 1 + 10 x 2");
    is(redis('HGET', $u, 'a'), 111, "quota_lease $lease: usage exact at rest");
    is(redis('HGET', $u, 'a:overage') // 0, 11,
       "quota_lease $lease: overage units = used - limit");
    is(redis('HGET', $u, 'overage_cost') // 0, 11 * 1000,
       "quota_lease $lease: overage cost = 11 units x 0.001 USD");
}

done_testing();

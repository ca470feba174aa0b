# quota_lease auto and variable costs (review L13): the first request of a
# lease key (a cost vector this node has not seen in the last ttl) is
# charged exactly; only a key with history asks for a lease.  With a
# variable cost every request is a new key: lease mode must then cost no
# more script runs than exact mode and reserve nothing beyond what was
# admitted.  A fixed cost still gets leases.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaTime;
use Time::HiRes qw(sleep);

my $start = month_start();
my $rs = start_redis();
my $rport = $rs->{port};

my $http = <<"_EOC_";
    quota_redis 127.0.0.1:$rport timeout=3s;
    quota_zone q:1m;
    quota_metric bytes;
    quota_plan p { limit bytes 100000000; }
    quota_default_plan p;
_EOC_

sub runs {
    my $stats = $rs->cmd('INFO', 'commandstats');
    my $calls = 0;
    $calls += $1 while $stats =~ /cmdstat_(?:eval|evalsha):calls=(\d+)/g;
    return $calls;
}

my (%runs, %max, %rest);
for my $mode ('off', 'auto ttl=1s') {
    my $t = $mode eq 'off' ? 'v0' : 'v1';
    my $server = <<"_EOC_";
    quota on;
    quota_tenant \$http_x_t;
    quota_route POST /v bytes=\$http_x_cost;
    quota_route POST /f bytes=1000;
    quota_lease $mode;

    location / {
        proxy_pass http://127.0.0.1:\$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\\n";
    }
_EOC_
    my $max = 0;
    nginx_run(workers => 1, master => 1, http_config => $http,
              config => $server, no_root_location => 1, code => sub {
        my ($port) = @_;
        # connected (the handshake's SCRIPT LOAD done) before counting
        http_request($port, 'POST', '/f', { 'X-T' => "w$t" }, '', 10);
        sleep 1.5;
        $rs->cmd('CONFIG', 'RESETSTAT');
        for my $i (1 .. 20) {
            http_request($port, 'POST', '/v',
                         { 'X-T' => $t, 'X-Cost' => 1000 + $i }, '', 10);
            my $u = $rs->cmd('HGET', "quota:{$t}:usage:$start", 'bytes') // 0;
            $max = $u if $u > $max;
        }
        sleep 2;            # leases, if any, expired and settled
        $runs{$mode} = runs();
        # a fixed cost: the second request of the key takes a lease
        $rs->cmd('CONFIG', 'RESETSTAT');
        http_request($port, 'POST', '/f', { 'X-T' => "f$t" }, '', 10) for 1 .. 10;
        $runs{"$mode fixed"} = runs();
    });
    $max{$mode} = $max;
    $rest{$mode} = $rs->cmd('HGET', "quota:{$t}:usage:$start", 'bytes');
}

diag(join ', ', map { "$_: $runs{$_} script runs" } sort keys %runs);
is($rest{'auto ttl=1s'}, $rest{off}, 'at rest: the same usage');
cmp_ok($runs{'auto ttl=1s'}, '<=', $runs{off},
       'variable costs: no more script runs than exact');
is($max{'auto ttl=1s'}, $rest{off},
   'variable costs: nothing reserved beyond what was admitted');
is($runs{'off fixed'}, 10, 'exact: one script run per request');
cmp_ok($runs{'auto ttl=1s fixed'}, '<', 10, 'a fixed cost still takes leases');

stop_redis($rs);

done_testing();

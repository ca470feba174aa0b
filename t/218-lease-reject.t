# quota_lease with quota_reject_cache (review L3): a cached QUOTA_EXCEEDED
# (or SPENDING_CAP_REACHED) does not refuse the requests this node holds a
# live lease with units left for: those units are already reserved in
# Redis, so they are spent (200) exactly as without the cache.  A cached
# ACCOUNT_SUSPENDED (or UNKNOWN_TENANT) still comes first.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaTime;

redis_flush();
my $start = month_start();

my $http = <<'_EOC_';
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_zone q:1m;
    quota_metric a;
    quota_plan p { limit a 100; }
    quota_default_plan p;
_EOC_

my $server = <<'_EOC_';
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /x a=1;
    quota_route POST /y a=50;
    quota_lease 20 ttl=60s;
    RC

    location / {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_

for my $rc ('quota_reject_cache 0;', 'quota_reject_cache 30s;') {
    (my $t = "l3-$rc") =~ s/\W//g;
    QuotaTest::redis('HSET', "quota:{$t}:account", 'plan', 'p');
    QuotaTest::redis('HSET', "quota:{$t}:usage:$start", 'a', 60);
    (my $s = $server) =~ s/RC/$rc/;
    my @st;
    nginx_run(workers => 1, master => 1, http_config => $http, config => $s,
              no_root_location => 1, code => sub {
        my ($port) = @_;
        my $post = sub {
            http_request($port, 'POST', $_[0], { 'X-T' => $t }, '', 10)->{status};
        };
        # a lease of 10 (headroom 40 / 4) from 60: 1 spent, 9 held here
        push @st, $post->('/x');
        # other nodes use the rest of the limit
        QuotaTest::redis('HINCRBY', "quota:{$t}:usage:$start", 'a', 30);
        # an expensive request is refused by Redis (100 + 50 > 100)
        push @st, $post->('/y');
        # the 9 units this node holds
        push @st, $post->('/x') for 1 .. 9;
        # and then Redis refuses again
        push @st, $post->('/x');
    });
    is("@st", '200 402 ' . join(' ', ('200') x 9) . ' 402',
       "$rc the leased units are spent after a refusal of another cost");
    is(QuotaTest::redis('HGET', "quota:{$t}:usage:$start", 'a'), 100,
       "$rc usage exact at rest");
}

# a cached suspension refuses even the units of a live lease
{
    my $t = 'l3s';
    QuotaTest::redis('HSET', "quota:{$t}:account", 'plan', 'p');
    (my $s = $server) =~ s/RC/quota_reject_cache 30s;/;
    my @st;
    nginx_run(workers => 1, master => 1, http_config => $http, config => $s,
              no_root_location => 1, code => sub {
        my ($port) = @_;
        my $post = sub {
            http_request($port, 'POST', $_[0], { 'X-T' => $t }, '', 10)->{status};
        };
        push @st, $post->('/x');
        QuotaTest::redis('HSET', "quota:{$t}:account", 'status', 'suspended');
        push @st, $post->('/y');
        push @st, $post->('/x') for 1 .. 3;
    });
    is("@st", '200 402 402 402 402',
       'a cached ACCOUNT_SUSPENDED comes before a live lease');
}

done_testing();

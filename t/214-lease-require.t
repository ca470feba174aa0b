# quota_lease and quota_require_account (review L15): a lease taken where
# quota_require_account is off (a tenant with no account, charged on the
# default plan) is never spent in a location that requires an account:
# there the request goes to Redis, which refuses it (403 UNKNOWN_TENANT),
# exactly as with quota_lease off.  A tenant with an account still spends
# its lease in both.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;

redis_flush();

my $http = <<'_EOC_';
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_zone q:1m;
    quota_metric a;
    quota_plan p { limit a 100000; }
    quota_default_plan p;
_EOC_

for my $lease ('off', '10 ttl=60s') {
    my $server = <<"_EOC_";
    quota on;
    quota_tenant \$http_x_t;
    quota_route POST /** a=1;
    quota_lease $lease;

    location /open {
        proxy_pass http://127.0.0.1:\$TEST_NGINX_SERVER_PORT/origin;
    }

    location /strict {
        quota_require_account on;
        proxy_pass http://127.0.0.1:\$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\\n";
    }
_EOC_

    (my $tag = $lease) =~ s/\W//g;
    my $nobody = "nobody-$tag";
    my $known = "known-$tag";
    QuotaTest::redis('HSET', "quota:{$known}:account", 'plan', 'p');

    my (@nobody, @known);
    nginx_run(workers => 1, http_config => $http, config => $server,
              no_root_location => 1, code => sub {
        my ($port) = @_;
        for my $t ([$nobody, \@nobody], [$known, \@known]) {
            push @{ $t->[1] }, http_request($port, 'POST', '/open',
                                            { 'X-T' => $t->[0] }, '', 10)->{status};
            push @{ $t->[1] }, http_request($port, 'POST', '/strict',
                                            { 'X-T' => $t->[0] }, '', 10)->{status}
                for 1 .. 3;
        }
    });

    is("@nobody", '200 403 403 403',
       "quota_lease $lease: no account, /strict refuses after /open");
    is("@known", '200 200 200 200',
       "quota_lease $lease: an account, admitted in both");
}

done_testing();

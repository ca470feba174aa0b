# Exactness under concurrency: 2 workers, 600 concurrent requests for one
# tenant with limit 200: exactly 200 admitted, usage exactly 200.  The
# check-and-charge is one Redis script, so no interleaving can over-admit.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaTime;

redis_flush();

my $start = month_start();
my @codes;

nginx_run(
    workers => 2,
    no_root_location => 1,
    http_config => <<'_EOC_',
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=5s;
    quota_metric api_requests;
    quota_plan free { limit api_requests 200; }
    quota_default_plan free;
_EOC_
    config => <<'_EOC_',
    quota on;
    quota_tenant $http_x_api_key;
    quota_route POST /api/** api_requests=1;

    location / {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_
    code => sub {
        my ($port) = @_;
        @codes = http_concurrent($port, 600,
            "POST /api/x HTTP/1.1\r\nHost: localhost\r\nX-API-Key: exact\r\n"
            . "Content-Length: 0\r\nConnection: close\r\n\r\n", 30);
    },
);

my %n;
$n{$_}++ for @codes;

is(scalar @codes, 600, '600 responses');
is($n{200} // 0, 200, 'exactly 200 admitted');
is($n{402} // 0, 400, 'the other 400 rejected with 402');
is(redis('HGET', "quota:{exact}:usage:$start", 'api_requests'), 200,
   'usage is exactly 200');
diag(join ', ', map { "$_: $n{$_}" } sort keys %n);

done_testing();

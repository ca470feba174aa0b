# quota_fallback and quota_require_account (review L15, fallback side):
# while Redis is down, a location with quota_require_account admits in
# fallback only a tenant whose account a charge of such a location found.
# A tenant with no account, known to the zone from a default-plan charge
# where quota_require_account is off, follows quota_failure_mode there
# (closed: 503), as Redis would have refused it (403); in the open
# location it spends its share.  A tenant with an account learned in the
# strict location spends its share in both.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaTime;
use QuotaFallback;

my $start = month_start();
my $rs = start_redis();
my $rport = $rs->{port};
$rs->cmd('HSET', 'quota:{known}:account', 'plan', 'p');

my $http = <<"_EOC_";
    quota_redis 127.0.0.1:$rport timeout=300ms connect_timeout=300ms;
    quota_zone q:1m;
    quota_fallback local nodes=1;
    quota_failure_mode closed;
    quota_metric a;
    quota_plan p { limit a 100000; }
    quota_default_plan p;
_EOC_

my $server = <<'_EOC_';
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /** a=1;

    location /open {
        add_header X-Quota-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /strict {
        quota_require_account on;
        add_header X-Quota-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_

my %st;
nginx_run(workers => 1, master => 1, http_config => $http, config => $server,
          no_root_location => 1, code => sub {
    my ($port, $root) = @_;
    # the worker's Redis connection first: a request that came before it
    # would get the failure mode (a slow start: sanitizers, load)
    QuotaFallback::wait_ready($root, 1);
    my $post = sub {
        my ($path, $t) = @_;
        my $r = http_request($port, 'POST', $path, { 'X-T' => $t }, '', 10);
        return $r->{status} . ' '
               . ($r->{headers}{'x-quota-status'} // '-');
    };
    # Redis up: the zone learns both tenants
    push @{ $st{up} }, $post->('/open', 'nobody'), $post->('/strict', 'nobody'),
                       $post->('/strict', 'known');
    # Redis down: 3 failures open the circuit (tenant "x", unknown)
    kill 'STOP', $rs->{pid};
    $post->('/open', 'x') for 1 .. 3;
    push @{ $st{down} }, $post->('/strict', 'nobody'),
                         $post->('/open', 'nobody'),
                         $post->('/strict', 'known'),
                         $post->('/open', 'known');
    kill 'CONT', $rs->{pid};
    # the probe closes the circuit, the flush charges what was admitted
    QuotaFallback::wait_for(20, sub {
        ($rs->cmd('HGET', "quota:{nobody}:usage:$start", 'a') // 0) == 2
        && ($rs->cmd('HGET', "quota:{known}:usage:$start", 'a') // 0) == 3
    });
    sleep 0.5;    # and nothing more
});
kill 'CONT', $rs->{pid};

is(join(', ', @{ $st{up} }),
   '200 ALLOWED, 403 REJECTED_UNKNOWN, 200 ALLOWED',
   'Redis up: no account, /strict refuses');
is(join(', ', @{ $st{down} }),
   '503 FAIL_CLOSED, 200 FALLBACK, 200 FALLBACK, 200 FALLBACK',
   'Redis down: no account, /strict follows quota_failure_mode; '
   . 'the open location and a tenant with an account spend their share');
is($rs->cmd('HGET', "quota:{nobody}:usage:$start", 'a'), 2,
   'nobody: the 2 requests admitted charged');
is($rs->cmd('HGET', "quota:{known}:usage:$start", 'a'), 3,
   'known: the 3 requests admitted charged');

stop_redis($rs);

done_testing();

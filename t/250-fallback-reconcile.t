# quota_fallback with quota_reconcile (L11 of the ledger review): a request
# admitted in FALLBACK is charged by the flush's FORCE; its reconcile
# (actual - estimate) is added to the units to charge in the log phase, so
# the actual is billed once, as for a request Redis decided.  Redis
# stopped while 5 requests are admitted (estimate 1, actual 50).
use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaTime;
use QuotaFallback;
use Time::HiRes qw(sleep time);

my $start = month_start();
my $rs = start_redis();
my $rport = $rs->{port};
$rs->cmd('HSET', 'quota:{r}:account', 'plan', 'p');

sub usage {
    return $rs->cmd('HGET', "quota:{r}:usage:$start", 'tok') // 0;
}

my %qs;
my $log = nginx_run(
    workers => 1,
    no_root_location => 1,
    http_config => <<"_EOC_",
    quota_redis 127.0.0.1:$rport timeout=300ms connect_timeout=300ms;
    quota_zone q:1m;
    quota_fallback local nodes=1;
    quota_metric tok;
    quota_plan p { limit tok 100000; }
    quota_default_plan p;
_EOC_
    config => <<'_EOC_',
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /a tok=1;
    quota_reconcile tok $upstream_http_x_actual;

    location / {
        add_header X-Quota-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin$uri;
    }

    location /origin/a { quota off; add_header X-Actual 50; return 200; }
    location = /metrics { quota_metrics; }
_EOC_
    code => sub {
        my ($port, $root) = @_;
        # the worker's Redis connection first: a request that came before
        # it would get the failure mode (a slow start: sanitizers, load)
        QuotaFallback::wait_ready($root, 1);
        my $r = http_request($port, 'POST', '/a', { 'X-T' => 'r' }, '', 10);
        $qs{ $r->{headers}{'x-quota-status'} // '' }++;
        my $deadline = time + 15;
        sleep 0.05 while time < $deadline && usage() != 50;
        is(usage(), 50, 'redis decided: estimate 1, reconciled to 50');

        kill 'STOP', $rs->{pid};
        for (1 .. 5) {
            $r = http_request($port, 'POST', '/a', { 'X-T' => 'r' }, '', 10);
            $qs{ $r->{headers}{'x-quota-status'} // '' }++;
        }
        kill 'CONT', $rs->{pid};

        $deadline = time + 20;
        sleep 0.05 while time < $deadline && usage() != 6 * 50;
        is(usage(), 6 * 50, 'every admitted request billed its actual 50');
        sleep 0.5;
        is(usage(), 6 * 50, '... once');
    },
);
is($qs{FALLBACK}, 5, '5 admitted in fallback');
unlike($log, qr/\[alert\]|\[crit\]|\[emerg\]/, 'no alert');

stop_redis($rs);
done_testing();

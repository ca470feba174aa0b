# quota_fallback flush (review 16 R6): a flush collects at most 64 queued
# tenants at a time and goes on while tenants are left.  Tenants admitted
# in fallback whose reconcile took their units back to 0 (estimate 1,
# actual 0) stay queued with nothing to charge; a batch made only of them
# (each learnt by the zone, with one request Redis decided, first) must
# not end the flush: a tenant queued behind 140 of them is charged
# when Redis comes back, with no further request to trigger a flush.
use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaFallback;
use Time::HiRes qw(sleep time);

my $rs = start_redis();
my $zeros = 140;

sub usage { return QuotaFallback::usage($rs, $_[0]) }

my %qs;
my $log = nginx_run(
    workers => 1,
    no_root_location => 1,
    http_config => QuotaFallback::http_config(rport => $rs->{port},
                                              limit => 100000, nodes => 1),
    config => <<'_EOC_',
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /zero api=1;
    quota_route POST /one api=1;
    quota_reconcile api $upstream_http_x_actual;

    location / {
        add_header X-Quota-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin$uri;
    }

    location /origin/zero { quota off; add_header X-Actual 0; return 200; }
    location /origin/one { quota off; return 200; }
_EOC_
    code => sub {
        my ($port) = @_;
        # Redis decides once for each tenant: the zone learns its limit
        # (fallback admits only tenants it knows)
        my %warm;
        for my $t ('last', map { "z$_" } 1 .. $zeros) {
            my $r = http_request($port, 'POST', '/one', { 'X-T' => $t }, '',
                                 10);
            $warm{ $r->{headers}{'x-quota-status'} // $r->{status} }++;
        }
        is($warm{ALLOWED}, $zeros + 1, 'redis decided every first request');
        my $r;

        kill 'STOP', $rs->{pid};
        for my $i (1 .. $zeros) {
            $r = http_request($port, 'POST', '/zero', { 'X-T' => "z$i" }, '',
                              10);
            $qs{ $r->{headers}{'x-quota-status'} // $r->{status} }++;
        }
        $r = http_request($port, 'POST', '/one', { 'X-T' => 'last' }, '', 10);
        $qs{ $r->{headers}{'x-quota-status'} // $r->{status} }++;
        kill 'CONT', $rs->{pid};

        # no request from here on: the flush alone charges "last"
        my $deadline = time + 10;
        sleep 0.05 while time < $deadline && usage('last') != 2;
        is(usage('last'), 2,
           "the tenant behind $zeros reconciled-to-0 tenants is charged");
        # (the first ones timed out with the circuit closed: their FORCE
        # went at once, before their reconcile, which cannot take back
        # what is charged: README "Limits")
        is(usage('z10') + usage("z$zeros"), 2,
           'the reconciled-to-0 requests of the open circuit: nothing');
    },
);
is($qs{FALLBACK}, $zeros + 1, 'every request of the outage admitted in fallback');
unlike($log, qr/\[alert\]|\[crit\]|\[emerg\]/, 'no alert');

stop_redis($rs);
done_testing();

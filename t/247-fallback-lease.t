# quota_fallback with quota_lease: while Redis is stopped, a tenant's
# leased units (charged already) are spent first, as ALLOWED, then the
# fallback share; the grant that timed out is voided, the fallback units
# are charged once when Redis is back, and at rest Redis' usage is exactly
# what was admitted.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaFallback;
use Time::HiRes qw(time sleep);

my $rs = start_redis();
my $rport = $rs->{port};

sub usage { QuotaFallback::usage($rs, 'fl') }
sub metric { QuotaFallback::metric(@_) }

sub post {
    my ($port) = @_;
    my $r = http_request($port, 'POST', '/api/x', { 'X-API-Key' => 'fl' },
                         '', 10);
    return $r->{headers}{'x-quota-status'} // "none $r->{status}";
}

my $log = nginx_run(
    workers => 1,
    no_root_location => 1,
    http_config => QuotaFallback::http_config(rport => $rport,
                                              lease => '10 ttl=5s',
                                              limit => 1000),
    config => QuotaFallback::server_config(),
    code => sub {
        my ($port, $root) = @_;
        # the worker's Redis connection first: a request that came before
        # it would get the failure mode (a slow start: sanitizers, load)
        QuotaFallback::wait_ready($root, 1);

        my @s = map { post($port) } 1 .. 3;
        is("@s", 'ALLOWED ALLOWED ALLOWED', '3 admitted');
        is(usage(), 10, 'a lease of 10 units is charged');

        kill 'STOP', $rs->{pid};

        @s = map { post($port) } 1 .. 12;
        is("@s[0 .. 6]", join(' ', ('ALLOWED') x 7),
           'redis stopped: the 7 leased units left are spent first');
        is("@s[7 .. 11]", join(' ', ('FALLBACK') x 5),
           'then the fallback share');
        is(metric($port, 'quota_redis_circuit_open'), 1, 'circuit open');

        kill 'CONT', $rs->{pid};

        my $deadline = time + 20;
        sleep 0.1 while time < $deadline
                        && (metric($port, 'quota_redis_circuit_open') // 1);
        is(metric($port, 'quota_redis_circuit_open'), 0, 'circuit closed');

        # the lease (ttl 5 s) is spent; the fallback units charged once
        $deadline = time + 20;
        sleep 0.1 while time < $deadline && usage() != 15;
        is(usage(), 15, 'at rest: 10 leased + 5 fallback = 15 admitted');
        sleep 6;
        is(usage(), 15, 'and still 15 once the lease expired');
    },
);

unlike($log, qr/\[(alert|crit|emerg)\]/, 'no alert');
like($log, qr/voiding charge/, 'the timed-out grant was voided');

stop_redis($rs);

done_testing();

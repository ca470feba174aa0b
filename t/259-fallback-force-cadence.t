# quota_fallback: a fallback charge (FORCE) waiting for a connection is
# resent every 100 ms for NGX_HTTP_QUOTA_FORCE_FAST_FOR (5 s) after its
# making, then every second (NGX_HTTP_QUOTA_FORCE_SLOW).  The retry
# handler's resend re-armed the timer at 100 ms (nginx clears timer_set
# before calling a handler), so the slow cadence never applied: a waiting
# FORCE was rebuilt 10 times a second for its whole wait (review 16, R2).
# Redis is killed after one charge; the next request is admitted in
# fallback and its FORCE waits; each send logs "charging what fallback
# admitted" (info): between 6 s and 9 s of age about 3 (30 before).

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest qw(:DEFAULT nginx_stop);
use QuotaFallback;
use Time::HiRes qw(sleep time);

my $rs = QuotaTest::restartable_redis();
my $root = QuotaTest::_servroot_base() . '_t259';
my $port = free_port();
my $h = QuotaFallback::start_nginx($root, $port, 1, rport => $rs->{port},
                                   nodes => 1, failure_mode => 'closed');

sub status {
    my $r = http_request($port, 'POST', '/api/x', { 'X-API-Key' => 'r2' },
                         '', 10);
    return $r->{headers}{'x-quota-status'} // $r->{status};
}

is(status(), 'ALLOWED', '1 charged, the zone learned the tenant');
$rs->down('KILL');
sleep 0.3;
is(status(), 'FALLBACK', 'Redis gone: admitted in fallback, its FORCE waits');

sleep 10;
nginx_stop($h, master => 1, check => 't/259');
my $log = QuotaFallback::logs($root);

# the error log's time stamps have whole seconds
my @at = map { /^\S+ (\d+):(\d+):(\d+)/ ? $1 * 3600 + $2 * 60 + $3 : () }
         grep { /charging what fallback admitted for tenant "r2"/ }
         split /\n/, $log;
my $first = $at[0] // 0;
my $early = grep { $_ - $first < 4 } @at;
my $late = grep { $_ - $first >= 6 && $_ - $first < 9 } @at;
diag(scalar(@at) . " sends, $early in the first 4 s, $late between 6 s and "
     . '9 s of age');
cmp_ok($early, '>=', 8, 'for 5 s a waiting FORCE is resent every 100 ms');
cmp_ok($late, '>=', 1, 'after 5 s it is still resent');
cmp_ok($late, '<=', 6, 'after 5 s a waiting FORCE is resent about every '
                       . 'second (NGX_HTTP_QUOTA_FORCE_SLOW)');
unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'no alert');
stop_redis($rs);

done_testing();

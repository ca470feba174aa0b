# quota_fallback: a fallback charge (FORCE) that no connection ever took
# cannot have run, so a worker that gives up on it (50 s after a quit or
# reload, NGX_HTTP_QUOTA_FORCE_QUIT, or at exit) gives its units back to
# the zone, which outlives the reload, for the next flush of the new
# workers (review 16, R3: they were dropped, "giving up: its units may not
# be charged", and never charged).  Redis is killed after one charge; the
# next request is admitted in fallback (the circuit still closed: its
# FORCE is collected at once and waits in the worker, unsent); nginx
# reloads; once the old worker gave up, Redis comes back: every admitted
# request is charged.  Takes about 55 s (the quit's horizon).

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest qw(:DEFAULT nginx_stop);
use QuotaFallback;
use Time::HiRes qw(sleep time);

my $rs = QuotaTest::restartable_redis();
my $root = QuotaTest::_servroot_base() . '_t257';
my $port = free_port();
my $h = QuotaFallback::start_nginx($root, $port, 1, rport => $rs->{port},
                                   nodes => 1, failure_mode => 'closed');

sub status {
    my $r = http_request($port, 'POST', '/api/x', { 'X-API-Key' => 'r3' },
                         '', 10);
    return $r->{headers}{'x-quota-status'} // $r->{status};
}

my $admitted = 0;

sub count {
    my $s = status();
    $admitted++ if $s eq 'ALLOWED' || $s eq 'FALLBACK';
    return $s;
}

is(count(), 'ALLOWED', '1 charged, the zone learned the tenant');
$rs->cmd('SAVE');
$rs->down('KILL');
sleep 0.3;
is(count(), 'FALLBACK', 'Redis gone: admitted in fallback, its FORCE waits');

kill 'HUP', $h->{pid};

# the old worker gives up FORCE_QUIT (50 s) after the quit
ok(QuotaFallback::wait_for(90, sub {
       QuotaFallback::logs($root)
           =~ /fallback charge \S+ of tenant "r3".*giving up/
   }), 'the old worker gave up on its FORCE (quit + 50 s)');

$rs->up;

# the new worker's connection comes back: a reply with the circuit closed
# flushes what the zone holds
my $st = '';
QuotaFallback::wait_for(15, sub { ($st = count()) eq 'ALLOWED' });
is($st, 'ALLOWED', 'Redis back: charged by Redis');

QuotaFallback::wait_for(15, sub {
    QuotaFallback::usage($rs, 'r3') >= $admitted
});
nginx_stop($h, master => 1, check => 't/257');
my $log = QuotaFallback::logs($root);

is(QuotaFallback::usage($rs, 'r3'), $admitted,
   "every admitted request charged ($admitted), also the one admitted in "
   . 'fallback whose FORCE never left the old worker');
like($log, qr/never sent to redis, giving up: its units go back to the zone/,
     'the old worker gave its units back');
unlike($log, qr/its units may not be charged/, 'nothing dropped');
unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'no alert');
$rs->down('TERM');
stop_redis($rs);

done_testing();

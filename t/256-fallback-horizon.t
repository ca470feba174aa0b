# quota_fallback: a fallback charge (FORCE) that no connection has taken
# yet cannot have run, so no resend horizon applies to it: it waits for
# Redis however long the outage lasts (review item 5, horizons per
# command).  The horizon of a FORCE counts from its first send (a resend
# is a no-op only while its first run's record lives, FORCE_RECORD_TTL);
# it used to be the reliable queue's 240 s from its making, so an outage
# longer than that lost the units of the requests admitted in fallback
# while the circuit was still closed.  nginx runs under libfaketime with
# its wall clock read from a file (the monotonic clock, hence timers, is
# real): Redis is killed, a request is admitted in fallback (its FORCE
# waits in the worker), the clock jumps 400 s, Redis comes back: the
# FORCE is charged.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest qw(:DEFAULT nginx_start nginx_stop);
use File::Temp qw(tempdir);
use QuotaFallback;
use Time::HiRes qw(sleep time);

my ($faketime) = grep { -e } map { "$_/faketime/libfaketime.so.1" }
                 '/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu',
                 '/usr/lib';
ok($faketime, 'libfaketime is installed (apt-get install faketime)')
    or do { done_testing(); exit 1 };

my $rs = QuotaTest::restartable_redis();
my $rport = $rs->{port};

sub set_clock {
    my ($file, $offset) = @_;
    open my $f, '>', $file or die "$file: $!";
    print $f "$offset\n";
    close $f;
}

# the usage of the month the requests were admitted in (before the jump)
my @t = gmtime;
my $start = sprintf('%04d-%02d-01', $t[5] + 1900, $t[4] + 1);

my $port = free_port();
my $root = tempdir('t256-XXXX', TMPDIR => 1, CLEANUP => 1);
my $clock = "$root/clock";
set_clock($clock, '+0');
my $http = <<"_EOC_";
    quota_redis 127.0.0.1:$rport timeout=300ms connect_timeout=300ms pool=1;
    quota_zone ledger:1m;
    quota_fallback local nodes=1;
    quota_failure_mode closed;
    quota_metric api;
    quota_plan p { limit api 100; }
    quota_default_plan p;
_EOC_
my $h;
{
    local $ENV{LD_PRELOAD} = $faketime;
    local $ENV{FAKETIME_TIMESTAMP_FILE} = $clock;
    local $ENV{FAKETIME_NO_CACHE} = 1;
    local $ENV{FAKETIME_DONT_FAKE_MONOTONIC} = 1;
    $h = nginx_start(servroot => $root, port => $port, workers => 1,
                     master => 1, no_root_location => 1,
                     env => [qw(LD_PRELOAD FAKETIME_TIMESTAMP_FILE
                                FAKETIME_NO_CACHE
                                FAKETIME_DONT_FAKE_MONOTONIC)],
                     http_config => $http, config => <<"_EOC_");
    quota on;
    quota_tenant \$http_x_api_key;
    quota_route POST /api/** api=1;
    location / {
        add_header X-Quota-Status \$quota_status always;
        proxy_pass http://127.0.0.1:$port/origin;
    }
    location /origin { quota off; return 200 "ok"; }
_EOC_
}
die "nginx: $h->{error}\n" if $h->{error};
# the worker's Redis connection ready, whatever the build or the load: a
# request that came before it would get the failure mode
QuotaFallback::wait_ready($root, 1)
    or diag('no ready redis connection: ' . QuotaFallback::logs($root));

sub status {
    my $r = http_request($port, 'POST', '/api/x', { 'X-API-Key' => 'f' }, '',
                         10);
    return $r->{headers}{'x-quota-status'} // $r->{status};
}

is(status(), 'ALLOWED', '1 charged, the zone learned the tenant');
$rs->down('KILL');
sleep 0.3;
is(status(), 'FALLBACK', 'Redis gone: admitted in fallback, its FORCE waits');

my $mark = length(QuotaTest::_slurp("$root/logs/error.log") // '');
set_clock($clock, '+400');
# the FORCE is sent again (about every second after 5 s) with the clock
# 400 s ahead: it must not be dropped
QuotaFallback::wait_for(15, sub {
    substr(QuotaTest::_slurp("$root/logs/error.log") // '', $mark)
        =~ /charging what fallback admitted for tenant "f"/
});
sleep 0.5;
$rs->up;
my $deadline = time + 15;
sleep 0.1 while time < $deadline
                && ($rs->cmd('HGET', "quota:{f}:usage:$start", 'api') // 0) != 1;
nginx_stop($h, master => 1, check => 't/256');
my $log = QuotaTest::_slurp("$root/logs/error.log") // '';
# Redis comes back empty (no persistence): the unit there is the FORCE's
is($rs->cmd('HGET', "quota:{f}:usage:$start", 'api') // 0, 1,
   'after 400 s without Redis the fallback unit is charged');
unlike($log, qr/unsent for \d+ s is dropped|giving up/,
       'nothing dropped');
unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'no alert');
$rs->down('TERM');
stop_redis($rs);

done_testing();

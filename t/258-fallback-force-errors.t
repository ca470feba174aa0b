# quota_fallback: how a fallback charge (FORCE) reads Redis' answer
# (review 16, R1 and R7).
#
# R1: an error that says the script never ran (BUSY, LOADING, OOM,
# READONLY, ...: nothing was written) is no answer: the FORCE is sent again
# under the same id until Redis runs it.  It used to be taken as answered,
# and the units quota_fallback admitted were never charged.  Redis is made
# BUSY by a 3 s script (busy-reply-threshold 100 ms): a charge gets -BUSY
# (an outage: admitted in fallback with the circuit still closed, so its
# FORCE goes out at once) and the FORCE gets -BUSY too.
#
# R7: a FORCE the script refuses (CODE_CORRUPT: a counter that is not a
# number) wrote nothing and its units are lost: that is logged with the
# key and field, as the request path does, not dropped in silence.
use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest qw(:DEFAULT nginx_start nginx_stop);
use QuotaTime;
use QuotaFallback;
use IO::Socket::INET;
use Time::HiRes qw(time sleep);
use POSIX ();

my $start = month_start();
my $rs = start_redis();
my $rport = $rs->{port};
my $root = QuotaTest::_servroot_base() . '_258';
$rs->cmd('CONFIG', 'SET', 'busy-reply-threshold', '100');

my $port = free_port();
my $h = nginx_start(servroot => $root, port => $port, workers => 1,
                    master => 1, no_root_location => 1,
                    http_config => <<"_EOC_", config => <<"_EOC_");
    quota_redis 127.0.0.1:$rport timeout=300ms connect_timeout=1s pool=2;
    quota_zone ledger:1m;
    quota_fallback local nodes=1;
    quota_failure_mode closed;
    quota_metric api;
    quota_plan p { limit api 100; }
    quota_default_plan p;
_EOC_
    quota on;
    quota_tenant \$http_x_api_key;
    quota_route POST /api/** api=1;
    location / {
        add_header X-Quota-Status \$quota_status always;
        proxy_pass http://127.0.0.1:$port/origin;
    }
    location /origin { quota off; return 200 "ok"; }
_EOC_
die $h->{error} if $h->{error};
# the worker's Redis connection ready, whatever the build or the load: a
# request that came before it would get the failure mode
QuotaFallback::wait_ready($root, 1)
    or diag('no ready redis connection: ' . QuotaFallback::logs($root));

sub status {
    my ($t) = @_;
    my $r = http_request($port, 'POST', '/api/x', { 'X-API-Key' => $t },
                         '', 10);
    return $r->{headers}{'x-quota-status'} // $r->{status};
}
sub usage { $rs->cmd('HGET', "quota:{$_[0]}:usage:$start", 'api') // 0 }

is(status('t1'), 'ALLOWED', 't1: charged, the zone learned it');
is(status('t2'), 'ALLOWED', 't2: charged, the zone learned it');
# t2's counter is made unreadable: its FORCE will be refused (CORRUPT)
$rs->cmd('HSET', "quota:{t2}:usage:$start", 'api', 'x');

# a script busy for 3 s, sent by a child (its reply waits)
my $pid = fork();
if ($pid == 0) {
    my $s = IO::Socket::INET->new("127.0.0.1:$rport") or POSIX::_exit(1);
    my $lua = "local s = tonumber(redis.call('TIME')[1]) "
              . "while tonumber(redis.call('TIME')[1]) < s + 3 do end "
              . "return 1";
    print $s "*3\r\n\$4\r\nEVAL\r\n\$" . length($lua) . "\r\n$lua\r\n"
             . "\$1\r\n0\r\n";
    my $x = <$s>;
    POSIX::_exit(0);
}
# the busy script has started once PING answers BUSY
my $busy_at = time + 5;
while (time < $busy_at) {
    my $r = eval { $rs->cmd('PING') } // '';
    last if "$@$r" =~ /BUSY/;
    sleep 0.02;
}
is(status('t1'), 'FALLBACK', 't1: BUSY is an outage, admitted in fallback');
is(status('t2'), 'FALLBACK', 't2: admitted in fallback');
waitpid($pid, 0);

my $deadline = time + 20;
sleep 0.2 while time < $deadline && (eval { usage('t1') } // 0) < 2;
is(usage('t1'), 2, 't1: the fallback admission is charged once Redis is '
                   . 'free (its FORCE was refused before it ran: sent again)');
my $log;
$deadline = time + 15;
while (time < $deadline) {
    $log = QuotaTest::_slurp("$root/logs/error.log") // '';
    last if $log =~ /tenant "t2" was not charged/;
    sleep 0.2;
}
like($log, qr/fallback charge \S+ of tenant "t1" was refused before it ran, (?:sent again|)[^\n]*BUSY/,
     't1: the refused FORCE is logged and sent again');
like($log, qr/fallback charge \S+ of tenant "t2" was not charged: redis holds a value that is not a number: key and field "quota:\{t2\}:usage:$start api"/,
     't2: the FORCE refused as CORRUPT is logged with its key and field');
is(usage('t2'), 'x', 't2: nothing written over the unreadable counter');
unlike($log, qr/\[(?:alert|crit|emerg)\]/, 'no alert, crit or emerg');
nginx_stop($h, master => 1, stop_timeout => 15, check => 't/258');
stop_redis($rs);
done_testing();

# The reliable horizon (review L8): a void (any reliable command) is resent
# until Redis answers it, but for RELIABLE_HORIZON (240 s) at most, less
# than the life of the records that make its resend mean something.  nginx runs
# under libfaketime with its wall clock read from a file (the monotonic
# clock, hence timers, is real).  A charge is in flight when its Redis is
# killed: the lost reply makes the gateway queue the charge's void (no
# connection is ready); the clock then jumps 400 s and Redis comes back:
# the void is dropped with an error log naming the charge's key instead
# of being sent.  A control run jumps 10 s: the void reaches Redis (its
# tombstone).

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest qw(:DEFAULT nginx_start nginx_stop);
use File::Temp qw(tempdir);
use IO::Socket::INET;
use Time::HiRes qw(sleep time);

my ($faketime) = grep { -e } map { "$_/faketime/libfaketime.so.1" }
                 '/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu',
                 '/usr/lib';
ok($faketime, 'libfaketime is installed (apt-get install faketime)')
    or do { done_testing(); exit 1 };

# a redis-server of our own, killed and started again on the same port
# (each run starts it afresh)
my $rs = QuotaTest::restartable_redis();
my $rport = $rs->{port};
$rs->down('TERM');

sub r { $rs->cmd(@_) }

sub set_clock {
    my ($file, $offset) = @_;
    open my $f, '>', $file or die "$file: $!";
    print $f "$offset\n";
    close $f;
}

sub run {
    my ($jump) = @_;
    $rs->up;
    my $port = free_port();
    my $root = tempdir('t217-XXXX', TMPDIR => 1, CLEANUP => 1);
    my $clock = "$root/clock";
    set_clock($clock, '+0');
    my $http = <<"_EOC_";
    quota_redis 127.0.0.1:$rport timeout=5s connect_timeout=1s;
    quota_failure_mode open;
    quota_metric a;
    quota_plan p { limit a 1000; }
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
    quota_tenant \$http_x_t;
    quota_route POST /a a=1;
    location / { proxy_pass http://127.0.0.1:$port/origin; }
    location /origin { quota off; return 200 "ok\\n"; }
_EOC_
    }
    die "nginx: $h->{error}\n" if $h->{error};
    QuotaTest::wait_module_ready($root, $http, 1);

    my $r = http_request($port, 'POST', '/a', { 'X-T' => 'h' }, '', 10);
    is($r->{status}, 200, "jump $jump: a first charge");

    # a charge in flight when Redis dies: its reply is lost, its void queued
    kill 'STOP', $rs->{pid};
    my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port)
        or die "connect: $!";
    print $c "POST /a HTTP/1.1\r\nHost: x\r\nX-T: h\r\nContent-Length: 0\r\n"
             . "Connection: close\r\n\r\n";
    sleep 0.5;
    $rs->down('KILL');
    my $reply = do { local $/; <$c> } // '';
    like($reply, qr{^HTTP/1\.1 200}, "jump $jump: answered (fail open)");
    my $log = QuotaTest::_slurp("$root/logs/error.log");
    my ($id) = $log =~ /voiding charge (\S+) of tenant "h"/;
    ok($id, "jump $jump: the charge is voided");

    set_clock($clock, "+$jump");
    sleep 0.5;
    $rs->up;
    my $deadline = time + 15;
    my $done;
    while (time < $deadline) {
        $log = QuotaTest::_slurp("$root/logs/error.log");
        $done = 1, last if $log =~ /reliable redis command unsent/;
        $done = 1, last if $id && (r('EXISTS', "quota:{h}:c:$id") // 0);
        sleep 0.1;
    }
    sleep 0.5;
    nginx_stop($h, master => 1, check => "jump $jump");
    $log = QuotaTest::_slurp("$root/logs/error.log");
    my $tomb = $id ? r('GET', "quota:{h}:c:$id") // '' : '';
    $rs->down('TERM');
    return ($log, $id // 'none', $tomb);
}

my ($log, $id, $tomb) = run(10);
is($tomb, 'v', 'jump 10 s: the void reached Redis (its tombstone)');
unlike($log, qr/reliable redis command unsent/, 'jump 10 s: nothing dropped');

($log, $id, $tomb) = run(400);
is($tomb, '', 'jump 400 s: the void was not sent (no tombstone)');
like($log, qr/\[error\].*reliable redis command unsent for \d+ s is dropped \(past 240 s\).*"quota:\{h\}:c:\Q$id\E"/,
     'jump 400 s: dropped with an error log naming the charge');
unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'no alert');
stop_redis($rs);

done_testing();

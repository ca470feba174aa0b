# A quitting worker waits for its reliable commands (voids, concurrency
# slot releases) that no connection has taken yet (review L4/L7
# quit-wait, the void path): nginx used to end it at once and drop them.
# A request holds a concurrency slot while its upstream takes 6 s; Redis
# stalls (SIGSTOP) and the worker's only connection is declared dead (a
# timed-out charge, 10 x timeout=); the slow request then ends, so its
# slot release waits in the worker; nginx is told to quit, and Redis is
# continued a second later: the slot is released (it would otherwise stay
# taken for its lease, 60 s).

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest qw(:DEFAULT nginx_start nginx_stop);
use QuotaFallback;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(time sleep);

my $rs = start_redis();
my $rport = $rs->{port};
my $root = QuotaTest::_servroot_base() . '_255';

# an upstream that answers after 6 s, once
my $slow = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                 Proto => 'tcp', Listen => 8, ReuseAddr => 1)
    or die "listen: $!";
my $slow_port = $slow->sockport;
my $spid = fork;
die "fork: $!" unless defined $spid;
if ($spid == 0) {
    my $c = $slow->accept or POSIX::_exit(1);
    my $buf = '';
    sysread($c, $buf, 4096, length $buf) while $buf !~ /\r\n\r\n/;
    sleep 6;
    print $c "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close"
             . "\r\n\r\nok\n";
    close $c;
    POSIX::_exit(0);
}
close $slow;

my $http = <<"_EOC_";
    quota_redis 127.0.0.1:$rport timeout=300ms connect_timeout=300ms pool=1;
    quota_metric api;
    quota_plan p { limit api 100; concurrency 5; }
    quota_default_plan p;
_EOC_

my $port = free_port();
my $h = nginx_start(servroot => $root, port => $port, workers => 1,
                    master => 1, no_root_location => 1,
                    http_config => $http, config => <<"_EOC_");
    quota on;
    quota_tenant \$http_x_api_key;
    quota_route POST /** api=1;
    location /slow {
        proxy_read_timeout 30s;
        proxy_pass http://127.0.0.1:$slow_port;
    }
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

# the slow request, from a child
my $cpid = fork;
die "fork: $!" unless defined $cpid;
if ($cpid == 0) {
    http_request($port, 'POST', '/slow', { 'X-API-Key' => 's' }, '', 30);
    POSIX::_exit(0);
}
my $deadline = time + 15;
sleep 0.05 while time < $deadline
                 && ($rs->cmd('ZCARD', 'quota:{s}:inflight') // 0) != 1;
is($rs->cmd('ZCARD', 'quota:{s}:inflight'), 1, 'the slow request holds a slot');

kill 'STOP', $rs->{pid};
my $r = http_request($port, 'POST', '/x', { 'X-API-Key' => 'x' }, '', 10);
is($r->{headers}{'x-quota-status'}, 'FAIL_OPEN', 'a charge times out');
# the slow request ends after the connection was declared dead (3 s)
waitpid $cpid, 0;
kill 'QUIT', $h->{pid};
# the worker is quitting (its slot release waits) before Redis is back
QuotaFallback::wait_for(15, sub {
    (QuotaTest::_slurp("$root/logs/error.log") // '')
        =~ /gracefully shutting down/
});
kill 'CONT', $rs->{pid};

$deadline = time + 15;
sleep 0.1 while time < $deadline
                && ($rs->cmd('ZCARD', 'quota:{s}:inflight') // 0) != 0;
nginx_stop($h, master => 1, stop_timeout => 15, check => 't/255');
waitpid $spid, 0;
is($rs->cmd('ZCARD', 'quota:{s}:inflight') // 0, 0,
   'the slot released by the quitting worker once Redis is back');
my $log = QuotaTest::_slurp("$root/logs/error.log") // '';
unlike($log, qr/\[alert\]|\[crit\]|\[emerg\]/, 'no alert');

stop_redis($rs);

done_testing();

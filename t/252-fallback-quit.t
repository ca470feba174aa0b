# quota_fallback: a quitting worker (graceful quit, reload) waits for the
# fallback charges (FORCE) it has not had answered yet (review L4/L7
# quit-wait).  Redis stalls (SIGSTOP); a request times out (FALLBACK,
# circuit closed: its FORCE goes out at once, unanswered); the connection
# is then declared dead, so the next request is admitted in fallback
# with no connection ready: its FORCE waits in the worker.  nginx is told
# to quit (1) or to reload (2) right then, and Redis comes back a second
# later: every admitted request is charged once, exact at rest.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest qw(:DEFAULT nginx_start nginx_stop);
use QuotaTime;
use IO::Socket::INET;
use Time::HiRes qw(time sleep);

my $start = month_start();
my $rs = start_redis();
my $rport = $rs->{port};
my $root = QuotaTest::_servroot_base() . '_252';

sub usage {
    my ($t) = @_;
    return $rs->cmd('HGET', "quota:{$t}:usage:$start", 'api') // 0;
}

my $http = <<"_EOC_";
    quota_redis 127.0.0.1:$rport timeout=300ms connect_timeout=300ms pool=1;
    quota_zone ledger:1m;
    quota_fallback local nodes=1;
    quota_failure_mode closed;
    quota_metric api;
    quota_plan p { limit api 100; }
    quota_default_plan p;
_EOC_

sub conf {
    my ($port) = @_;
    return (servroot => $root, port => $port, workers => 1,
            master => 1, no_root_location => 1,
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

sub status {
    my ($port, $t) = @_;
    my $r = http_request($port, 'POST', '/api/x', { 'X-API-Key' => $t }, '',
                         10);
    return $r->{headers}{'x-quota-status'} // $r->{status};
}

# the workers that have logged a ready Redis connection
sub ready_pids {
    my %pids = map { $_ => 1 } (QuotaTest::_slurp("$root/logs/error.log") // '')
        =~ /\d+#(\d+): quota: redis connection #\d+ ready/g;
    return \%pids;
}

sub logs {
    return join '', map { QuotaTest::_slurp("$root/logs/$_") // '' }
                    qw(error.log stderr.log);
}

for my $case (['quit', 'QUIT'], ['reload', 'HUP']) {
    my ($t, $sig) = @$case;
    my $port = free_port();
    my $h = nginx_start(conf($port));
    die $h->{error} if $h->{error};
    QuotaTest::wait_module_ready($root, $http, 1);

    is(status($port, $t), 'ALLOWED', "$t: 1 charged, the zone learned it");
    kill 'STOP', $rs->{pid};
    is(status($port, $t), 'FALLBACK', "$t: timed out, admitted in fallback");
    # the dead-peer rule: 10 x timeout= with a reply missing
    sleep 3.8;
    is(status($port, $t), 'FALLBACK',
       "$t: no connection ready, admitted in fallback");
    my $before = ready_pids();
    kill $sig, $h->{pid};
    sleep 1;
    kill 'CONT', $rs->{pid};

    my $deadline = time + 15;
    sleep 0.1 while time < $deadline && usage($t) != 3;
    if ($sig eq 'HUP') {
        # the new worker started while Redis was stopped: its first
        # connection timed out and it reconnects after a backoff; it
        # charges once that connection is ready (a slow build, such as
        # the sanitizer's, may still be waiting when the old worker's
        # FORCEs have landed)
        my $ready_by = time + 15;
        sleep 0.05 while time < $ready_by
            && !grep { !$before->{$_} } keys %{ ready_pids() };
        is(status($port, $t), 'ALLOWED', "$t: the new worker charges");
        sleep 0.5;
    }
    nginx_stop($h, master => 1, stop_timeout => 15, check => $t);
    is(usage($t), $sig eq 'HUP' ? 4 : 3,
       "$t: every admitted request charged once, exact at rest");
    unlike(logs(), qr/\[alert\]|\[crit\]|\[emerg\]/, "$t: no alert");
}

stop_redis($rs);

done_testing();

# quota_lease: a grant that is prepared but never sent (review L12; here:
# no connection to Redis, the request follows quota_failure_mode open and
# then waits on a slow upstream) frees its key's slot at once.  Before,
# two such requests held both slots of the key for as long as their
# upstream took, and the tenant's next requests went exact.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaTime;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(sleep time);

my $start = month_start();
my $rs = start_redis();
my $rport = $rs->{port};

# an upstream that never answers: connections wait in its backlog
my $hole = IO::Socket::INET->new(Listen => 16, LocalAddr => '127.0.0.1',
                                 LocalPort => 0, ReuseAddr => 1)
    or die "listen: $!";
my $hport = $hole->sockport;

my $http = <<"_EOC_";
    quota_redis 127.0.0.1:$rport timeout=2s connect_timeout=500ms;
    quota_failure_mode open;
    quota_zone q:1m;
    quota_metric a;
    quota_plan p { limit a 100000; }
    quota_default_plan p;
_EOC_

my $server = <<"_EOC_";
    quota on;
    quota_tenant \$http_x_t;
    quota_route POST /** a=1;
    quota_lease 10 ttl=60s;

    location /slow {
        proxy_read_timeout 8s;
        proxy_pass http://127.0.0.1:$hport;
    }

    location / {
        proxy_pass http://127.0.0.1:\$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\\n";
    }
_EOC_

my ($open, $back, $usage);
nginx_run(workers => 1, master => 1, http_config => $http, config => $server,
          no_root_location => 1, code => sub {
    my ($port) = @_;
    http_request($port, 'POST', '/x', { 'X-T' => 'w' }, '', 10);
    # Redis goes away: no connection
    kill 'KILL', $rs->{pid};
    waitpid $rs->{pid}, 0;
    # nginx sees the connection closed (one request fails over it)
    http_request($port, 'POST', '/x', { 'X-T' => 'w2' }, '', 10);
    sleep 0.5;
    # two requests of tenant u, admitted open, then held by the upstream
    my @pids;
    for (1 .. 2) {
        my $pid = fork;
        die "fork: $!" unless defined $pid;
        if ($pid == 0) {
            http_request($port, 'POST', '/slow', { 'X-T' => 'u' }, '', 20);
            POSIX::_exit(0);
        }
        push @pids, $pid;
    }
    sleep 0.5;
    # Redis is back on the same port; nginx reconnects
    my $rs2 = start_redis(port => $rport);
    $rs = $rs2;
    my $deadline = time + 10;
    while (time < $deadline) {
        http_request($port, 'POST', '/x', { 'X-T' => 'w3' }, '', 10);
        last if ($rs->cmd('HGET', "quota:{w3}:usage:$start", 'a') // 0) > 0;
        sleep 0.2;
    }
    $back = time < $deadline;
    # while the two are still upstream: u's next request takes a lease
    http_request($port, 'POST', '/x', { 'X-T' => 'u' }, '', 10);
    $usage = $rs->cmd('HGET', "quota:{u}:usage:$start", 'a');
    kill 'TERM', @pids;
    waitpid $_, 0 for @pids;
});

ok($back, 'Redis back and connected');
is($usage, 10, 'a lease of 10 was granted while two unsent grants were upstream');
stop_redis($rs);

done_testing();

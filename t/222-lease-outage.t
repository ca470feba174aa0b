# quota_lease and a long Redis outage (review L6): a running worker keeps
# resending a lease's settle for as long as the lease's record can exist
# in Redis (the grant's ttl + LEASE_RECORD_EXTRA s), not only 50 s.  A
# lease of 50 (ttl 1 s) is taken; Redis dies with its data saved and is
# back 53 s later, so every settle sent meanwhile fails; then the 49
# unspent units go back.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaTime;
use File::Temp qw(tempdir);
use POSIX ();
use Time::HiRes qw(sleep time);

my $rport = free_port();
my $rdir = tempdir('t217-redis-XXXX', TMPDIR => 1, CLEANUP => 1);

# a redis-server of our own, restarted on the same port and directory
sub redis_up {
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        POSIX::setpgid(0, 0);
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$rdir/redis.out";
        open STDERR, '>&', \*STDOUT;
        exec 'redis-server', '--bind', '127.0.0.1', '--port', $rport,
             '--dir', $rdir, '--save', '', '--appendonly', 'no'
            or POSIX::_exit(127);
    }
    my $deadline = time + 10;
    while (time < $deadline) {
        my $pong = eval { QuotaTest::redis_at($rport, 'PING') };
        return $pid if defined $pong && $pong eq 'PONG';
        sleep 0.02;
    }
    die "redis-server on $rport did not start\n";
}

sub r { QuotaTest::redis_at($rport, @_) }

my $rpid = redis_up();
my $start = month_start();

my $http = <<"_EOC_";
    quota_redis 127.0.0.1:$rport timeout=3s connect_timeout=1s;
    quota_zone q:1m;
    quota_metric a;
    quota_plan p { limit a 100000; }
    quota_default_plan p;
_EOC_

my $server = <<'_EOC_';
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /** a=1;
    quota_lease 50 ttl=1s;

    location / {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_

my ($st, $reserved, $after);
nginx_run(workers => 1, master => 1, http_config => $http, config => $server,
          no_root_location => 1, code => sub {
    my ($port) = @_;
    $st = http_request($port, 'POST', '/x', { 'X-T' => 'o' }, '', 10)->{status};
    $reserved = r('HGET', "quota:{o}:usage:$start", 'a');
    # the lease's record lives 1 s + LEASE_RECORD_EXTRA (60 s or more)
    r('SAVE');
    kill 'KILL', $rpid;
    waitpid $rpid, 0;
    sleep 53;
    $rpid = redis_up();
    my $deadline = time + 15;
    while (time < $deadline) {
        $after = r('HGET', "quota:{o}:usage:$start", 'a') // 0;
        last if $after == 1;
        sleep 0.2;
    }
});

is($st, 200, 'one request, a lease of 50');
is($reserved, 50, '50 reserved');
is($after, 1, 'the running worker settled the 49 unspent units once Redis '
              . 'was back, 52 s after its first attempt');

kill 'TERM', $rpid;
waitpid $rpid, 0;

done_testing();

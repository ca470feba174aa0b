# quota_redis options of SPEC 3 no other test exercises: "unix:" paths and
# "pool=N" (N persistent connections per worker).  Each case runs against
# a private redis-server, so every client it sees but ours is nginx's.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaTime;
use Time::HiRes qw(sleep time);

my $start = month_start();

my $server = <<'_EOC_';
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /a a=1;

    location / {
        add_header X-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_

sub http_config {
    my ($addr) = @_;
    return <<"_EOC_";
    quota_redis $addr;
    quota_failure_mode closed;
    quota_metric a;
    quota_plan p { limit a 1000; }
    quota_default_plan p;
_EOC_
}

# the clients of a private Redis other than the connection asking
sub clients {
    my ($rs) = @_;
    my @l = grep { length && !/ cmd=client\|list / && !/ cmd=client / }
            split /\n/, $rs->cmd('CLIENT', 'LIST');
    return @l;
}

# wait until $rs has $n clients (connections open in the background)
sub settle_clients {
    my ($rs, $n) = @_;
    my @c;
    my $deadline = time + 5;
    while (time < $deadline) {
        @c = clients($rs);
        last if @c == $n;
        sleep 0.02;
    }
    return @c;
}

# 1. unix: a Redis reached only through its socket path
{
    my $sock = "/tmp/quota-test-$$.sock";
    my $rs = start_redis(args => ['--unixsocket', $sock, '--unixsocketperm', '700']);
    ok(-S $sock, 'redis-server listens on a unix socket');

    my (@r, @cl);
    nginx_run(http_config => http_config("unix:$sock timeout=3s"),
              config => $server, no_root_location => 1, code => sub {
        my ($port) = @_;
        push @r, http_request($port, 'POST', '/a', { 'X-T' => 'unix' }, '') for 1 .. 3;
        @cl = clients($rs);
    });
    is_deeply([map { $_->{status} } @r], [200, 200, 200], 'unix: served (failure mode closed would answer 503)');
    is($r[2]{headers}{'x-status'}, 'ALLOWED', 'unix: ALLOWED, not FAIL_OPEN');
    is($r[2]{headers}{'x-quota-used'}, 3, 'unix: charged');
    is($rs->cmd('HGET', "quota:{unix}:usage:$start", 'a'), 3, 'unix: counted in the Redis behind the socket');
    is(scalar @cl, 1, 'unix: one connection');
    like($cl[0] // '', qr/ addr=\Q$sock\E:0 /, 'unix: over the socket path, not TCP');
    stop_redis($rs);
    unlink $sock;
}

# 2. pool=N: N connections per worker; one worker, then two
for my $case ([1, 3], [2, 2]) {
    my ($workers, $pool) = @$case;
    my $rs = start_redis();
    my (@codes, @cl);
    nginx_run(http_config => http_config("127.0.0.1:$rs->{port} pool=$pool timeout=3s"),
              config => $server, no_root_location => 1, workers => $workers,
              code => sub {
        my ($port) = @_;
        @codes = http_concurrent($port, 40, "POST /a HTTP/1.1\r\nHost: x\r\n"
                                 . "X-T: pool\r\nContent-Length: 0\r\n"
                                 . "Connection: close\r\n\r\n");
        @codes = (@codes, http_concurrent($port, 40, "POST /a HTTP/1.1\r\nHost: x\r\n"
                                 . "X-T: pool\r\nContent-Length: 0\r\n"
                                 . "Connection: close\r\n\r\n"));
        @cl = settle_clients($rs, $workers * $pool);
    });
    is(scalar(grep { $_ eq '200' } @codes), 80, "pool=$pool x $workers workers: 80 served");
    is($rs->cmd('HGET', "quota:{pool}:usage:$start", 'a'), 80, "pool=$pool x $workers workers: 80 counted");
    is(scalar @cl, $workers * $pool, "pool=$pool x $workers workers: " . ($workers * $pool) . ' connections')
        or diag(join "\n", @cl);
    stop_redis($rs);
}

done_testing();

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
use Time::HiRes qw(sleep time);

# a redis-server of our own, restarted on the same port and directory
my $rs = QuotaTest::restartable_redis();
my $rport = $rs->{port};

sub r { $rs->cmd(@_) }

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
    $rs->down('KILL');
    sleep 53;
    $rs->up;
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

stop_redis($rs);

done_testing();

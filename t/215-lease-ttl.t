# quota_lease ttl per location (review L14): a lease lives the ttl it was
# granted with (the ttl its record in Redis was sized for), not the ttl of
# whichever location last used the same lease key.  /short (ttl 1 s) and
# /long (ttl 60 s) share a cost vector; /short's grant is answered after
# /long looked the key up (Redis stalled): /short's lease must still end
# after 1 s, its unspent units back in Redis, while /long's lives on.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaTime;
use POSIX ();
use Time::HiRes qw(sleep time);

my $start = month_start();
my $rs = start_redis();
my $rport = $rs->{port};

my $http = <<"_EOC_";
    quota_redis 127.0.0.1:$rport timeout=10s;
    quota_zone q:1m;
    quota_metric a;
    quota_plan p { limit a 100000; }
    quota_default_plan p;
_EOC_

my $server = <<'_EOC_';
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /** a=1;
    quota_lease 10 ttl=1s;

    location /short {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /long {
        quota_lease 10 ttl=60s;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_

my (@st, $reserved, $later);
nginx_run(workers => 1, http_config => $http, config => $server,
          no_root_location => 1, code => sub {
    my ($port) = @_;
    my @pids;
    # connected to Redis (handshake done) before it stalls
    my $warm = http_request($port, 'POST', '/short', { 'X-T' => 'w' }, '', 10);
    kill 'STOP', $rs->{pid};
    for my $path ('/short', '/long') {
        my $pid = fork;
        die "fork: $!" unless defined $pid;
        if ($pid == 0) {
            my $r = http_request($port, 'POST', $path, { 'X-T' => 'l' }, '', 20);
            POSIX::_exit($r->{status} eq '200' ? 0 : 1);
        }
        push @pids, $pid;
        sleep 0.5;          # /short's grant is in flight when /long arrives
    }
    kill 'CONT', $rs->{pid};
    for (@pids) { waitpid $_, 0; push @st, $? }
    $reserved = $rs->cmd('HGET', "quota:{l}:usage:$start", 'a');
    # /short's lease (1 s) is over and swept; /long's (60 s) is not
    my $deadline = time + 10;
    while (time < $deadline) {
        $later = $rs->cmd('HGET', "quota:{l}:usage:$start", 'a');
        last if $later == 11;
        sleep 0.2;
    }
});

is("@st", '0 0', 'both admitted');
is($rs->cmd('HGET', "quota:{w}:usage:$start", 'a'), 1, 'the warm-up request: charged, its lease settled');
is($reserved, 20, 'two leases of 10 reserved');
is($later, 11, "the 1 s lease's 9 unspent units went back within 10 s; "
               . "the 60 s lease's are still reserved");
stop_redis($rs);

done_testing();

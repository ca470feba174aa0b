# quota_lease with quota_events on (review L16): at most one usage_update
# per tenant and metric per ttl (SPEC 9), not one per lease key: four
# rules charge the same metric with different costs (four lease keys).

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw(time);

redis_flush();

sub read_until {
    my ($s, $marker) = @_;
    my $buf = '';
    my $sel = IO::Select->new($s);
    my $deadline = time + 10;
    while (index($buf, $marker) < 0 && time < $deadline) {
        last unless $sel->can_read($deadline - time);
        sysread($s, $buf, 65536, length $buf) or last;
    }
    return $buf;
}

my $http = <<'_EOC_';
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=5s;
    quota_zone q:1m;
    quota_metric a;
    quota_plan p { limit a 1000000; }
    quota_default_plan p;
    quota_events on;
_EOC_

my $server = <<'_EOC_';
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /a1 a=1;
    quota_route POST /a2 a=2;
    quota_route POST /a3 a=3;
    quota_route POST /a5 a=5;
    quota_lease 20 ttl=2s;

    location / {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_

my ($events, $secs, %st);
nginx_run(workers => 1, http_config => $http, config => $server,
          no_root_location => 1, code => sub {
    my ($port) = @_;
    my $sub = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                    PeerPort => $ENV{TEST_NGINX_REDIS_PORT})
        or die "redis: $!";
    print $sub "*2\r\n\$9\r\nSUBSCRIBE\r\n\$12\r\nquota:events\r\n";
    read_until($sub, ":1\r\n");
    my $t0 = time;
    for (1 .. 40) {
        for my $path ('/a1', '/a2', '/a3', '/a5') {
            my $r = http_request($port, 'POST', $path, { 'X-T' => 'ev' }, '', 10);
            $st{ $r->{status} }++;
        }
    }
    $secs = time - $t0;
    print $sub "*2\r\n\$4\r\nPING\r\n\$6\r\nsynced\r\n";
    my $buf = read_until($sub, 'synced');
    $events = () = $buf =~ /"type":"usage_update"/g;
});

is_deeply(\%st, { 200 => 160 }, 'every request admitted');
# one per ttl (2 s) started: the first, then at most one per 2 s
my $bound = 2 + int($secs / 2);
cmp_ok($events, '<=', $bound, sprintf(
       'events: %d usage_update for metric a in %.1f s (4 rules)', $events, $secs));
cmp_ok($events, '>=', 1, 'events: the first one is published');

done_testing();

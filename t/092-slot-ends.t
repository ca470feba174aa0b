# SPEC 4: "A slot is released when the request ends (any way it ends)".
# t/066 covers the ends where the charge's outcome is unknown (timeout,
# client gone while Redis answers, dropped connection); this file covers
# admitted requests that end badly: the upstream refuses the connection
# (502), the upstream answers 4xx/5xx, and the client goes away in the
# middle of a slow response body.  A concurrency-1 tenant must get its
# next request admitted and hold no slot afterwards.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use IO::Socket::INET;
use Time::HiRes qw(time sleep);

redis_flush();

my $closed = free_port();     # nothing listens there: the upstream is down

my $http = <<'_EOC_';
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric a;
    quota_plan one { limit a 1000000; concurrency 1 lease=60s; }
    quota_default_plan one;
_EOC_

my $server = <<"_EOC_";
    quota on;
    quota_tenant \$http_x_t;
    quota_route * /api/** a=1;

    location /api/down {
        add_header X-Status \$quota_status always;
        proxy_pass http://127.0.0.1:$closed;
    }

    location /api/ {
        add_header X-Status \$quota_status always;
        proxy_pass http://127.0.0.1:\$TEST_NGINX_SERVER_PORT/origin/;
    }

    location /origin/ok { quota off; return 200 "ok\\n"; }
    location /origin/missing { quota off; return 404 "no\\n"; }
    location /origin/broken { quota off; return 500 "broken\\n"; }
    location /origin/big {
        quota off;
        limit_rate 16k;
        alias \$TEST_NGINX_HTML_DIR/big.bin;
    }
_EOC_

sub slots { redis('ZCARD', "quota:{$_[0]}:inflight") }

# a slot given back is sent one way: allow Redis a moment to run it
sub slots_settle {
    my ($t) = @_;
    my $deadline = time + 5;
    my $n;
    while (($n = slots($t)) != 0 && time < $deadline) {
        sleep 0.05;
    }
    return $n;
}

nginx_run(http_config => $http, config => $server, no_root_location => 1,
          code => sub {
    my ($port, $root) = @_;
    my $post = sub {
        my ($t, $path) = @_;
        return http_request($port, 'GET', $path, { 'X-T' => $t }, '');
    };

    open my $f, '>', "$root/html/big.bin" or die "big.bin: $!";
    print $f 'x' x (4 * 1024 * 1024);
    close $f;

    # the upstream is down: 502 from nginx after the slot was taken
    my $r = $post->('down', '/api/down');
    is($r->{status}, 502, 'upstream down: 502');
    is($r->{headers}{'x-status'}, 'ALLOWED', 'upstream down: the request was admitted');
    is(slots_settle('down'), 0, 'upstream down: no slot left');
    is($post->('down', '/api/ok')->{status}, 200,
       'upstream down: the next request of the concurrency-1 tenant is admitted');

    # the upstream answers an error
    for my $case (['missing', 404], ['broken', 500]) {
        my ($what, $code) = @$case;
        $r = $post->($what, "/api/$what");
        is($r->{status}, $code, "upstream $code: passed on");
        is(slots_settle($what), 0, "upstream $code: no slot left");
        is($post->($what, '/api/ok')->{status}, 200,
           "upstream $code: the next request is admitted");
    }

    # the client leaves in the middle of a slow body (16 KB/s of 4 MB)
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port)
        or die "connect: $!";
    print $s "GET /api/big HTTP/1.1\r\nHost: x\r\nX-T: gone\r\n\r\n";
    my $head = '';
    my $deadline = time + 10;
    while ($head !~ /\r\n\r\n/ && time < $deadline) {
        my $n = sysread($s, my $buf, 4096);
        last unless $n;
        $head .= $buf;
    }
    like($head, qr{^HTTP/1\.1 200 }, 'client leaves mid-body: the response had started');
    is(slots('gone'), 1, 'client leaves mid-body: the slot is held while the body flows');
    close $s;
    is(slots_settle('gone'), 0, 'client leaves mid-body: the slot is given back');
    is($post->('gone', '/api/ok')->{status}, 200,
       'client leaves mid-body: the next request is admitted');
});

done_testing();

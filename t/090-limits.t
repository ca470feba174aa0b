# Rate (GCRA) and concurrency limits: 429 with Retry-After, nothing
# charged; in-flight slots released when a request ends and expiring by
# themselves when a worker dies.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaTime;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(time sleep);

redis_flush();
my $start = month_start();

# an upstream that answers after ?ms= milliseconds, one child per request
sub slow_upstream {
    my $l = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Listen => 64, ReuseAddr => 1) or die $!;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        $SIG{CHLD} = 'IGNORE';
        alarm 30;
        while (my $c = $l->accept) {
            next if fork;
            my $req = '';
            while (defined(my $line = <$c>)) { $req .= $line; last if $line eq "\r\n" }
            my ($ms) = $req =~ /ms=(\d+)/;
            sleep(($ms // 0) / 1000);
            print $c "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
            close $c;
            POSIX::_exit(0);
        }
        POSIX::_exit(0);
    }
    my $port = $l->sockport;
    close $l;
    return ($pid, $port);
}

# 1. rate 5r/m: five at once pass, the 6th gets 429 Retry-After 12
{
    my @r;
    nginx_run(
        no_root_location => 1,
        http_config => <<'_EOC_',
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric a;
    quota_plan p { limit a 100; rate 5r/m; }
    quota_default_plan p;
_EOC_
        config => <<'_EOC_',
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
        code => sub {
            my ($port) = @_;
            push @r, http_request($port, 'POST', '/a', { 'X-T' => 'rate' }, '') for 1 .. 6;
            # rate applies to every request of the tenant, metered or not
            push @r, http_request($port, 'GET', '/unmetered', { 'X-T' => 'rate' });
            push @r, http_request($port, 'GET', '/unmetered', { 'X-T' => 'other' });
        },
    );
    is_deeply([map { $_->{status} } @r], [200, 200, 200, 200, 200, 429, 429, 200],
              'rate 5r/m: five pass, then 429, for unmetered requests too');
    is($r[5]{headers}{'retry-after'}, 12, 'rate: Retry-After 12');
    like($r[5]{body}, qr/^\{"error":"RATE_LIMITED","message":"Rate limit exceeded\. Retry in 12 s\.","retry_after":12\}$/,
         'rate: JSON body with retry_after 12');
    is($r[5]{headers}{'x-status'}, 'REJECTED_RATE', 'rate: $quota_status');
    is($r[5]{headers}{'x-quota-used'}, 5, 'rate: the 429 carries the usage headers');
    is($r[6]{headers}{'x-status'}, 'REJECTED_RATE', 'rate: an unmetered request is checked too');
    is(redis('HGET', "quota:{rate}:usage:$start", 'a'), 5, 'rate: the refused request charged no quota');
}

# 2. concurrency 1: a second simultaneous request gets 429; after the first
#    ends a new one passes; a slot held by a killed worker frees itself
{
    my ($upid, $uport) = slow_upstream();
    my (@codes, $during, $after, $killed_during, $killed_after, $retry, $body);
    my $config = <<"_EOC_";
    quota on;
    quota_tenant \$http_x_t;
    quota_route POST /** a=1;

    location / {
        add_header X-Status \$quota_status always;
        proxy_pass http://127.0.0.1:$uport;
    }
_EOC_
    nginx_run(
        workers => 1,
        master => 1,
        no_root_location => 1,
        http_config => <<'_EOC_',
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric a;
    quota_plan p { limit a 100; concurrency 1 lease=2s; }
    quota_default_plan p;
_EOC_
        config => $config,
        code => sub {
            my ($port, $root) = @_;

            # A holds the slot for 600 ms
            my $a = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port) or die $!;
            print $a "POST /slow?ms=600 HTTP/1.1\r\nHost: x\r\nX-T: conc\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            sleep 0.2;
            my $b = http_request($port, 'POST', '/fast', { 'X-T' => 'conc' }, '');
            $during = $b->{status};
            $retry = $b->{headers}{'retry-after'};
            $body = $b->{body};
            local $/;
            my $ra = <$a>;
            ($codes[0]) = $ra =~ m{^HTTP/1\.1 (\d+)};
            $after = http_request($port, 'POST', '/fast', { 'X-T' => 'conc' }, '')->{status};

            # a worker dies while holding the slot
            my $k = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port) or die $!;
            print $k "POST /slow?ms=5000 HTTP/1.1\r\nHost: x\r\nX-T: killed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            sleep 0.2;
            my $master = do { open my $f, '<', "$root/logs/nginx.pid" or die $!; local $/; <$f> };
            chomp $master;
            # the master's children, from /proc (no procps needed)
            my @workers = grep {
                my $ppid;
                if (open my $st, '<', "/proc/$_/stat") {
                    ($ppid) = (<$st> =~ /^\d+ \(.*?\) \S (\d+)/);
                }
                defined $ppid && $ppid == $master;
            } map { m{/proc/(\d+)$} ? $1 : () } glob '/proc/[0-9]*';
            kill 'KILL', @workers;
            close $k;
            sleep 0.3;    # the master starts a new worker
            $killed_during = http_request($port, 'POST', '/fast', { 'X-T' => 'killed' }, '')->{status};
            sleep 2.2;    # the lease runs out
            $killed_after = http_request($port, 'POST', '/fast', { 'X-T' => 'killed' }, '')->{status};
        },
    );
    kill 'TERM', $upid;
    waitpid $upid, 0;

    is($codes[0], 200, 'concurrency: the first request is served');
    is($during, 429, 'concurrency 1: a second simultaneous request gets 429');
    is($retry, 1, 'concurrency: Retry-After 1');
    like($body, qr/^\{"error":"CONCURRENCY_LIMIT","message":"[^"]+","retry_after":1\}$/, 'concurrency: JSON body');
    is($after, 200, 'concurrency: after the first ended, a new one passes');
    is($killed_during, 429, 'killed worker: its slot is still held right after');
    is($killed_after, 200, 'killed worker: the slot frees itself after its lease');
    is(redis('HGET', "quota:{conc}:usage:$start", 'a'), 2, 'concurrency: the 429 charged nothing');
}

done_testing();

# quota_metrics: Prometheus text, summed over all workers through shared
# memory: decisions by status, the Redis latency histogram, errors; the
# per-server families (server="IP:PORT", a bounded label set with an
# "other" entry); every exposition parsed by a strict text-format parser.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaProm;

redis_flush();

sub server {
    return <<'_EOC_';
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /a a=1;

    location / {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location = /quota/metrics {
        quota_metrics;
        allow 127.0.0.1;
        deny all;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_
}

sub metric {
    my ($text, $name) = @_;
    my ($v) = $text =~ /^\Q$name\E (\S+)$/m;
    return $v;
}

# 1. 2 workers: the ALLOWED counter equals the admitted requests
{
    my ($text, @codes);
    nginx_run(workers => 2, no_root_location => 1, http_config => <<'_EOC_', config => server(), code => sub {
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric a;
    quota_plan p { limit a 70; }
    quota_default_plan p;
_EOC_
        my ($port) = @_;
        @codes = http_concurrent($port, 100,
            "POST /a HTTP/1.1\r\nHost: x\r\nX-T: m\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 20);
        push @codes, http_request($port, 'GET', '/unmetered', { 'X-T' => 'm' })->{status};
        $text = http_get($port, '/quota/metrics')->{body};
    });

    my %n;
    $n{$_}++ for @codes;
    is($n{200}, 71, '70 admitted and one unmetered request');
    is(metric($text, 'quota_decisions_total{status="ALLOWED"}'), 70,
       'metrics: ALLOWED equals the admitted requests, across 2 workers');
    is(metric($text, 'quota_decisions_total{status="REJECTED_QUOTA"}'), 30, 'metrics: REJECTED_QUOTA');
    is(metric($text, 'quota_decisions_total{status="UNMETERED"}'), 1, 'metrics: UNMETERED');
    is(metric($text, 'quota_redis_latency_seconds_count'), 100, 'latency histogram: one observation per round trip');
    is(metric($text, 'quota_redis_latency_seconds_bucket{le="+Inf"}'), 100, 'latency histogram: +Inf bucket');
    like($text, qr/^quota_redis_latency_seconds_bucket\{le="0\.000100"\} \d+$/m, 'latency histogram: buckets in seconds');
    like($text, qr/^quota_redis_latency_seconds_sum \d+\.\d{6}$/m, 'latency histogram: sum');
    is(metric($text, 'quota_redis_inflight'), 0, 'in-flight gauge back to 0');
    like($text, qr/^# TYPE quota_decisions_total counter$/m, 'TYPE lines');
    like($text, qr/^# TYPE quota_redis_latency_seconds histogram$/m, 'histogram TYPE');
    is(metric($text, 'quota_redis_errors_total{kind="timeout"}'), 0, 'no errors');

    my $m = eval { QuotaProm::parse($text) };
    ok($m, 'the exposition is valid Prometheus text') or diag($@);
    my $srv = "127.0.0.1:$ENV{TEST_NGINX_REDIS_PORT}";
    is(QuotaProm::value($m, 'quota_redis_server_latency_seconds_count', server => $srv), 100,
       "per server: the 100 round trips on server=\"$srv\", across 2 workers");
    is(scalar(@{ QuotaProm::series($m, 'quota_redis_server_reconnects_total') }), 1,
       'per server: one server, the configured one');
    is(QuotaProm::value($m, 'quota_redis_server_errors_total', server => $srv, kind => 'connect'), 0,
       'per server: no connect error');
}

# 2. a Redis outage shows up in the error counters
{
    my ($text, $r);
    my $dead = free_port();
    nginx_run(no_root_location => 1, http_config => <<"_EOC_", config => server(), code => sub {
    quota_redis 127.0.0.1:$dead timeout=100ms;
    quota_metric a;
_EOC_
        my ($port) = @_;
        $r = http_request($port, 'POST', '/a', { 'X-T' => 'm' }, '');
        $text = http_get($port, '/quota/metrics')->{body};
    });

    is($r->{status}, 200, 'outage: failure mode open');
    ok(metric($text, 'quota_redis_errors_total{kind="connect"}') >= 1, 'outage: connect errors counted');
    ok(metric($text, 'quota_redis_errors_total{kind="unavailable"}') >= 1, 'outage: requests without a connection counted');
    is(metric($text, 'quota_decisions_total{status="FAIL_OPEN"}'), 1, 'outage: FAIL_OPEN decision');

    my $m = eval { QuotaProm::parse($text) };
    ok($m, 'outage: valid Prometheus text') or diag($@);
    my $sum = 0;
    $sum += $_->[1] for grep { $_->[0]{kind} eq 'connect' }
                        @{ QuotaProm::series($m, 'quota_redis_server_errors_total') };
    ok(QuotaProm::value($m, 'quota_redis_server_errors_total', server => "127.0.0.1:$dead",
                        kind => 'connect') >= 1,
       'outage: connect errors on server="127.0.0.1:DEAD"');
    # read in one pass of the counters: a retry may land between two reads
    ok(abs($sum - metric($text, 'quota_redis_errors_total{kind="connect"}')) <= 1,
       'outage: the per-server connect errors add up to the total');
}

# 5. the label set is bounded: 64 servers, then server="other" (here 66
#    sentinels named in the configuration, none up)
{
    my ($text, $m);
    my @dead = map { free_port() } 1 .. 66;
    nginx_run(no_root_location => 1, http_config => "    quota_redis_sentinel "
              . join(' ', map { "127.0.0.1:$_" } @dead) . " master=x;\n"
              . "    quota_metric a;\n", config => server(), code => sub {
        my ($port) = @_;
        $text = http_get($port, '/quota/metrics')->{body};
    });
    $m = eval { QuotaProm::parse($text) };
    ok($m, 'bounded: valid Prometheus text') or diag($@);
    my @servers = map { $_->[0]{server} }
                  @{ QuotaProm::series($m, 'quota_redis_server_reconnects_total') };
    is(scalar(@servers), 65, 'bounded: 64 servers and "other"');
    is_deeply([ @servers[0 .. 63] ], [ map { "127.0.0.1:$_" } @dead[0 .. 63] ],
              'bounded: the first 64 in configuration order');
    is($servers[64], 'other', 'bounded: the rest are server="other"');
    is(scalar(@{ QuotaProm::series($m, 'quota_redis_server_latency_seconds_bucket') }),
       65 * 13, 'bounded: a histogram per label');
}

# 7. per server: a request's timeout and an error reply on the server's
#    label, equal to the totals; NOSCRIPT (answered by EVAL) is no error
{
    my ($text, @st);
    my $rd = QuotaTest::start_redis();
    my $srv = "127.0.0.1:$rd->{port}";
    nginx_run(no_root_location => 1, http_config => <<"_EOC_", config => server(), code => sub {
    quota_redis $srv timeout=300ms;
    quota_metric a;
_EOC_
        my ($port) = @_;
        my $st = sub { http_request($port, 'POST', '/a', { 'X-T' => 'ps' }, '')->{status} };
        # the worker is connected once a charge reached Redis
        for (1 .. 100) {
            $st->();
            last if $rd->cmd('DBSIZE') > 0;
            select(undef, undef, undef, 0.05);
        }
        $rd->cmd('SCRIPT', 'FLUSH');
        push @st, $st->();                          # NOSCRIPT, then EVAL
        $rd->cmd('CONFIG', 'SET', 'maxmemory', 1);
        push @st, $st->();                          # -OOM: an error reply,
                                                    # and its void refused
        $rd->cmd('CONFIG', 'SET', 'maxmemory', 0);
        $rd->cmd('CLIENT', 'PAUSE', 1000, 'ALL');
        push @st, $st->();                          # a timeout
        select(undef, undef, undef, 1.2);
        $text = http_get($port, '/quota/metrics')->{body};
    });
    QuotaTest::stop_redis($rd);

    is_deeply(\@st, [200, 503, 200],
              'per server: admitted; an error reply 503; a timeout failing open');
    my $m = eval { QuotaProm::parse($text) };
    ok($m, 'per server: valid Prometheus text') or diag($@);
    is(metric($text, 'quota_redis_noscript_total'), 1, 'per server: the NOSCRIPT was answered by EVAL');
    is(QuotaProm::value($m, 'quota_redis_server_errors_total', server => $srv, kind => 'reply'),
       metric($text, 'quota_redis_errors_total{kind="reply"}'),
       'per server: reply errors equal the total (NOSCRIPT is none)');
    is(QuotaProm::value($m, 'quota_redis_server_errors_total', server => $srv, kind => 'reply'), 2,
       'per server: the -OOM replies (the charge, its void) counted on its server');
    is(QuotaProm::value($m, 'quota_redis_server_errors_total', server => $srv, kind => 'timeout'), 1,
       'per server: the timeout counted on its server');
    is(metric($text, 'quota_redis_errors_total{kind="timeout"}'), 1, 'per server: ... and in the total');
}

# 8. a unix socket is server="unix:PATH"
{
    my $text;
    my $port = free_port();
    my $sock = QuotaTest::_servroot_base() . "_redis-$port/redis.sock";
    my $rd = QuotaTest::start_redis(port => $port, args => ['--unixsocket', $sock]);
    nginx_run(no_root_location => 1, http_config => <<"_EOC_", config => server(), code => sub {
    quota_redis unix:$sock timeout=3s;
    quota_metric a;
_EOC_
        my ($port) = @_;
        for (1 .. 100) {
            http_request($port, 'POST', '/a', { 'X-T' => 'ux' }, '');
            last if $rd->cmd('DBSIZE') > 0;
            select(undef, undef, undef, 0.05);
        }
        $text = http_get($port, '/quota/metrics')->{body};
    });
    QuotaTest::stop_redis($rd);
    my $m = eval { QuotaProm::parse($text) };
    ok($m, 'unix: valid Prometheus text') or diag($@);
    ok((QuotaProm::value($m, 'quota_redis_server_latency_seconds_count',
                         server => "unix:$sock") // 0) >= 1,
       'unix: the round trips on server="unix:PATH"');
}

# 6. the parser itself rejects what Prometheus would
for my $bad (
    [ "a 1", 'no final newline' ],
    [ "# TYPE a counter\na{x=\"1\"} 1\nb 1\na{x=\"2\"} 1\n", 'a family in two groups' ],
    [ "a{x=\"1\"} 1\na{x=\"1\"} 2\n", 'a series twice' ],
    [ "a{x=\"\\q\"} 1\n", 'a bad escape' ],
    [ "a one\n", 'not a number' ],
    [ "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
      'decreasing buckets' ],
    [ "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n", '+Inf is not _count' ],
) {
    ok(!eval { QuotaProm::parse($bad->[0]); 1 }, "parser rejects: $bad->[1]");
}

# 4. review D13: a client that goes away while its charge is in flight is
#    counted as ABORTED, not UNMETERED (it was metered; the outcome is what
#    the void makes of it), and $quota_status says so in the access log
{
    my ($text, $log);
    my $rd = QuotaTest::start_redis();
    my $rport = $rd->{port};
    nginx_run(no_root_location => 1, http_config => <<"_EOC_", config => server(), code => sub {
    quota_redis 127.0.0.1:$rport timeout=5s;
    quota_metric a;
    quota_plan p { limit a 70; }
    quota_default_plan p;
    log_format st '\$status \$quota_status';
    access_log logs/status.log st;
_EOC_
        my ($port, $root) = @_;
        # the worker is connected once a charge is answered
        for (1 .. 100) {
            last if http_request($port, 'POST', '/a', { 'X-T' => 'ab' })->{status} eq '200';
            select(undef, undef, undef, 0.05);
        }
        $rd->cmd('CLIENT', 'PAUSE', 1500, 'ALL');
        # gives up after 0.3 s while Redis holds the charge
        QuotaTest::http_exchange($port,
            "POST /a HTTP/1.1\r\nHost: x\r\nX-T: ab\r\nContent-Length: 0\r\n\r\n", 0.3);
        select(undef, undef, undef, 2);
        $text = http_get($port, '/quota/metrics')->{body};
        $log = QuotaTest::_slurp("$root/logs/status.log");
    });
    QuotaTest::stop_redis($rd);

    is(metric($text, 'quota_decisions_total{status="ABORTED"}'), 1,
       'metrics: a request aborted while waiting is ABORTED');
    is(metric($text, 'quota_decisions_total{status="UNMETERED"}'), 0,
       'metrics: ... and not UNMETERED');
    like($log, qr/^499 ABORTED$/m, '$quota_status of the 499 is ABORTED');
}

done_testing();

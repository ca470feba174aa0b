# quota_usage / quota_alerts / quota_metrics answers on a keep-alive
# connection (review D3, D17): every answer that needs no Redis (405, 401,
# 400) is sent once, the connection stays usable for the next request, no
# Redis command is sent for it, and nothing is logged at [alert].
#
# Plain Test::More with QuotaTest's nginx_run: the requests must share one
# connection, which the block format cannot say for both runners.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;

QuotaTest::redis_flush();

my $http_config = <<'_EOC_';
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric a;
    quota_plan basic { limit a 10; }
    quota_default_plan basic;
_EOC_

my $server = <<'_EOC_';
    quota on;
    quota_tenant $http_x_api_key;
    quota_route * /** a=1;

    location = /usage {
        quota_usage;
    }

    location = /alerts {
        quota_alerts;
    }

    location = /metrics {
        quota_metrics;
    }

    location / {
        quota off;
        return 200 "ok\n";
    }
_EOC_

# the requests, pipelined on one connection; the last one closes it
sub pipeline {
    my ($port, @reqs) = @_;
    my $raw = '';
    for my $i (0 .. $#reqs) {
        my ($method, $path, $headers) = @{ $reqs[$i] };
        $raw .= "$method $path HTTP/1.1\r\nHost: localhost\r\n";
        $raw .= "Connection: close\r\n" if $i == $#reqs;
        $raw .= "$_\r\n" for @{ $headers || [] };
        $raw .= "\r\n";
    }
    my ($out) = QuotaTest::http_exchange($port, $raw, 10);
    return split_responses($out);
}

# a stream of responses with Content-Length bodies -> list of parsed ones
sub split_responses {
    my ($raw) = @_;
    my @res;
    while (length $raw) {
        my $r = QuotaTest::parse_http_response($raw);
        last unless $r->{status};
        push @res, $r;
        my $hlen = index($raw, "\r\n\r\n") + 4;
        my $blen = $r->{headers}{'content-length'} // length($raw) - $hlen;
        $raw = substr($raw, $hlen + $blen);
    }
    return @res;
}

# calls of the commands a quota endpoint sends, from INFO commandstats
sub redis_calls {
    my $info = QuotaTest::redis('INFO', 'commandstats');
    my $n = 0;
    $n += $1 while $info =~ /^cmdstat_(?:evalsha|eval|xrevrange):calls=(\d+)/mg;
    return $n;
}

for my $ep ('/usage', '/alerts') {
    my (@res, $before, $after);
    my $log = QuotaTest::nginx_run(
        http_config => $http_config,
        config      => $server,
        no_root_location => 1,
        code        => sub {
            my ($port) = @_;
            $before = redis_calls();
            @res = pipeline($port,
                ['GET', $ep],                               # 401
                ['POST', $ep, ['X-API-Key: acme']],         # 405
                ['GET', $ep, ['X-API-Key: a{b}']],          # 400
                ['GET', $ep],                               # 401
                ['GET', '/plain']);                         # 200
            $after = redis_calls();
        });

    is(scalar @res, 5, "$ep: five answers on one keep-alive connection");
    is(join(' ', map { $_->{status} } @res), '401 405 400 401 200',
       "$ep: each request answered once, in order");
    like($res[0]{body} // '', qr/"error":"MISSING_TENANT"/, "$ep: 401 body");
    like($res[1]{body} // '', qr/"error":"METHOD_NOT_ALLOWED"/,
         "$ep: 405 body");
    like($res[2]{body} // '', qr/"error":"BAD_TENANT"/, "$ep: 400 body");
    is($res[4]{body}, "ok\n", "$ep: the connection still serves requests");
    is($after - $before, 0, "$ep: no Redis command for 401/405/400");
    unlike($log, qr/\[(?:alert|crit|emerg)\]/, "$ep: no [alert] in the log");
}

# Redis unreachable (503 at once) and Redis paused past the timeout (503
# from the timeout handler): one answer each, the connection goes on
{
    my $dead = QuotaTest::free_port();
    my (@res);
    my $log = QuotaTest::nginx_run(
        http_config => $http_config =~ s/\$TEST_NGINX_REDIS_PORT timeout=3s/$dead/r,
        config      => $server,
        no_root_location => 1,
        code        => sub {
            @res = pipeline($_[0], ['GET', '/usage', ['X-API-Key: acme']],
                            ['GET', '/alerts', ['X-API-Key: acme']],
                            ['GET', '/plain']);
        });
    is(join(' ', map { $_->{status} } @res), '503 503 200',
       'no Redis: 503 once per request, keep-alive goes on');
    like($res[0]{body} // '', qr/"error":"QUOTA_UNAVAILABLE"/, 'no Redis: body');
    unlike($log, qr/\[(?:alert|crit|emerg)\]/, 'no Redis: no [alert]');
}

{
    my $rd = QuotaTest::start_redis();
    my $port_conf = $http_config =~ s/\$TEST_NGINX_REDIS_PORT timeout=3s/$rd->{port} timeout=300ms/r;
    my (@res, $ready);
    my $log = QuotaTest::nginx_run(
        http_config => $port_conf,
        config      => $server,
        no_root_location => 1,
        code        => sub {
            my ($port) = @_;
            for (1 .. 100) {
                my $r = QuotaTest::http_get($port, '/usage',
                                            { 'X-API-Key' => 'acme' });
                $ready = 1, last if $r->{status} eq '200';
                select(undef, undef, undef, 0.05);
            }
            # paused until it is stopped below: both requests time out
            # (300 ms each) while it is, however slow the machine
            $rd->cmd('CLIENT', 'PAUSE', 60000, 'ALL');
            @res = pipeline($port, ['GET', '/usage', ['X-API-Key: acme']],
                            ['GET', '/alerts', ['X-API-Key: acme']],
                            ['GET', '/plain']);
        });
    QuotaTest::stop_redis($rd);
    ok($ready, 'paused Redis: the worker was connected first');
    is(join(' ', map { $_->{status} } @res), '503 503 200',
       'paused Redis: the timeout answers 503 once, keep-alive goes on');
    like($log, qr/redis did not answer within 300ms/, 'paused Redis: timed out');
    unlike($log, qr/\[(?:alert|crit|emerg)\]/, 'paused Redis: no [alert]');
}

done_testing();

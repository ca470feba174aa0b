# quota_live_body's cost: one nginx worker, N WebSocket clients of one
# tenant (t/data/live-body-bench.py, python3-websockets), E events at RATE/s
# published straight to Redis; per run: frames per client, reports sent
# (INFO commandstats), publish-to-frame latency (at the client: a Python
# client saturates first with many clients) and the worker's CPU time per
# frame (/proc/PID/stat, 10 ms ticks: use runs of 1000+ events).
#
#   BENCH_RUNS='N,E,RATE,/ws/plain;N,E,RATE,/ws/tpl' \
#       scripts/test scripts/bench-live-body.t -v
#
# Not part of the suite (it lives outside t/).
use strict; use warnings;
use FindBin;
use lib "$FindBin::Bin/../t/lib";
use Test::More; use QuotaTest;
my $tpl = q{'{"type":$quota_json_event_type,"ev_used":$quota_event_used,"t":$quota_json_tenant,"a":$quota_used_a,"lim_a":$quota_limit_a,"b":$quota_used_b,"approaching":$quota_approaching,"reset":"$quota_reset"}'};
nginx_run(
    http_config => "quota_redis 127.0.0.1:\$TEST_NGINX_REDIS_PORT timeout=5s;\nquota_metric a;\nquota_metric b;\nquota_plan basic { limit a 1000000; }\nquota_default_plan basic;\n",
    config => "quota_tenant \$http_x_api_key;\nlocation = /ws/tpl { quota_live; quota_live_body $tpl; }\nlocation = /ws/plain { quota_live; }\n",
    no_root_location => 1, log_level => 'warn',
    code => sub {
        my ($port, $root) = @_;
        my $pid = do { local (@ARGV, $/) = "$root/logs/nginx.pid"; <> }; chomp $pid;
        my $cpu = sub { my @f = split ' ', do { local (@ARGV, $/) = "/proc/$pid/stat"; <> }; ($f[13] + $f[14]) * 10 };
        for my $run (split /;/, $ENV{BENCH_RUNS} || '10,1000,500,/ws/plain;10,1000,500,/ws/tpl') {
            my ($n, $e, $rate, $path) = split /,/, $run;
            my $c0 = $cpu->();
            my $out = `/usr/bin/python3 $FindBin::Bin/../t/data/live-body-bench.py $port $ENV{TEST_NGINX_REDIS_PORT} $n $e $rate $path`;
            my $ms = $cpu->() - $c0;
            diag "$out  nginx cpu ${ms} ms = " . sprintf('%.2f', 1000 * $ms / ($n * $e)) . " us per frame";
        }
    });
ok(1);
done_testing;

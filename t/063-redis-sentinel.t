# quota_redis_sentinel: the master is asked of the sentinels (the first one
# listed is down), charging follows a SENTINEL FAILOVER to the new master
# (+switch-master), and the new master's count equals the admitted requests;
# two Redis modes at once or a sentinel without master= fail nginx -t.
# Metrics (two workers): quota_redis_failovers_total counts the failover
# once, not once per worker; the per-server families put the round trips
# on server="OLD" before it and server="NEW" after it, and list the
# sentinels.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaHA ();
use QuotaProm;
use QuotaTime;
use Time::HiRes qw(time sleep);

my $start = month_start();
my $valgrind = $ENV{TEST_NGINX_USE_VALGRIND};
my $slack = $valgrind ? 3 : 1;

sub post {
    my ($port, $tenant) = @_;
    my $t0 = time;
    my $r = http_request($port, 'POST', '/api/x', { 'X-API-Key' => $tenant }, '', 10);
    $r->{elapsed} = time - $t0;
    return $r;
}

my $server = <<'_EOC_';
    quota on;
    quota_tenant $http_x_api_key;
    quota_route POST /api/** api_requests=1;

    location /api/ {
        add_header X-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }

    location = /metrics {
        quota_metrics;
    }
_EOC_

my $m = start_redis();
my $r = start_redis(args => ['--replicaof', '127.0.0.1', $m->{port}]);
ok(QuotaHA::wait_until(10, sub { $r->cmd('INFO', 'replication') =~ /master_link_status:up/ }),
   'the replica follows the master');

my $s1 = QuotaHA::start_sentinel($m->{port});
my $s2 = QuotaHA::start_sentinel($m->{port});
ok(QuotaHA::wait_until(20, sub {
       my $x = QuotaTest::redis_at($s1, 'SENTINEL', 'replicas', 'billing');
       ref $x && @$x;
   }), 'the sentinel knows the replica');

my $dead = free_port();
my $key = "quota:{fo}:usage:$start";
my (@before, @during, @after, $failovers, $moved, $m0, $m1);

my $log = nginx_run(
    no_root_location => 1,
    http_config => "    quota_redis_sentinel 127.0.0.1:$dead 127.0.0.1:$s1 127.0.0.1:$s2"
                   . " master=billing timeout=1s;\n"
                   . "    quota_metric api_requests;\n",
    config => $server,
    workers => 2,
    code => sub {
        my ($port) = @_;
        QuotaHA::wait_until(10 * $slack, sub {
            (post($port, 'warm-up')->{headers}{'x-status'} // '') eq 'ALLOWED' });
        push @before, post($port, 'fo') for 1 .. 20;
        $m0 = http_get($port, '/metrics')->{body};

        # the replica has every charge before it is promoted (SENTINEL
        # FAILOVER does not wait for it: what it lacks is lost)
        ok(QuotaHA::replica_has_all($m, $r),
           'the replica has every write');
        is(QuotaTest::redis_at($s1, 'SENTINEL', 'FAILOVER', 'billing'), 'OK',
           'SENTINEL FAILOVER accepted');
        $moved = QuotaHA::wait_until(20, sub {
            my $a = QuotaTest::redis_at($s1, 'SENTINEL', 'get-master-addr-by-name',
                                        'billing');
            $a->[1] == $r->{port};
        });

        # +switch-master comes when the sentinel has finished (it answers
        # get-master-addr with the promoted replica a little earlier):
        # until then the old master is the master and takes the charges
        $failovers = QuotaHA::wait_until(20, sub {
            my $t = http_get($port, '/metrics')->{body};
            $t =~ /^quota_redis_failovers_total ([1-9]\d*)$/m ? $1 : 0;
        });

        # charging resumes on the new master within seconds
        my $deadline = time + 10 * $slack;
        while (time < $deadline) {
            my $x = post($port, 'fo');
            push @during, $x;
            last if ($x->{headers}{'x-status'} // '') eq 'ALLOWED';
            sleep 0.05;
        }
        push @after, post($port, 'fo') for 1 .. 20;
        # both workers had time to hear +switch-master and count it
        sleep 1;
        $m1 = http_get($port, '/metrics')->{body};
    },
);

ok($moved, 'the sentinels moved the master to the replica');
is(scalar(grep { ($_->{headers}{'x-status'} // '') eq 'ALLOWED' } @before), 20,
   'before: charged on the first master');
is($during[-1]{headers}{'x-status'}, 'ALLOWED', 'after the failover: charging resumes');
is(scalar(grep { ($_->{headers}{'x-status'} // '') !~ /^(ALLOWED|FAIL_OPEN)$/ } @during), 0,
   'during: every request admitted or failing open');
is(scalar(grep { $_->{elapsed} > 1 + $slack } @during), 0,
   'during: none waits past its timeout');
is(scalar(grep { ($_->{headers}{'x-status'} // '') eq 'ALLOWED' } @after), 20,
   'after: charged on the new master');

my $admitted = grep { ($_->{headers}{'x-status'} // '') eq 'ALLOWED' }
               @before, @during, @after;
is($r->cmd('HGET', $key, 'api_requests'), $admitted,
   "the new master's count equals the admitted requests ($admitted): nothing charged twice");
ok(($failovers // 0) >= 1, 'quota_redis_failovers_total counts the move');

# the metrics, parsed strictly (a worker may not have served a request yet
# at $m0: the warm-up loop checks only one)
my $p0 = eval { QuotaProm::parse($m0) };
ok($p0, 'metrics before: valid Prometheus text') or diag($@);
my $p1 = eval { QuotaProm::parse($m1) };
ok($p1, 'metrics after: valid Prometheus text') or diag($@);
my ($old, $new) = ("127.0.0.1:$m->{port}", "127.0.0.1:$r->{port}");
is(QuotaProm::value($p1, 'quota_redis_failovers_total'), 1,
   'quota_redis_failovers_total: 1 failover, 2 workers, counted once');
my $lat = sub { QuotaProm::value($_[0], 'quota_redis_server_latency_seconds_count',
                                 server => $_[1]) // 0 };
ok($lat->($p0, $old) >= 20, "before: the charges' round trips on server=\"$old\"");
is($lat->($p0, $new), 0, "before: none on server=\"$new\"");
ok($lat->($p1, $new) >= 20, "after: the charges' round trips on server=\"$new\"");
for my $s ("127.0.0.1:$dead", "127.0.0.1:$s1", "127.0.0.1:$s2") {
    ok(defined QuotaProm::value($p1, 'quota_redis_server_reconnects_total', server => $s),
       "the sentinel server=\"$s\" is listed");
}
ok(QuotaProm::value($p1, 'quota_redis_server_errors_total', server => "127.0.0.1:$dead",
                    kind => 'connect') >= 1,
   'the sentinel that is down: its connect errors on its own label');
like($log, qr/quota: redis sentinel: master "billing" is 127\.0\.0\.1:$r->{port}/,
     'the new master logged');
unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'no alert, no crash');

stop_redis($r);
stop_redis($m);

# configuration errors
for my $c (
    [ "    quota_redis 127.0.0.1:1;\n    quota_redis_sentinel 127.0.0.1:2 master=x;",
      qr/"quota_redis_sentinel" directive cannot be used with "quota_redis" in \S+:\d+/,
      'two Redis modes at once' ],
    [ "    quota_redis_sentinel 127.0.0.1:2 127.0.0.1:3;",
      qr/"quota_redis_sentinel" needs "master=" in \S+:\d+/,
      'a sentinel without master=' ],
) {
    my ($conf, $re, $name) = @$c;
    my $ok = eval {
        nginx_run(no_root_location => 1,
                  http_config => "$conf\n    quota_metric api_requests;\n",
                  config => $server, code => sub { });
        1;
    };
    ok(!$ok, "nginx -t: $name fails");
    like($@ // '', $re, "nginx -t: $name: file:line and why");
}

done_testing();

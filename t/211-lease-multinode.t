# quota_lease across two gateway nodes (two nginx instances, two workers
# each, one quota_zone per node) on one Redis: one tenant hammered by 64
# concurrent clients with several times its limit.  Exactly the enforcement
# point is admitted, the upstream sees exactly the admitted requests, and
# once the ttl has passed Redis' usage, overage and daily counters are
# exactly what was admitted; with grace and per-seat limits, and with
# overage and a spending cap (never passed).  Slow: its own file.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest qw(:DEFAULT nginx_start nginx_stop valgrind_problems);
use QuotaTime;
use QuotaLoad;
use File::Temp qw(tempdir);
use Time::HiRes qw(sleep time);

redis_flush();

my $start = month_start();
my $today = today();
my $rport = $ENV{TEST_NGINX_REDIS_PORT};
my @nodes;

for my $n (1, 2) {
    my ($port, $oport) = (free_port(), free_port());
    my $root = tempdir("t211-node$n-XXXX", TMPDIR => 1, CLEANUP => 1);
    my $http = <<"_EOC_";
    quota_redis 127.0.0.1:$rport timeout=5s connect_timeout=30s;
    quota_failure_mode closed;    # a request Redis did not decide is a 503
    quota_zone ledger:4m;
    quota_metric api_requests;
    quota_plan basic { limit api_requests 600; }
    quota_plan seats { limit api_requests 100 per_seat; grace 20%; }
    quota_plan metered { limit api_requests 200; overage api_requests 0.001; }
    quota_plan big { limit api_requests 100000000; }
    quota_default_plan basic;

    log_format origin '\$http_x_api_key';
    server {
        listen 127.0.0.1:$oport;
        quota off;
        access_log logs/origin.log origin;
        location / { return 200 "ok\\n"; }
    }
_EOC_
    my $h = nginx_start(
        servroot         => $root,
        port             => $port,
        workers          => 2,
        master           => 1,
        no_root_location => 1,
        http_config      => $http,
        config           => <<"_EOC_",
    quota on;
    quota_tenant \$http_x_api_key;
    quota_route * /api/** api_requests=1;
    quota_lease auto ttl=1s;

    location = /metrics { quota_metrics; }

    location / {
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_pass http://127.0.0.1:$oport;
    }
_EOC_
    );
    die "node $n: $h->{error}\n" if $h->{error};
    QuotaTest::wait_module_ready($root, $http, 2);
    push @nodes, { h => $h, port => $port, root => $root };
}

# account => [requests to send, expected admitted cost, expected overage]
my @phases = (
    [ 'plain',          {},                                         1800, 600, 0 ],
    # 100 x 3 seats, grace 20 %: the enforcement point is 360
    [ 'grace+per-seat', { plan => 'seats', seats => 3 },            1200, 360, 0 ],
    # 200 included, then 0.001 USD a unit, cap 0.15 USD: 150 overage units
    [ 'overage+cap',    { plan => 'metered', overage => 1, cap => '0.15' },
                                                                     1200, 350, 150 ],
);

my %phase_res;
for my $ph (@phases) {
    my ($name, $acct, $n) = @$ph;
    (my $tenant = "lease-$name") =~ s/[^a-z]+/-/g;
    redis('HSET', "quota:{$tenant}:account", %$acct) if %$acct;
    my $t0 = time;
    my $res = QuotaLoad::run(
        concurrency => 64,
        timeout     => 20,
        gen         => sub {
            my ($i) = @_;
            return undef if $i >= $n;
            return { port => $nodes[$i % 2]{port}, method => 'POST',
                     path => '/api/x',
                     headers => { 'X-API-Key' => $tenant } };
        },
    );
    $phase_res{$name} = [ $tenant, $res, time - $t0 ];
}

# reload both nodes twice under load, leases outstanding: nothing lost,
# nothing counted twice
my $reload = do {
    my $tenant = 'lease-reload';
    redis('HSET', "quota:{$tenant}:account", plan => 'big');
    my $res = QuotaLoad::run(
        concurrency => 32,
        rate        => 1500,
        duration    => 3,
        timeout     => 20,
        gen         => sub {
            my ($i) = @_;
            return { port => $nodes[$i % 2]{port}, method => 'POST',
                     path => '/api/x', headers => { 'X-API-Key' => $tenant } };
        },
        at          => [ map { my $t = $_; [ $t, sub { kill 'HUP', $_->{h}{pid} for @nodes } ] }
                         0.8, 1.9 ],
    );
    [ $tenant, $res ];
};

# at rest: the ttl (1 s) and a sweep have passed on both nodes
sleep 2.5;
{
    my ($tenant, $res) = @$reload;
    my %st;
    $st{ $_->{status} || 'none' }++ for @$res;
    is(join(' ', sort keys %st), '200', 'reload: every request admitted')
        or diag(QuotaLoad::statuses($res));
    is(redis('HGET', "quota:{$tenant}:usage:$start", 'api_requests') // 0, $st{200},
       "reload: Redis usage exact at rest ($st{200} admitted)");
    is(redis('HGET', "quota:{$tenant}:daily:$start", "api_requests:$today") // 0, $st{200},
       'reload: daily counter exact at rest');
}
my %redis;
for my $ph (@phases) {
    my $tenant = $phase_res{ $ph->[0] }[0];
    $redis{$tenant} = [
        redis('HGET', "quota:{$tenant}:usage:$start", 'api_requests') // 0,
        redis('HGET', "quota:{$tenant}:daily:$start", "api_requests:$today") // 0,
        redis('HGET', "quota:{$tenant}:usage:$start", 'api_requests:overage') // 0,
        redis('HGET', "quota:{$tenant}:usage:$start", 'overage_cost') // 0,
    ];
}

for my $n (@nodes) {
    my $text = http_get($n->{port}, '/metrics')->{body};
    my ($local) = $text =~ /^quota_local_decisions_total\{kind="lease"\} (\d+)$/m;
    cmp_ok($local // 0, '>', 100, "node $n->{port}: requests spent leases ($local)");
}
nginx_stop($_->{h}, master => 1) for @nodes;

my %origin;
for my $n (@nodes) {
    open my $fh, '<', "$n->{root}/logs/origin.log" or die "origin.log: $!";
    while (<$fh>) {
        chomp;
        $origin{$_}++;
    }
    my $log = do { local $/; open my $e, '<', "$n->{root}/logs/error.log"; <$e> // '' };
    unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal|not returned/,
           "node $n->{port}: no alert, no crash, no unreturned lease");
    if ($n->{h}{valgrind}) {
        my @p = valgrind_problems($n->{root});
        is(scalar @p, 0, "node $n->{port}: valgrind clean") or diag(join "\n", @p);
    }
    if ($ENV{TEST_NGINX_USE_SANITIZER}) {
        my @p = QuotaTest::sanitizer_problems($n->{root});
        is(scalar @p, 0, "node $n->{port}: no sanitizer report") or diag(join "\n", @p);
    }
}

for my $ph (@phases) {
    my ($name, undef, $n, $want, $over) = @$ph;
    my ($tenant, $res, $secs) = @{ $phase_res{$name} };
    my (%st, %per_node);
    my $admitted = 0;
    for my $r (@$res) {
        $st{ $r->{status} || 'none' }++;
        next unless $r->{status} eq '200';
        $admitted++;
        $per_node{ $r->{req}{port} }++;
    }
    is(join(' ', sort keys %st), '200 402', "$name: only 200 and 402")
        or diag(QuotaLoad::statuses($res));
    is($admitted, $want, "$name: exactly the enforcement point admitted");
    is($origin{$tenant} // 0, $want, "$name: the upstream saw exactly that many");
    is($redis{$tenant}[0], $want, "$name: Redis usage exact after the ttl");
    is($redis{$tenant}[1], $want, "$name: daily counter exact after the ttl");
    is($redis{$tenant}[2], $over, "$name: overage units exact");
    is($redis{$tenant}[3], $over * 1000, "$name: overage cost exact (micro-USD)");
    is(scalar keys %per_node, 2, "$name: both nodes admitted requests");
    diag(sprintf "%-15s %5d requests in %.2fs, %s, admitted %d (per node %s)",
         $name, scalar @$res, $secs, QuotaLoad::statuses($res), $admitted,
         join('/', map { $per_node{$_} } sort keys %per_node));
}

done_testing();

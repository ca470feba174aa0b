# Two gateway nodes (two nginx instances, two workers each) on one Redis,
# 64 concurrent clients spread over both, costs 1, 3, 7 and a variable cost:
# the admitted cost is exactly the limit, and Redis' counter and what the
# upstream received agree with it (no over-admission, no lost charge).

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest qw(:DEFAULT nginx_start nginx_stop valgrind_problems);
use QuotaTime;
use QuotaLoad;
use File::Temp qw(tempdir);

redis_flush();

my $L = 840;    # divisible by 1, 3 and 7
my $start = month_start();
my $rport = $ENV{TEST_NGINX_REDIS_PORT};
my @nodes;

for my $n (1, 2) {
    my ($port, $oport) = (free_port(), free_port());
    my $root = tempdir("t055-node$n-XXXX", TMPDIR => 1, CLEANUP => 1);
    my $h = nginx_start(
        servroot         => $root,
        port             => $port,
        workers          => 2,
        master           => 1,
        no_root_location => 1,
        http_config      => <<"_EOC_",
    quota_redis 127.0.0.1:$rport timeout=5s connect_timeout=30s;
    quota_failure_mode closed;    # a request Redis did not decide is a 503
    quota_metric api_requests;
    quota_plan p { limit api_requests $L; }
    quota_default_plan p;

    log_format origin '\$http_x_api_key \$http_x_cost';
    server {
        listen 127.0.0.1:$oport;
        quota off;
        access_log logs/origin.log origin;
        location / { return 200 "ok\\n"; }
    }
_EOC_
        config => <<"_EOC_",
    quota on;
    quota_tenant \$http_x_api_key;
    quota_route * /api/one/**   api_requests=1;
    quota_route * /api/three/** api_requests=3;
    quota_route * /api/seven/** api_requests=7;
    quota_route * /api/var/**   api_requests=\$http_x_cost;

    location / {
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_pass http://127.0.0.1:$oport;
    }
_EOC_
    );
    die "node $n: $h->{error}\n" if $h->{error};
    push @nodes, { h => $h, port => $port, root => $root };
}

# both nodes' workers connected (under valgrind a worker needs seconds)
for my $n (@nodes) {
    my $deadline = time + 60;
    my $ok = 0;
    while (time < $deadline && $ok < 10) {
        my $r = http_request($n->{port}, 'POST', '/api/one/x', { 'X-API-Key' => 'warm-up' }, '', 30);
        $ok = ($r->{status} // '') eq '200' ? $ok + 1 : 0;
    }
}

my %route = (1 => 'one', 3 => 'three', 7 => 'seven');

# each phase: one tenant, a list of costs, sent alternately to both nodes;
# a cost given as [c] goes through the variable rule
my @phases = (
    [ 'cost 1',   [ (1) x ($L + 360) ] ],
    [ 'cost 3',   [ (3) x ($L / 3 + 120) ] ],
    [ 'cost 7',   [ (7) x ($L / 7 + 80) ] ],
    # 1, 3, 7 and variable costs interleaved, then enough cost-1 requests
    # to fill whatever the big ones left: the admitted sum must reach L
    [ 'mixed',    do {
        srand(55);
        my @c = map { $_ % 4 == 3 ? [ 1 + int rand 40 ] : (1, 3, 7)[$_ % 4] }
                0 .. 399;
        [ @c, (1) x $L ];
    } ],
);

my %phase_res;
for my $ph (@phases) {
    my ($name, $costs) = @$ph;
    (my $tenant = "multi-$name") =~ s/ /-/g;
    my $res = QuotaLoad::run(
        concurrency => 64,
        timeout     => 20,
        gen         => sub {
            my ($i) = @_;
            return undef if $i >= @$costs;
            my $c = $costs->[$i];
            my ($path, $cost) = ref $c ? ('/api/var/x', $c->[0])
                                       : ("/api/$route{$c}/x", $c);
            return { port => $nodes[$i % 2]{port}, method => 'POST',
                     path => $path, tag => $cost,
                     headers => { 'X-API-Key' => $tenant, 'X-Cost' => $cost } };
        },
    );
    $phase_res{$name} = [ $tenant, $res ];
}

# stop both nodes: their access logs are complete afterwards
nginx_stop($_->{h}, master => 1) for @nodes;

my %origin;    # tenant => [count, cost sum]
for my $n (@nodes) {
    open my $fh, '<', "$n->{root}/logs/origin.log" or die "origin.log: $!";
    while (<$fh>) {
        my ($t, $c) = split ' ';
        $origin{$t}[0]++;
        $origin{$t}[1] += $c eq '-' ? 0 : $c;    # the warm-up sends no cost
    }
    my $log = do { local $/; open my $e, '<', "$n->{root}/logs/error.log"; <$e> // '' };
    unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/,
           "node $n->{port}: no alert, no crash");
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
    my $name = $ph->[0];
    my ($tenant, $res) = @{ $phase_res{$name} };
    my (%st, $admitted, $admitted_n, %per_node);
    $admitted = $admitted_n = 0;
    for my $r (@$res) {
        $st{ $r->{status} || 'none' }++;
        next unless $r->{status} eq '200';
        $admitted += $r->{req}{tag};
        $admitted_n++;
        $per_node{ $r->{req}{port} }++;
    }
    is(join(' ', sort keys %st), '200 402', "$name: only 200 and 402")
        or diag(QuotaLoad::statuses($res));
    is($admitted, $L, "$name: admitted cost is the limit exactly");
    is(redis('HGET', "quota:{$tenant}:usage:$start", 'api_requests'), $L,
       "$name: Redis counter is the limit");
    is_deeply($origin{$tenant} // [0, 0], [$admitted_n, $L],
              "$name: the upstream received exactly the admitted requests");
    is(scalar keys %per_node, 2, "$name: both nodes admitted requests");
    diag(sprintf "%-7s %5d requests, %s, admitted %d (cost %d; per node %s), "
         . "max latency %.3fs", $name, scalar @$res, QuotaLoad::statuses($res),
         $admitted_n, $admitted, join('/', map { $per_node{$_} } sort keys %per_node),
         QuotaLoad::max_latency($res));
}

done_testing();

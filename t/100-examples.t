# Every file in conf.example/ passes "nginx -t", and each billing model's
# example is run and exercised: the file as shipped, with only its ports,
# the Redis address and the module path moved for the test (and a stand-in
# for the customer's upstream added).

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaTime;
use File::Temp qw(tempdir);
use Digest::SHA qw(sha256_hex);
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(sleep time);

my $nginx = $ENV{TEST_NGINX_BINARY} || 'nginx';
my ($module) = split ' ', ($ENV{TEST_NGINX_LOAD_MODULES} // '');
my $examples = "$FindBin::Bin/../conf.example";
my $start = month_start();

redis_flush();

# the shipped file, made runnable here
sub prepare {
    my ($file, %port) = @_;
    open my $fh, '<', "$examples/$file" or die "$file: $!";
    my $conf = do { local $/; <$fh> };
    $conf =~ s{^load_module\s+\S+;}{load_module $module;}m or die "no load_module in $file";
    $conf =~ s{\.\./ngx_http_quota_module\.so}{$module}g;
    $conf =~ s{127\.0\.0\.1:(6379|6399)}{127.0.0.1:$ENV{TEST_NGINX_REDIS_PORT}}g;
    $conf =~ s{worker_processes auto;}{worker_processes 2;};
    for my $p (sort keys %port) {
        $conf =~ s{listen\s+(?:127\.0\.0\.1:)?$p;}{listen 127.0.0.1:$port{$p};}g;
        $conf =~ s{server\s+127\.0\.0\.1:$p;}{server 127.0.0.1:$port{$p};}g;
    }
    return $conf;
}

sub run_example {
    my ($conf, $code, $wait_port) = @_;
    my $dir = tempdir(CLEANUP => 1);
    mkdir "$dir/logs";
    open my $fh, '>', "$dir/nginx.conf" or die $!;
    print $fh $conf;
    close $fh;
    my $user = $> == 0 ? "user root;" : "";
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        open STDERR, '>', "$dir/logs/stderr.log";
        { exec $nginx, '-p', "$dir/", '-c', 'nginx.conf', '-g', "daemon off; $user" }
        POSIX::_exit(127);
    }
    my $deadline = time + 10;
    while (time < $deadline) {
        last if IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $wait_port);
        sleep 0.02;
    }
    sleep 0.1;    # Redis handshakes of the workers
    my $ok = eval { $code->(); 1 };
    my $err = $@;
    kill 'QUIT', $pid;
    waitpid $pid, 0;
    my $log = do { local $/; open my $l, '<', "$dir/logs/error.log"; <$l> // '' };
    die $err unless $ok;
    unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'no alert in error.log');
    return $log;
}

sub req {
    my ($port, $method, $path, %h) = @_;
    return http_request($port, $method, $path, \%h, $method eq 'GET' ? undef : '');
}

sub account { my ($t, @kv) = @_; redis('HSET', "quota:{$t}:account", @kv) }

# the customer's API, stood in by a server block the test adds
sub with_backend {
    my ($conf, $bport) = @_;
    my $backend = <<"_EOC_";
    server {
        listen 127.0.0.1:$bport;
        quota off;
        location /api/v2/p/ai/ { add_header X-AI-Tokens-Used 1234; return 200 "ai\\n"; }
        location /api/reporter/ { add_header X-Reports-Ingested 3; return 200 "reports\\n"; }
        location / { return 200 "backend\\n"; }
    }
}
_EOC_
    $conf =~ s/\}\s*\z/$backend/;
    return $conf;
}


# 0. nginx -t on every example, unmodified but for paths and the module
opendir my $d, $examples or die $!;
my @files = sort grep { /\.conf$/ } readdir $d;
ok(scalar @files >= 4, 'conf.example holds the quickstart and three billing models');
for my $f (@files) {
    my $dir = tempdir(CLEANUP => 1);
    mkdir "$dir/logs";
    my $conf = prepare($f);
    open my $fh, '>', "$dir/nginx.conf" or die $!;
    print $fh $conf;
    close $fh;
    my $out = `$nginx -t -p $dir/ -c nginx.conf 2>&1`;
    is($?, 0, "nginx -t conf.example/$f") or diag $out;
}


# 1. tiered plans
{
    my ($p, $b) = (free_port(), free_port());
    my $conf = with_backend(prepare('tiered-plans.conf', 8080 => $p, 9000 => $b), $b);
    my $free = 'free-key';
    my $pro = 'pro-key';
    account(sha256_hex($pro), plan => 'pro');
    run_example($conf, sub {
        my $r = req($p, 'GET', '/api/things', 'X-API-Key' => $free);
        is($r->{status}, 200, 'tiered: a free tenant reads');
        is($r->{headers}{'x-quota-limit'}, 1000, 'tiered: free plan api_requests limit');
        like($r->{headers}{'ratelimit-policy'} // '', qr/"rate";q=30;w=60, "concurrency";q=1;/,
             'tiered: RateLimit-Policy names the plan rate and concurrency');

        my @codes = map { req($p, 'POST', '/api/exports/csv', 'X-API-Key' => $free)->{status} } 1 .. 6;
        is_deeply(\@codes, [200, 200, 200, 200, 200, 402], 'tiered: free exports 5 a month, the 6th 402');

        $r = req($p, 'POST', '/api/exports/csv', 'X-API-Key' => $free);
        like($r->{body}, qr/^\{"error":"QUOTA_EXCEEDED","message":"Monthly exports quota exhausted\. Quota resets on [-0-9]+\.","metric":"exports","current_usage":5,"quota_limit":5,"quota_reset_date":"[-0-9T:]+Z"\}$/,
             'tiered: 402 body with quota_reset_date');
        is($r->{headers}{'x-quota-warning'}, 'Approaching quota limit (100% used)', 'tiered: warning header');

        $r = req($p, 'POST', '/api/scans', 'X-API-Key' => $pro);
        is($r->{headers}{'x-quota-limit'}, 2000, 'tiered: the pro plan from the account');

        # free: 30 requests a minute (a burst of 30); 6 were admitted so far,
        # refused requests use no rate
        @codes = map { req($p, 'GET', '/api/x', 'X-API-Key' => $free)->{status} } 1 .. 25;
        is($codes[23], 200, 'tiered: the 30th admitted request of the minute passes');
        is($codes[24], 429, 'tiered: the 31st gets 429') or diag("@codes");
    }, $p);
}


# 2. monthly actions, grace on paid plans only, shadow mode
{
    my ($p, $b) = (free_port(), free_port());
    my $conf = with_backend(prepare('monthly-actions.conf', 8080 => $p, 9000 => $b), $b);
    account('ws-growth', plan => 'growth', 'limit:actions' => 10);
    account('ws-starter', plan => 'starter', 'limit:actions' => 2);
    run_example($conf, sub {
        my @r = map { req($p, 'POST', '/v1/items', 'X-Workspace' => 'ws-growth') } 1 .. 12;
        is_deeply([map { $_->{status} } @r], [(200) x 11, 402], 'actions: growth, 10 + 10% grace = 11');
        is($r[10]{headers}{'x-quota-limit'}, 10, 'actions: inside the grace the limit header says 10');
        is($r[10]{headers}{'x-quota-remaining'}, 0, 'actions: and remaining 0');
        ok($r[0]{headers}{'x-quota-reset'}, 'actions: reset header on every response');

        my @s = map { req($p, 'POST', '/v1/items', 'X-Workspace' => 'ws-starter')->{status} } 1 .. 3;
        is_deeply(\@s, [200, 200, 402], 'actions: starter has no grace');

        my $r = req($p, 'POST', '/v1/items?mode=shadow', 'X-Workspace' => 'ws-shadow');
        is($r->{headers}{'x-quota-used'}, 0, 'actions: shadow request evaluated, not counted');
        $r = req($p, 'POST', '/v1/batch', 'X-Workspace' => 'ws-shadow', 'X-Batch-Size' => 7);
        is($r->{headers}{'x-quota-used'}, 7, 'actions: a batch of 7 costs 7');
        $r = req($p, 'POST', '/v1/batch', 'X-Workspace' => 'ws-shadow', 'X-Batch-Size' => 'many');
        is($r->{status}, 400, 'actions: a bad batch size is 400 BAD_COST');
        is(redis('HGET', "quota:{ws-shadow}:daily:$start", 'actions:' . today()), 7,
           'actions: daily breakdown');
    }, $p);
}


# 3. per-seat pools, weighted versions, overage and cap, trial, enterprise,
#    self-hosted, AI tokens reconciled
{
    my ($p, $ps, $b) = (free_port(), free_port(), free_port());
    my $conf = with_backend(prepare('per-seat-pools.conf', 8080 => $p, 8081 => $ps, 9000 => $b), $b);
    my %k = map { $_ => sha256_hex($_) } qw(acme capped trialco bigcorp);
    account($k{acme}, plan => 'professional', seats => 3);
    account($k{capped}, plan => 'professional', seats => 1, overage => 1, cap => '0.00002',
            'limit:api_requests' => 2);
    account($k{trialco}, plan => 'free', status => 'trial', 'limit:api_requests' => 1);
    account($k{bigcorp}, plan => 'enterprise', overage => 1, 'limit:api_requests' => 4);
    run_example($conf, sub {
        my $r = req($p, 'POST', '/api/v2/p/tests', 'X-API-Key' => 'acme');
        is($r->{headers}{'x-quota-used'}, 1, 'pools: v2 write costs 1');
        is($r->{headers}{'x-quota-limit'}, 15000, 'pools: 3 seats x 5000');
        $r = req($p, 'POST', '/api/p/tests/9', 'X-API-Key' => 'acme', Authorization => 'Bearer t');
        is($r->{headers}{'x-quota-used'}, 3, 'pools: v1 write with a token costs 2');
        $r = req($p, 'POST', '/api/p/tests/9', 'X-API-Key' => 'acme', Cookie => 'sid=1');
        ok(!exists $r->{headers}{'x-quota-used'}, 'pools: v1 with cookie auth is free');
        $r = req($p, 'GET', '/api/v2/p/tests', 'X-API-Key' => 'acme');
        ok(!exists $r->{headers}{'x-quota-used'}, 'pools: reads are free');

        $r = req($p, 'POST', '/api/v2/p/ai/chat', 'X-API-Key' => 'acme', 'X-Token-Estimate' => 500);
        is($r->{headers}{'x-quota-used'}, 500, 'pools: AI tokens estimated first');
        my $deadline = time + 3;
        sleep 0.02 while time < $deadline
            && (redis('HGET', "quota:{$k{acme}}:usage:$start", 'ai_tokens') // 0) != 1234;
        is(redis('HGET', "quota:{$k{acme}}:usage:$start", 'ai_tokens'), 1234, 'pools: then reconciled to 1234');

        my @c = map { req($p, 'POST', '/api/v2/p/tests', 'X-API-Key' => 'capped')->{status} } 1 .. 5;
        is_deeply(\@c, [200, 200, 200, 200, 402], 'pools: overage until the cap (2 units of 0.00001)');
        $r = req($p, 'POST', '/api/reporter/upload', 'X-API-Key' => 'capped');
        like($r->{body}, qr/"error":"SPENDING_CAP_REACHED"/, 'pools: at the cap every metric is blocked');

        @c = map { req($p, 'POST', '/api/v2/p/tests', 'X-API-Key' => 'trialco')->{status} } 1 .. 3;
        is_deeply(\@c, [200, 200, 200], 'pools: trial is never blocked');

        @c = map { req($p, 'POST', '/api/v2/p/tests', 'X-API-Key' => 'bigcorp')->{status} } 1 .. 6;
        is_deeply(\@c, [(200) x 5, 402], 'pools: enterprise never goes into overage (4 + 25% grace)');

        $r = req($p, 'GET', '/api/v1/usage', 'X-API-Key' => 'acme');
        like($r->{body}, qr/"plan":"professional","status":"active","seats":3,.*"api_requests":\{"used":4,"limit":15000,"remaining":14996,"overage":0\}/,
             'pools: the usage endpoint');
        $r = req($p, 'GET', '/api/v1/usage/alerts', 'X-API-Key' => 'capped');
        like($r->{body}, qr/"type":"spending_cap_reached"/, 'pools: the alerts endpoint');
        $r = req($p, 'GET', '/quota/metrics');
        like($r->{body}, qr/^quota_decisions_total\{status="REJECTED_CAP"\} 2$/m, 'pools: the metrics endpoint');

        $r = req($ps, 'POST', '/api/v2/p/tests', 'X-API-Key' => 'acme');
        is($r->{status}, 200, 'pools: self-hosted listener');
        ok(!exists $r->{headers}{'x-quota-used'}, 'pools: self-hosted is not metered');
    }, $p);
    is(redis('HGET', "quota:{$k{capped}}:usage:$start", 'api_requests:overage'), 2,
       'pools: two overage units');
}

done_testing();

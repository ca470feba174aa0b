# Every file in conf.example/ passes "nginx -t", and each billing model's
# example is run and exercised: the file as shipped, with only its ports,
# the Redis address, the module path and the Redis timeout changed for the
# test (and a stand-in for the customer's upstream added).

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
    # a 50 ms Redis timeout suits production, not a test box shared with a
    # whole suite: a slow reply would admit by fail-open and skip the
    # checks this file makes
    $conf =~ s{(quota_redis\s[^;]*\btimeout=)\d+ms}{${1}5s}g;
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
        location /api/v2/p/ai/ {
            add_header X-AI-Tokens-Used 1234;
            add_header X-Backend-URI \$request_uri;
            return 200 "ai\\n";
        }
        location /api/reporter/ {
            add_header X-Reports-Ingested 3;
            add_header X-Backend-URI \$request_uri;
            return 200 "reports\\n";
        }
        location / { add_header X-Backend-URI \$request_uri; return 200 "backend\\n"; }
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
        is($r->{headers}{'x-quota-used'}, 3, 'pools: v1 with cookie auth is free');
        $r = req($p, 'GET', '/api/v2/p/tests', 'X-API-Key' => 'acme');
        ok(!exists $r->{headers}{'x-quota-used'}, 'pools: reads are free');

        $r = req($p, 'POST', '/api/v2/p/ai/chat', 'X-API-Key' => 'acme', 'X-Token-Estimate' => 5000);
        is($r->{headers}{'x-quota-used'}, 5000, 'pools: AI tokens estimated first');
        my $deadline = time + 3;
        sleep 0.02 while time < $deadline
            && (redis('HGET', "quota:{$k{acme}}:usage:$start", 'ai_tokens') // 0) != 1234;
        is(redis('HGET', "quota:{$k{acme}}:usage:$start", 'ai_tokens'), 1234, 'pools: then reconciled to 1234');

        # S2: the estimate the client sends has a floor of 1000, so an
        # estimate of 0 (or none, or garbage) cannot carry AI calls past
        # the quota: limit 3000 + 10 % grace = 3300, the backend reports 1234
        # a call; 0 + 1000, 1234 + 1000 pass, 2468 + 1000 does not
        for my $est ('0', '', 'abc', '-5', '999', '0999', '1000', '020000') {
            my $t = "est-$est";
            $r = req($p, 'POST', '/api/v2/p/ai/chat', 'X-API-Key' => $t,
                     'X-Token-Estimate' => $est);
            is($r->{headers}{'x-quota-used'}, $est =~ /^0*([1-9]\d{3,})$/ ? $1 : 1000,
               "pools: estimate '$est' charges max(estimate, 1000) first");
        }
        my $zero = sha256_hex('zero');
        account($zero, plan => 'professional', seats => 1, 'limit:ai_tokens' => 3000);
        my @z;
        for my $n (1 .. 5) {
            my $before = redis('HGET', "quota:{$zero}:usage:$start", 'ai_tokens') // 0;
            push @z, req($p, 'POST', '/api/v2/p/ai/chat', 'X-API-Key' => 'zero',
                         'X-Token-Estimate' => 0)->{status};
            next unless $z[-1] == 200;
            my $deadline = time + 3;
            sleep 0.02 while time < $deadline
                && (redis('HGET', "quota:{$zero}:usage:$start", 'ai_tokens') // 0) != $before + 1234;
        }
        is_deeply(\@z, [200, 200, 402, 402, 402],
                  'pools: a client estimating 0 tokens is refused once the floor does not fit');
        is(redis('HGET', "quota:{$zero}:usage:$start", 'ai_tokens'), 2468,
           'pools: and its usage stays within limit + grace');

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


# 4. path spellings (README "Path normalisation"): rules match the normalized
#    $uri, so a path spelled so that nginx's normalisation and the upstream's
#    routing disagree (";" parameters, case, "%2F" inside a segment, "%2e%2e",
#    "..") must not reach the upstream unmetered. Every example has a
#    catch-all rule and forwards the normalized URI (proxy_pass with a URI
#    part): whatever reaches the upstream was charged something, and the
#    upstream never sees a raw dot segment or an encoded slash.
sub spellings {
    my ($base) = @_;
    my @s = grep { length } split m{/}, $base;
    my ($first, $rest) = ($s[0], join('/', @s[1 .. $#s]));
    my $last = $s[-1];
    my $stem = join '/', '', @s[0 .. $#s - 1];
    my $cut = int(length($last) / 2);
    my @p = (
        "$base;jsessionid=1",
        "/$first;x/$rest",
        "/\U$first\E/$rest",
        uc $base,
        "$base%3Bx",
        "$base%20",
        "$stem/" . substr($last, 0, $cut) . '%2F' . substr($last, $cut),
        "/$first/%2e%2e/x",
        "/$first/x/../../etc",
        "/$first/%2e%2e$base",
        "/$first/%2E%2E/%2e%2e/$rest",
        "//$first//$rest",
        "/$first/./$rest",
        "$base/",
        '/%' . sprintf('%02X', ord substr($first, 0, 1)) . substr($base, 2),
    );
    if (@s >= 3) {    # an encoded slash inside a middle segment (a :param)
        my $m = $s[-2];
        my $c = int(length($m) / 2) || 1;
        push @p, join('/', '', @s[0 .. $#s - 2], substr($m, 0, $c) . '%2F'
                      . substr($m, $c), $last);
    }
    return @p;
}

sub usage_sum {
    my ($t) = @_;
    my %h = @{ redis('HGETALL', "quota:{$t}:usage:$start") || [] };
    my $sum = 0;
    $sum += $h{$_} for grep { !/:/ && $_ ne 'overage_cost' } keys %h;
    return $sum;
}

my $n_spell = 0;
for my $ex (
    { file => 'quickstart.conf', ports => [8080, 8081], header => 'X-API-Key',
      hash => 1, methods => ['POST'], bases => ['/api/v2/demo/tests'],
      backend => qr/"ok":true/ },
    { file => 'tiered-plans.conf', ports => [8080, 9000], header => 'X-API-Key',
      hash => 1, methods => ['GET', 'POST'], bases => ['/api/scans', '/api/exports/csv'] },
    { file => 'monthly-actions.conf', ports => [8080, 9000], header => 'X-Workspace',
      methods => ['POST', 'DELETE'], bases => ['/v1/items', '/v1/batch'],
      extra => { 'X-Batch-Size' => 5 } },
    { file => 'per-seat-pools.conf', ports => [8080, 8081, 9000], header => 'X-API-Key',
      hash => 1, methods => ['POST', 'PUT'],
      bases => ['/api/v2/p/tests', '/api/v2/p/tests/9', '/api/p/tests',
                '/api/v2/p/ai/chat', '/api/reporter/upload'],
      extra => { 'X-Token-Estimate' => 10, Authorization => 'Bearer t' } },
) {
    my @ports = map { free_port() } @{ $ex->{ports} };
    my %map = map { $ex->{ports}[$_] => $ports[$_] } 0 .. $#ports;
    my $conf = prepare($ex->{file}, %map);
    my $backend = $ex->{backend} // qr/^(backend|ai|reports)\n\z/;
    if ($ex->{backend}) {
        # the demo upstream also says what it was sent
        $conf =~ s{"uri":"\$uri"}{"uri":"\$uri","sent":"\$request_uri"}
            or die "quickstart: no demo upstream";
    } else {
        $conf = with_backend($conf, $map{9000});
    }
    my $p = $ports[0];
    my (@rows, $i);
    run_example($conf, sub {
        for my $base (@{ $ex->{bases} }) {
            for my $path (spellings($base)) {
                for my $m (@{ $ex->{methods} }) {
                    my $key = "spell-$ex->{file}-" . $i++;
                    my $t = $ex->{hash} ? sha256_hex($key) : $key;
                    my $r = req($p, $m, $path, $ex->{header} => $key,
                                %{ $ex->{extra} || {} });
                    my $reached = ($r->{body} // '') =~ $backend;
                    my ($sent) = $ex->{backend}
                        ? (($r->{body} // '') =~ /"sent":"([^"]*)"/)
                        : ($r->{headers}{'x-backend-uri'});
                    push @rows, [$m, $path, $r->{status} // '', $reached,
                                 $sent // '-', $t];
                }
            }
        }
        # reconcile (log phase) has run once the next request is answered
        req($p, 'GET', '/');
        sleep 0.2;
    }, $p);
    for my $row (@rows) {
        my ($m, $path, $st, $reached, $sent, $t) = @$row;
        my $charged = usage_sum($t);
        $n_spell++;
        ok(!$reached || $charged > 0,
           "$ex->{file}: $m $path reaches the upstream only metered")
            or diag("status $st, upstream was sent $sent, charged $charged");
        next unless $reached && $m ne 'GET';
        unlike($sent, qr{%2[eEfF]|/\.\.?(/|$|\?)|//},
               "$ex->{file}: $m $path: the upstream is sent the normalized URI");
    }
}
ok($n_spell > 100, "$n_spell spellings tried");

done_testing();

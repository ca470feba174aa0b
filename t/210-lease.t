# quota_lease (SPEC 9) on one gateway (2 workers): configuration errors with
# file:line; a tenant with ample quota costs at most one script run per 10
# requests and Redis is exact once the ttl has passed; the last units near
# the limit are never over-admitted; graceful quit and a reload that drops
# the zone return the unspent units at once (ttl 60 s: only the quit or the
# reload can have returned them); shadow traffic and dry run stay exact.
# The two-node hammering is t/211-lease-multinode.t.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest qw(:DEFAULT nginx_start nginx_stop valgrind_problems);
use QuotaTime;
use QuotaLoad;
use File::Temp qw(tempdir);
use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw(sleep time);

redis_flush();

my $start = month_start();
my $today = today();

# ------------------------------------------------------------ nginx -t ----

my $base = "quota_redis 127.0.0.1:1;\nquota_metric a;\n";

my @cases = (
    [ 'quota_lease without quota_zone (location)',
      "server { listen 127.0.0.1:1;\n location / {\n quota_lease auto; #HERE\n }\n }",
      qr/"quota_lease" in \S+nginx\.conf:(\d+) needs "quota_zone" in the http block/, 'own' ],
    [ 'quota_lease N without quota_zone (http)',
      "quota_lease 100 ttl=2s; #HERE",
      qr/"quota_lease" in \S+nginx\.conf:(\d+) needs "quota_zone"/, 'own' ],
    [ 'bad ttl', "quota_zone q:1m;\nquota_lease auto ttl=abc; #HERE",
      qr/invalid ttl "ttl=abc", expected 10ms to 1h/ ],
    [ 'ttl 0', "quota_zone q:1m;\nquota_lease auto ttl=0; #HERE",
      qr/invalid ttl "ttl=0"/ ],
    [ 'ttl too long', "quota_zone q:1m;\nquota_lease auto ttl=2h; #HERE",
      qr/invalid ttl "ttl=2h"/ ],
    [ 'bad value', "quota_zone q:1m;\nquota_lease lots; #HERE",
      qr/invalid value "lots", expected off, auto or a number of units/ ],
    [ 'zero units', "quota_zone q:1m;\nquota_lease 0; #HERE",
      qr/invalid value "0"/ ],
    [ 'bad parameter', "quota_zone q:1m;\nquota_lease auto tll=1s; #HERE",
      qr/invalid parameter "tll=1s"/ ],
    [ 'duplicate', "quota_zone q:1m;\nquota_lease auto;\nquota_lease 10; #HERE",
      qr/"quota_lease" directive is duplicate/ ],
);

for my $c (@cases) {
    my ($name, $http, $re, $own) = @$c;
    my ($rc, $out, $file, $line) = QuotaTest::nginx_t($base . $http);
    isnt($rc, 0, "$name: nginx -t fails");
    like($out, $re, "$name: message");
    if ($own) {
        my ($at) = $out =~ $re;
        is($at, $line, "$name: names the directive's line");
    } else {
        like($out, qr/\Q$file\E:$line\b/, "$name: points at $file:$line");
    }
}

for my $ok ("quota_lease off;", "quota_zone q:1m;\nquota_lease auto;",
            "quota_zone q:1m;\nserver { listen 127.0.0.1:1; quota_lease 10 ttl=250ms; }") {
    my ($rc, $out) = QuotaTest::nginx_t($base . $ok);
    is($rc, 0, "passes nginx -t: $ok") or diag($out);
}

# ------------------------------------------------------------- helpers ----

sub metric {
    my ($text, $name) = @_;
    my ($v) = $text =~ /^\Q$name\E (\S+)$/m;
    return $v;
}

sub scripts_run {
    my $info = redis('INFO', 'commandstats');
    my $n = 0;
    $n += $1 while $info =~ /^cmdstat_(?:evalsha|eval):calls=(\d+)/mg;
    return $n;
}

sub http_conf {
    my (%o) = @_;
    my $zone = $o{zone} || 'q:1m';
    return <<"_EOC_";
    quota_redis 127.0.0.1:$ENV{TEST_NGINX_REDIS_PORT} timeout=5s;
    quota_failure_mode closed;    # an undecided request shows as a 503
    quota_zone $zone;
    quota_metric a;
    quota_plan p { limit a $o{limit}; }
    quota_default_plan p;
_EOC_
}

sub server_conf {
    my ($lease, $extra, $port) = @_;
    $extra //= '';
    $port //= '$TEST_NGINX_SERVER_PORT';
    return <<"_EOC_";
    quota on;
    quota_tenant \$http_x_t;
    quota_route POST /a a=1;
    quota_route POST /b a=3;
    quota_lease $lease;
    $extra

    location / {
        proxy_pass http://127.0.0.1:$port/origin;
    }

    location = /quota/metrics {
        quota_metrics;
    }

    location /origin {
        quota off;
        return 200 "ok\\n";
    }
_EOC_
}

sub usage { redis('HGET', "quota:{$_[0]}:usage:$start", 'a') // 0 }
sub daily { redis('HGET', "quota:{$_[0]}:daily:$start", "a:$today") // 0 }

sub hammer {
    my ($port, $tenant, $n, $path, $conc) = @_;
    my $res = QuotaLoad::run(
        concurrency => $conc || 16,
        timeout     => 20,
        gen         => sub {
            my ($i) = @_;
            return undef if $i >= $n;
            return { port => $port, method => 'POST', path => $path || '/a',
                     headers => { 'X-T' => $tenant } };
        },
    );
    my %st;
    $st{ $_->{status} || 'none' }++ for @$res;
    return (\%st, $res);
}

# ------------------------------------------- ample quota: few script runs ----

{
    my ($st, $runs, $text, $u_busy, $u_rest, $d_rest, $log);
    nginx_run(workers => 2, no_root_location => 1,
              http_config => http_conf(limit => 1000000),
              config => server_conf('auto ttl=1s'), code => sub {
        my ($port, $root) = @_;
        redis('CONFIG', 'RESETSTAT');
        ($st) = hammer($port, 'ample', 1000);
        $runs = scripts_run();
        $text = http_get($port, '/quota/metrics')->{body};
        $u_busy = usage('ample');
        sleep 2.5;    # ttl (1 s) and a sweep, with margin
        $u_rest = usage('ample');
        $d_rest = daily('ample');
        $log = QuotaTest::_slurp("$root/logs/error.log");
    });
    is_deeply($st, { 200 => 1000 }, 'ample: every request admitted');
    cmp_ok($runs, '<=', 100, "ample: at most one script run per 10 requests ($runs for 1000)");
    cmp_ok(metric($text, 'quota_local_decisions_total{kind="lease"}'), '>=', 900,
           'ample: local decisions counted');
    cmp_ok(metric($text, 'quota_leases_total'), '>', 0, 'ample: leases counted');
    cmp_ok($u_busy, '>=', 1000, "ample: leases reserved ahead ($u_busy)");
    is($u_rest, 1000, 'ample: Redis usage exact once the ttl passed');
    is($d_rest, 1000, 'ample: daily counter exact once the ttl passed');
    unlike($log, qr/\[(alert|crit|emerg)\]|not returned/, 'ample: nothing lost, no alert');
}

# ------------------------------------------------- near the limit: exact ----

{
    my ($st, $u, $d);
    nginx_run(workers => 2, no_root_location => 1,
              http_config => http_conf(limit => 300),
              config => server_conf('auto ttl=1s'), code => sub {
        my ($port) = @_;
        ($st) = hammer($port, 'near', 600, '/a', 32);
        sleep 2.5;
        $u = usage('near');
        $d = daily('near');
    });
    is_deeply($st, { 200 => 300, 402 => 300 }, 'near: exactly the limit admitted');
    is($u, 300, 'near: Redis usage is the limit once the ttl passed');
    is($d, 300, 'near: daily counter too');
}

# --------------------- graceful quit returns the unspent units at once ----

sub node {
    my (%o) = @_;
    my $port = free_port();
    my $root = tempdir("t210-XXXX", TMPDIR => 1, CLEANUP => 1);
    my $h = nginx_start(servroot => $root, port => $port, workers => 2, master => 1,
                        no_root_location => 1,
                        http_config => http_conf(%o),
                        config => server_conf($o{lease}, '', $port));
    die "nginx: $h->{error}\n" if $h->{error};
    QuotaTest::wait_module_ready($root, http_conf(%o), 2);
    return ($h, $port, $root);
}

# valgrind or the sanitizers on a node started here (nginx_run checks its own)
sub memcheck {
    my ($h, $root, $name) = @_;
    if ($h->{valgrind}) {
        my @p = valgrind_problems($root);
        is(scalar @p, 0, "$name: valgrind clean") or diag(join "\n", @p);
    }
    if ($ENV{TEST_NGINX_USE_SANITIZER}) {
        my @p = QuotaTest::sanitizer_problems($root);
        is(scalar @p, 0, "$name: no sanitizer report") or diag(join "\n", @p);
    }
}

{
    my ($h, $port, $root) = node(limit => 1000000, lease => '50 ttl=60s');
    my ($st1) = hammer($port, 'quit', 230, '/a', 8);
    my ($st3) = hammer($port, 'quit', 40, '/b', 8);
    my $held = usage('quit');
    nginx_stop($h, master => 1);
    is_deeply([$st1, $st3], [{ 200 => 230 }, { 200 => 40 }], 'quit: admitted');
    cmp_ok($held, '>', 230 + 120, "quit: leases outstanding before the quit ($held)");
    is(usage('quit'), 230 + 120, 'quit: Redis usage exact right after nginx -s quit');
    is(daily('quit'), 230 + 120, 'quit: daily counter too');
    my $log = QuotaTest::_slurp("$root/logs/error.log");
    unlike($log, qr/\[(alert|crit|emerg)\]|not returned|exited on signal/, 'quit: clean');
    memcheck($h, $root, 'quit');
}

# ---------- a reload to another zone: the old workers return their leases ----

{
    my ($h, $port, $root) = node(limit => 1000000, lease => '50 ttl=60s');
    my ($st1) = hammer($port, 'reload', 230, '/a', 8);
    my $held = usage('reload');

    # the same configuration with another zone: nothing in the old one
    # survives the reload, so only the old workers can return its leases
    my $conf = QuotaTest::_slurp("$root/conf/nginx.conf");
    $conf =~ s/quota_zone q:1m;/quota_zone q2:1m;/ or die "no zone in nginx.conf";
    open my $fh, '>', "$root/conf/nginx.conf" or die $!;
    print $fh $conf;
    close $fh;
    kill 'HUP', $h->{pid};
    # under valgrind the new workers need a while for their Redis handshake
    QuotaTest::wait_module_ready($root, $conf, 4);

    my $deadline = time + 20;
    sleep 0.1 while usage('reload') != 230 && time < $deadline;
    my $after = usage('reload');

    my ($st2) = hammer($port, 'reload', 70, '/a', 8);
    nginx_stop($h, master => 1);
    is_deeply([$st1, $st2], [{ 200 => 230 }, { 200 => 70 }], 'reload: admitted');
    cmp_ok($held, '>', 230, "reload: leases outstanding before the reload ($held)");
    is($after, 230, 'reload: the old workers returned their unspent units');
    is(usage('reload'), 300, 'reload: exact at rest after the quit');
    is(daily('reload'), 300, 'reload: daily counter too');
    my $log = QuotaTest::_slurp("$root/logs/error.log");
    unlike($log, qr/\[(alert|crit|emerg)\]|not returned|exited on signal/, 'reload: clean');
    memcheck($h, $root, 'reload');
}

# ------ a full zone evicts idle tenants, their leases returned first ----

{
    my (%before, $text, $log);
    my @t = map { "evict$_" } 1 .. 300;
    nginx_run(workers => 2, no_root_location => 1,
              http_config => http_conf(limit => 1000000, zone => 'q:32k'),
              config => server_conf('20 ttl=60s'), code => sub {
        my ($port, $root) = @_;
        for my $t (@t) {
            for (1 .. 2) {
                my $r = http_request($port, 'POST', '/a', { 'X-T' => $t }, '', 10);
                die "$t: $r->{status}\n" unless $r->{status} eq '200';
            }
        }
        $before{$_} = usage($_) for @t;
        $text = http_get($port, '/quota/metrics')->{body};
    });
    my $evicted = metric($text, 'quota_zone_evictions_total');
    my $returned = grep { $before{$_} == 2 } @t;
    my $held = grep { $before{$_} == 20 } @t;
    cmp_ok($evicted, '>', 0, "evict: tenants evicted ($evicted)");
    is($returned, $evicted, 'evict: each evicted tenant\'s lease was returned at once');
    is($returned + $held, 300, 'evict: the others still held theirs');
    is(scalar(grep { usage($_) != 2 } @t), 0, 'evict: every tenant exact after the quit');
}

# ------------- headers: what was spent, not what the leases reserved ----

{
    my (@used, @remaining);
    nginx_run(workers => 1, no_root_location => 1,
              http_config => http_conf(limit => 1000),
              config => server_conf('10 ttl=60s'), code => sub {
        my ($port) = @_;
        for (1 .. 25) {
            my $r = http_request($port, 'POST', '/a', { 'X-T' => 'hdr' }, '', 10);
            push @used, $r->{headers}{'x-quota-used'} // '-';
            push @remaining, $r->{headers}{'x-quota-remaining'} // '-';
        }
    });
    is("@used", join(' ', 1 .. 25), 'headers: X-Quota-Used counts the requests');
    is("@remaining", join(' ', map { 1000 - $_ } 1 .. 25),
       'headers: X-Quota-Remaining too');
}

# ------------ quota_events on: one usage_update per tenant and ttl ----

sub read_until {
    my ($s, $marker) = @_;
    my $buf = '';
    my $sel = IO::Select->new($s);
    my $deadline = time + 10;
    while (index($buf, $marker) < 0 && time < $deadline) {
        last unless $sel->can_read($deadline - time);
        sysread($s, $buf, 65536, length $buf) or last;
    }
    return $buf;
}

{
    my ($events, $secs);
    my $http = http_conf(limit => 1000000) . "    quota_events on;\n";
    nginx_run(workers => 1, no_root_location => 1, http_config => $http,
              config => server_conf('2 ttl=1s'), code => sub {
        my ($port) = @_;
        my $sub = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                        PeerPort => $ENV{TEST_NGINX_REDIS_PORT})
            or die "redis: $!";
        print $sub "*2\r\n\$9\r\nSUBSCRIBE\r\n\$12\r\nquota:events\r\n";
        read_until($sub, ":1\r\n");
        my $t0 = time;
        for (1 .. 200) {
            http_request($port, 'POST', '/a', { 'X-T' => 'events' }, '', 10);
        }
        $secs = time - $t0;
        print $sub "*2\r\n\$4\r\nPING\r\n\$6\r\nsynced\r\n";
        my $buf = read_until($sub, 'synced');
        $events = () = $buf =~ /"type":"usage_update"/g;
    });
    # 100 grants of 2 units: without the limit, 100 events
    cmp_ok($events, '<=', 2 + int($secs), sprintf(
           'events: %d usage_update for 200 requests in %.1f s', $events, $secs));
    cmp_ok($events, '>=', 1, 'events: the first one is published');
}

# -------------------- an account change applies within the ttl ----

{
    my (@before, @during, @after, $t_susp, $t_refused);
    nginx_run(workers => 1, no_root_location => 1,
              http_config => http_conf(limit => 1000000),
              config => server_conf('1000 ttl=1s'), code => sub {
        my ($port) = @_;
        my $post = sub {
            http_request($port, 'POST', '/a', { 'X-T' => 'susp' }, '', 10)->{status};
        };
        push @before, $post->() for 1 .. 5;
        redis('HSET', 'quota:{susp}:account', status => 'suspended');
        $t_susp = time;
        # the lease taken before the suspension is spent until its ttl
        push @during, $post->() for 1 .. 5;
        my $deadline = time + 10;
        while (time < $deadline) {
            my $st = $post->();
            if ($st ne '200') {
                $t_refused = time;
                push @after, $st;
                last;
            }
            sleep 0.05;
        }
        push @after, $post->() for 1 .. 3;
    });
    is("@before", '200 200 200 200 200', 'account change: admitted before');
    is("@during", '200 200 200 200 200', 'account change: the live lease is spent');
    is("@after", '402 402 402 402', 'account change: suspended once the lease ended');
    ok(defined $t_refused && $t_refused - $t_susp < 1.0 + 1.0,
       sprintf('account change: applied within the ttl (%.2f s)',
               ($t_refused // 99) - $t_susp));
    redis('DEL', 'quota:{susp}:account');
}

# ------------ plans with a rate or a concurrency limit stay exact ----

{
    my (%runs, %st, $text);
    my $http = http_conf(limit => 1000000) . <<'_EOC_';
    quota_plan rated { limit a 1000000; rate 1000r/s burst=1000; }
    quota_plan slots { limit a 1000000; concurrency 50; }
_EOC_
    redis('HSET', 'quota:{rated}:account', plan => 'rated');
    redis('HSET', 'quota:{slots}:account', plan => 'slots');
    nginx_run(workers => 2, no_root_location => 1, http_config => $http,
              config => server_conf('auto ttl=1s'), code => sub {
        my ($port) = @_;
        for my $t (qw(rated slots)) {
            redis('CONFIG', 'RESETSTAT');
            my ($s) = hammer($port, $t, 100, '/a', 4);
            $st{$t} = $s;
            $runs{$t} = scripts_run();
        }
        $text = http_get($port, '/quota/metrics')->{body};
    });
    is_deeply(\%st, { rated => { 200 => 100 }, slots => { 200 => 100 } },
              'rate, concurrency: admitted');
    cmp_ok($runs{rated}, '>=', 100, "rate: one script run per request ($runs{rated})");
    cmp_ok($runs{slots}, '>=', 100, "concurrency: one script run per request ($runs{slots})");
    is(metric($text, 'quota_local_decisions_total{kind="lease"}'), 0,
       'rate, concurrency: nothing decided from a lease');
    is(usage('rated'), 100, 'rate: charged exactly');
    is(usage('slots'), 100, 'concurrency: charged exactly');
}

# -------------------------------- shadow traffic and dry run stay exact ----

{
    my ($runs_dry, $runs_bypass);
    nginx_run(workers => 1, no_root_location => 1,
              http_config => http_conf(limit => 1000000),
              config => server_conf('50 ttl=60s', "quota_dry_run on;\n    quota_bypass \$http_x_shadow;"),
              code => sub {
        my ($port) = @_;
        redis('CONFIG', 'RESETSTAT');
        hammer($port, 'dry', 50, '/a', 1);
        $runs_dry = scripts_run();
        redis('CONFIG', 'RESETSTAT');
        for (1 .. 20) {
            http_request($port, 'POST', '/a', { 'X-T' => 'dry', 'X-Shadow' => 1 }, '', 10);
        }
        $runs_bypass = scripts_run();
    });
    is($runs_dry, 50, 'dry run: one script run per request');
    is($runs_bypass, 20, 'bypass: one script run per request');
    is(usage('dry'), 50, 'dry run: charged exactly');
}

done_testing();

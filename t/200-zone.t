# quota_zone, the node ledger's shared zone (SPEC 9): configuration errors
# with file:line, one node per tenant shared by the workers
# (quota_zone_tenants), a full zone evicts its least recently used idle
# tenants (quota_zone_evictions_total) and never fails a request.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaTime;

redis_flush();

my $base = "quota_redis 127.0.0.1:1;\nquota_metric a;\n";

my @cases = (
    [ 'no size', "quota_zone q; #HERE", qr/invalid zone "q", expected NAME:SIZE/ ],
    [ 'no name', "quota_zone :1m; #HERE", qr/invalid zone ":1m"/ ],
    [ 'bad size', "quota_zone q:lots; #HERE", qr/invalid zone size "q:lots"/ ],
    [ 'too small', "quota_zone q:8k; #HERE", qr/zone "q:8k" is too small/ ],
    [ 'duplicate', "quota_zone q:1m;\nquota_zone r:1m; #HERE",
      qr/"quota_zone" directive is duplicate/ ],
    [ 'not in a server', "server { listen 127.0.0.1:1;\n quota_zone q:1m; #HERE\n }",
      qr/"quota_zone" directive is not allowed here/ ],
);

for my $c (@cases) {
    my ($name, $http, $re) = @$c;
    my ($rc, $out, $file, $line) = QuotaTest::nginx_t($base . $http);
    isnt($rc, 0, "$name: nginx -t fails");
    like($out, $re, "$name: message");
    like($out, qr/\Q$file\E:$line\b/, "$name: points at $file:$line");
}

{
    my ($rc, $out) = QuotaTest::nginx_t($base . "quota_zone q:1m;");
    is($rc, 0, 'a good quota_zone passes nginx -t') or diag($out);
}

sub metric {
    my ($text, $name) = @_;
    my ($v) = $text =~ /^\Q$name\E (\S+)$/m;
    return $v;
}

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
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_
}

sub post {
    my ($port, $t) = @_;
    return http_request($port, 'POST', '/a', { 'X-T' => $t }, '', 10);
}

# 1. one node per tenant, shared by both workers
{
    my ($text, @st);
    nginx_run(workers => 2, no_root_location => 1, http_config => <<'_EOC_', config => server(), code => sub {
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_zone q:1m;
    quota_metric a;
    quota_plan p { limit a 1000; }
    quota_default_plan p;
_EOC_
        my ($port) = @_;
        for my $i (1 .. 20) {
            push @st, post($port, 'zt' . ($i % 5))->{status};
        }
        $text = http_get($port, '/quota/metrics')->{body};
    });
    is(join(',', @st), join(',', (200) x 20), 'every request admitted');
    is(metric($text, 'quota_zone_tenants'), 5, 'five tenants, five nodes');
    is(metric($text, 'quota_zone_evictions_total'), 0, 'no eviction');
}

# 2. a full zone evicts idle tenants and every request still passes
{
    my ($text, $log, %st, $used);
    nginx_run(workers => 2, no_root_location => 1, http_config => <<'_EOC_', config => server(), code => sub {
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_zone q:32k;
    quota_metric a;
    quota_plan p { limit a 5; }
    quota_default_plan p;
_EOC_
        my ($port, $root) = @_;
        for my $i (1 .. 600) {
            $st{ post($port, "full$i")->{status} }++;
        }
        # the first tenants were evicted: their usage is still Redis'
        $st{ 'again-' . post($port, 'full1')->{status} }++;
        $text = http_get($port, '/quota/metrics')->{body};
        $log = QuotaTest::_slurp("$root/logs/error.log");
    });
    is_deeply(\%st, { 200 => 600, 'again-200' => 1 }, 'no request failed');
    cmp_ok(metric($text, 'quota_zone_evictions_total'), '>', 0,
           'evictions counted');
    cmp_ok(metric($text, 'quota_zone_tenants'), '<', 600,
           'the zone holds fewer tenants than it saw');
    cmp_ok(metric($text, 'quota_zone_tenants'), '>', 10,
           'but still many');
    unlike($log, qr/\[(alert|crit|emerg)\]|no memory/, 'nothing logged about a full zone');
    is(redis('HGET', "quota:{full1}:usage:" . month_start(), 'a'), 2,
       'an evicted tenant is charged as before');
}

done_testing();

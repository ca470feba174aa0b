# SPEC 13: the API's own JSON.  The three seed configurations of
# conf.example/ (nat-usage-api, gaas-billing, testomat-quota) run as
# shipped (ports, Redis and module path moved) and answer exactly the
# documented bodies: whole bodies parsed and compared, key order checked
# where the seed documents it.  Then escaping through $quota_json_* (raw
# tenants with " and \, account status with control characters and
# non-ASCII), null limits, the 500 of a template that renders invalid JSON
# (file:line logged), the variables in a metered location's add_header, and
# nginx -t refusing an undeclared metric or an unknown error.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaTime;
use JSON::PP;
use File::Temp qw(tempdir);
use Digest::SHA qw(sha256_hex);
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(sleep time);

my $nginx = $ENV{TEST_NGINX_BINARY} || 'nginx';
my ($module) = split ' ', ($ENV{TEST_NGINX_LOAD_MODULES} // '');
my $examples = "$FindBin::Bin/../conf.example";
my $start = month_start();
my $pstart = "${start}T00:00:00Z";
my $pend = month_last_second();
my $reset = next_month_reset();
my $today = today();
my $json = JSON::PP->new->canonical;

redis_flush();

# the shipped file, made runnable here (as t/100-examples.t does)
sub prepare {
    my ($file, %port) = @_;
    open my $fh, '<', "$examples/$file" or die "$file: $!";
    my $conf = do { local $/; <$fh> };
    $conf =~ s{^load_module\s+\S+;}{load_module $module;}m or die "no load_module in $file";
    $conf =~ s{127\.0\.0\.1:6379}{127.0.0.1:$ENV{TEST_NGINX_REDIS_PORT}}g;
    $conf =~ s{worker_processes auto;}{worker_processes 1;};
    # 50 ms suits production, not a busy test box (fail-open would admit)
    $conf =~ s{(quota_redis\s[^;]*\btimeout=)\d+ms}{${1}5s}g;
    for my $p (sort keys %port) {
        $conf =~ s{listen\s+(?:127\.0\.0\.1:)?$p;}{listen 127.0.0.1:$port{$p};}g;
        $conf =~ s{server\s+127\.0\.0\.1:$p;}{server 127.0.0.1:$port{$p};}g;
    }
    # the seed's upstream API, stood in by a server block
    $conf =~ s/\}\s*\z/    server { listen 127.0.0.1:$port{9000}; quota off;
        location \/ { return 200 "api\\n"; } }\n}\n/;
    return $conf;
}

sub run_example {
    my ($conf, $port, $code) = @_;
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
        last if IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port);
        sleep 0.02;
    }
    sleep 0.1;
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

# the top-level keys of a JSON object, in the order written
sub keys_in_order {
    my ($text) = @_;
    my ($depth, @keys) = (0);
    while ($text =~ /\G\s*(?:("(?:[^"\\]|\\.)*")(\s*:)?|([{\[])|([}\]])|[^"{}\[\]]+)/gc) {
        if (defined $1) { push @keys, decode_json("[$1]")->[0] if $depth == 1 && $2 }
        elsif (defined $3) { $depth++ }
        elsif (defined $4) { $depth-- }
    }
    return \@keys;
}

# the body parses as JSON and is exactly $want (structure, types, values)
sub body_is {
    my ($res, $want, $name) = @_;
    my $got = eval { decode_json($res->{body}) };
    ok(defined $got, "$name: valid JSON") or diag $res->{body};
    is($json->encode($got // {}), $json->encode($want), $name) or diag $res->{body};
    return $got;
}

sub account { my ($t, @kv) = @_; redis('HSET', "quota:{$t}:account", @kv) }


# 1. NAT: usage, alerts, the 402, X-NAT-Usage-Warning
{
    my ($p, $b) = (free_port(), free_port());
    my $conf = prepare('nat-usage-api.conf', 8080 => $p, 9000 => $b);
    my $t = 'nat"te\\nant';     # raw tenant: a quote and a backslash
    account('nat-pro', plan => 'pro');
    run_example($conf, $p, sub {
        req($p, 'POST', '/api/v1/scans', 'X-Tenant-ID' => $t) for 1 .. 3;
        my $r = req($p, 'POST', '/api/v1/scans/security', 'X-Tenant-ID' => $t);
        is($r->{status}, 200, 'nat: a security scan');

        $r = req($p, 'GET', '/api/v1/usage', 'X-Tenant-ID' => $t);
        is($r->{status}, 200, 'nat: usage 200');
        is($r->{headers}{'content-type'}, 'application/json', 'nat: usage is JSON');
        body_is($r, { tenant_id => $t, plan => 'free', scans_used => 4,
                      scans_limit => 10, security_scan_count => 1,
                      monthly_security_scan_quota => 2,
                      approaching_limit => JSON::PP::false,
                      quota_reset_date => $reset, period_start => $pstart,
                      period_end => $pend }, 'nat: usage body');
        is_deeply(keys_in_order($r->{body}),
                  [qw(tenant_id plan scans_used scans_limit security_scan_count
                      monthly_security_scan_quota approaching_limit
                      quota_reset_date period_start period_end)],
                  'nat: usage keys in the documented order');

        # 8 of 10: the warning header, and the approaching_limit alert
        $r = req($p, 'POST', '/api/v1/scans', 'X-Tenant-ID' => $t) for 5 .. 8;
        is($r->{headers}{'x-nat-usage-warning'},
           'Approaching monthly scan quota (80% used)', 'nat: warning header');
        req($p, 'POST', '/api/v1/scans', 'X-Tenant-ID' => $t) for 9 .. 10;
        $r = req($p, 'POST', '/api/v1/scans', 'X-Tenant-ID' => $t);
        is($r->{status}, 402, 'nat: the 11th scan is refused');
        body_is($r, { error => 'QUOTA_EXCEEDED',
                      message => 'Monthly scan quota exceeded.',
                      quota_reset_date => $reset }, 'nat: 402 body');
        is_deeply(keys_in_order($r->{body}), [qw(error message quota_reset_date)],
                  'nat: 402 keys in order');

        $r = req($p, 'GET', '/api/v1/usage', 'X-Tenant-ID' => $t);
        my $u = decode_json($r->{body});
        is($u->{approaching_limit}, JSON::PP::true, 'nat: approaching_limit true');
        is($u->{scans_used}, 10, 'nat: the refusal charged nothing');

        my $stream = redis('XREVRANGE', "quota:{$t}:alerts", '+', '-');
        my @want = map {
            my %f = @{ $_->[1] };
            my $msg = $f{type} eq 'approaching_limit'
                ? "scans usage reached 80% of the limit (8 of 10)."
                : "scans quota exhausted (10 of 10).";
            { alert_id => $_->[0], type => $f{type}, message => $msg,
              scans_used => $f{used} + 0, scans_limit => $f{limit} + 0,
              triggered_at => $f{at} }
        } @$stream;
        is(scalar @want, 2, 'nat: two alerts in the stream (approaching, exceeded)');
        $r = req($p, 'GET', '/api/v1/usage/alerts', 'X-Tenant-ID' => $t);
        is($r->{status}, 200, 'nat: alerts 200');
        body_is($r, { alerts => \@want, total => 2, page => 1, per_page => 20 },
                'nat: alerts items with scans_used/scans_limit in the envelope');
        is_deeply(keys_in_order($r->{body}), [qw(alerts total page per_page)],
                  'nat: alerts envelope order');
        like($r->{body}, qr/^\{"alerts":\[\{"alert_id":"[-0-9]+",\s*"type":/,
             'nat: item keys in the template order');

        $r = req($p, 'GET', '/api/v1/usage/alerts?type=quota_exceeded&per_page=1',
                 'X-Tenant-ID' => $t);
        body_is($r, { alerts => [ grep { $_->{type} eq 'quota_exceeded' } @want ],
                      total => 1, page => 1, per_page => 1 },
                'nat: alerts filtered and paged');

        # a plan without a security scan limit: null
        $r = req($p, 'GET', '/api/v1/usage', 'X-Tenant-ID' => 'nat-pro');
        body_is($r, { tenant_id => 'nat-pro', plan => 'pro', scans_used => 0,
                      scans_limit => 1000, security_scan_count => 0,
                      monthly_security_scan_quota => undef,
                      approaching_limit => JSON::PP::false,
                      quota_reset_date => $reset, period_start => $pstart,
                      period_end => $pend }, 'nat: an unlimited metric is null');
    });
}


# 2. GaaS: nested 402, usage with daily_usage, X-GaaS-Quota-*, grace
{
    my ($p, $b) = (free_port(), free_port());
    my $conf = prepare('gaas-billing.conf', 8080 => $p, 9000 => $b);
    my ($free, $team) = ('gaas-free-key', 'gaas-team-key');
    account(sha256_hex($team), plan => 'team');
    run_example($conf, $p, sub {
        my $r;
        $r = req($p, 'POST', '/v1/actions/run', 'X-API-Key' => $free) for 1 .. 3;
        is($r->{status}, 200, 'gaas: third action admitted');
        is($r->{headers}{'x-gaas-quota-limit'}, 3, 'gaas: X-GaaS-Quota-Limit');
        is($r->{headers}{'x-gaas-quota-remaining'}, 0, 'gaas: X-GaaS-Quota-Remaining');
        is($r->{headers}{'x-gaas-quota-reset'}, $reset, 'gaas: X-GaaS-Quota-Reset');

        $r = req($p, 'POST', '/v1/actions/run', 'X-API-Key' => $free);
        is($r->{status}, 402, 'gaas: the 4th action on free is refused');
        body_is($r, { error => { code => 'quota_exceeded',
            message => 'Monthly action quota exceeded. Used 3 of 3 actions.',
            current_usage => 3, quota_limit => 3, reset_date => $reset } },
            'gaas: nested 402 body');

        $r = req($p, 'GET', '/v1/billing/usage', 'X-API-Key' => $free);
        is($r->{status}, 200, 'gaas: usage 200');
        body_is($r, { period_start => $pstart, period_end => $pend,
                      total_actions => 3, quota_limit => 3, quota_remaining => 0,
                      daily_usage => [ { date => $today, actions => 3 } ] },
                'gaas: billing usage body with daily_usage');
        is_deeply(keys_in_order($r->{body}),
                  [qw(period_start period_end total_actions quota_limit
                      quota_remaining daily_usage)], 'gaas: usage keys in order');

        # a paid plan: 10 % grace, 11 admitted, the 402 still says 10
        my @codes = map { req($p, 'POST', '/v1/actions/run', 'X-API-Key' => $team)->{status} } 1 .. 12;
        is_deeply(\@codes, [(200) x 11, 402], 'gaas: team plan grace admits 11');
        $r = req($p, 'POST', '/v1/actions/run', 'X-API-Key' => $team);
        body_is($r, { error => { code => 'quota_exceeded',
            message => 'Monthly action quota exceeded. Used 11 of 10 actions.',
            current_usage => 11, quota_limit => 10, reset_date => $reset } },
            'gaas: grace 402 reports the limit');
    });
}


# 3. Testomat: per-project quota endpoint, every metric, overage and cap
{
    my ($p, $b) = (free_port(), free_port());
    my $conf = prepare('testomat-quota.conf', 8080 => $p, 9000 => $b);
    my $key = 'testomat-company-key';
    account(sha256_hex($key), plan => 'professional', seats => 2, overage => 1,
            cap => '50.5');
    run_example($conf, $p, sub {
        req($p, 'POST', '/api/web-app/testruns', 'X-API-Key' => $key) for 1 .. 2;
        req($p, 'POST', '/api/web-app/tests', 'X-API-Key' => $key);
        my $r = req($p, 'GET', '/api/web-app/quota', 'X-API-Key' => $key);
        is($r->{status}, 200, 'testomat: quota 200');
        body_is($r, { project => 'web-app', plan => 'professional',
            quotas => {
                test_runs => { quota => 10000, used => 2, remaining => 9998 },
                tests => { quota => 50000, used => 1, remaining => 49999 },
                ai_requests => { quota => undef, used => 0, remaining => undef } },
            overage_enabled => JSON::PP::true, spending_cap => 50.5,
            period_end => $pend }, 'testomat: quota body');

        $r = req($p, 'GET', '/api/other-project/quota', 'X-API-Key' => 'starter-co');
        body_is($r, { project => 'other-project', plan => 'starter',
            quotas => {
                test_runs => { quota => 100, used => 0, remaining => 100 },
                tests => { quota => 1000, used => 0, remaining => 1000 },
                ai_requests => { quota => 0, used => 0, remaining => 0 } },
            overage_enabled => JSON::PP::false, spending_cap => undef,
            period_end => $pend }, 'testomat: starter company, no cap: null');
    });
}


# 4. escaping, nulls, invalid templates, variables after the decision
my $http = <<'_EOC_';
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric a;
    quota_metric b;
    quota_plan basic { limit a 2; }
    quota_default_plan basic;
    quota_rejection_body QUOTA_EXCEEDED '{"error":"QUOTA_EXCEEDED","tenant":$quota_json_tenant,"used":$quota_used_a,"limit":$quota_limit_a,"b":$quota_limit_b}';
_EOC_

my $server = <<'_EOC_';
    quota_tenant $http_x_t;

    location /m {
        quota on;
        quota_route * /** a=1;
        add_header X-Used-A $quota_used_a always;
        add_header X-Json-Tenant $quota_json_tenant always;
        add_header X-Limit-B $quota_limit_b always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }

    location /bad-rejection {
        quota on;
        quota_route * /** a=1;
        quota_rejection_body QUOTA_EXCEEDED '{"tenant":"$quota_tenant"}';
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location = /usage {
        quota_usage;
        quota_usage_body '{"t":$quota_json_tenant,"s":$quota_json_account_status,"plan":$quota_json_plan,"seats":$quota_seats,"cap":$quota_spending_cap,"over":$quota_overage_enabled,"proj":$quota_projected_overage,"used_a":$quota_used_a,"pct_a":$quota_percent_a,"over_a":$quota_overage_a,"lim_b":$quota_limit_b,"rem_b":$quota_remaining_b,"pct_b":$quota_percent_b,"daily_b":$quota_daily_b,"daily_a":$quota_daily_a,"alert":$quota_json_alert_message,"ju":$quota_json_used_a,"braces":${quota_used_a}}';
    }

    location = /raw-usage {
        quota_usage;
        quota_usage_body '{"t":"$quota_tenant"}';
    }

    location = /alerts {
        quota_alerts;
        quota_alerts_item '{"id":$quota_json_alert_id,"type":"$quota_alert_type","metric":$quota_json_alert_metric,"limit":$quota_alert_limit}';
    }
_EOC_

my $ctl = "ctl\x01ü\"\\";     # a control character, non-ASCII, quote, backslash
account('esc"\\t', status => $ctl, seats => 3);
redis('XADD', 'quota:{plain}:alerts', '*', 'type', 'approaching_limit',
      'used', 1, 'at', '2026-01-01T00:00:00Z');
redis('XADD', 'quota:{quoted}:alerts', '*', 'type', 'x"y', 'used', 1);
redis('XADD', 'quota:{binary}:alerts', '*', 'type', 'quota_exceeded',
      'metric', "a\xff\xfe", 'used', 2, 'limit', 2);

my $log = nginx_run(http_config => $http, config => $server, code => sub {
    my ($port, $root) = @_;
    my $r = req($port, 'POST', '/m', 'X-T' => 'esc"\\t');
    is($r->{status}, 200, 'metered request');
    is($r->{headers}{'x-used-a'}, 1, '$quota_used_a in add_header');
    is($r->{headers}{'x-json-tenant'}, '"esc\\"\\\\t"', '$quota_json_tenant in add_header');
    is($r->{headers}{'x-limit-b'}, 'null', '$quota_limit_b: not charged here, null');

    $r = req($port, 'GET', '/usage', 'X-T' => 'esc"\\t');
    is($r->{status}, 200, 'usage with a hostile tenant and status');
    body_is($r, { t => 'esc"\\t', s => "ctl\x01\x{fc}\"\\", plan => 'basic',
                  seats => 3, cap => undef, over => JSON::PP::false, proj => 0,
                  used_a => 1, pct_a => 50, over_a => 0, lim_b => undef,
                  rem_b => undef, pct_b => undef, daily_b => [], alert => undef,
                  daily_a => [ { date => $today, a => 1 } ],
                  ju => '1', braces => 1 },
            'every variable, escaped by yajl, nulls where no limit');

    $r = req($port, 'POST', '/m', 'X-T' => 'esc"\\t');
    $r = req($port, 'POST', '/m', 'X-T' => 'esc"\\t');
    is($r->{status}, 402, 'third request refused');
    body_is($r, { error => 'QUOTA_EXCEEDED', tenant => 'esc"\\t', used => 2,
                  limit => 2, b => undef }, 'http-level rejection template, escaped tenant');

    $r = req($port, 'GET', '/raw-usage', 'X-T' => 'plain');
    body_is($r, { t => 'plain' }, 'an unquoted template is fine for a plain tenant');

    $r = req($port, 'GET', '/raw-usage', 'X-T' => 'esc"\\t');
    is($r->{status}, 500, 'a template rendering invalid JSON answers 500');
    body_is($r, { error => 'INTERNAL_ERROR', message => 'Internal error.' },
            'with a fixed JSON body, never the broken one');

    req($port, 'POST', '/bad-rejection', 'X-T' => 'rej"x') for 1 .. 2;
    $r = req($port, 'POST', '/bad-rejection', 'X-T' => 'rej"x');
    is($r->{status}, 500, 'an invalid rejection template answers 500');
    body_is($r, { error => 'INTERNAL_ERROR', message => 'Internal error.' },
            'rejection: the fixed body');

    $r = req($port, 'GET', '/alerts', 'X-T' => 'plain');
    my $id = redis('XREVRANGE', 'quota:{plain}:alerts', '+', '-')->[0][0];
    body_is($r, { alerts => [ { id => $id, type => 'approaching_limit',
                                metric => undef, limit => undef } ],
                  total => 1, page => 1, per_page => 20 }, 'alert item template');

    $r = req($port, 'GET', '/alerts', 'X-T' => 'binary');
    $id = redis('XREVRANGE', 'quota:{binary}:alerts', '+', '-')->[0][0];
    body_is($r, { alerts => [ { id => $id, type => 'quota_exceeded',
                                metric => undef, limit => 2 } ],
                  total => 1, page => 1, per_page => 20 },
            'a metric that is not UTF-8: $quota_json_alert_metric is null');

    $r = req($port, 'GET', '/alerts', 'X-T' => 'quoted');
    is($r->{status}, 500, 'an alert item rendering invalid JSON: 500');
});

my @lines = ($log =~ /the body template in \S+nginx\.conf:(\d+) rendered invalid JSON/g);
is(scalar @lines, 3, 'each invalid rendering logged with file:line') or diag $log;
unlike($log, qr/\[(alert|crit|emerg)\]/, 'no alert');


# 5. nginx -t
sub conf_test {
    my ($http_config, $config) = @_;
    my $dir = tempdir(CLEANUP => 1);
    mkdir "$dir/logs";
    (my $h = $http_config) =~ s/\$TEST_NGINX_REDIS_PORT/$ENV{TEST_NGINX_REDIS_PORT}/g;
    my $conf = QuotaTest::nginx_conf(servroot => $dir, port => free_port(),
                                     http_config => $h, config => $config);
    open my $fh, '>', "$dir/nginx.conf" or die $!;
    print $fh $conf;
    close $fh;
    my $out = `$nginx -t -p $dir/ -c $dir/nginx.conf 2>&1`;
    return ($? >> 8, $out);
}

my ($rc, $out) = conf_test($http, <<'_EOC_');
    location = /u {
        quota_usage;
        quota_usage_body '{"x":$quota_used_nope}';
    }
_EOC_
isnt($rc, 0, 'nginx -t: an undeclared metric in a template fails');
like($out, qr/"\$quota_used_nope" in a body template: "nope" is not a declared quota_metric, in \S+nginx\.conf:\d+/,
     'with the metric and file:line');

($rc, $out) = conf_test($http, <<'_EOC_');
    location = /u {
        quota_usage;
        quota_usage_body '{"x":${quota_json_limit_zz}}';
    }
_EOC_
like($out, qr/"zz" is not a declared quota_metric/, 'nginx -t: ${quota_json_limit_zz} too');

($rc, $out) = conf_test($http, <<'_EOC_');
    location = /u {
        quota_usage;
        quota_usage_body '{"x":$quota_json_tenat}';
    }
_EOC_
like($out, qr/"\$quota_json_tenat" in a body template: there is no variable "\$quota_tenat", in \S+nginx\.conf:\d+/,
     'nginx -t: $quota_json_ of an unknown variable (a typo)');

($rc, $out) = conf_test($http . "    quota_metric late;\n", <<'_EOC_');
    location = /u {
        quota_usage;
        quota_usage_body '{"x":$quota_used_late,"y":$quota_overage_enabled,"z":$quota_json_alert_id,"w":$quota_json_used_late}';
    }
_EOC_
is($rc, 0, 'nginx -t: a metric declared after the template is fine') or diag $out;

($rc, $out) = conf_test($http, <<'_EOC_');
    quota_rejection_body QUOTA_EXCEDED '{}';
_EOC_
like($out, qr/unknown error "QUOTA_EXCEDED": use one of QUOTA_EXCEEDED, .* in \S+nginx\.conf:\d+/,
     'nginx -t: an unknown error kind');

($rc, $out) = conf_test($http, <<'_EOC_');
    quota_rejection_body RATE_LIMITED '{}';
    quota_rejection_body RATE_LIMITED '{}';
_EOC_
like($out, qr/"quota_rejection_body" for RATE_LIMITED is duplicate/, 'nginx -t: duplicate');

done_testing();

# Account changes apply on the next request of a RUNNING nginx (SPEC 6
# "no nginx reload is needed", 4a "raising the cap lifts the block at
# once"): every change below is made in Redis between two requests served
# by the same nginx process, never across a restart.  Also: overage is
# counted from the limit, not from the grace band (SPEC 4.5); an empty
# tenant is UNMETERED with no Redis trip (SPEC 4.1).

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaTime;
use Time::HiRes ();

redis_flush();
my $start = month_start();

my $http = <<'_EOC_';
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric a;
    quota_plan basic { limit a 10; }
    quota_plan big { limit a 100; }
    quota_plan team { limit a 2 per_seat; }
    quota_plan metered { limit a 1; overage a 1.0; }
    quota_plan graceover { limit a 10; grace 50%; overage a 1.0; }
    quota_default_plan basic;
_EOC_

my $server = <<'_EOC_';
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /a a=1;
    quota_route POST /three a=3;

    location / {
        add_header X-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_

sub account { my ($t, @kv) = @_; redis('HSET', "quota:{$t}:account", @kv) }
sub usage { my ($t, $f) = @_; redis('HGET', "quota:{$t}:usage:$start", $f // 'a') }

# the number of commands Redis has executed, INFO itself left out
sub commands {
    my $info = redis('INFO', 'commandstats');
    my $n = 0;
    while ($info =~ /^cmdstat_(\w+):calls=(\d+)/mg) {
        $n += $2 unless $1 eq 'info';
    }
    return $n;
}

my $pid_seen;

nginx_run(http_config => $http, config => $server, no_root_location => 1,
          code => sub {
    my ($port, $root) = @_;
    my $post = sub {
        my ($t, $path) = @_;
        return http_request($port, 'POST', $path // '/a', { 'X-T' => $t }, '');
    };
    my $pidfile = sub {
        open my $f, '<', "$root/logs/nginx.pid" or return '';
        local $/;
        my $p = <$f>;
        return $p;
    };
    # the pid file may come after the port (valgrind): wait for it
    my $deadline = time + 30;
    Time::HiRes::sleep(0.05) while $pidfile->() !~ /\d/ && time < $deadline;
    $pid_seen = $pidfile->();

    # plan
    account('plan', plan => 'basic');
    my $r = $post->('plan');
    is($r->{headers}{'x-quota-limit'}, 10, 'plan basic: limit 10');
    account('plan', plan => 'big');
    $r = $post->('plan');
    is($r->{headers}{'x-quota-limit'}, 100, 'plan changed to big: limit 100 on the next request');
    is($r->{headers}{'x-quota-used'}, 2, 'plan change: usage kept');

    # seats
    account('seats', plan => 'team', seats => 1);
    $r = $post->('seats');
    is($r->{headers}{'x-quota-limit'}, 2, 'team x 1 seat: limit 2');
    $post->('seats');
    $r = $post->('seats');
    is($r->{status}, 402, 'team x 1 seat: the 3rd request is refused');
    account('seats', seats => 3);
    $r = $post->('seats');
    is($r->{status}, 200, 'seats raised to 3: admitted at once');
    is($r->{headers}{'x-quota-limit'}, 6, 'seats raised to 3: limit 6');

    # custom limit, set and removed
    account('custom', plan => 'basic', 'limit:a' => 1);
    $post->('custom');
    $r = $post->('custom');
    is($r->{status}, 402, 'custom limit 1: the 2nd request is refused');
    redis('HDEL', 'quota:{custom}:account', 'limit:a');
    $r = $post->('custom');
    is($r->{status}, 200, 'custom limit removed: admitted at once');
    is($r->{headers}{'x-quota-limit'}, 10, 'custom limit removed: the plan limit again');
    account('custom', 'limit:a' => 0);
    $r = $post->('custom');
    is($r->{status}, 402, 'custom limit 0: nothing more is admitted');
    is($r->{headers}{'x-quota-limit'}, 0, 'custom limit 0: the headers say limit 0');

    # status
    account('status', plan => 'basic', status => 'suspended');
    $r = $post->('status');
    is($r->{status}, 402, 'suspended: 402');
    like($r->{body}, qr/"error":"ACCOUNT_SUSPENDED"/, 'suspended: ACCOUNT_SUSPENDED');
    account('status', status => 'active');
    $r = $post->('status');
    is($r->{status}, 200, 'reactivated: admitted on the next request');
    account('status', 'limit:a' => 1);
    $r = $post->('status');
    is($r->{status}, 402, 'active at its limit: refused');
    account('status', status => 'trial');
    $r = $post->('status');
    is($r->{status}, 200, 'trial: past the limit, admitted');
    is($r->{headers}{'x-quota-used'}, 2, 'trial: still counted');

    # the spending cap: raised, the block lifts at once
    account('cap', plan => 'metered', overage => 1, cap => 1);
    my @s = map { $post->('cap')->{status} } 1 .. 3;
    is_deeply(\@s, [200, 200, 402], 'cap 1 USD at 1 USD/unit past limit 1: 2 admitted, then 402');
    account('cap', cap => 2);
    $r = $post->('cap');
    is($r->{status}, 200, 'cap raised to 2: the block lifts at once');
    $r = $post->('cap');
    is($r->{status}, 402, 'cap raised to 2: one more unit, then the cap again');
    like($r->{body}, qr/"error":"SPENDING_CAP_REACHED"/, 'cap: SPENDING_CAP_REACHED');
    account('cap', overage => 0);
    $r = $post->('cap');
    like($r->{body}, qr/"error":"QUOTA_EXCEEDED"/, 'overage switched off: QUOTA_EXCEEDED at once');

    # a scheduled downgrade whose instant passes while nginx runs
    account('sched', plan => 'big', next_plan => 'basic', next_plan_at => time + 3600);
    $r = $post->('sched');
    is($r->{headers}{'x-quota-limit'}, 100, 'scheduled downgrade in the future: big');
    account('sched', next_plan_at => time - 1);
    $r = $post->('sched');
    is($r->{headers}{'x-quota-limit'}, 10, 'scheduled downgrade due: basic on the next request');

    # overage counts every unit past the LIMIT (10), not past the grace
    # band (15): 9 used + 3 = 12, 2 units of overage
    account('gover', plan => 'graceover', overage => 1);
    redis('HSET', "quota:{gover}:usage:$start", 'a', 9);
    $r = $post->('gover', '/three');
    is($r->{status}, 200, 'grace + overage: admitted');
    is(usage('gover'), 12, 'grace + overage: used 12');
    is(usage('gover', 'a:overage'), 2, 'grace + overage: 2 units past the limit are overage');
    is(usage('gover', 'overage_cost'), 2000000, 'grace + overage: 2 USD in micro-USD');
    $r = $post->('gover');
    is(usage('gover', 'a:overage'), 3, 'grace + overage: the next unit is overage too');

    # overage off: grace still applies (limit 10 x 1.5 = 15 admitted)
    account('gnoover', plan => 'graceover');
    redis('HSET', "quota:{gnoover}:usage:$start", 'a', 14);
    @s = map { $post->('gnoover')->{status} } 1 .. 2;
    is_deeply(\@s, [200, 402], 'grace without overage: up to 15, then 402');
    is(usage('gnoover', 'a:overage'), undef, 'grace without overage: no overage units');

    # an empty tenant: UNMETERED, and not one Redis command
    $post->('warm');    # the connection and its handshake are done
    my $before = commands();
    $r = http_request($port, 'POST', '/a', {}, '');
    my $r2 = http_request($port, 'POST', '/a', { 'X-T' => '' }, '');
    my $after = commands();
    is($r->{status}, 200, 'no tenant: served');
    is($r->{headers}{'x-status'}, 'UNMETERED', 'no tenant: UNMETERED');
    is($r2->{headers}{'x-status'}, 'UNMETERED', 'empty tenant header: UNMETERED');
    ok(!exists $r->{headers}{'x-quota-used'}, 'no tenant: no quota headers');
    is($after - $before, 0, 'no tenant: no Redis command at all');
    $post->('warm');
    cmp_ok(commands() - $after, '>=', 1, 'a metered request after it does reach Redis');

    like($pid_seen, qr/^\d+\s*$/, 'nginx wrote its pid');
    is($pidfile->(), $pid_seen, 'the same nginx served every request');
});

my @keys = grep { !/^quota:\{(plan|seats|custom|status|cap|sched|gover|gnoover|warm)\}:/ }
           @{ redis('KEYS', '*') };
is_deeply(\@keys, [], 'no key for the empty tenant');

done_testing();

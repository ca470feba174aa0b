# Every key the scripts touch is declared in KEYS (SPEC 10), and the period
# keys are named by the account's billing anchor (SPEC 6), which only Redis
# knows.  Through nginx: a tenant billed from the 15th is charged once per
# request, in the keys of its period; only the worker's first request of
# that tenant costs a second EVALSHA (CODE_ANCHOR, then the resend), and an
# anchor change costs one more; quota_usage reports anchored tenants; a
# lease granted in the anchored period is settled there.  ACL: a user
# whose key patterns cover the tenant's keys is served; one kept from the
# record keys is refused by Redis before the script runs (NOPERM: nothing
# written), which follows quota_failure_mode and is logged.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest qw(:DEFAULT nginx_stop);
use QuotaTime;
use QuotaFallback;
use IO::Socket::INET;
use POSIX qw(strftime);
use Time::Local qw(timegm);

redis_flush();

my $today = today();
my $cal = month_start();

# the start of the billing month of an anchor at "now" (SPEC 6)
sub period_of {
    my ($anchor) = @_;
    my @t = gmtime;
    my ($y, $m) = ($t[5] + 1900, $t[4]);
    my $clamp = sub {
        my ($yy, $mm) = @_;
        while ($mm < 0) { $mm += 12; $yy-- }
        my $first = timegm(0, 0, 0, 1, $mm, $yy);
        my ($ny, $nm) = $mm == 11 ? ($yy + 1, 0) : ($yy, $mm + 1);
        my $days = (timegm(0, 0, 0, 1, $nm, $ny) - $first) / 86400;
        return $first + (($anchor > $days ? $days : $anchor) - 1) * 86400;
    };
    my $here = $clamp->($y, $m);
    return strftime('%Y-%m-%d',
                    gmtime(time >= $here ? $here : $clamp->($y, $m - 1)));
}

my $s15 = period_of(15);
my $s31 = period_of(31);

sub evalshas {
    my $info = redis('INFO', 'commandstats');
    return $info =~ /^cmdstat_evalsha:calls=(\d+)/m ? $1 : 0;
}

sub account { my ($t, @kv) = @_; redis('HSET', "quota:{$t}:account", @kv) }
sub used {
    my ($t, $start) = @_;
    return redis('HGET', "quota:{$t}:usage:$start", 'a') // 0;
}

my $server = <<'_EOC_';
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /a a=1;

    location / {
        add_header X-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location = /usage {
        quota_usage;
    }

    location = /metrics {
        quota_metrics;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_

account('t15', plan => 'basic', anchor => 15);
account('t31', plan => 'basic', anchor => 31);
account('t1', plan => 'basic');

my (@st, @calls, $report, $metrics);

my $log = nginx_run(
    no_root_location => 1,
    http_config => "    quota_redis 127.0.0.1:\$TEST_NGINX_REDIS_PORT"
                   . " timeout=3s;\n"
                   . "    quota_metric a;\n"
                   . "    quota_plan basic { limit a 100; }\n",
    config => $server,
    log_level => 'info',
    code => sub {
        my ($port, $root) = @_;
        # the worker's Redis connection first: a request that came before
        # it would get the failure mode (a slow start: sanitizers, load)
        QuotaFallback::wait_ready($root, 1);
        my $post = sub {
            my ($t) = @_;
            my $n = evalshas();
            my $r = http_request($port, 'POST', '/a', { 'X-T' => $t }, '');
            push @st, "$t " . ($r->{headers}{'x-status'} // '');
            push @calls, evalshas() - $n;
        };

        $post->('t15') for 1 .. 3;
        $post->('t1') for 1 .. 2;
        $post->('t31');

        $report = http_request($port, 'GET', '/usage', { 'X-T' => 't15' },
                               undef);

        # the account moves to the calendar month: one more resend
        account('t15', anchor => 1);
        $post->('t15') for 1 .. 2;

        $metrics = http_get($port, '/metrics')->{body};
    },
);

is_deeply(\@st, ['t15 ALLOWED', 't15 ALLOWED', 't15 ALLOWED', 't1 ALLOWED',
                 't1 ALLOWED', 't31 ALLOWED', 't15 ALLOWED', 't15 ALLOWED'],
          'every request admitted');
is_deeply(\@calls, [2, 1, 1, 1, 1, 2, 2, 1],
          'EVALSHA per request: 2 for the first of an anchored tenant and '
          . 'after its anchor changed, else 1');
is(used('t15', $s15), 3, "anchor 15: 3 counted in usage:$s15");
is(redis('HGET', "quota:{t15}:daily:$s15", "a:$today"), 3,
   "anchor 15: daily:$s15 counts them for today");
is(used('t15', $cal), 2, "after the change to anchor 1: 2 in usage:$cal");
is(used('t31', $s31), 1, "anchor 31: counted in usage:$s31");
is(used('t1', $cal), 2, "anchor 1: counted in usage:$cal");
my @keys = sort @{ redis('KEYS', 'quota:{t15}:*') };
is_deeply([grep { /:(usage|daily):/ } @keys],
          [sort "quota:{t15}:daily:$s15", "quota:{t15}:usage:$s15",
                "quota:{t15}:daily:$cal", "quota:{t15}:usage:$cal"],
          'no other period key was written');

is($report->{status}, 200, 'quota_usage answers for the anchored tenant');
like($report->{body}, qr/"period_start":"${s15}T00:00:00Z"/,
     "its period starts $s15") or diag($report->{body});
like($report->{body}, qr/"a":\{"used":3,/, 'and reports its 3 units');
like($metrics, qr/^quota_redis_anchor_resends_total 3$/m,
     'quota_redis_anchor_resends_total: 3 resends');
unlike($log, qr/\[(alert|crit|emerg)\]/, 'no alert');

# quota_fallback: units admitted while Redis did not answer are FORCEd
# later; the account's anchor changed (15 -> 20) after this worker learned
# it: the FORCE, named for 15, is answered CODE_ANCHOR and sent again named
# for 20, charged once in its period
{
    my $s20 = period_of(20);
    my $rs = start_redis();
    my $root = QuotaTest::_servroot_base() . '_088';
    $rs->cmd('HSET', 'quota:{fb}:account', 'anchor', 15);
    my $port = free_port();
    my $h = QuotaFallback::start_nginx($root, $port, 1, rport => $rs->{port},
                                       nodes => 1, failure_mode => 'closed',
                                       limit => 100);
    my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port)
        or die;
    my @qs = (QuotaFallback::req($c, 'fb')->{qs});
    $rs->cmd('HSET', 'quota:{fb}:account', 'anchor', 20);
    # Redis holds the charge until the test lets it go: it times out
    # (timeout=300ms) however loaded the machine
    QuotaFallback::redis_pause($rs);
    push @qs, QuotaFallback::req($c, 'fb')->{qs};
    QuotaFallback::redis_unpause($rs);
    my $got = QuotaFallback::wait_for(15, sub {
        ($rs->cmd('HGET', "quota:{fb}:usage:$s20", 'api') // 0) == 1 });
    my $resends = QuotaFallback::metric($port, 'quota_redis_anchor_resends_total');
    close $c;
    nginx_stop($h, master => 1, check => 'fallback, anchor changed');
    is_deeply(\@qs, ['ALLOWED', 'FALLBACK'],
              'fallback: charged, then admitted from the zone (Redis asleep)');
    is($rs->cmd('HGET', "quota:{fb}:usage:$s15", 'api') // 0, 1,
       "the charge in usage:$s15");
    ok($got, "the FORCE named for anchor 15 was charged in usage:$s20")
        or diag(QuotaFallback::logs($root));
    is($rs->cmd('HGET', "quota:{fb}:usage:$s20", 'api') // 0, 1, 'once');
    is($resends, 2, 'two resends: the first charge and the FORCE');
    stop_redis($rs);
}

# a lease granted in the anchored period is settled there when nginx quits
redis_flush();
account('l15', plan => 'basic', anchor => 15);
my @lst;
my $llog = nginx_run(
    no_root_location => 1,
    master => 1,
    http_config => "    quota_redis 127.0.0.1:\$TEST_NGINX_REDIS_PORT"
                   . " timeout=3s;\n"
                   . "    quota_zone ledger:1m;\n"
                   . "    quota_metric a;\n"
                   . "    quota_plan basic { limit a 1000; }\n",
    config => "    quota_lease 50;\n" . $server,
    code => sub {
        my ($port, $root) = @_;
        QuotaFallback::wait_ready($root, 1);
        push @lst, http_request($port, 'POST', '/a', { 'X-T' => 'l15' },
                                '')->{headers}{'x-status'} // ''
            for 1 .. 5;
        push @lst, used('l15', $s15);
    },
);
is_deeply(\@lst, [('ALLOWED') x 5, 50],
          "a lease of 50 reserved in usage:$s15");
is(used('l15', $s15), 5, 'settled at the quit: the 5 spent stay, exactly')
    or diag(join "\n", grep { /settle|lease/ } split /\n/, $llog);
is(redis('HGET', "quota:{l15}:daily:$s15", "a:$today"), 5,
   'and the daily field too');

# ACL users (Redis 7 checks a script's declared KEYS against the user's key
# patterns before it runs)
my $h = start_redis();
$h->cmd('ACL', 'SETUSER', 'gw', 'on', '>pw', '~quota:{a1}:*', 'allchannels',
        '+@all');
$h->cmd('ACL', 'SETUSER', 'narrow', 'on', '>pw', '~quota:{a2}:account',
        '~quota:{a2}:usage:*', '~quota:{a2}:daily:*', '~quota:{a2}:alerted:*',
        '~quota:{a2}:alerts', '~quota:{a2}:rate', '~quota:{a2}:inflight',
        'allchannels', '+@all');
$h->cmd('HSET', 'quota:{a1}:account', 'plan', 'basic', 'anchor', 15);
$h->cmd('HSET', 'quota:{a2}:account', 'plan', 'basic');

for my $c (['gw', 'a1', 'closed', 'ALLOWED', 1, $s15],
           ['narrow', 'a2', 'closed', 'FAIL_CLOSED', 0, $cal],
           ['narrow', 'a2', 'open', 'FAIL_OPEN', 0, $cal])
{
    my ($user, $t, $mode, $want, $used, $start) = @$c;
    my $r;
    my $l = nginx_run(
        no_root_location => 1,
        http_config => "    quota_redis 127.0.0.1:$h->{port} user=$user"
                       . " password=pw timeout=3s;\n"
                       . "    quota_failure_mode $mode;\n"
                       . "    quota_metric a;\n"
                       . "    quota_plan basic { limit a 100; }\n",
        config => $server,
        code => sub {
            my ($port, $root) = @_;
            # AUTH and SCRIPT LOAD done: the request meets the script
            QuotaFallback::wait_ready($root, 1);
            $r = http_request($port, 'POST', '/a', { 'X-T' => $t }, '');
        },
    );
    is($r->{headers}{'x-status'} // '', $want,
       "ACL user $user, tenant $t, failure mode $mode: '$want'");
    is($h->cmd('HGET', "quota:{$t}:usage:$start", 'a') // 0, $used,
       "ACL user $user: $used counted");
    if ($user eq 'narrow') {
        is($r->{status}, $mode eq 'closed' ? 503 : 200,
           "refused by Redis: quota_failure_mode $mode");
        like($l, qr/quota: redis error: NOPERM/, 'the refusal is logged');
        is_deeply($h->cmd('KEYS', "quota:{$t}:*"), ["quota:{$t}:account"],
                  'nothing written');
    }
}
stop_redis($h);

done_testing();

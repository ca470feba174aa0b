# The Redis scripts on their own: src/lua/*.lua as the build embeds them
# (src/lua/gen.sh: the protocol prelude, then the script), run against the
# test Redis with `redis-cli --eval`, their arguments built from
# src/lua/protocol.def by name, as the C side builds them.
#
# - the text in the built module is byte for byte what gen.sh prints;
# - every script passes `luac5.1 -p` (Redis runs Lua 5.1) when lua5.1 is
#   installed (.ci/run installs it), else that check is skipped;
# - decisions: charged, refused at the enforcement point (with grace),
#   overage up to the spending cap, suspended, unknown tenant, a peek that
#   writes nothing; the void undoes a charge exactly and a charge after
#   its void is a no-op; a reconcile refund stops at zero.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use File::Temp qw(tempdir);
use Time::Local qw(timegm);
use POSIX qw(strftime);

my $top = "$FindBin::Bin/..";
my $lua = "$top/src/lua";
my $tmp = tempdir('quota-lua-scripts.XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $port = QuotaTest::redis_port();

# --- the protocol, by name ---------------------------------------------------

my %P;
open my $def, '<', "$lua/protocol.def" or die "protocol.def: $!";
while (<$def>) {
    s/#.*//;
    next unless /\S/;
    my ($name, $value) = split;
    $P{$name} = $value;
}
close $def;
ok(keys %P > 40, 'protocol.def read');

# --- the scripts as built ----------------------------------------------------

my %file;
my @scripts = qw(charge reconcile void settle);
for my $s (@scripts) {
    my $text = `sh '$lua/gen.sh' lua '$lua' $s`;
    is($?, 0, "gen.sh lua $s");
    like($text, qr/\Alocal [A-Z_, ]+ = [-0-9, ]+\n/,
         "$s: the one-line protocol prelude comes first");
    $file{$s} = "$tmp/$s.lua";
    open my $f, '>', $file{$s} or die $!;
    print $f $text;
    close $f;
}

my ($so) = grep { /ngx_http_quota_module\.so$/ }
           split(' ', $ENV{TEST_NGINX_LOAD_MODULES} || ''),
           "$top/build/ngx_http_quota_module.so";
SKIP: {
    skip "no built module at $so", scalar @scripts unless -f $so;
    my $bin = do { open my $f, '<:raw', $so or die "$so: $!"; local $/; <$f> };
    for my $s (@scripts) {
        my $text = do { open my $f, '<:raw', $file{$s}; local $/; <$f> };
        ok(index($bin, $text . "\0") >= 0,
           "$s: the built module embeds exactly gen.sh's text");
    }
}

SKIP: {
    my $luac = (grep { -x "$_/luac5.1" } split /:/, $ENV{PATH})[0];
    skip 'luac5.1 not installed (apt-get install lua5.1)', scalar @scripts
        unless $luac;
    for my $s (@scripts) {
        my $out = `'$luac/luac5.1' -p '$file{$s}' 2>&1`;
        is($?, 0, "$s: luac5.1 -p") or diag($out);
    }
}

# --- running them -------------------------------------------------------------

# redis-cli --eval prints a reply's elements one per line (no tty); an error
# is a line starting with ERR (its exit status is 0 either way)
sub run_script {
    my ($s, $keys, $args) = @_;
    open my $out, '-|', 'redis-cli', '-p', $port, '--eval', $file{$s},
         @$keys, ',', @$args
        or die "redis-cli: $!";
    my @lines = map { chomp; $_ } <$out>;
    close $out;
    die "redis-cli --eval $s: @lines\n" if @lines && $lines[0] =~ /^ERR /;
    return \@lines;
}

# the calendar of "now", as ngx_http_quota_clock() sends it
my $now = time;
my @t = gmtime $now;
my ($y, $m) = ($t[5] + 1900, $t[4] + 1);
sub first { my ($yy, $mm) = @_; while ($mm < 1) { $mm += 12; $yy-- }
            while ($mm > 12) { $mm -= 12; $yy++ } timegm(0, 0, 0, 1, $mm - 1, $yy) }
sub days { my ($yy, $mm) = @_; (first($yy, $mm + 1) - first($yy, $mm)) / 86400 }
sub ym { strftime('%Y-%m', gmtime $_[0]) }
my ($m0, $m1, $m2, $mb) = (first($y, $m - 1), first($y, $m), first($y, $m + 1),
                           first($y, $m - 2));
my $today = strftime('%Y-%m-%d', gmtime $now);
my $day_end = timegm(0, 0, 0, $t[3], $t[4], $t[5]) + 86400;
my $calendar = join ' ', $m0, days($y, $m - 1), ym($m0), days($y, $m),
                         days($y, $m + 1), $mb, days($y, $m - 2), ym($mb),
                         $day_end;
my $start = ym($m1) . '-01';

# the start of the billing month at $now for an anchor, and of the one
# before (quota_keys() in src/ngx_http_quota_keys.c)
sub day_of { strftime('%Y-%m-%d', gmtime $_[0]) }
sub period_of {
    my ($anchor) = @_;
    my $clamp = sub {
        my ($yy, $mm) = @_;
        my $d = $anchor > days($yy, $mm) ? days($yy, $mm) : $anchor;
        return first($yy, $mm) + ($d - 1) * 86400;
    };
    my $here = $clamp->($y, $m);
    return $now >= $here ? (day_of($here), day_of($clamp->($y, $m - 1)))
                         : (day_of($clamp->($y, $m - 1)),
                            day_of($clamp->($y, $m - 2)));
}

# the charge's KEYS (KEY_* of protocol.def), named for an anchor
sub charge_keys {
    my ($t, $id, $anchor) = @_;
    my ($s, $b) = period_of($anchor // 1);
    my @k;
    $k[$P{KEY_ACCOUNT}] = "lt{$t}:account";
    $k[$P{KEY_RECORD}] = "lt{$t}:c:" . ($id // '');
    $k[$P{KEY_BUCKET}] = "lt{$t}:r:" . int($now * 1000 / $P{RECORD_BUCKET_MS});
    $k[$P{KEY_USAGE}] = "lt{$t}:usage:$s";
    $k[$P{KEY_DAILY}] = "lt{$t}:daily:$s";
    $k[$P{KEY_ALERTED}] = "lt{$t}:alerted:$s";
    $k[$P{KEY_BEFORE}] = "lt{$t}:usage:$b";
    $k[$P{KEY_ALERTS}] = "lt{$t}:alerts";
    $k[$P{KEY_RATE}] = "lt{$t}:rate";
    $k[$P{KEY_INFLIGHT}] = "lt{$t}:inflight";
    die "charge_keys: CHARGE_NKEYS\n" unless $#k == $P{CHARGE_NKEYS};
    return @k[1 .. $#k];
}

# one metric "requests" (monthly); plans: [name, grace, [limit, per_seat,
# price]]
sub charge {
    my (%o) = @_;
    my $t = $o{tenant};
    my @a;
    $a[$P{ARG_BASE}] = "lt{$t}:";
    $a[$P{ARG_MODE}] = $o{mode} // $P{MODE_CHARGE};
    $a[$P{ARG_NOW_MS}] = $now * 1000;
    $a[$P{ARG_REQUIRE_ACCOUNT}] = $o{require} // 0;
    $a[$P{ARG_CHARGE_ID}] = $o{id} // '';
    $a[$P{ARG_CUR_START}] = $m1;
    $a[$P{ARG_NEXT_START}] = $m2;
    $a[$P{ARG_YM_CUR}] = ym($m1);
    $a[$P{ARG_YM_NEXT}] = ym($m2);
    $a[$P{ARG_TODAY}] = $today;
    $a[$P{ARG_DEFAULT_PLAN}] = 0;
    $a[$P{ARG_THRESHOLD}] = 80;
    $a[$P{ARG_EVENTS}] = $P{EVENTS_ALERTS};
    $a[$P{ARG_CALENDAR}] = $calendar;
    $a[$P{ARG_NOTIFY}] = "$t\nlt-events\n${today}T00:00:00Z\n$today";
    $a[$P{ARG_LEASE_N}] = $o{lease} // 1;
    $a[$P{ARG_LEASE_TTL}] = $o{ttl} // 1;
    my $k = $o{nometric} ? 0 : 1;
    # the record of the common exact charge, as C builds it
    my $cost = $o{cost} // 1;
    $a[$P{ARG_RECORD}] = "$start $today 0 0 1"
        . ($k && $cost > 0 ? " requests $cost m 0 -1 -1" : '');
    $a[$P{ARG_NCHARGES}] = $k;
    my $at = $P{ARG_METRICS};
    if ($k) {
        $a[$at + $P{METRIC_NAME_OFF}] = 'requests';
        $a[$at + $P{METRIC_COST_OFF}] = $o{cost} // 1;
        $a[$at + $P{METRIC_PERIOD_OFF}] = 'm';
        $at += $P{METRIC_ARGS};
    }
    my @plans = @{ $o{plans} };
    $a[$at++] = scalar @plans;
    for my $p (@plans) {
        $a[$at++] = $p->[0];
        # "GRACE" alone for a plan without rate and concurrency, as C sends
        $a[$at++] = defined $p->[3] ? "$p->[1] $p->[3]" : $p->[1];
        # "LIMIT" alone when not per seat and without a price, as C sends
        $a[$at++] = ($p->[2][1] == 0 && $p->[2][2] == -1)
                    ? $p->[2][0] : join ' ', @{ $p->[2] } if $k;
    }
    die "charge: argument $_ missing\n" for grep { !defined $a[$_] } 1 .. $#a;
    my $r = run_script('charge', [charge_keys($t, $o{id}, $o{anchor})],
                       [@a[1 .. $#a]]);
    return {
        code  => $r->[$P{REPLY_CODE} - 1],
        index => $r->[$P{REPLY_INDEX} - 1],
        plan  => $r->[$P{REPLY_PLAN} - 1],
        start => $r->[$P{REPLY_START} - 1],
        used  => $r->[$P{REPLY_METRICS} + $P{REPLY_USED_OFF} - 1],
        limit => $r->[$P{REPLY_METRICS} + $P{REPLY_LIMIT_OFF} - 1],
        n_granted => $r->[$P{REPLY_GRANTED} - 1],
        n     => scalar @$r,
    };
}

sub usage {
    my ($t, $field) = @_;
    return QuotaTest::redis('HGET', "lt{$t}:usage:$start", $field) // 0;
}

# the void's KEYS are the charge's (ngx_http_quota_script_void)
sub void {
    my ($t, $id, $anchor) = @_;
    my @c = (undef, charge_keys($t, $id, $anchor));
    my (@k, @v);
    $k[$P{VKEY_RECORD}] = $c[$P{KEY_RECORD}];
    $k[$P{VKEY_BUCKET}] = $c[$P{KEY_BUCKET}];
    $k[$P{VKEY_USAGE}] = $c[$P{KEY_USAGE}];
    $k[$P{VKEY_DAILY}] = $c[$P{KEY_DAILY}];
    $k[$P{VKEY_RATE}] = $c[$P{KEY_RATE}];
    $k[$P{VKEY_INFLIGHT}] = $c[$P{KEY_INFLIGHT}];
    $v[$P{VOID_ID}] = $id;
    is(scalar(@k) - 1, $P{VOID_NKEYS}, 'void: VOID_NKEYS keys');
    is(scalar(@v) - 1, $P{VOID_NARGS}, 'void: VOID_NARGS arguments');
    return run_script('void', [@k[1 .. $#k]], [@v[1 .. $#v]])->[0];
}

sub fresh {
    my ($t, %acct) = @_;
    my @keys = @{ QuotaTest::redis('KEYS', "lt{$t}:*") };
    QuotaTest::redis('DEL', @keys) if @keys;
    QuotaTest::redis('HSET', "lt{$t}:account", %acct) if %acct;
}

my @basic = (['basic', 0, [5, 0, -1]]);

# limit 5: five charged with used 1..5, the sixth refused on metric 1
fresh('a', plan => 'basic');
my @used = map { charge(tenant => 'a', plans => \@basic, id => "a$_")->{used} }
           1 .. 5;
is_deeply(\@used, [1 .. 5], 'limit 5: five charged, used 1..5');
my $r = charge(tenant => 'a', plans => \@basic, id => 'a6');
is($r->{code}, $P{CODE_QUOTA}, 'the sixth: CODE_QUOTA');
is($r->{index}, 1, 'refused metric 1');
is($r->{limit}, 5, 'limit 5 reported');
is($r->{plan}, 1, 'plan 1');
is($r->{start}, $m1, 'the period starts on the 1st');
is($r->{n}, $P{REPLY_METRICS} + 1, 'reply: the head and one (used, limit)');
is(usage('a', 'requests'), 5, 'Redis holds 5');
is(QuotaTest::redis('HGET', "lt{a}:daily:$start", "requests:$today"), 5,
   'the daily field holds 5');

# no charged metric (a rate-only request): the reply is the head alone
fresh('k', plan => 'basic');
$r = charge(tenant => 'k', plans => [['basic', 0, [5, 0, -1], '2 60000 2 0 0']],
            id => 'k1', nometric => 1);
is($r->{code}, $P{CODE_CHARGED}, 'no metric: charged (rate)');
is($r->{n}, $P{REPLY_METRICS} - 1, 'no metric: the reply has no (used, limit)');

# grace 20 %: enforcement at 6
fresh('g', plan => 'basic');
charge(tenant => 'g', plans => [['basic', 20, [5, 0, -1]]], id => "g$_")
    for 1 .. 6;
is(usage('g', 'requests'), 6, 'grace 20 %: the sixth is admitted');
is(charge(tenant => 'g', plans => [['basic', 20, [5, 0, -1]]],
          id => 'g7')->{code}, $P{CODE_QUOTA}, 'the seventh is refused');

# overage at 1 USD per unit past 2, cap 1.5 USD: the third is billed, the
# fourth would pass the cap
fresh('o', plan => 'basic', overage => 1, cap => '1.5');
my @over = (['basic', 0, [2, 0, 1000000]]);
is(charge(tenant => 'o', plans => \@over, id => "o$_")->{code},
   $P{CODE_CHARGED}, "overage: charge $_ admitted") for 1 .. 3;
is(usage('o', 'overage_cost'), 1000000, 'overage cost 1 USD');
is(usage('o', 'requests:overage'), 1, 'one overage unit');
is(charge(tenant => 'o', plans => \@over, id => 'o4')->{code}, $P{CODE_CAP},
   'the fourth: CODE_CAP');
is(usage('o', 'requests'), 3, 'the refused one wrote nothing');

# suspended, unknown tenant, peek
fresh('s', plan => 'basic', status => 'suspended');
is(charge(tenant => 's', plans => \@basic, id => 's1')->{code},
   $P{CODE_SUSPENDED}, 'suspended: CODE_SUSPENDED');
fresh('u');
is(charge(tenant => 'u', plans => \@basic, id => 'u1', require => 1)->{code},
   $P{CODE_UNKNOWN}, 'no account with quota_require_account: CODE_UNKNOWN');
fresh('p', plan => 'basic');
$r = charge(tenant => 'p', plans => \@basic, mode => $P{MODE_PEEK});
is($r->{code}, $P{CODE_CHARGED}, 'peek: answered as charged');
is(usage('p', 'requests'), 0, 'peek: nothing written');

# the void undoes exactly what the charge wrote, then a late charge with
# the same id is a no-op
fresh('v', plan => 'basic', overage => 1);
my @v = (['basic', 0, [1, 0, 250]]);
charge(tenant => 'v', plans => \@v, id => 'v1', cost => 1);
charge(tenant => 'v', plans => \@v, id => 'v2', cost => 3);
is(usage('v', 'requests'), 4, 'void: 4 charged');
my $bucket = "lt{v}:r:" . int($now * 1000 / $P{RECORD_BUCKET_MS});
is(QuotaTest::redis('EXISTS', 'lt{v}:c:v2'), 0,
   'an exact charge has no record key of its own');
like(QuotaTest::redis('HGET', $bucket, 'v2'), qr/^\S+ \S+ 0 750 1 requests 3 m 3 250 1$/,
     "its record is a field of the tenant's bucket hash (limit 1 last)");
# the common record (anchor 1, unpriced, no GCRA step) is the one C sends
# (ARG_RECORD); any other is the script's own, in the same form
my $wb = "lt{w}:r:" . int($now * 1000 / $P{RECORD_BUCKET_MS});
fresh('w', plan => 'basic');
charge(tenant => 'w', plans => \@basic, id => 'w1', cost => 2);
is(QuotaTest::redis('HGET', $wb, 'w1'), "$start $today 0 0 1 requests 2 m 0 -1 -1",
   'the common record, as C sends it');
fresh('w', plan => 'basic', anchor => 1, overage => 1);
charge(tenant => 'w', plans => [['basic', 0, [5, 0, 250]]], id => 'w2');
is(QuotaTest::redis('HGET', $wb, 'w2'), "$start $today 0 0 1 requests 1 m 0 250 5",
   'a priced metric: the script builds it, its price and limit in it');
fresh('w', plan => 'basic', anchor => 15);
charge(tenant => 'w', plans => \@basic, id => 'w3', anchor => 15);
like(QuotaTest::redis('HGET', $wb, 'w3'),
     qr/^\d{4}-\d\d-15 \Q$today\E 0 0 1 requests 1 m 0 -1 -1$/,
     'anchor 15: the script builds it, its period starts on a 15th');
my $bttl = QuotaTest::redis('PTTL', $bucket);
ok($bttl > $P{RECORD_TTL} * 1000
   && $bttl <= $P{RECORD_BUCKET_MS} + $P{RECORD_TTL} * 1000,
   "the bucket lives its RECORD_BUCKET_MS + RECORD_TTL ($bttl ms)");
# a void is resent for RELIABLE_HORIZON (240 s) after its charge timed out:
# the record it undoes must live that long and a margin (review L8), and so
# must a forced charge's record and a tombstone
ok(($P{RELIABLE_HORIZON} // 0) >= 120
   && $bttl > (($P{RELIABLE_HORIZON} // 1e9) + 30) * 1000
   && $P{FORCE_RECORD_TTL} > $P{RELIABLE_HORIZON} + 30
   && $P{TOMBSTONE_TTL} > $P{RELIABLE_HORIZON} + 30,
   "the record lives the whole reliable horizon and more ($bttl ms)");
is(usage('v', 'overage_cost'), 750, 'void: 3 overage units, 750');
is(void('v', 'v2'), 1, 'the void found the record');
is(usage('v', 'requests'), 1, 'void: back to 1');
is(usage('v', 'overage_cost'), 0, 'void: overage cost back to 0');
is(usage('v', 'requests:overage'), 0, 'void: overage units back to 0');
is(QuotaTest::redis('HGET', "lt{v}:daily:$start", "requests:$today"), 1,
   'void: daily back to 1');
is(QuotaTest::redis('HGET', $bucket, 'v2'), undef, 'the void took the record');
is(void('v', 'v2'), 0, 'a second void is a no-op');
is(usage('v', 'requests'), 1, 'still 1');
is(charge(tenant => 'v', plans => \@v, id => 'v2')->{code}, $P{CODE_VOIDED},
   'a charge after its void: CODE_VOIDED');
is(usage('v', 'requests'), 1, 'and wrote nothing');

# reconcile: a refund larger than the counter stops at zero
fresh('r', plan => 'basic');
charge(tenant => 'r', plans => \@basic, id => 'r1', cost => 2);
my @rc;
$rc[$P{RC_FIELD}] = 'requests';
$rc[$P{RC_DELTA}] = -5;
$rc[$P{RC_DAILY_FIELD}] = "requests:$today";
$rc[$P{RC_LIMIT}] = 5;
$rc[$P{RC_PRICE}] = -1;
$rc[$P{RC_TTL}] = 100;
$rc[$P{RC_DAILY_TTL}] = 100;
$rc[$P{RC_THRESHOLD}] = 80;
$rc[$P{RC_MARK_SUFFIX}] = '';
$rc[$P{RC_METRIC}] = 'requests';
$rc[$P{RC_EVENTS}] = 0;
$rc[$P{RC_NOTIFY}] = "r\nlt-events\nnow\nreset";
my @rk;
$rk[$P{RKEY_ACCOUNT}] = "lt{r}:account";
$rk[$P{RKEY_COUNTER}] = "lt{r}:usage:$start";
$rk[$P{RKEY_DAILY}] = "lt{r}:daily:$start";
$rk[$P{RKEY_MARKS}] = "lt{r}:alerted:$start";
$rk[$P{RKEY_ALERTS}] = "lt{r}:alerts";
is(scalar(@rc) - 1, $P{RC_NARGS}, 'reconcile: RC_NARGS arguments');
is(scalar(@rk) - 1, $P{RC_NKEYS}, 'reconcile: RC_NKEYS keys');
is(run_script('reconcile', [@rk[1 .. $#rk]], [@rc[1 .. $#rc]])->[0], 0,
   'reconcile -5 of 2: 0');
is(usage('r', 'requests'), 0, 'the counter stops at 0');
is(QuotaTest::redis('HGET', "lt{r}:daily:$start", "requests:$today"), 0,
   'and the daily field too');

# --- leases (ARG_LEASE_N), settle, MODE_FORCE -------------------------------

# KEYS: the grant's record, its period's usage and daily hashes
sub settle {
    my ($t, $id, $units, $period) = @_;
    $period //= $start;
    my @k;
    $k[$P{SKEY_RECORD}] = "lt{$t}:c:$id";
    $k[$P{SKEY_USAGE}] = "lt{$t}:usage:$period";
    $k[$P{SKEY_DAILY}] = "lt{$t}:daily:$period";
    die "settle: SETTLE_NKEYS\n" unless $#k == $P{SETTLE_NKEYS};
    return run_script('settle', [@k[1 .. $#k]], [$units])->[0];
}

sub daily {
    my ($t) = @_;
    return QuotaTest::redis('HGET', "lt{$t}:daily:$start", "requests:$today")
           // 0;
}

# ample quota: n = LEASE_N, all of it charged, the record lives ttl + 60 s
fresh('l', plan => 'basic');
my @big = (['basic', 0, [1000, 0, -1]]);
$r = charge(tenant => 'l', plans => \@big, id => 'l1', lease => 50, ttl => 2);
is($r->{code}, $P{CODE_CHARGED}, 'lease: charged');
is($r->{n_granted}, 50, 'lease: 50 granted');
is($r->{used}, 50, 'lease: used includes the 50 reserved');
is(usage('l', 'requests'), 50, 'lease: usage 50');
is(daily('l'), 50, 'lease: daily 50');
my $ttl = QuotaTest::redis('TTL', 'lt{l}:c:l1');
ok($ttl > 2 && $ttl <= 2 + $P{LEASE_RECORD_EXTRA},
   "lease: the record lives ttl + $P{LEASE_RECORD_EXTRA} s ($ttl)");
# its settle is resent through a Redis outage: an hour (review L6)
ok($ttl > 3600, "lease: the record outlives an outage of an hour ($ttl)");
like(QuotaTest::redis('GET', 'lt{l}:c:l1'), qr/^\S+ \S+ 0 0 50 requests 50 m 0 -1 -1$/,
     'lease: the record holds n, the cost of n, overage 0, no price, no limit');
$r = charge(tenant => 'l', plans => \@big, id => 'l2');
is($r->{n_granted}, 1, 'LEASE_N 1: exact, 1 granted');

# n = min(LEASE_N, headroom / 4): limit 100, used 80: 20 / 4 = 5; used 96:
# 4 / 4 = 1, exact
fresh('h', plan => 'basic');
my @h = (['basic', 0, [100, 0, -1]]);
charge(tenant => 'h', plans => \@h, id => 'h0', cost => 80);
is(charge(tenant => 'h', plans => \@h, id => 'h1', lease => 50)->{n_granted},
   5, 'headroom 20: a lease of 5');
charge(tenant => 'h', plans => \@h, id => 'h2', cost => 11);
is(charge(tenant => 'h', plans => \@h, id => 'h3', lease => 50)->{n_granted},
   1, 'headroom 4: exact (n = 1)');
is(usage('h', 'requests'), 97, 'usage 97');

# never over-admit: leases of up to 10 until refused admit exactly the
# enforcement point, with grace (limit 50 + 20 % = 60) and a cost of 3
fresh('x', plan => 'basic');
my @x = (['basic', 20, [50, 0, -1]]);
my ($admitted, $grants, $refused) = (0, 0, 0);
for my $i (1 .. 100) {
    my $g = charge(tenant => 'x', plans => \@x, id => "x$i", cost => 3,
                   lease => 10);
    if ($g->{code} == $P{CODE_QUOTA}) { $refused++; last }
    $admitted += 3 * $g->{n_granted};
    $grants++;
}
is($refused, 1, 'leases until refused: refused once');
is($admitted, 60, 'leases admitted exactly 60 = 20 x 3 (limit 50, grace 20 %)');
is(usage('x', 'requests'), 60, 'Redis holds 60');
is(daily('x'), 60, 'daily 60');
ok($grants < 20, "fewer grants than units ($grants)");

# rate or concurrency plans are never leased
fresh('q', plan => 'basic');
is(charge(tenant => 'q', plans => [['basic', 0, [1000, 0, -1], '2 1000 2 0 0']],
          id => 'q1', lease => 50)->{n_granted}, 1, 'a rate plan: exact');
is(charge(tenant => 'q', plans => [['basic', 0, [1000, 0, -1], '0 0 0 3 1000']],
          id => 'q2', lease => 50)->{n_granted}, 1, 'a concurrency plan: exact');

# overage (0.001 USD per unit past 10) and a cap of 0.02 USD: n bounded by
# the cap, 10 + 20 units, then CODE_CAP; overage cost exactly the cap
fresh('c', plan => 'basic', overage => 1, cap => '0.02');
my @c = (['basic', 0, [10, 0, 1000]]);
$r = charge(tenant => 'c', plans => \@c, id => 'c1', lease => 100);
is($r->{n_granted}, 30, 'overage + cap: n = 30 (10 + 20 within the cap)');
is(usage('c', 'overage_cost'), 20000, 'overage cost 20000 = the cap');
is(usage('c', 'requests:overage'), 20, '20 overage units');
is(charge(tenant => 'c', plans => \@c, id => 'c2', lease => 100)->{code},
   $P{CODE_CAP}, 'then the cap refuses');
is(usage('c', 'requests'), 30, 'usage 30');

# settle: 25 of 30 back, overage first: 20 overage units at 1000 each and 5
# within the limit
is(settle('c', 'c1', 25), 25, 'settle: 25 back');
is(usage('c', 'requests'), 5, 'settle: usage 5');
is(usage('c', 'requests:overage'), 0, 'settle: overage units 0');
is(usage('c', 'overage_cost'), 0, 'settle: overage cost 0');
is(daily('c'), 5, 'settle: daily 5');
is(QuotaTest::redis('GET', 'lt{c}:c:c1'), 'v', 'settle: the tombstone');
is(settle('c', 'c1', 25), 0, 'a second settle: 0');
is(usage('c', 'requests'), 5, 'still 5');
is(void('c', 'c1'), 0, 'a void after the settle: nothing to undo');
is(usage('c', 'requests'), 5, 'still 5 after the void');
is(daily('c'), 5, 'daily still 5');

# a partial settle inside the overage: 30 granted (20 overage), 5 back
fresh('d', plan => 'basic', overage => 1, cap => '0.02');
charge(tenant => 'd', plans => \@c, id => 'd1', lease => 100);
is(settle('d', 'd1', 5), 5, 'settle 5 of 30');
is(usage('d', 'requests'), 25, 'usage 25');
is(usage('d', 'requests:overage'), 15, 'overage units 15');
is(usage('d', 'overage_cost'), 15000, 'overage cost 15000');
is(settle('d', 'd1', 99), 0, 'the record is settled: a resend is a no-op');
is(usage('d', 'requests'), 25, 'still 25');

# overage at rest with interleaved leases (review L1): limit 100 at 1000
# per unit, used 90; a lease of 20 x 1 (10 of it overage), then a lease of
# 10 x 2 (all 20 overage); the first settles 19 unspent: 9 of them are
# inside the limit, but at rest 111 used = 11 overage units, 11000
fresh('i', plan => 'basic', overage => 1);
my @i = (['basic', 0, [100, 0, 1000]]);
charge(tenant => 'i', plans => \@i, id => 'i0', cost => 90);
is(charge(tenant => 'i', plans => \@i, id => 'i1', lease => 20)->{n_granted},
   20, 'interleaved: a lease of 20 x 1 from 90');
is(charge(tenant => 'i', plans => \@i, id => 'i2', lease => 10,
          cost => 2)->{n_granted}, 10, 'interleaved: a lease of 10 x 2 from 110');
is(usage('i', 'requests:overage'), 30, 'interleaved: 30 overage units');
is(settle('i', 'i1', 19), 19, 'interleaved: the first lease settles 19');
is(usage('i', 'requests'), 111, 'interleaved: usage 111');
is(usage('i', 'requests:overage'), 11, 'interleaved: overage = used - limit');
is(usage('i', 'overage_cost'), 11000, 'interleaved: overage cost 11 x 1000');
is(settle('i', 'i2', 10), 10, 'interleaved: the second settles 10');
is(usage('i', 'requests'), 91, 'interleaved: usage 91');
is(usage('i', 'requests:overage'), 0, 'interleaved: no overage left');
is(usage('i', 'overage_cost'), 0, 'interleaved: no overage cost left');

# the same for a void out of order: used 98, z1 +5 (3 overage), z2 +5 (5),
# z1 voided: at rest 103, 3 overage units
fresh('z', plan => 'basic', overage => 1);
charge(tenant => 'z', plans => \@i, id => 'z0', cost => 98);
charge(tenant => 'z', plans => \@i, id => "z$_", cost => 5) for 1 .. 2;
is(usage('z', 'requests:overage'), 8, 'void out of order: 8 overage units');
is(void('z', 'z1'), 1, 'void out of order: the first is voided');
is(usage('z', 'requests'), 103, 'void out of order: usage 103');
is(usage('z', 'requests:overage'), 3, 'void out of order: overage = used - limit');
is(usage('z', 'overage_cost'), 3000, 'void out of order: cost 3 x 1000');

# the void of a grant whose outcome was unknown undoes the n units
fresh('w', plan => 'basic');
charge(tenant => 'w', plans => \@big, id => 'w1', cost => 1);
charge(tenant => 'w', plans => \@big, id => 'w2', lease => 10, cost => 2);
is(usage('w', 'requests'), 21, 'a charge and a lease of 10 x 2');
is(void('w', 'w2'), 1, 'the void of the grant');
is(usage('w', 'requests'), 1, 'its 20 are back');
is(daily('w'), 1, 'daily too');
is(settle('w', 'w2', 10), 0, 'a settle after the void: nothing');
is(usage('w', 'requests'), 1, 'still 1');

# a settle never gives back more than the lease: 40 asked of 10
fresh('e', plan => 'basic');
charge(tenant => 'e', plans => \@big, id => 'e1', lease => 10, cost => 2);
is(usage('e', 'requests'), 20, 'a lease of 10 x 2');
is(settle('e', 'e1', 40), 10, 'settle 40: 10 back');
is(usage('e', 'requests'), 0, 'usage 0');

# MODE_FORCE: a suspended tenant past its limit is charged anyway, once
fresh('f', plan => 'basic', status => 'suspended', overage => 1, cap => '0');
my @f = (['basic', 0, [5, 0, 1000]]);
charge(tenant => 'f', plans => [['basic', 0, [5, 0, -1]]],
       mode => $P{MODE_FORCE}, id => 'fx', cost => 4);
is(charge(tenant => 'f', plans => [['basic', 0, [5, 0, -1]]],
          mode => $P{MODE_FORCE}, id => 'fy', cost => 2)->{code},
   $P{CODE_CHARGED}, 'force: past the limit without overage, charged');
is(usage('f', 'requests'), 6, 'force: usage 6');
$r = charge(tenant => 'f', plans => \@f, mode => $P{MODE_FORCE}, id => 'f1',
            cost => 3);
is($r->{code}, $P{CODE_CHARGED}, 'force: charged (suspended, cap 0)');
is($r->{used}, 9, 'force: used 9 past the limit 5');
is(usage('f', 'requests'), 9, 'force: usage 9');
is(usage('f', 'requests:overage'), 3, 'force: 3 overage units');
is(usage('f', 'overage_cost'), 3000, 'force: priced 3000');
is(daily('f'), 9, 'force: daily 9');
my $alerts = QuotaTest::redis('XRANGE', 'lt{f}:alerts', '-', '+');
ok((grep { "@{$_->[1]}" =~ /type quota_exceeded/ } @$alerts),
   'force: the quota_exceeded alert fired');
$ttl = QuotaTest::redis('TTL', 'lt{f}:c:f1');
ok($ttl > 10 && $ttl <= $P{FORCE_RECORD_TTL},
   "force: its record lives $P{FORCE_RECORD_TTL} s ($ttl)");
is(charge(tenant => 'f', plans => \@f, mode => $P{MODE_FORCE}, id => 'f1',
          cost => 3)->{code}, $P{CODE_VOIDED},
   'force resent: nothing written (its record)');
is(usage('f', 'requests'), 9, 'force resent: still 9');
is(usage('f', 'overage_cost'), 3000, 'force resent: still 3000');

# --- KEYS: the period keys follow the account's billing anchor --------------

# an account billed from the 15th: a charge whose period keys were named
# for anchor 1 (the gateway's first guess) writes nothing and answers
# CODE_ANCHOR with 15; the same charge named for 15 is charged there
fresh('n', plan => 'basic', anchor => 15);
my ($s15) = period_of(15);
$r = charge(tenant => 'n', plans => \@big, id => 'n1');
is($r->{code}, $P{CODE_ANCHOR}, 'anchor 15, keys of anchor 1: CODE_ANCHOR');
is($r->{index}, 15, "CODE_ANCHOR: REPLY_INDEX is the account's anchor");
is_deeply(QuotaTest::redis('KEYS', 'lt{n}:*'), ['lt{n}:account'],
          'CODE_ANCHOR: nothing written');
$r = charge(tenant => 'n', plans => \@big, id => 'n1', anchor => 15);
is($r->{code}, $P{CODE_CHARGED}, 'the keys of anchor 15: charged');
is(strftime('%Y-%m-%d', gmtime $r->{start}), $s15,
   "its period starts $s15");
is(QuotaTest::redis('HGET', "lt{n}:usage:$s15", 'requests'), 1,
   "usage counted in usage:$s15");
is(QuotaTest::redis('HGET', "lt{n}:daily:$s15", "requests:$today"), 1,
   "daily counted in daily:$s15");
is(usage('n', 'requests'), 0, 'nothing in the calendar month\'s key');
is(charge(tenant => 'n', plans => \@big, anchor => 15,
          mode => $P{MODE_REPORT})->{used}, 1,
   'a report with the keys of anchor 15: used 1');
is(charge(tenant => 'n', plans => \@big,
          mode => $P{MODE_REPORT})->{code}, $P{CODE_ANCHOR},
   'a report with the keys of anchor 1: CODE_ANCHOR');
is(void('n', 'n1', 15), 1, "the void with the charge's keys undoes it");
is(QuotaTest::redis('HGET', "lt{n}:usage:$s15", 'requests'), 0,
   'usage 0 after the void');
charge(tenant => 'n', plans => \@big, id => 'n2', anchor => 15);
is(void('n', 'n2', 1), -1, "a void named for another period: -1");
is(QuotaTest::redis('HGET', "lt{n}:usage:$s15", 'requests'), 1,
   'nothing undone');
charge(tenant => 'n', plans => \@big, id => 'n3', anchor => 15, lease => 10);
is(QuotaTest::redis('HGET', "lt{n}:usage:$s15", 'requests'), 11,
   'a lease of 10 in the period of anchor 15');
is(settle('n', 'n3', 4, $start), -1,
   "a settle named for another period: -1");
is(QuotaTest::redis('HGET', "lt{n}:usage:$s15", 'requests'), 11,
   'nothing given back');
is(QuotaTest::redis('GET', 'lt{n}:c:n3') ne 'v', 1, 'the record stays');
is(settle('n', 'n3', 4, $s15), 4, "the settle named for $s15: 4 back");
is(QuotaTest::redis('HGET', "lt{n}:usage:$s15", 'requests'), 7, 'usage 7');

# the calendar month's account, keys named for anchor 31: CODE_ANCHOR 1
fresh('o2', plan => 'basic');
$r = charge(tenant => 'o2', plans => \@big, id => 'o1', anchor => 31);
is($r->{code}, $P{CODE_ANCHOR}, 'anchor 1, keys of anchor 31: CODE_ANCHOR');
is($r->{index}, 1, 'CODE_ANCHOR 1');
is_deeply(QuotaTest::redis('KEYS', 'lt{o2}:*'), ['lt{o2}:account'],
          'nothing written');

fresh($_) for qw(a g o s u p v r l h x q c d e f w k i z n o2);

done_testing();

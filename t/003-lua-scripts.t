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
for my $s (qw(charge reconcile void)) {
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
    skip "no built module at $so", 3 unless -f $so;
    my $bin = do { open my $f, '<:raw', $so or die "$so: $!"; local $/; <$f> };
    for my $s (qw(charge reconcile void)) {
        my $text = do { open my $f, '<:raw', $file{$s}; local $/; <$f> };
        ok(index($bin, $text . "\0") >= 0,
           "$s: the built module embeds exactly gen.sh's text");
    }
}

SKIP: {
    my $luac = (grep { -x "$_/luac5.1" } split /:/, $ENV{PATH})[0];
    skip 'luac5.1 not installed (apt-get install lua5.1)', 3 unless $luac;
    for my $s (qw(charge reconcile void)) {
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
    $a[$P{ARG_NCHARGES}] = 1;
    my $at = $P{ARG_METRICS};
    $a[$at + $P{METRIC_NAME_OFF}] = 'requests';
    $a[$at + $P{METRIC_COST_OFF}] = $o{cost} // 1;
    $a[$at + $P{METRIC_PERIOD_OFF}] = 'm';
    $at += $P{METRIC_ARGS};
    my @plans = @{ $o{plans} };
    $a[$at++] = scalar @plans;
    for my $p (@plans) {
        $a[$at++] = $p->[0];
        $a[$at++] = "$p->[1] 0 0 0 0 0";
        $a[$at++] = join ' ', @{ $p->[2] };
    }
    my $r = run_script('charge', ["lt{$t}:account"], [@a[1 .. $#a]]);
    return {
        code  => $r->[$P{REPLY_CODE} - 1],
        index => $r->[$P{REPLY_INDEX} - 1],
        plan  => $r->[$P{REPLY_PLAN} - 1],
        start => $r->[$P{REPLY_START} - 1],
        used  => $r->[$P{REPLY_METRICS} + $P{REPLY_USED_OFF} - 1],
        limit => $r->[$P{REPLY_METRICS} + $P{REPLY_LIMIT_OFF} - 1],
        n     => scalar @$r,
    };
}

sub usage {
    my ($t, $field) = @_;
    return QuotaTest::redis('HGET', "lt{$t}:usage:$start", $field) // 0;
}

sub void {
    my ($t, $id) = @_;
    return run_script('void', ["lt{$t}:c:$id"], ["lt{$t}:", $id])->[0];
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
is(usage('v', 'overage_cost'), 750, 'void: 3 overage units, 750');
is(void('v', 'v2'), 1, 'the void found the record');
is(usage('v', 'requests'), 1, 'void: back to 1');
is(usage('v', 'overage_cost'), 0, 'void: overage cost back to 0');
is(usage('v', 'requests:overage'), 0, 'void: overage units back to 0');
is(QuotaTest::redis('HGET', "lt{v}:daily:$start", "requests:$today"), 1,
   'void: daily back to 1');
is(void('v', 'v2'), 0, 'a second void is a no-op');
is(usage('v', 'requests'), 1, 'still 1');
is(charge(tenant => 'v', plans => \@v, id => 'v2')->{code}, $P{CODE_VOIDED},
   'a charge after its void: CODE_VOIDED');
is(usage('v', 'requests'), 1, 'and wrote nothing');

# reconcile: a refund larger than the counter stops at zero
fresh('r', plan => 'basic');
charge(tenant => 'r', plans => \@basic, id => 'r1', cost => 2);
my @rc;
$rc[$P{RC_COUNTER_KEY}] = "lt{r}:usage:$start";
$rc[$P{RC_DAILY_KEY}] = "lt{r}:daily:$start";
$rc[$P{RC_FIELD}] = 'requests';
$rc[$P{RC_DELTA}] = -5;
$rc[$P{RC_DAILY_FIELD}] = "requests:$today";
$rc[$P{RC_LIMIT}] = 5;
$rc[$P{RC_PRICE}] = -1;
$rc[$P{RC_TTL}] = 100;
$rc[$P{RC_DAILY_TTL}] = 100;
$rc[$P{RC_THRESHOLD}] = 80;
$rc[$P{RC_MARKS_KEY}] = "lt{r}:alerted:$start";
$rc[$P{RC_MARK_SUFFIX}] = '';
$rc[$P{RC_METRIC}] = 'requests';
$rc[$P{RC_EVENTS}] = 0;
$rc[$P{RC_NOTIFY}] = "r\nlt-events\nnow\nreset";
$rc[$P{RC_ALERTS_KEY}] = "lt{r}:alerts";
is(scalar(@rc) - 1, $P{RC_NARGS}, 'reconcile: RC_NARGS arguments');
is(run_script('reconcile', ["lt{r}:account"], [@rc[1 .. $#rc]])->[0], 0,
   'reconcile -5 of 2: 0');
is(usage('r', 'requests'), 0, 'the counter stops at 0');
is(QuotaTest::redis('HGET', "lt{r}:daily:$start", "requests:$today"), 0,
   'and the daily field too');

fresh($_) for qw(a g o s u p v r);

done_testing();

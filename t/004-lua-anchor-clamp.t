# The charge script's CODE_ANCHOR check at a pinned instant (2026-11-30
# 12:00 UTC; review R4): anchors 30 and 31 both start their November
# period on the 30th, so the period keys the gateway names for a stale
# guess (30) of an account now billed from the 31st are the same but
# KEY_BEFORE (the period before's usage, read by the quota_reset alert) is
# Oct 30's instead of Oct 31's.  The script must tell them apart: the
# right keys charge and fire quota_reset (the period before had usage),
# the stale ones answer CODE_ANCHOR with 31 and write nothing.  The script
# as built (gen.sh lua) runs in the test Redis with redis-cli --eval, as in
# t/003.
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
my $tmp = tempdir('quota-anchor-clamp.XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $port = QuotaTest::redis_port();
my %P;
open my $def, '<', "$lua/protocol.def" or die "protocol.def: $!";
while (<$def>) { s/#.*//; next unless /\S/; my ($n, $v) = split; $P{$n} = $v }
close $def;
my $file = "$tmp/charge.lua";
system("sh '$lua/gen.sh' lua '$lua' charge > '$file'") == 0 or die;

my $now = timegm(0, 0, 12, 30, 10, 2026);            # 2026-11-30 12:00
sub first { my ($yy, $mm) = @_; while ($mm < 1) { $mm += 12; $yy-- }
            while ($mm > 12) { $mm -= 12; $yy++ } timegm(0, 0, 0, 1, $mm - 1, $yy) }
sub days { my ($yy, $mm) = @_; (first($yy, $mm + 1) - first($yy, $mm)) / 86400 }
sub ym { strftime('%Y-%m', gmtime $_[0]) }
my ($y, $m) = (2026, 11);
my ($m0, $m1, $m2, $mb) = (first($y, $m - 1), first($y, $m), first($y, $m + 1),
                           first($y, $m - 2));
my $today = '2026-11-30';
my $calendar = join ' ', $m0, days($y, $m - 1), ym($m0), days($y, $m),
                         days($y, $m + 1), $mb, days($y, $m - 2), ym($mb),
                         $now - 12 * 3600 + 86400;

sub keys_for {                # as quota_keys() names them
    my ($t, $id, $start, $before) = @_;
    my @k;
    $k[$P{KEY_ACCOUNT}] = "r4{$t}:account";
    $k[$P{KEY_RECORD}] = "r4{$t}:c:$id";
    $k[$P{KEY_BUCKET}] = "r4{$t}:r:" . int($now * 1000 / $P{RECORD_BUCKET_MS});
    $k[$P{KEY_USAGE}] = "r4{$t}:usage:$start";
    $k[$P{KEY_DAILY}] = "r4{$t}:daily:$start";
    $k[$P{KEY_ALERTED}] = "r4{$t}:alerted:$start";
    $k[$P{KEY_BEFORE}] = "r4{$t}:usage:$before";
    $k[$P{KEY_ALERTS}] = "r4{$t}:alerts";
    $k[$P{KEY_RATE}] = "r4{$t}:rate";
    $k[$P{KEY_INFLIGHT}] = "r4{$t}:inflight";
    return @k[1 .. $#k];
}

sub charge {
    my ($t, $before) = @_;
    my @a;
    $a[$P{ARG_BASE}] = "r4{$t}:";
    $a[$P{ARG_MODE}] = $P{MODE_CHARGE};
    $a[$P{ARG_NOW_MS}] = $now * 1000;
    $a[$P{ARG_REQUIRE_ACCOUNT}] = 0;
    $a[$P{ARG_CHARGE_ID}] = "id$t";
    $a[$P{ARG_CUR_START}] = $m1;
    $a[$P{ARG_NEXT_START}] = $m2;
    $a[$P{ARG_YM_CUR}] = ym($m1);
    $a[$P{ARG_YM_NEXT}] = ym($m2);
    $a[$P{ARG_TODAY}] = $today;
    $a[$P{ARG_DEFAULT_PLAN}] = 0;
    $a[$P{ARG_THRESHOLD}] = 80;
    $a[$P{ARG_EVENTS}] = $P{EVENTS_ALERTS};
    $a[$P{ARG_CALENDAR}] = $calendar;
    $a[$P{ARG_NOTIFY}] = "$t\nr4-events\n${today}T12:00:00Z\n2026-12-01";
    $a[$P{ARG_LEASE_N}] = 1;
    $a[$P{ARG_LEASE_TTL}] = 1;
    $a[$P{ARG_RECORD}] = "2026-11-01 $today 0 0 1 requests 1 m 0 -1 -1";
    $a[$P{ARG_NCHARGES}] = 1;
    my $at = $P{ARG_METRICS};
    $a[$at + $P{METRIC_NAME_OFF}] = 'requests';
    $a[$at + $P{METRIC_COST_OFF}] = 1;
    $a[$at + $P{METRIC_PERIOD_OFF}] = 'm';
    $at += $P{METRIC_ARGS};
    $a[$at++] = 1; $a[$at++] = 'basic'; $a[$at++] = 0; $a[$at++] = 100;
    open my $out, '-|', 'redis-cli', '-p', $port, '--eval', $file,
         keys_for($t, "id$t", '2026-11-30', $before), ',', @a[1 .. $#a]
        or die;
    my @l = map { chomp; $_ } <$out>;
    return ($l[$P{REPLY_CODE} - 1] // "@l", $l[$P{REPLY_INDEX} - 1]);
}

for my $case (['right', '2026-10-31', $P{CODE_CHARGED}],
              ['stale', '2026-10-30', $P{CODE_ANCHOR}]) {
    my ($t, $before, $want) = @$case;
    my @old = @{ QuotaTest::redis('KEYS', "r4{$t}:*") };
    QuotaTest::redis('DEL', @old) if @old;
    QuotaTest::redis('HSET', "r4{$t}:account", plan => 'basic', anchor => 31);
    # the period before this one (anchor 31: Oct 31 - Nov 30) had usage
    QuotaTest::redis('HSET', "r4{$t}:usage:2026-10-31", requests => 5);
    my ($code, $index) = charge($t, $before);
    is($code, $want, "$t keys (period before $before): code $want");
    my $x = QuotaTest::redis('XRANGE', "r4{$t}:alerts", '-', '+');
    my $reset = grep { ref $_ && grep { defined && $_ eq 'quota_reset' }
                       @{ $_->[1] } } @$x;
    if ($t eq 'right') {
        ok($reset, 'right keys: the first units of the period fire '
                   . 'quota_reset (the period before had usage)');
        is(QuotaTest::redis('HGET', "r4{$t}:usage:2026-11-30", 'requests'),
           1, 'right keys: charged in usage:2026-11-30');
    } else {
        is($index, 31, "stale keys: CODE_ANCHOR names the account's 31");
        is_deeply([sort @{ QuotaTest::redis('KEYS', "r4{$t}:*") }],
                  ["r4{$t}:account", "r4{$t}:usage:2026-10-31"],
                  'stale keys: nothing written');
    }
    my @k = @{ QuotaTest::redis('KEYS', "r4{$t}:*") };
    QuotaTest::redis('DEL', @k) if @k;
}
done_testing();

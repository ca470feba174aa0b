# The billing period as the charge script computes it in Redis, against the
# C code (src/ngx_http_quota_period.c) that t/unit/test_period.c checks.
#
# Production decides the period in Lua (the account's anchor is only known
# inside the script), so the unit tests of the C copy alone prove nothing
# about what Redis runs.  Here the period code is cut out of the script
# compiled into the built module (build/ngx_http_quota_module.so: exactly
# the bytes nginx sends), run in the test Redis with EVAL over thousands
# of instants x anchors 1-31, and compared with quota_period_from_calendar()
# and with quota_period_month() (independent civil-date arithmetic).  The
# calendar arguments the script gets are checked against what nginx really
# sends, read with MONITOR at a pinned instant.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use File::Temp qw(tempdir);
use IO::Socket::INET;
use IO::Select;
use Time::HiRes qw(time);
use Time::Local qw(timegm);
use POSIX qw(strftime);

my $top = "$FindBin::Bin/..";
my ($so) = grep { /ngx_http_quota_module\.so$/ }
           split(' ', $ENV{TEST_NGINX_LOAD_MODULES} || ''),
           "$top/build/ngx_http_quota_module.so";
my $tmp = tempdir('quota-lua-period.XXXXXX', TMPDIR => 1, CLEANUP => 1);

# --- the script as built ---------------------------------------------------

my $bin = do { open my $f, '<:raw', $so or die "$so: $!"; local $/; <$f> };
my $at = index($bin, "local acct, base = KEYS[");
ok($at >= 0, "the charge script is in $so") or BAIL_OUT('no charge script');
my $script = substr($bin, $at, index($bin, "\0", $at) - $at);

# the positions are names (src/lua/protocol.def): their values are those of
# the prelude line the build put right before the script
my $pre = rindex($bin, "local ARG_BASE", $at);
my ($names, $values) = substr($bin, $pre, $at - $pre)
    =~ /^local ([A-Z0-9_, ]+) = ([-0-9, ]+)\n+$/;
ok($names, 'the protocol prelude precedes the charge script')
    or BAIL_OUT('no prelude before the charge script');
my @n = split /, /, $names;
my @v = split /, /, $values;
my %pos = map { $n[$_] => $v[$_] } 0 .. $#n;

# the period code: from "local function clamped(" to the "end" that closes
# "if anchor == 1 then"
my $from = index($script, "local function clamped(");
my $if = index($script, "\nif anchor == 1 then\n", $from);
my $to = $if < 0 ? -1 : index($script, "\nend\n", $if);
ok($from >= 0 && $if > $from && $to > $if,
   'the period code is found in the script')
    or BAIL_OUT('the charge script changed shape: update t/002-lua-period.t');
my $period = substr($script, $from, $to + 5 - $from);

# the arguments it reads: the test feeds them by the layout documented in
# src/lua/protocol.def, and checks that layout against nginx below
my %argv = map { ($pos{$_} // -1) => 1 } $period =~ /ARGV\[(\w+)\]/g;
is_deeply([sort { $a <=> $b } keys %argv], [6, 7, 8, 9, 14],
          'the period code reads ARGV 6, 7, 8, 9 and 14');
(my $body = $period) =~ s/ARGV\[(\w+)\]/A[$pos{$1}]/g;

my $wrapper = <<"_LUA_";
local A = {}
local now, anchor = tonumber(ARGV[1]), tonumber(ARGV[2])
A[6], A[7], A[8], A[9], A[14] = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local pstart, pend = 0, 0
$body
-- anchor 1's end date is built only when an event needs it (charge.lua)
return {pstart, pend, start, end_date or A[9] .. '-01'}
_LUA_
my $sha = redis('SCRIPT', 'LOAD', $wrapper);

# --- the C side ------------------------------------------------------------

my $csrc = "$tmp/period_dump.c";
open my $cf, '>', $csrc or die $!;
print $cf <<'_C_';
#include <stdio.h>
#include <inttypes.h>
#include "ngx_http_quota_pure.h"

/* "now anchor" lines in; per line: the calendar, the period from the
 * calendar, the period from civil dates, the start date */
int
main(void)
{
    long long         now;
    int               anchor;
    char              date[QUOTA_DATE_LEN + 1], end[QUOTA_DATE_LEN + 1];
    quota_calendar_t  cal;
    quota_period_t    p, m;

    while (scanf("%lld %d", &now, &anchor) == 2) {
        if (quota_calendar(now, &cal) != 0
            || quota_period_from_calendar(&cal, now, anchor, &p) != 0
            || quota_period_month(now, anchor, &m) != 0)
        {
            printf("error\n");
            continue;
        }
        quota_format_date(p.start, date);
        quota_format_date(p.end, end);
        date[QUOTA_DATE_LEN] = end[QUOTA_DATE_LEN] = '\0';
        printf("%lld %d %" PRId64 " %" PRId64 " %" PRId64 " %d %d %d"
               " %" PRId64 " %" PRId64 " %" PRId64 " %" PRId64 " %s %s\n",
               now, anchor, cal.month_start[0], cal.month_start[1],
               cal.month_start[2], cal.days[0], cal.days[1], cal.days[2],
               p.start, p.end, m.start, m.end, date, end);
    }
    return 0;
}
_C_
close $cf;
my $cc = $ENV{CC} || 'cc';
my $out = `$cc -Wall -Werror -O1 -I$top/src -o $tmp/period_dump $csrc $top/src/ngx_http_quota_period.c 2>&1`;
ok($? == 0, 'the C period code compiles') or BAIL_OUT($out);

# --- instants x anchors ----------------------------------------------------

# every month of 2026-2029 (a leap year included) and a few far ones: for
# each anchor, the second its period starts, one before and one after,
# plus the month's first and last second and a mid-month instant
my @cases;
my @months = ((map { my $y = $_; map { [$y, $_] } 1 .. 12 } 2026 .. 2029),
              [1970, 1], [1999, 12], [2000, 2], [2100, 2], [2400, 2]);
for my $ym (@months) {
    my ($y, $m) = @$ym;
    my $first = timegm(0, 0, 0, 1, $m - 1, $y);
    my ($ny, $nm) = $m == 12 ? ($y + 1, 1) : ($y, $m + 1);
    my $days = (timegm(0, 0, 0, 1, $nm - 1, $ny) - $first) / 86400;
    for my $anchor (1 .. 31) {
        my $d = $anchor < $days ? $anchor : $days;
        my $s = $first + ($d - 1) * 86400;
        push @cases, map { [$_, $anchor] }
            $s - 1, $s, $s + 1, $first, $first + $days * 86400 - 1,
            $first + 14 * 86400 + 43210;
    }
}

open my $in, '>', "$tmp/in" or die $!;
print $in "$_->[0] $_->[1]\n" for @cases;
close $in;
my @c = split /\n/, `$tmp/period_dump < $tmp/in`;
is(scalar @c, scalar @cases, scalar(@cases) . ' instants x anchors computed in C');

sub ym { strftime('%Y-%m', gmtime $_[0]) }

my ($n, $bad_lua, $bad_c, @diag) = (0, 0, 0);
for my $line (@c) {
    my ($now, $anchor, $m0, $m1, $m2, $d0, $d1, $d2, $ps, $pe, $ms, $me,
        $sdate, $edate) = split ' ', $line;
    if (!defined $edate) {
        $bad_c++;
        push @diag, "C: $line";
        next;
    }
    $bad_c++, push @diag, "C: calendar and civil differ: $line"
        if $ps != $ms || $pe != $me;

    # ARGV 14: PREV_1ST PREV_DAYS PREV_YM CUR_DAYS NEXT_DAYS BEFORE_1ST
    # BEFORE_DAYS BEFORE_YM TODAY_END (the BEFORE part is not read here)
    my $cal = join ' ', $m0, $d0, ym($m0), $d1, $d2, 0, 0, '0000-00', 0;
    my $r = redis('EVALSHA', $sha, 0, $now, $anchor, $m1, $m2, ym($m1),
                  ym($m2), $cal);
    $n++;
    my @want = ($ps, $pe, $sdate, $edate);
    if (join(' ', @$r) ne join(' ', @want)) {
        $bad_lua++;
        push @diag, "now $now (" . strftime('%Y-%m-%dT%H:%M:%SZ', gmtime $now)
                    . ") anchor $anchor: Lua @$r, C @want" if @diag < 10;
    }
}
is($bad_c, 0, 'C: quota_period_from_calendar() = quota_period_month()');
is($bad_lua, 0, "Lua = C for all $n instants x anchors")
    or diag(join "\n", @diag);

# --- the calendar nginx really sends ---------------------------------------

my ($faketime) = grep { -e } map { "$_/faketime/libfaketime.so.1" }
                 '/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu',
                 '/usr/lib';
ok($faketime, 'libfaketime is installed') or do { done_testing(); exit 1 };

my $instant = '2027-03-14 10:20:30';
my $now = timegm(30, 20, 10, 14, 2, 2027);
my $mon = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                PeerPort => $ENV{TEST_NGINX_REDIS_PORT})
    or die $!;
print $mon "*1\r\n\$7\r\nMONITOR\r\n";
{
    local $ENV{LD_PRELOAD} = $faketime;
    local $ENV{FAKETIME} = $instant;
    local $ENV{FAKETIME_DONT_FAKE_MONOTONIC} = 1;
    nginx_run(no_root_location => 1, http_config => <<'_EOC_',
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric a;
    quota_plan p { limit a 100; }
    quota_default_plan p;
_EOC_
              config => <<'_EOC_',
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /a a=1;
    location / { proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin; }
    location /origin { quota off; return 200 "ok\n"; }
_EOC_
              code => sub {
                  http_request($_[0], 'POST', '/a', { 'X-T' => 'argv' }, '');
              });
}
redis('ECHO', 'argv-marker');
my ($buf, $sel) = ('', IO::Select->new($mon));
my $deadline = time + 10;
while (index($buf, 'argv-marker') < 0 && time < $deadline
       && $sel->can_read($deadline - time))
{
    sysread($mon, $buf, 65536, length $buf) or last;
}
close $mon;

my ($evalsha) = grep { /"EVALSHA"/ && /\{argv\}/ } split /\r\n/, $buf;
ok($evalsha, "MONITOR saw the charge of the pinned request") or diag(join "\n", map { substr($_, 0, 300) } grep { !/SCRIPT/ } split /\r\n/, $buf);
# MONITOR quotes each argument: "EVALSHA" "sha" "numkeys" KEYS... ARGV...
my @args = map { s/\\n/\n/gr } ($evalsha // '') =~ /"((?:[^"\\]|\\.)*)"/g;
my $numkeys = $args[2] // 0;
my @a = (undef, @args[3 + $numkeys .. $#args]);    # 1-based ARGV
my ($c) = split /\n/, `echo "$now 1" | $tmp/period_dump`;
my (undef, undef, $m0, $m1, $m2, $d0, $d1, $d2) = split ' ', $c;
is($a[6], $m1, 'ARGV[6]: the 1st of this month, as fed above');
is($a[7], $m2, 'ARGV[7]: the 1st of next month');
is($a[8], ym($m1), 'ARGV[8]: this month, YYYY-MM');
is($a[9], ym($m2), 'ARGV[9]: next month, YYYY-MM');
like($a[14] // '', qr/^\Q$m0 $d0 ${\ ym($m0)} $d1 $d2 \E/,
     'ARGV[14]: previous month 1st, days, YYYY-MM, this and next month days');

done_testing();

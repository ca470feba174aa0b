# Decoding the charge script's reply (src/ngx_http_quota_reply.c): every
# field lands where the script put it, and anything that is not exactly the
# shape the script returns is a Redis failure (quota_failure_mode), never a
# half-understood admit or refusal.
#
# A real script cannot return a malformed reply, so nginx talks here to a
# fake Redis (a Perl server speaking RESP) that answers each tenant's
# EVALSHA with a crafted reply; handshake commands get plausible answers.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use IO::Socket::INET;
use IO::Select;
use Digest::SHA qw(sha1_hex);
use POSIX ();

my $S = 1798761600;    # 2027-01-01T00:00:00Z
my $E = 1801440000;    # 2027-02-01T00:00:00Z

# the reply's positions by name (src/lua/protocol.def, 1-based)
my %P;
open my $def, '<', "$FindBin::Bin/../src/lua/protocol.def" or die $!;
while (<$def>) { s/#.*//; my ($n, $v) = split; $P{$n} = $v if defined $v }
close $def;

# one metric: the fields by name, RESP integers unless overridden
sub fields {
    my ($code, $index, $plan, $start, $end, $retry, $slot, $used, $limit,
        %o) = @_;
    my @e;
    $e[$P{REPLY_CODE}] = $code;
    $e[$P{REPLY_INDEX}] = $index;
    $e[$P{REPLY_PLAN}] = $plan;
    $e[$P{REPLY_START}] = $start;
    $e[$P{REPLY_END}] = $end;
    $e[$P{REPLY_RETRY}] = $retry;
    $e[$P{REPLY_SLOT}] = $slot;
    $e[$P{REPLY_GRANTED}] = $o{granted} // 1;
    $e[$P{REPLY_METRICS} + $P{REPLY_USED_OFF}] = $used;
    $e[$P{REPLY_METRICS} + $P{REPLY_LIMIT_OFF}] = $limit;
    shift @e;
    return @e;
}
sub resp { '*' . @_ . "\r\n" . join('', map { ref $_ ? $$_ : ":$_\r\n" } @_) }
sub ints { resp(fields(@_)) }
# the same with the element at position "pos" (1-based) replaced by raw RESP
sub with {
    my ($pos, $raw, @f) = @_;
    my @e = fields(@f);
    $e[$pos - 1] = \$raw;
    return resp(@e);
}

my %reply = (
    ok        => ints(1, 0, 1, $S, $E, 0, 0, 7, 10),
    quota     => ints(2, 1, 1, $S, $E, 0, 0, 10, 10),
    cap       => ints(3, 0, 1, $S, $E, 0, 0, 12, 10),
    suspended => ints(4, 0, 1, $S, $E, 0, 0, 0, 10),
    unknown   => ints(5, 0, 0, 0, 0, 0, 0, 0, -1),
    rate      => ints(6, 0, 1, $S, $E, 2001, 0, 3, 10),
    rate_ms   => ints(6, 0, 1, $S, $E, 1, 0, 3, 10),
    conc      => ints(7, 0, 1, $S, $E, 1000, 0, 3, 10),
    nolimit   => ints(1, 0, 1, $S, $E, 0, 0, 5, -1),
    # malformed
    short     => do { my @e = fields(1, 0, 1, $S, $E, 0, 0, 7, 10);
                      pop @e; resp(@e) },
    long      => resp(fields(1, 0, 1, $S, $E, 0, 0, 7, 10), 1),
    empty     => "*0\r\n",
    string    => with($P{REPLY_CODE}, "\$1\r\n1\r\n",
                      1, 0, 1, $S, $E, 0, 0, 7, 10),
    strused   => with($P{REPLY_METRICS} + $P{REPLY_USED_OFF}, "\$1\r\n7\r\n",
                      1, 0, 1, $S, $E, 0, 0, 7, 10),
    nilelem   => with($P{REPLY_METRICS} + $P{REPLY_USED_OFF}, "\$-1\r\n",
                      1, 0, 1, $S, $E, 0, 0, 7, 10),
    code0     => ints(0, 0, 1, $S, $E, 0, 0, 7, 10),
    code99    => ints(99, 0, 1, $S, $E, 0, 0, 7, 10),
    codeneg   => ints(-1, 0, 1, $S, $E, 0, 0, 7, 10),
    index0    => ints(2, 0, 1, $S, $E, 0, 0, 10, 10),
    index2    => ints(2, 2, 1, $S, $E, 0, 0, 10, 10),
    backwards => ints(1, 0, 1, $E, $S, 0, 0, 7, 10),
    retryneg  => ints(6, 0, 1, $S, $E, -1, 0, 3, 10),
    # a lease nobody asked for, or no unit at all
    granted2  => ints(1, 0, 1, $S, $E, 0, 0, 7, 10, granted => 2),
    granted0  => ints(1, 0, 1, $S, $E, 0, 0, 7, 10, granted => 0),
    # CODE_ANCHOR names an anchor 1-31; one answered again after the resend
    # (the account's anchor changed meanwhile) is a failure too
    anchor0   => ints($P{CODE_ANCHOR}, 0, 1, $S, $E, 0, 0, 7, 10),
    anchor32  => ints($P{CODE_ANCHOR}, 32, 1, $S, $E, 0, 0, 7, 10),
    anchor15  => ints($P{CODE_ANCHOR}, 15, 1, $S, $E, 0, 0, 7, 10),
    error     => "-ERR boom\r\n",
    nil       => "\$-1\r\n",
    integer   => ":1\r\n",
    status    => "+OK\r\n",
);
my @malformed = qw(short long empty string strused nilelem code0 code99
                   codeneg index0 index2 backwards retryneg granted2
                   granted0 error nil integer status anchor0 anchor32
                   anchor15);

# --- the fake Redis ---------------------------------------------------------

# reads one RESP command (array of bulk strings) from $buf; returns the
# argument list and removes it, or nothing if incomplete
sub take_command {
    my ($buf) = @_;
    return unless $$buf =~ /^\*(\d+)\r\n/;
    my ($n, $p) = ($1, length("*$1\r\n"));
    my @args;
    for (1 .. $n) {
        my $nl = index($$buf, "\r\n", $p);
        return if $nl < 0;
        my ($len) = substr($$buf, $p, $nl - $p) =~ /^\$(\d+)$/ or die "bad RESP";
        return if length($$buf) < $nl + 2 + $len + 2;
        push @args, substr($$buf, $nl + 2, $len);
        $p = $nl + 2 + $len + 2;
    }
    substr($$buf, 0, $p) = '';
    return \@args;
}

sub answer {
    my ($args) = @_;
    my $cmd = uc $args->[0];
    if ($cmd eq 'SCRIPT' && uc($args->[1] // '') eq 'LOAD') {
        my $sha = sha1_hex($args->[2]);
        return "\$40\r\n$sha\r\n";
    }
    if ($cmd eq 'EVALSHA' || $cmd eq 'EVAL') {
        # KEYS[1] = "quota:{T}:account" for a charge
        my ($t) = ($args->[3] // '') =~ /^quota:\{(\w+)\}:account$/;
        return $reply{$t} if defined $t && exists $reply{$t};
        return ":0\r\n";    # anything else (a void, a reconcile)
    }
    return "+PONG\r\n" if $cmd eq 'PING';
    return "+OK\r\n";
}

my $listen = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                   Listen => 64, ReuseAddr => 1) or die $!;
my $fport = $listen->sockport;
my $fpid = fork;
die "fork: $!" unless defined $fpid;
if ($fpid == 0) {
    alarm 120;
    my $sel = IO::Select->new($listen);
    my %buf;
    while (1) {
        for my $s ($sel->can_read(1)) {
            if ($s == $listen) {
                my $c = $listen->accept or next;
                $sel->add($c);
                $buf{fileno $c} = '';
                next;
            }
            my $b = \$buf{fileno $s};
            my $n = sysread($s, $$b, 65536, length $$b);
            if (!$n) {
                $sel->remove($s);
                delete $buf{fileno $s};
                close $s;
                next;
            }
            while (my $args = take_command($b)) {
                syswrite($s, answer($args));
            }
        }
    }
}
close $listen;

# --- nginx in front of it -----------------------------------------------------

my %r;
my $log = nginx_run(no_root_location => 1, http_config => <<"_EOC_",
    quota_redis 127.0.0.1:$fport timeout=2s;
    quota_failure_mode closed;
    quota_metric a;
    quota_plan p { limit a 10; }
    quota_default_plan p;
_EOC_
    config => <<'_EOC_',
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /a a=1;

    location / {
        add_header X-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_
    code => sub {
        my ($port) = @_;
        for my $t (sort keys %reply) {
            $r{$t} = http_request($port, 'POST', '/a', { 'X-T' => $t }, '', 10);
        }
        # the connection is still good after every malformed reply
        $r{after} = http_request($port, 'POST', '/a', { 'X-T' => 'ok' }, '', 10);
    });
kill 'KILL', $fpid;
waitpid $fpid, 0;

my $h = sub { $r{$_[0]}{headers}{$_[1]} };

is($r{ok}{status}, 200, 'charged: 200');
is($h->('ok', 'x-status'), 'ALLOWED', 'charged: ALLOWED');
is($h->('ok', 'x-quota-used'), 7, 'charged: used from REPLY_USED');
is($h->('ok', 'x-quota-limit'), 10, 'charged: limit from REPLY_LIMIT');
is($h->('ok', 'x-quota-remaining'), 3, 'charged: remaining = limit - used');
is($h->('ok', 'x-quota-reset'), '2027-02-01T00:00:00Z', 'charged: reset = the period end (REPLY_END)');

is($r{quota}{status}, 402, 'code 2: 402');
like($r{quota}{body}, qr/^\{"error":"QUOTA_EXCEEDED","message":"Monthly a quota exhausted\. Quota resets on 2027-02-01\.","metric":"a","current_usage":10,"quota_limit":10,"quota_reset_date":"2027-02-01T00:00:00Z"\}$/,
     'code 2: the body from the reply');
is($r{cap}{status}, 402, 'code 3: 402');
like($r{cap}{body}, qr/^\{"error":"SPENDING_CAP_REACHED"/, 'code 3: SPENDING_CAP_REACHED');
is($h->('cap', 'x-quota-remaining'), 0, 'code 3: used past the limit: remaining 0');
is($r{suspended}{status}, 402, 'code 4: 402');
like($r{suspended}{body}, qr/^\{"error":"ACCOUNT_SUSPENDED"/, 'code 4: ACCOUNT_SUSPENDED');
is($r{unknown}{status}, 403, 'code 5: 403');
like($r{unknown}{body}, qr/^\{"error":"UNKNOWN_TENANT"/, 'code 5: UNKNOWN_TENANT');
is($r{rate}{status}, 429, 'code 6: 429');
is($h->('rate', 'retry-after'), 3, 'code 6: 2001 ms rounded up to Retry-After 3');
like($r{rate}{body}, qr/"error":"RATE_LIMITED".*"retry_after":3\}$/, 'code 6: retry_after 3');
is($h->('rate_ms', 'retry-after'), 1, 'code 6: 1 ms rounded up to Retry-After 1');
is($r{conc}{status}, 429, 'code 7: 429');
like($r{conc}{body}, qr/^\{"error":"CONCURRENCY_LIMIT"/, 'code 7: CONCURRENCY_LIMIT');
is($h->('conc', 'retry-after'), 1, 'code 7: Retry-After 1');
is($r{nolimit}{status}, 200, 'limit -1: 200');
is($h->('nolimit', 'x-quota-used'), 5, 'limit -1: used');
ok(!defined $h->('nolimit', 'x-quota-remaining'), 'limit -1: no Remaining header');

for my $t (@malformed) {
    is($r{$t}{status}, 503, "malformed reply ($t): the failure mode (closed: 503)");
    is($h->($t, 'x-status'), 'FAIL_CLOSED', "malformed reply ($t): FAIL_CLOSED");
}
is($r{after}{status}, 200, 'after all of them the connection still serves');

like($log, qr/unexpected reply from the charge script/, 'a malformed reply is logged');
like($log, qr/the billing anchor of tenant "anchor15" changed while charging/,
     'CODE_ANCHOR again after its resend: logged');
unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'no alert, no crash');

done_testing();

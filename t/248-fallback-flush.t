# quota_fallback's flush (L5, L10 of the ledger review): the tenants with
# fallback units to charge are queued in the zone and collected in one
# bounded pass into a per-worker batch sized at init, re-armed while some
# are left.  1. Two workers race (one flushes while the other admits a
# tenant with a long id in fallback): the flush used to size a block in a
# first pass and copy ids in a second one, past its end (heap corruption,
# worker abort); a malloc of that block's size is slowed by a preloaded
# shim to widen the race.  2. More tenants than one batch: every one is
# charged exactly once.
use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest qw(:DEFAULT nginx_stop);
use QuotaFallback;
use IO::Socket::INET;
use File::Path ();
use Time::HiRes qw(time sleep);

my $rs = start_redis(args => ['--enable-debug-command', 'yes']);
my $rport = $rs->{port};
my $root = QuotaTest::_servroot_base() . '_248';

sub usage { QuotaFallback::usage($rs, @_) }
sub req { QuotaFallback::req(@_) }
sub redis_sleep { QuotaFallback::redis_sleep($rs, @_) }
sub logs { QuotaFallback::logs($root) }
sub wait_for { QuotaFallback::wait_for(@_) }

# nginx on $port with $workers workers, once their Redis connections are
# ready
sub start {
    my ($port, $workers) = @_;
    return QuotaFallback::start_nginx($root, $port, $workers, rport => $rport,
                                       zone => '4m', nodes => 1,
                                       failure_mode => 'open', limit => 1000);
}

# 1. the race, widened by a malloc shim where one can be preloaded
SKIP: {
    skip 'the malloc shim does not go with valgrind or sanitizers', 7
        if $ENV{TEST_NGINX_USE_VALGRIND} || $ENV{TEST_NGINX_USE_SANITIZER};

    my $A = 'a' x 123;    # the old first pass: 1 x (24 + 8) + 123 bytes
    my $B = 'b' x 256;
    my $dir = "${root}_shim";
    File::Path::rmtree($dir);
    File::Path::mkpath($dir);
    open my $c, '>', "$dir/slowmalloc.c" or die;
    print $c <<'_C_';
#include <stdlib.h>
#include <unistd.h>
extern void *__libc_malloc(size_t);
static long magic = -2, usec;
void *malloc(size_t n)
{
    if (magic == -2) {
        char *e = getenv("SHIM_MAGIC"), *u = getenv("SHIM_USEC");
        magic = e ? atol(e) : -1;
        usec = u ? atol(u) : 0;
    }
    if (magic > 0 && (long) n == magic) {
        usleep(usec);
    }
    return __libc_malloc(n);
}
_C_
    close $c;
    skip 'no C compiler for the malloc shim', 7
        if system("cc -shared -fPIC -o $dir/slowmalloc.so $dir/slowmalloc.c"
                  . " 2>/dev/null") != 0;

    my $port = free_port();
    my $h;
    {
        local $ENV{TEST_NGINX_LD_PRELOAD} = "$dir/slowmalloc.so";
        local $ENV{SHIM_MAGIC} = 155;
        local $ENV{SHIM_USEC} = 2500000;
        $h = start($port, 2);
    }

    # one keep-alive connection on each worker
    my ($w1, $w2) = QuotaFallback::worker_conns($port, 2);
    ok($w1 && $w2, 'a connection on each worker');

    is(req($w1, $A)->{qs}, 'ALLOWED', 'A learned (123-byte id)');
    is(req($w2, $B)->{qs}, 'ALLOWED', 'B learned (256-byte id)');

    # Redis asleep: worker 1's A times out (FALLBACK, its flush timer
    # runs while worker 2 opens the circuit and admits B)
    my $pid = redis_sleep(4);
    is(req($w1, $A)->{qs}, 'FALLBACK', 'A: fallback on worker 1');
    sleep 0.15;
    req($w2, 'unknown1');
    req($w2, 'unknown2');
    is(req($w2, $B)->{qs}, 'FALLBACK', 'B: fallback on worker 2');
    waitpid $pid, 0;

    # the probe closes the circuit, every unit is charged once
    ok(wait_for(15, sub { usage($A) == 2 && usage($B) == 2 }),
       'A and B: 1 + 1 fallback unit each charged')
        or diag("A " . usage($A) . ", B " . usage($B));
    nginx_stop($h, master => 1, check => "1. the race");

    my $bad = qr/exited on signal|corrupt|invalid|malloc\(\)|\[alert\]/;
    unlike(logs(), $bad, 'no worker crashed, no heap corruption')
        or diag(join "\n", grep { /$bad/ } split /\n/, logs());
}

# 2. more tenants than one flush's batch (64), with the longest ids
{
    my $port = free_port();
    my $h = start($port, 1);

    my @t = map { sprintf('%03d', $_) . ('t' x 253) } 1 .. 150;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port)
        or die;
    my $learned = grep { req($s, $_)->{qs} eq 'ALLOWED' } @t;
    is($learned, 150, '150 tenants learned');

    $rs->cmd('SAVE');
    kill 'STOP', $rs->{pid};
    req($s, "unknown$_") for 1 .. 3;    # the circuit opens
    my $fb = grep { req($s, $_)->{qs} eq 'FALLBACK' } @t;
    is($fb, 150, '150 tenants admitted in fallback');
    kill 'CONT', $rs->{pid};

    ok(wait_for(10, sub { !grep { usage($_) != 2 } @t }),
       'every tenant charged its fallback unit once')
        or diag(join ' ', map { usage($_) } @t);
    sleep 0.5;
    is(scalar(grep { usage($_) != 2 } @t), 0, 'and not twice');

    nginx_stop($h, master => 1, check => "2. 150 tenants");
    my $log = logs();
    my @sent = $log =~ /fallback charges of (\d+) tenants sent/g;
    ok(!grep({ $_ > 64 } @sent), 'at most 64 tenants per flush: '
       . join(' ', @sent));
    unlike($log, qr/\[alert\]|\[crit\]|\[emerg\]/, 'no alert');
}

stop_redis($rs);
done_testing();

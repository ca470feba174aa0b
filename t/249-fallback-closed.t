# quota_fallback while the circuit is closed (L4, L7 of the ledger
# review): a request whose own Redis trip fails is admitted from the zone,
# and its units are charged at once (FORCE sent as it is admitted), not
# batched 100 ms later: 1. Redis, up again, goes on deciding the tenant's
# other requests (another worker) and must count them: admitted stays
# within the limit; 2. a graceful quit right after does not take them
# along.
use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest qw(:DEFAULT nginx_stop);
use QuotaTime;
use QuotaFallback;
use IO::Socket::INET;
use Time::HiRes qw(time sleep);

my $start = month_start();
my $rs = start_redis();
my $rport = $rs->{port};
my $root = QuotaTest::_servroot_base() . '_249';

sub usage { QuotaFallback::usage($rs, @_) }
sub req { QuotaFallback::req(@_) }
sub logs { QuotaFallback::logs($root) }

# nginx on $port with $workers workers, once their Redis connections are
# ready
sub start {
    my ($port, $workers) = @_;
    return QuotaFallback::start_nginx($root, $port, $workers, rport => $rport,
                                       nodes => 1, failure_mode => 'closed',
                                       limit => 100);
}

# 1. Redis decides the other worker's requests right after a fallback
{
    $rs->cmd('HSET', "quota:{k}:usage:$start", 'api', 97);
    my $port = free_port();
    my $h = start($port, 2);

    my ($w1, $w2) = QuotaFallback::worker_conns($port, 2);
    ok($w1 && $w2, 'a connection on each worker');

    my %adm;
    $adm{ req($w1, 'k')->{qs} }++;                  # 98, learned
    # Redis holds the charges: worker 1's times out (300 ms), is admitted
    # in fallback and its FORCE sent at once, behind it; at UNPAUSE both
    # run before UNPAUSE is answered, then worker 2's charges come, sent
    # at once (well within the 100 ms a batched FORCE used to wait).  A
    # DEBUG SLEEP of a fixed length (under 0.6 s: worker 1's charge must
    # time out, worker 2's not) missed one side or the other on a loaded
    # machine.
    QuotaFallback::redis_pause($rs);
    my $r = req($w1, 'k');                          # times out
    is($r->{qs}, 'FALLBACK', 'worker 1: timed out, admitted in fallback');
    QuotaFallback::redis_unpause($rs);
    $adm{ $r->{qs} }++;
    $adm{ req($w2, 'k')->{qs} }++ for 1 .. 3;       # Redis decides
    sleep 1;
    nginx_stop($h, master => 1, check => "1. two workers");

    my $admitted = 97 + ($adm{ALLOWED} // 0) + ($adm{FALLBACK} // 0);
    ok($admitted <= 100, "admitted ($admitted) within the limit 100: "
       . join(', ', map { "$_ $adm{$_}" } sort keys %adm));
    is(usage('k'), $admitted, 'redis usage = admitted');
}

# 2. a graceful quit right after a fallback admission
{
    my $port = free_port();
    my $h = start($port, 1);

    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port)
        or die;
    is(req($s, 'q')->{qs}, 'ALLOWED', 'q: 1 charged');
    QuotaFallback::redis_pause($rs);               # the charge times out
    is(req($s, 'q')->{qs}, 'FALLBACK', 'q: timed out, FALLBACK');
    close $s;
    kill 'QUIT', $h->{pid};
    # the worker quits with its FORCE not answered yet
    QuotaFallback::wait_for(15, sub { logs() =~ /gracefully shutting down/ });
    QuotaFallback::redis_unpause($rs);
    nginx_stop($h, master => 1, check => "2. graceful quit");
    my $deadline = time + 15;
    sleep 0.1 while time < $deadline && usage('q') != 2;
    is(usage('q'), 2, 'q: both admitted requests charged once nginx quit');
    unlike(logs(), qr/\[alert\]|\[crit\]|\[emerg\]/, 'no alert');
}

stop_redis($rs);
done_testing();

package QuotaHA;

# Helpers of the Redis high-availability tests (t/063, t/064, t/068,
# t/069): sentinels and cluster nodes on loopback, Redis' hash slot of a
# key, and a polling wait. Core Perl only; nothing is exported: call them
# fully qualified (QuotaHA::start_sentinel(...)).

use strict;
use warnings;

use FindBin ();
use File::Path ();
use POSIX ();
use Time::HiRes qw(time sleep);
use QuotaTest ();

# wait_until($secs, $cond): calls $cond every 0.1 s until it returns true
# (its value is returned) or $secs have passed (undef); a $cond that dies
# counts as false.
sub wait_until {
    my ($secs, $cond) = @_;
    my $deadline = time + $secs;
    while (time < $deadline) {
        my $v = eval { $cond->() };
        return $v if $v;
        sleep 0.1;
    }
    return undef;
}

my @sentinels;

# replica_has_all($m, $r, $secs): waits (20 s) until the replica $r has
# applied everything its master $m holds now: its slave_repl_offset reaches
# the master_repl_offset the master reports when called.  WAIT cannot tell
# this: it waits for the writes of the connection it is sent on only, and
# the test's connection wrote nothing (nginx did): it answers at once even
# while the replica is stopped.  Returns true once it has.
sub replica_has_all {
    my ($m, $r, $secs) = @_;
    my ($want) = ($m->cmd('INFO', 'replication') // '')
                 =~ /^master_repl_offset:(\d+)/m;
    return undef unless defined $want;
    return wait_until($secs // 20, sub {
        my ($got) = ($r->cmd('INFO', 'replication') // '')
                    =~ /^slave_repl_offset:(\d+)/m;
        defined $got && $got >= $want;
    });
}

# start_sentinel($master_port, $extra): redis-server --sentinel with its
# own writable config (servroot_sentinel-PORT next to the test) monitoring
# "billing" at 127.0.0.1:$master_port (quorum 1, down after 3 s); $extra
# config lines (TLS) come before the monitor. Returns its port once it
# answers PING; killed and its directory removed at the end.
sub start_sentinel {
    my ($mport, $extra) = @_;
    my $port = QuotaTest::free_port();
    my $dir = "$FindBin::Bin/servroot_sentinel-$port";
    File::Path::rmtree($dir);
    File::Path::mkpath($dir);
    open my $fh, '>', "$dir/sentinel.conf" or die $!;
    print $fh "port $port\nbind 127.0.0.1\ndaemonize no\ndir $dir\n"
              . "logfile $dir/sentinel.log\n" . ($extra // '')
              . "sentinel monitor billing 127.0.0.1 $mport 1\n"
              . "sentinel down-after-milliseconds billing 3000\n"
              . "sentinel failover-timeout billing 10000\n";
    close $fh;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        POSIX::setpgid(0, 0);
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$dir/stdout";
        open STDERR, '>&', \*STDOUT;
        exec 'redis-server', "$dir/sentinel.conf", '--sentinel'
            or POSIX::_exit(127);
    }
    push @sentinels, { pid => $pid, dir => $dir, port => $port };
    wait_until(5, sub { QuotaTest::redis_at($port, 'PING') eq 'PONG' })
        or die "sentinel on $port did not start";
    return $port;
}

END {
    local $?;
    for my $s (@sentinels) {
        kill 'KILL', $s->{pid};
        waitpid $s->{pid}, 0;
        File::Path::rmtree($s->{dir});
    }
}

# cluster_nodes($n): $n empty cluster-enabled redis-servers (start_redis
# objects), to be joined by redis-cli --cluster create
sub cluster_nodes {
    my ($n) = @_;
    return map {
        QuotaTest::start_redis(args => ['--cluster-enabled', 'yes',
                                        '--cluster-config-file', 'nodes.conf',
                                        '--cluster-port', QuotaTest::free_port(),
                                        '--cluster-node-timeout', '5000'])
    } 1 .. $n;
}

# Redis' keyHashSlot: CRC16 (XMODEM) of the hash tag, mod 16384
sub crc16 {
    my ($s) = @_;
    my $crc = 0;
    for my $b (unpack 'C*', $s) {
        $crc ^= $b << 8;
        for (1 .. 8) {
            $crc = ($crc & 0x8000) ? (($crc << 1) ^ 0x1021) : ($crc << 1);
            $crc &= 0xffff;
        }
    }
    return $crc;
}

sub slot { crc16($_[0]) % 16384 }

1;

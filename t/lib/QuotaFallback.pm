package QuotaFallback;

# Helpers of the quota_fallback tests (t/245-t/259, t/088): the gateway
# they configure (one metric "api", POST /api/** costs 1, the tenant in
# X-API-Key, $quota_status and the worker's pid in response headers,
# /metrics), the wait for each worker's ready Redis connection, a
# tenant's usage in Redis, a /metrics value, a DEBUG SLEEP in the
# background, Redis holding the scripts (CLIENT PAUSE WRITE) until the
# test lets them go, one request on a keep-alive connection, one
# connection on each worker and a polling wait. Core Perl only; nothing
# is exported: call them fully qualified (QuotaFallback::usage(...)).

use strict;
use warnings;

use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(time sleep);
use QuotaTest ();
use QuotaTime ();

# http_config(rport => P, limit => N, zone => '1m', nodes => N,
#             failure_mode => 'open', lease => '10 ttl=5s'): the http{}
# part: Redis at 127.0.0.1:P with 300 ms timeouts, quota_zone "ledger",
# quota_fallback local [nodes=N], plan "p" with "limit api N" (100)
sub http_config {
    my (%o) = @_;
    my $nodes = $o{nodes} ? " nodes=$o{nodes}" : '';
    my $limit = $o{limit} || 100;
    my $zone = $o{zone} || '1m';
    my $conf = "    quota_redis 127.0.0.1:$o{rport} timeout=300ms"
               . " connect_timeout=300ms;\n"
               . "    quota_zone ledger:$zone;\n";
    $conf .= "    quota_lease $o{lease};\n" if $o{lease};
    $conf .= "    quota_fallback local$nodes;\n";
    $conf .= "    quota_failure_mode $o{failure_mode};\n" if $o{failure_mode};
    $conf .= "    quota_metric api;\n"
             . "    quota_plan p { limit api $limit; }\n"
             . "    quota_default_plan p;\n";
    return $conf;
}

# server_config($port): the server{} part; its origin is a location of the
# same server on $port (nginx_start), or on $TEST_NGINX_SERVER_PORT when
# $port is undef (nginx_run expands it)
sub server_config {
    my ($port) = @_;
    $port //= '$TEST_NGINX_SERVER_PORT';
    return <<"_EOC_";
    quota on;
    quota_tenant \$http_x_api_key;
    quota_route POST /api/** api=1;

    location / {
        add_header X-Quota-Status \$quota_status always;
        add_header X-Pid \$pid always;
        proxy_pass http://127.0.0.1:$port/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\\n";
    }

    location = /metrics { quota_metrics; }
_EOC_
}

# start_nginx($servroot, $port, $workers, %http): nginx_start (a master,
# no root location) with http_config(%http) and server_config($port); dies
# when it does not start. The listen has reuseport: each worker has its
# own socket and the kernel spreads new connections over them (without
# it, accept_mutex off, one worker may take every connection while the
# other is busy or still starting: worker_conns found one worker only).
# Returns once each worker logged a ready Redis connection (wait_ready):
# a request that came first would get the failure mode, and a worker
# still starting takes no connection.
sub start_nginx {
    my ($root, $port, $workers, %http) = @_;
    my $conf = http_config(%http);
    my $h = QuotaTest::nginx_start(servroot => $root, port => $port,
                                   workers => $workers, master => 1,
                                   no_root_location => 1,
                                   listen_opts => 'reuseport',
                                   http_config => $conf,
                                   config => server_config($port));
    die "nginx: $h->{error}\n" if $h->{error};
    wait_ready($root, $workers);
    return $h;
}

# ready_pids($servroot): { pid => 1 } of the workers that logged "quota:
# redis connection #N ready" (at info, the level of nginx_start/nginx_run)
sub ready_pids {
    my ($root) = @_;
    my %pids = map { $_ => 1 }
        (QuotaTest::_slurp("$root/logs/error.log") // '')
            =~ /\d+#(\d+): quota: redis connection #\d+ ready/g;
    return \%pids;
}

# wait_ready($servroot, $n, $secs, $except): waits (at most $secs, 30)
# until $n workers, not counting the pids of the hash $except (the
# workers before a reload), logged a ready Redis connection; whatever
# the build (valgrind, sanitizers) or the load. True when they did.
sub wait_ready {
    my ($root, $n, $secs, $except) = @_;
    $except //= {};
    return wait_for($secs // 30, sub {
        (grep { !$except->{$_} } keys %{ ready_pids($root) }) >= ($n || 1)
    });
}

# usage($rs, $tenant): the tenant's "api" usage this month in the
# redis-server $rs (start_redis), 0 when there is none
sub usage {
    my ($rs, $t) = @_;
    my $start = QuotaTime::month_start();
    return $rs->cmd('HGET', "quota:{$t}:usage:$start", 'api') // 0;
}

# daily($rs, $tenant): the tenant's "api" counter of today
sub daily {
    my ($rs, $t) = @_;
    my $start = QuotaTime::month_start();
    return $rs->cmd('HGET', "quota:{$t}:daily:$start",
                    'api:' . QuotaTime::today()) // 0;
}

# metric($port, $name): the value of an unlabelled-or-labelled sample
# "$name N" of the gateway's /metrics, undef when it is not there
sub metric {
    my ($port, $name) = @_;
    my $r = QuotaTest::http_request($port, 'GET', '/metrics', {}, undef, 10);
    return $r->{body} =~ /^\Q$name\E (\d+)$/m ? $1 : undef;
}

# wait_for($secs, $cond): calls $cond every 50 ms until it is true or
# $secs have passed; returns its last value
sub wait_for {
    my ($secs, $cond) = @_;
    my $deadline = time + $secs;
    while (time < $deadline) {
        return 1 if $cond->();
        sleep 0.05;
    }
    return $cond->();
}

# redis_sleep($rs, $secs, $settle): DEBUG SLEEP $secs (redis-server started
# with --enable-debug-command yes): Redis answers nothing meanwhile and
# runs what it was sent late, after the sleep. The command is written by
# this process, before anything the test sends next, so Redis reads it
# first however loaded the machine (a child that connects and sends it
# may run after the test's next request), on a connection Redis has
# already accepted (a PING answered): a new one is accepted in one event
# loop pass and read in the next, and a command that came in between
# would be answered before the sleep. A child keeps the connection and
# reads the reply, so the test goes on. Waits $settle s (0.05) for Redis
# to read it. Returns the child's pid (waitpid it: it exits when the
# sleep is over).
sub redis_sleep {
    my ($rs, $secs, $settle) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $rs->{port})
        or die "QuotaFallback: connect to redis: $!\n";
    print $s "*1\r\n\$4\r\nPING\r\n";
    $s->flush;
    my $pong = <$s>;
    die "QuotaFallback: redis PING: " . ($pong // 'closed') . "\n"
        unless defined $pong && $pong =~ /^\+PONG/;
    print $s "*3\r\n\$5\r\nDEBUG\r\n\$5\r\nSLEEP\r\n\$" . length($secs)
             . "\r\n$secs\r\n";
    $s->flush;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        my $line = <$s>;
        POSIX::_exit(0);
    }
    close $s;
    sleep($settle // 0.05);
    return $pid;
}

# redis_pause($rs) / redis_unpause($rs): CLIENT PAUSE WRITE (30 s at
# most) and CLIENT UNPAUSE. Meanwhile Redis reads every command but holds
# each script (EVAL and EVALSHA are "may replicate": the charges, their
# voids, the FORCEs), so a charge sent in between times out (timeout=)
# however loaded the machine, while the test's own commands (reads,
# CLIENT) go on. At UNPAUSE the held commands run in the order they came
# (each connection's in its own order) before UNPAUSE is answered. For a
# slow reply while the circuit stays closed only: the probe (PING) is
# not held.
sub redis_pause {
    my ($rs) = @_;
    return $rs->cmd('CLIENT', 'PAUSE', 30000, 'WRITE');
}

sub redis_unpause {
    my ($rs) = @_;
    return $rs->cmd('CLIENT', 'UNPAUSE');
}

# req($sock, $tenant): POST /api/x on the keep-alive connection $sock;
# returns { qs => X-Quota-Status, pid => the worker's pid }, qs 'closed'
# when the connection closed first
sub req {
    my ($s, $t) = @_;
    print $s "POST /api/x HTTP/1.1\r\nHost: x\r\nX-API-Key: $t\r\n"
             . "Content-Length: 0\r\n\r\n";
    my $head = '';
    while ($head !~ /\r\n\r\n/) {
        my $n = sysread($s, my $buf, 1);
        return { qs => 'closed', pid => 0 } unless $n;
        $head .= $buf;
    }
    my ($len) = $head =~ /Content-Length: (\d+)/i;
    my $body = '';
    sysread($s, $body, $len - length $body, length $body)
        while length $body < ($len // 0);
    my ($qs) = $head =~ /X-Quota-Status: (\S+)/i;
    my ($pid) = $head =~ /X-Pid: (\d+)/i;
    return { qs => $qs // '', pid => $pid // 0 };
}

# worker_conns($port, $n): one keep-alive connection on each of $n
# workers (at most 60 tries); the sockets, as many as were found
sub worker_conns {
    my ($port, $n) = @_;
    my %conn;
    for (1 .. 60) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $port) or die;
        my $r = req($s, 'warm');
        $conn{ $r->{pid} } //= $s;
        last if keys %conn == $n;
    }
    return values %conn;
}

# logs($servroot): its error.log and stderr.log
sub logs {
    my ($root) = @_;
    return join '', map { QuotaTest::_slurp("$root/logs/$_") // '' }
                    qw(error.log stderr.log);
}

1;

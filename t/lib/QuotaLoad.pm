package QuotaLoad;

# Load for the multi-node and chaos tests (t/055, t/150): a closed-loop HTTP
# client with a concurrency bound, an optional start rate and a hard time
# limit, that runs timed events (faults) from its own loop and can play a
# slow or silent TCP server at the same time. One process, non-blocking
# sockets, IO::Select; core Perl only, like QuotaTest.
#
#   my $res = QuotaLoad::run(
#       gen         => sub { my ($i) = @_; ...; return undef when done },
#                      # or requests => [ ... ]; a request is
#                      # { port, method, path, headers => {..}, abort => S,
#                      #   rst => 1, tag => anything }
#       concurrency => 32,
#       rate        => 1000,        # at most this many starts a second
#       duration    => 3,           # stop starting new requests after 3 s
#       timeout     => 5,           # client gives up on a request after 5 s
#       at          => [ [1.0, sub { ... }], ... ],   # events, from start
#       servers     => [ $holder, ... ],              # QuotaLoad::Holder
#   );
#
# Each result: { req, status ('' when none), headers, body, start (epoch),
# lat (s, connect to end of response), stall, aborted, timed_out }, in
# start order. stall (s): how long, while the request was in flight, this
# loop itself did not run: an event's blocking work (a Redis restarted and
# waited for) or this process waiting for a CPU on a loaded machine. The
# gateway may have answered meanwhile: it took at most lat, at least
# lat - stall (net_latency).

use strict;
use warnings;

use IO::Select;
use IO::Socket::INET;
use POSIX ();
use Socket qw(SOL_SOCKET SO_LINGER);
use Time::HiRes qw(time sleep);

use QuotaTest qw(parse_http_response);

sub _request_text {
    my ($r) = @_;
    my $m = $r->{method} || 'GET';
    my $t = "$m $r->{path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n";
    my $h = $r->{headers} || {};
    $t .= "$_: $h->{$_}\r\n" for sort keys %$h;
    $t .= "Content-Length: 0\r\n" if $m ne 'GET' && $m ne 'HEAD';
    return "$t\r\n";
}

sub run {
    my (%o) = @_;
    my $conc = $o{concurrency} || 32;
    my $timeout = $o{timeout} || 10;
    my $list = $o{requests};
    my $gen = $o{gen} || sub { $list->[$_[0]] };
    my @events = sort { $a->[0] <=> $b->[0] } @{ $o{at} || [] };
    my @servers = @{ $o{servers} || [] };
    local $SIG{PIPE} = 'IGNORE';

    my $t0 = time;
    # the loop's own stalls, summed: each stretch of the loop (events and
    # starts, the select, the reads) normally takes its select wait and a
    # few ms of work; whatever a stretch takes beyond that is time no
    # response could be read
    my ($stalled, $prev) = (0, $t0);
    my $stretch = sub {
        my ($allow) = @_;
        my $now = time;
        $stalled += $now - $prev - $allow if $now - $prev > $allow;
        $prev = $now;
        return $now;
    };
    my $stop_at = defined $o{duration} ? $t0 + $o{duration} : undef;
    my $hard = $t0 + ($o{duration} || 0) + $timeout + 60;
    my (@res, %active);
    my ($i, $exhausted) = (0, 0);
    my $rsel = IO::Select->new;
    my $wsel = IO::Select->new;

    my $finish = sub {
        my ($c, %how) = @_;
        my $s = $c->{sock};
        $rsel->remove($s);
        $wsel->remove($s);
        if ($how{abort} && $c->{req}{rst}) {
            setsockopt($s, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0));
        }
        delete $active{ $c->{fd} };
        close $s;
        my $r = $c->{res};
        $r->{lat} = time - $c->{t};
        $r->{stall} = $stalled - $c->{stall0};
        if ($how{abort}) {
            $r->{aborted} = 1;
            $r->{status} = '';
        } elsif ($how{timeout}) {
            $r->{timed_out} = 1;
            $r->{status} = '';
        } else {
            my $p = parse_http_response($c->{raw});
            $r->{status} = $p->{status} // '';
            $r->{headers} = $p->{headers} || {};
            $r->{body} = $p->{body};
        }
    };

    while (1) {
        my $now = $stretch->(0.01);    # the reads of the last round

        # events due
        while (@events && $events[0][0] <= $now - $t0) {
            my $e = shift @events;
            $e->[1]->($now - $t0);
        }

        # start requests
        $exhausted = 1 if $stop_at && $now >= $stop_at;
        while (!$exhausted && keys(%active) < $conc) {
            if ($o{rate} && $i >= ($now - $t0) * $o{rate}) {
                last;
            }
            my $req = $gen->($i);
            if (!defined $req) {
                $exhausted = 1;
                last;
            }
            $i++;
            my $addr = Socket::pack_sockaddr_in($req->{port},
                                                Socket::inet_aton('127.0.0.1'));
            socket(my $s, Socket::PF_INET(), Socket::SOCK_STREAM(), 0)
                or die "QuotaLoad: socket: $!\n";
            $s->blocking(0);
            connect($s, $addr);
            my $r = { req => $req, start => $now };
            push @res, $r;
            my $c = { sock => $s, fd => fileno($s), req => $req, res => $r,
                      t => $now, out => _request_text($req), off => 0,
                      raw => '', stall0 => $stalled };
            $active{ fileno $s } = $c;
            $wsel->add($s);
        }

        $stretch->(0.01);    # events and starts

        last if $exhausted && !%active && !@events;
        last if $now > $hard;

        # deadlines: client aborts and timeouts
        my $wait = 0.01;
        for my $c (values %active) {
            my $age = $now - $c->{t};
            if (defined $c->{req}{abort} && $age >= $c->{req}{abort}) {
                $finish->($c, abort => 1);
            } elsif ($age >= $timeout) {
                $finish->($c, timeout => 1);
            }
        }

        my @rs = (@servers ? (map { $_->handles } @servers) : ());
        my $r2 = IO::Select->new($rsel->handles, @rs);
        my ($r, $w) = IO::Select->select($r2, $wsel, undef, $wait);
        $stretch->($wait + 0.01);
        for my $s (@{ $w || [] }) {
            my $c = $active{ fileno $s } or next;
            my $k = syswrite($s, $c->{out}, length($c->{out}) - $c->{off},
                             $c->{off});
            if (!defined $k) {
                next if $!{EAGAIN} || $!{EINPROGRESS};
                $finish->($c);    # refused or reset: no status
                next;
            }
            $c->{off} += $k;
            if ($c->{off} >= length $c->{out}) {
                $wsel->remove($s);
                $rsel->add($s);
            }
        }
        for my $s (@{ $r || [] }) {
            if (my $c = $active{ fileno $s }) {
                my $k = sysread($s, $c->{raw}, 65536, length $c->{raw});
                next if !defined $k && ($!{EAGAIN} || $!{EINTR});
                $finish->($c) unless $k;
                next;
            }
            $_->readable($s) for @servers;
        }
        $_->tick for @servers;
    }
    $_->tick for @servers;
    return \@res;
}

# a status summary: "200:12 503:3"
sub statuses {
    my ($res) = @_;
    my %n;
    $n{ $_->{aborted} ? 'aborted' : $_->{timed_out} ? 'timeout'
        : ($_->{status} eq '' ? 'none' : $_->{status}) }++ for @$res;
    return join ' ', map { "$_:$n{$_}" } sort keys %n;
}

# the request's latency without the time this client's loop stalled while
# it was in flight (an event's blocking work, a CPU it waited for): a
# timing check on the gateway (answered within timeout + margin) is not
# failed by the test's own stalls, and still fails when the gateway
# itself held the request
sub net_latency {
    my ($r) = @_;
    my $l = $r->{lat} - ($r->{stall} || 0);
    return $l > 0 ? $l : 0;
}

sub max_latency {
    my ($res) = @_;
    my $m = 0;
    for (@$res) { $m = $_->{lat} if !$_->{aborted} && $_->{lat} > $m }
    return $m;
}

# a Redis command written on a connection of its own without waiting for
# the reply (DEBUG SLEEP would block the load loop); returns the socket,
# close it when the reply no longer matters
sub redis_send {
    my ($port, @cmd) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Proto => 'tcp', Timeout => 3)
        or die "QuotaLoad: redis $port: $!\n";
    my $req = '*' . scalar(@cmd) . "\r\n";
    $req .= '$' . length($_) . "\r\n$_\r\n" for @cmd;
    syswrite($s, $req) == length $req or die "QuotaLoad: redis write: $!\n";
    return $s;
}


# A TCP server run from QuotaLoad::run's loop: accepts every connection,
# reads what comes, and after `hold` seconds answers `reply` and closes;
# hold => undef never answers (a black hole: accepts, then silence).
package QuotaLoad::Holder;

use Time::HiRes qw(time);

sub new {
    my ($class, %o) = @_;
    my $l = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                  LocalPort => $o{port} || 0,
                                  Proto => 'tcp', Listen => 1024,
                                  ReuseAddr => 1)
        or die "QuotaLoad::Holder: listen: $!\n";
    $l->blocking(0);
    return bless { l => $l, port => $l->sockport, hold => $o{hold},
                   reply => $o{reply} // "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
                                        . "Connection: close\r\n\r\nok\n",
                   conns => {}, accepted => 0 }, $class;
}

sub port { $_[0]{port} }
sub accepted { $_[0]{accepted} }

sub handles {
    my ($self) = @_;
    return ($self->{l}, map { $_->{s} } values %{ $self->{conns} });
}

sub readable {
    my ($self, $s) = @_;
    if ($s == $self->{l}) {
        while (my $c = $self->{l}->accept) {
            $c->blocking(0);
            $self->{accepted}++;
            $self->{conns}{ fileno $c } = { s => $c, t => time, buf => '' };
        }
        return;
    }
    my $c = $self->{conns}{ fileno $s } or return;
    my $k = sysread($s, $c->{buf}, 65536, length $c->{buf});
    return if !defined $k && $!{EAGAIN};
    if (!$k) {
        delete $self->{conns}{ fileno $s };
        close $s;
    }
}

sub tick {
    my ($self) = @_;
    return unless defined $self->{hold};
    my $now = time;
    for my $fd (keys %{ $self->{conns} }) {
        my $c = $self->{conns}{$fd};
        next if $now - $c->{t} < $self->{hold} || index($c->{buf}, "\r\n\r\n") < 0;
        syswrite($c->{s}, $self->{reply});
        close $c->{s};
        delete $self->{conns}{$fd};
    }
}

sub close_all {
    my ($self) = @_;
    close $_->{s} for values %{ $self->{conns} };
    $self->{conns} = {};
    close $self->{l};
}


# A TCP proxy run from QuotaLoad::run's loop, in front of a Redis: it
# forwards both ways until partition(1), then holds every byte (and accepts
# new connections without connecting them on) until partition(0), when what
# it held is delivered, like TCP retransmits after a partition heals:
# commands a client wrote before it gave up and closed still reach Redis.
package QuotaLoad::Proxy;

use Time::HiRes qw(time);

sub new {
    my ($class, %o) = @_;
    my $l = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Proto => 'tcp', Listen => 1024,
                                  ReuseAddr => 1)
        or die "QuotaLoad::Proxy: listen: $!\n";
    $l->blocking(0);
    return bless { l => $l, port => $l->sockport, to => $o{to}, cut => 0,
                   pairs => [], accepted => 0 }, $class;
}

sub port { $_[0]{port} }

# runs the proxy in a child process of its own (so it keeps forwarding
# between loads); partition(1|0) signals it (USR1 cuts, USR2 heals)
sub spawn {
    my ($class, %o) = @_;
    my $self = $class->new(%o);
    my $pid = fork;
    die "QuotaLoad::Proxy: fork: $!\n" unless defined $pid;
    if ($pid) {
        close $self->{l};
        $self->{pid} = $pid;
        return $self;
    }
    QuotaTest::_die_with_parent();
    my ($cut, $stop) = (0, 0);
    local $SIG{USR1} = sub { $cut = 1 };
    local $SIG{USR2} = sub { $cut = 0 };
    local $SIG{TERM} = sub { $stop = 1 };
    local $SIG{PIPE} = 'IGNORE';
    # never return or die into the test's END blocks (they stop its servers)
    eval {
        until ($stop) {
            $self->{cut} = $cut;
            my $sel = IO::Select->new($self->handles);
            my @r = $sel->can_read(0.005);
            $self->readable($_) for @r;
            $self->tick;
        }
        1;
    } or print STDERR "QuotaLoad::Proxy: $@";
    POSIX::_exit(0);
}

sub partition {
    my ($self, $on) = @_;
    kill $on ? 'USR1' : 'USR2', $self->{pid};
}

sub stop {
    my ($self) = @_;
    return unless $self->{pid};
    kill 'TERM', $self->{pid};
    waitpid $self->{pid}, 0;
    $self->{pid} = undef;
}

sub handles {
    my ($self) = @_;
    return ($self->{l},
            map { (($_->{c} && !$_->{c_eof}) ? $_->{c} : ()),
                  (($_->{u} && !$_->{u_eof}) ? $_->{u} : ()) } @{ $self->{pairs} });
}

sub _connect {
    my ($self, $p) = @_;
    return if $p->{u} || $p->{u_eof};
    my $u = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $self->{to},
                                  Proto => 'tcp');
    if (!$u) {
        $p->{u_eof} = 1;    # Redis down: the client sees its connection close
        return;
    }
    $u->blocking(0);
    $p->{u} = $u;
}

sub readable {
    my ($self, $s) = @_;
    if ($s == $self->{l}) {
        while (my $c = $self->{l}->accept) {
            $c->blocking(0);
            $self->{accepted}++;
            my $p = { c => $c, c2u => '', u2c => '' };
            push @{ $self->{pairs} }, $p;
            $self->_connect($p) unless $self->{cut};
        }
        return;
    }
    for my $p (@{ $self->{pairs} }) {
        for my $side (['c', 'c2u'], ['u', 'u2c']) {
            my ($k, $buf) = @$side;
            next unless $p->{$k} && $s == $p->{$k};
            my $n = sysread($s, $p->{$buf}, 65536, length $p->{$buf});
            return if !defined $n && $!{EAGAIN};
            $p->{"${k}_eof"} = 1 unless $n;
            return;
        }
    }
}

sub tick {
    my ($self) = @_;
    return if $self->{cut};
    my @keep;
    for my $p (@{ $self->{pairs} }) {
        $self->_connect($p);
        for my $dir (['c2u', 'u'], ['u2c', 'c']) {
            my ($buf, $to) = @$dir;
            next unless length $p->{$buf} && $p->{$to};
            my $n = syswrite($p->{$to}, $p->{$buf});
            substr($p->{$buf}, 0, $n, '') if $n;
            $p->{$buf} = '' if !defined $n && !$!{EAGAIN};
        }
        # a side that closed: the other one closes once its data went out
        if (($p->{c_eof} && !length $p->{c2u}) || ($p->{u_eof} && !length $p->{u2c})) {
            close $p->{c} if $p->{c};
            close $p->{u} if $p->{u};
            next;
        }
        push @keep, $p;
    }
    $self->{pairs} = \@keep;
}


1;

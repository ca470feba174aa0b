# quota_redis_cluster and TRYAGAIN (src/ngx_http_quota_redis_cluster.c):
# every key of a script is declared, so on a migrating slot Redis answers
# TRYAGAIN until the slot has moved, and the worker sends the command
# again every 50 ms.  A command that is not a reliable one (a charge, a
# FORCE, a settle) is sent again for 5 s at most, then given back to its
# caller as a lost reply, so that the caller's own horizon decides (a
# FORCE resent under the same id must still find its first run's record:
# review R5).  Here a fake cluster node (a Perl server speaking RESP) owns
# every slot and answers TRYAGAIN to every script: a request whose
# timeout= is 10 s gets the failure mode after about 5 s, not 10.

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
use Time::HiRes qw(time);

my $listen = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                   Listen => 64, ReuseAddr => 1) or die $!;
my $fport = $listen->sockport;

# one RESP command (array of bulk strings) off the front of $$buf
sub take_command {
    my ($buf) = @_;
    return unless $$buf =~ /^\*(\d+)\r\n/;
    my ($n, $p) = ($1, length("*$1\r\n"));
    my @args;
    for (1 .. $n) {
        my $nl = index($$buf, "\r\n", $p);
        return if $nl < 0;
        my ($len) = substr($$buf, $p, $nl - $p) =~ /^\$(\d+)$/ or die "RESP";
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
    if ($cmd eq 'CLUSTER') {
        # every slot, on this node
        return "*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n\$9\r\n127.0.0.1\r\n"
               . ":$fport\r\n\$40\r\n" . ('a' x 40) . "\r\n";
    }
    if ($cmd eq 'SCRIPT') {
        return "\$40\r\n" . sha1_hex($args->[2]) . "\r\n";
    }
    if ($cmd eq 'EVALSHA' || $cmd eq 'EVAL') {
        return "-TRYAGAIN Multiple keys request during rehashing of slot\r\n";
    }
    return "+PONG\r\n" if $cmd eq 'PING';
    return "+OK\r\n";
}

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

my ($r, $took);
my $log = nginx_run(no_root_location => 1, http_config => <<"_EOC_",
    quota_redis_cluster 127.0.0.1:$fport timeout=10s;
    quota_failure_mode closed;
    quota_metric a;
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
        my $t0 = time;
        $r = http_request($port, 'POST', '/a', { 'X-T' => 't1' }, '', 30);
        $took = time - $t0;
    });
kill 'KILL', $fpid;
waitpid $fpid, 0;

is($r->{status}, 503, 'TRYAGAIN without end: the failure mode (closed: 503)');
is($r->{headers}{'x-status'}, 'FAIL_CLOSED', 'FAIL_CLOSED');
ok($took >= 4 && $took < 9,
   sprintf('given back after about 5 s of TRYAGAIN (%.1f s), not at the '
           . '10 s timeout', $took));
like($log, qr/"TRYAGAIN [^"]*" from 127\.0\.0\.1:$fport, sending again every 50 ms/,
     'the first TRYAGAIN is logged');
like($log, qr/"TRYAGAIN [^"]*" from 127\.0\.0\.1:$fport for 100 tries, giving the command up/,
     'and the command given up after 100 tries');
unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'no alert, no crash');

done_testing();

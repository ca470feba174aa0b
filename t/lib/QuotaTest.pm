package QuotaTest;

# Project test helpers: Redis access, private redis-server instances, a
# stand-alone nginx launcher for tests that blocks cannot express, and small
# HTTP clients. Core Perl only (no CPAN), so it works with the real
# Test::Nginx::Socket and with our fallback in t/lib/Test/Nginx/Socket.pm,
# which reuses the nginx process management and HTTP parsing below.

use strict;
use warnings;

use Exporter 'import';
use Cwd ();
use Errno ();
use Fcntl ();
use File::Path ();
use File::Temp ();
use IO::Select;
use IO::Socket::INET;
use POSIX ();
use Socket qw(SOL_SOCKET SO_LINGER);
use Time::HiRes qw(sleep time);

our @EXPORT = qw(
    redis redis_flush free_port start_redis stop_redis
    nginx_run http_concurrent http_get http_request
);

our @EXPORT_OK = qw(parse_http_response nginx_start nginx_stop
                    valgrind_problems sanitizer_problems);


# ---------------------------------------------------------------- Redis ----

# redis(@cmd) talks to 127.0.0.1:$ENV{TEST_NGINX_REDIS_PORT} over one
# connection per process. Replies: status and bulk strings and integers as
# scalars, nil as undef, arrays as array refs. An error reply dies with the
# message ("ERR ...", "NOSCRIPT ..."); wrap the call in eval to test errors.

my %redis_conns;    # port => socket

sub redis_port {
    my $port = $ENV{TEST_NGINX_REDIS_PORT}
        or die "QuotaTest: TEST_NGINX_REDIS_PORT is not set "
             . "(run the suite through scripts/test)\n";
    return $port;
}

sub redis {
    return redis_at(redis_port(), @_);
}

sub redis_at {
    my ($port, @cmd) = @_;

    for my $try (1, 2) {
        my $sock = $redis_conns{$port} ||= IO::Socket::INET->new(
            PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp',
            Timeout  => 3)
            or die "QuotaTest: cannot connect to redis on port $port: $!\n";

        my $req = '*' . scalar(@cmd) . "\r\n";
        for my $arg (@cmd) {
            $arg = '' unless defined $arg;
            $req .= '$' . length($arg) . "\r\n$arg\r\n";
        }

        local $SIG{PIPE} = 'IGNORE';
        my $ok = print {$sock} $req;
        my ($reply, $err);
        if ($ok) {
            ($reply, $err) = eval { _resp_read($sock) };
            if ($@) {
                $ok = 0;
            }
        }
        if (!$ok) {
            # a stale connection (that redis restarted): reconnect once
            delete $redis_conns{$port};
            close $sock;
            next if $try == 1;
            die "QuotaTest: redis on port $port: connection lost\n";
        }
        die "$err\n" if defined $err;
        return $reply;
    }
}

sub _resp_line {
    my ($sock) = @_;
    local $/ = "\r\n";
    my $line = <$sock>;
    die "eof\n" unless defined $line;
    chomp $line;
    return $line;
}

# returns ($value, undef) or (undef, $error_message); errors nested in
# arrays (EXEC, scripts) are returned as "ERR..." strings inside the array
sub _resp_read {
    my ($sock) = @_;
    my $line = _resp_line($sock);
    my $type = substr($line, 0, 1, '');

    return ($line, undef) if $type eq '+';
    return (undef, $line) if $type eq '-';
    return ($line + 0, undef) if $type eq ':';

    if ($type eq '$') {
        return (undef, undef) if $line < 0;
        my $buf = '';
        while (length($buf) < $line + 2) {
            my $n = read($sock, $buf, $line + 2 - length($buf), length($buf));
            die "eof\n" unless $n;
        }
        return (substr($buf, 0, $line), undef);
    }

    if ($type eq '*') {
        return (undef, undef) if $line < 0;
        my @items;
        for (1 .. $line) {
            my ($v, $e) = _resp_read($sock);
            push @items, defined $e ? $e : $v;
        }
        return (\@items, undef);
    }

    die "QuotaTest: bad redis reply type '$type'\n";
}

sub redis_flush {
    return redis('FLUSHALL');
}


# ---------------------------------------------------------------- ports ----

# a port nothing listens on, never one this process was given before: the
# kernel may hand out a just-closed port again, so two free_port() calls in
# a row (a gateway and its upstream) could otherwise get the same number
my %ports_given;

sub free_port {
    for (1 .. 100) {
        my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                      LocalPort => 0, Proto => 'tcp',
                                      Listen => 1)
            or die "QuotaTest: cannot bind a free port: $!\n";
        my $port = $s->sockport;
        close $s;
        next if $ports_given{$port}++;
        return $port;
    }
    die "QuotaTest: no fresh free port after 100 tries\n";
}


# --------------------------------------------------------- redis-server ----

my %redis_servers;    # pid => 1, killed at END

# start_redis(port => P, args => [...], bin => 'redis-server', keep => 1,
#             start_timeout => 20)
# returns { port => P, pid => PID, dir => DIR }; $h->cmd(@cmd) talks to it.
# keep: the directory of an earlier server on this port is not emptied (a
# restart that loads its dump.rdb, after SHUTDOWN SAVE)
sub start_redis {
    my (%opts) = @_;
    my $bin = $opts{bin} || 'redis-server';
    my $port = $opts{port} || free_port();
    my $dir = _servroot_base() . "_redis-$port";
    File::Path::rmtree($dir) unless $opts{keep};
    File::Path::mkpath($dir);

    my @argv = ($bin, '--save', '', '--appendonly', 'no',
                '--bind', '127.0.0.1', '--port', $port, '--dir', $dir,
                '--daemonize', 'no', '--logfile', "$dir/redis.log",
                @{ $opts{args} || [] });

    my $pid = fork;
    die "QuotaTest: fork: $!\n" unless defined $pid;
    if ($pid == 0) {
        POSIX::setpgid(0, 0);
        _die_with_parent();
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$dir/redis.stdout";
        open STDERR, '>&', \*STDOUT;
        exec @argv or POSIX::_exit(127);
    }
    $redis_servers{$pid} = 1;

    my $h = bless { port => $port, pid => $pid, dir => $dir,
                    bin => $bin, args => $opts{args},
                    start_timeout => $opts{start_timeout} }, 'QuotaTest::Redis';
    my $deadline = time + ($opts{start_timeout} || 20);
    while (time < $deadline) {
        if (waitpid($pid, POSIX::WNOHANG()) == $pid) {
            delete $redis_servers{$pid};
            die "QuotaTest: redis-server exited at start: "
                . _slurp_tail("$dir/redis.log", 10) . "\n";
        }
        my $pong = eval { redis_at($port, 'PING') };
        return $h if defined $pong && $pong eq 'PONG';
        return $h if $@ =~ /^NOAUTH/;    # up, with --requirepass
        delete $redis_conns{$port};
        sleep 0.01;
    }
    stop_redis($h);
    die "QuotaTest: redis-server on port $port did not answer PING\n";
}

# stops the server (unless $h->down did) and removes its directory
sub stop_redis {
    my ($h) = @_;
    return unless $h;
    if (my $s = delete $redis_conns{$h->{port}}) {
        close $s;
    }
    if ($h->{pid}) {
        _kill_and_reap($h->{pid}, 'TERM', 5, 1);
        delete $redis_servers{$h->{pid}};
        $h->{pid} = undef;
    }
    File::Path::rmtree($h->{dir}) if $h->{dir};
    return 1;
}

sub QuotaTest::Redis::cmd {
    my ($h, @cmd) = @_;
    return redis_at($h->{port}, @cmd);
}

# restartable_redis(args => [...]): a private redis-server for outage tests
# that kill it and start it again on the same port (nginx's quota_redis
# points there) and the same directory (a SAVE before the kill is loaded
# back). $h->down('KILL') kills it (default SIGKILL; reaped, the directory
# kept), $h->up starts it again, stop_redis($h) stops it for good and
# removes the directory. Starts wait up to 20 s, as every start does.
sub restartable_redis {
    my (%opts) = @_;
    return start_redis(%opts);
}

sub QuotaTest::Redis::down {
    my ($h, $sig) = @_;
    return $h unless $h->{pid};
    if (my $s = delete $redis_conns{$h->{port}}) {
        close $s;
    }
    _kill_and_reap($h->{pid}, $sig || 'KILL', 5, 1);
    delete $redis_servers{$h->{pid}};
    $h->{pid} = undef;
    return $h;
}

sub QuotaTest::Redis::up {
    my ($h) = @_;
    die "QuotaTest: redis-server on port $h->{port} is already up\n"
        if $h->{pid};
    my $n = start_redis(port => $h->{port}, keep => 1, bin => $h->{bin},
                        args => $h->{args},
                        start_timeout => $h->{start_timeout});
    $h->{pid} = $n->{pid};
    return $h;
}


# ---------------------------------------------------------------- nginx ----

# nginx process management shared with the fallback runner: nginx runs in the
# foreground (daemon off) as a direct child in its own process group, so a
# stuck worker can never outlive the test.

our %nginx_groups;    # pgid => 1, killed at END

# t/servroot, or (when another test process holds it: several people or a
# prove -j share the checkout) t/servroot.PID, removed at exit when all
# tests passed. TEST_NGINX_SERVROOT is used as given.
my ($servroot_base, $servroot_lock, $servroot_private);

sub _servroot_base {
    return $servroot_base if $servroot_base;
    my $base = $ENV{TEST_NGINX_SERVROOT};
    if ($base) {
        $base = Cwd::getcwd() . "/$base" if $base !~ m{^/};
        return $servroot_base = $base;
    }
    my $cwd = Cwd::getcwd();
    $base = -d "$cwd/t" ? "$cwd/t/servroot" : "$cwd/servroot";
    (my $key = $base) =~ s{[^A-Za-z0-9]+}{_}g;
    my $lock = ($ENV{TMPDIR} || '/tmp') . "/quota-test$key.lock";
    if (open $servroot_lock, '>>', $lock) {
        if (!flock($servroot_lock, Fcntl::LOCK_EX() | Fcntl::LOCK_NB())) {
            $base .= ".$$";
            $servroot_private = $base;
        }
    }
    return $servroot_base = $base;
}

sub _slurp {
    my ($file) = @_;
    open my $fh, '<', $file or return '';
    local $/;
    my $data = <$fh>;
    return defined $data ? $data : '';
}

sub _slurp_tail {
    my ($file, $n) = @_;
    my @lines = split /\n/, _slurp($file);
    splice @lines, 0, @lines - $n if @lines > $n;
    return join("\n", @lines);
}

sub _use_valgrind {
    return $ENV{TEST_NGINX_USE_VALGRIND} ? 1 : 0;
}

# scripts/test --sanitize: nginx loads the ASan+UBSan build of the module,
# with the sanitizer runtimes preloaded (TEST_NGINX_LD_PRELOAD, which the
# real Test::Nginx honours too) and their reports written under the
# servroot (see sanitizer_problems)
sub _use_sanitizer {
    return $ENV{TEST_NGINX_USE_SANITIZER} ? 1 : 0;
}

# the environment of an nginx started here: LD_PRELOAD from
# TEST_NGINX_LD_PRELOAD (as the real runner does), and with sanitizers the
# report files moved into $root/logs, so each block sees only its own
sub _nginx_child_env {
    my ($root) = @_;
    if (defined $ENV{TEST_NGINX_LD_PRELOAD}) {
        $ENV{LD_PRELOAD} = join ' ', grep { defined && length }
                           $ENV{TEST_NGINX_LD_PRELOAD}, $ENV{LD_PRELOAD};
    }
    if (_use_sanitizer()) {
        for my $v (['ASAN_OPTIONS', 'asan'], ['UBSAN_OPTIONS', 'ubsan']) {
            my ($name, $file) = @$v;
            my $o = defined $ENV{$name} ? $ENV{$name} : '';
            $o =~ s/(?:^|:)log_path=[^:]*//g;
            $o =~ s/^://;
            $ENV{$name} = ($o eq '' ? '' : "$o:")
                          . "log_path=$root/logs/$file";
        }
    }
}

# sanitizer_problems($servroot[, $subdir]): the ASan/UBSan reports nginx
# wrote into $servroot/logs (or $servroot$subdir).
# Any AddressSanitizer or UBSan ("runtime error:", also looked for in
# error.log and stderr.log) report is a problem;
# a LeakSanitizer record counts only when its stack names our module,
# hiredis or yajl: Debian's nginx keeps some allocations for its whole life
# and exits without freeing them (the environment copy, the connection
# array), exactly as valgrind_problems ignores them.
sub sanitizer_problems {
    my ($root, $sub) = @_;
    my $dir = $root . (defined $sub ? $sub : '/logs');
    my $ours = qr/ngx_http_quota|hiredis|redisAsync|redisReader|yajl/;
    my @problems;
    # asan.PID; the real runner names them asan-FILE-tN.PID
    for my $f (sort glob("$dir/asan[.-]* $dir/ubsan[.-]*")) {
        my $text = _slurp($f);
        next unless length $text;
        if ($text =~ /ERROR: LeakSanitizer/ && $text !~ /ERROR: AddressSanitizer|runtime error:/) {
            my @leaks = grep { /$ours/ }
                        split /\n(?=(?:Direct|Indirect) leak of )/, $text;
            push @problems, "$f:\n" . join("\n", @leaks) if @leaks;
            next;
        }
        push @problems, "$f:\n$text";
    }
    # gcc's separate libubsan writes its findings to stderr whatever
    # log_path says, and nginx's stderr is its error log
    for my $f ("$dir/error.log", "$dir/stderr.log") {
        my @l = grep { /: runtime error: / } split /\n/, _slurp($f);
        push @problems, "$f:\n" . join("\n", @l) if @l;
    }
    return @problems;
}

# the valgrind command line nginx runs under (logs into $logdir)
sub _valgrind_cmd {
    my ($logdir) = @_;
    my $supp = _repo_root() . '/valgrind.suppress';
    return ('valgrind', '--tool=memcheck', '--leak-check=full',
            '--show-possibly-lost=no', '--num-callers=30',
            '--keep-debuginfo=yes', "--log-file=$logdir/valgrind.%p.log",
            (-f $supp ? ("--suppressions=$supp") : ()));
}

# returns the repository root (where valgrind.suppress lives)
sub _repo_root {
    my $dir = __FILE__;
    $dir = Cwd::abs_path($dir);
    $dir =~ s{/t/lib/QuotaTest\.pm$}{};
    return $dir;
}

sub _expand_env {
    my ($text, $errs) = @_;
    return $text unless defined $text;
    $text =~ s{\$(TEST_NGINX_[A-Za-z0-9_]+)}{
        defined $ENV{$1} ? $ENV{$1}
                         : do { push @$errs, "no environment $1 defined"; '' }
    }ge;
    return $text;
}

# nginx_conf(%o): the nginx.conf text, laid out like Test::Nginx's
sub nginx_conf {
    my (%o) = @_;
    my $root = $o{servroot};
    my $conf = '';

    for my $so (split ' ', defined $o{load_modules} ? $o{load_modules}
                           : ($ENV{TEST_NGINX_LOAD_MODULES} || '')) {
        $conf .= "load_module $so;\n";
    }
    $conf .= ($o{main_config} || '') . "\n";
    $conf .= "env $_;\n" for @{ $o{env} || [] };

    my $master = $o{master} ? 'on' : 'off';
    my $user = ($o{master} && $> == 0) ? "user root;\n" : '';
    my $workers = $o{workers} || 1;
    my $level = $o{log_level} || 'info';
    my $wc = $o{worker_connections} || 1024;
    my $port = $o{port};
    my $listen = $o{listen_opts} ? " $o{listen_opts}" : '';
    # like the real Test::Nginx: TEST_NGINX_EVENT_TYPE picks the method
    my $use = $ENV{TEST_NGINX_EVENT_TYPE} ? "    use $ENV{TEST_NGINX_EVENT_TYPE};\n" : '';
    my $root_loc = $o{no_root_location} ? '' : <<"_EOC_";
        location / {
            root $root/html;
            index index.html index.htm;
        }
_EOC_

    $conf .= <<"_EOC_";
daemon off;
master_process $master;
${user}worker_processes $workers;
error_log logs/error.log $level;
pid logs/nginx.pid;

events {
${use}    accept_mutex off;
    worker_connections $wc;
}

http {
    access_log logs/access.log;
    default_type text/plain;
    keepalive_timeout 68;

    client_body_temp_path $root/client_body_temp;
    proxy_temp_path $root/proxy_temp;
    fastcgi_temp_path $root/fastcgi_temp;
    uwsgi_temp_path $root/uwsgi_temp;
    scgi_temp_path $root/scgi_temp;

@{[ $o{http_config} || '' ]}
    server {
        listen 127.0.0.1:$port$listen;
        server_name localhost;
        client_max_body_size 30M;

@{[ $o{config} || '' ]}
$root_loc    }
}
_EOC_
    return $conf;
}

# true when something listens on 127.0.0.1:$port. A bind with SO_REUSEADDR
# succeeds next to TIME_WAIT sockets and fails only next to a listener
# (nginx sets SO_REUSEADDR too); cheaper than scanning /proc/net/tcp, and
# unlike a probe connection it leaves no line in nginx's error log
sub _listening {
    my ($port) = @_;
    socket(my $s, Socket::PF_INET(), Socket::SOCK_STREAM(), 0) or return undef;
    setsockopt($s, SOL_SOCKET, Socket::SO_REUSEADDR(), 1);
    my $ok = bind($s, Socket::pack_sockaddr_in($port,
                                               Socket::inet_aton('127.0.0.1')));
    my $inuse = !$ok && $!{EADDRINUSE};
    close $s;
    return $inuse ? 1 : 0;
}

# nginx_start(%o): cleans $o{servroot}, writes the config, starts nginx and
# waits until the port listens. Returns a handle; on failure the handle has
# {error} set and nginx is not running. %o: servroot, port, main_config,
# http_config, config, workers, master, log_level, env, no_root_location,
# load_modules, expect_failure (for must_die: just wait for the exit),
# listen_opts (appended to the server's listen: 'reuseport' gives each
# worker its own socket, the kernel spreads new connections over them by
# a hash of their addresses; without it, accept_mutex off, the first
# worker waiting in epoll may take every connection).
sub nginx_start {
    my (%o) = @_;
    my $root = $o{servroot} or die "nginx_start: no servroot\n";
    _kill_stale($root);
    File::Path::rmtree($root);
    File::Path::mkpath(["$root/conf", "$root/logs", "$root/html"]);

    my $h = { servroot => $root, port => $o{port},
              valgrind => _use_valgrind(), started => time };
    $o{setup}->() if $o{setup};

    open my $fh, '>', "$root/conf/nginx.conf" or die "nginx.conf: $!\n";
    print {$fh} nginx_conf(%o);
    close $fh;

    my @cmd = ($ENV{TEST_NGINX_BINARY} || 'nginx',
               '-p', "$root/", '-c', 'conf/nginx.conf', '-e', 'logs/error.log');
    unshift @cmd, _valgrind_cmd("$root/logs") if $h->{valgrind};

    my $pid = fork;
    die "nginx_start: fork: $!\n" unless defined $pid;
    if ($pid == 0) {
        POSIX::setpgid(0, 0);
        _die_with_parent();
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', "$root/logs/stderr.log";
        open STDERR, '>&', \*STDOUT;
        _nginx_child_env($root);
        exec @cmd or POSIX::_exit(127);
    }
    POSIX::setpgid($pid, $pid);    # no race with the child's own call
    $h->{pid} = $pid;
    $nginx_groups{$pid} = 1;

    # returns as soon as nginx listens (or exits): the limit only bounds a
    # start that hangs; 5 s was once not enough for a plain nginx to even
    # write its log on a machine at load 8 (t/116)
    my $limit = $o{start_timeout} || ($h->{valgrind} ? 60 : 20);
    my $deadline = time + $limit;
    while (1) {
        my $r = waitpid($pid, POSIX::WNOHANG());
        if ($r == $pid) {
            $h->{status} = $?;
            $h->{exited} = 1;
            delete $nginx_groups{$pid};
            kill 'KILL', -$pid;
            $h->{error} = "nginx exited at start (status " . ($? >> 8) . ")"
                unless $o{expect_failure};
            return $h;
        }
        if (!$o{expect_failure}) {
            return $h if _listening($o{port});
        }
        if (time > $deadline) {
            $h->{error} = $o{expect_failure}
                ? "nginx did not exit within ${limit}s"
                : "nginx did not listen on port $o{port} within ${limit}s";
            nginx_stop($h);
            return $h;
        }
        sleep 0.005;
    }
}

# an nginx left running from a crashed earlier run on this servroot (its
# pid file survives) is killed with its process group
sub _kill_stale {
    my ($root) = @_;
    my $pid = _slurp("$root/logs/nginx.pid");
    return unless $pid =~ /^\s*(\d+)/;
    $pid = $1;
    my $cmd = _slurp("/proc/$pid/cmdline");
    return unless index($cmd, "$root/") >= 0 && $cmd =~ /nginx/;
    kill 'KILL', -$pid;
    kill 'KILL', $pid;
    my $t = time + 2;
    sleep 0.01 while -e "/proc/$pid" && time < $t
                     && _slurp("/proc/$pid/stat") !~ /^\d+ \(.*?\) Z/;
}

# Linux: the kernel SIGKILLs the child when the test process dies, however
# it dies (prctl PR_SET_PDEATHSIG survives exec)
sub _die_with_parent {
    my %nr = (x86_64 => 157, aarch64 => 167, i686 => 172, i386 => 172);
    my ($arch) = (POSIX::uname())[4];
    my $sys = $nr{$arch} or return;
    syscall($sys, 1, 9);
}

# signal $pid, wait up to $secs, then SIGKILL its whole process group
sub _kill_and_reap {
    my ($pid, $sig, $secs, $group) = @_;
    kill $sig, $pid;
    my $deadline = time + $secs;
    while (time < $deadline) {
        my $r = waitpid($pid, POSIX::WNOHANG());
        if ($r == $pid || ($r == -1 && $! == Errno::ECHILD())) {
            my $st = $?;
            kill 'KILL', -$pid if $group;    # leftover workers, if any
            return ($st, 0);
        }
        sleep 0.005;
    }
    kill 'KILL', ($group ? -$pid : $pid);
    waitpid($pid, 0);
    return ($?, 1);
}

# Under valgrind a worker needs a second or more for the module's Redis
# handshake after the port listens, and a request that comes first is
# answered by the failure mode (no connection ready). When the
# configuration has a quota_redis, wait (at most 20 s) until each worker
# logged a ready connection; a Redis that is down on purpose only costs
# the wait. Nothing to do without valgrind: the handshake takes a
# millisecond there.
sub wait_module_ready {
    my ($root, $conf, $workers) = @_;
    return unless _use_valgrind();
    # the configuration nginx runs, when there is one: a caller's text may
    # be a fragment (t/248, t/252 and t/254 passed the literal "quota_redis",
    # which never matched below, so they never waited)
    my $file = _slurp("$root/conf/nginx.conf");
    $conf = $file if length $file;
    return unless defined $conf && $conf =~ /^\s*quota_redis\s/m;
    $workers ||= 1;
    my $deadline = time + 20;
    while (time < $deadline) {
        my %pids = map { $_ => 1 } _slurp("$root/logs/error.log")
            =~ /\d+#(\d+): quota: redis connection #\d+ ready/g;
        return 1 if keys %pids >= $workers;
        sleep 0.05;
    }
    return 0;
}

# stops nginx (SIGQUIT with a master, else SIGTERM); returns the handle with
# {killed} set when it had to be SIGKILLed. check => NAME: then
# report_problems($h, NAME) (for tests that start nginx themselves).
sub nginx_stop {
    my ($h, %o) = @_;
    return $h if !$h->{pid} || $h->{exited};
    my $sig = $o{master} ? 'QUIT' : 'TERM';
    my $secs = $h->{valgrind} ? 60 : ($o{stop_timeout} || 5);
    my ($st, $killed) = _kill_and_reap($h->{pid}, $sig, $secs, 1);
    delete $nginx_groups{$h->{pid}};
    $h->{exited} = 1;
    $h->{status} = $st;
    $h->{killed} = $killed;
    report_problems($h, $o{check}) if defined $o{check};
    return $h;
}

# report_problems($h, $name): once nginx has stopped, a failed test
# "$name - valgrind reported problems" (or "sanitizer") quoting the
# reports when its servroot's logs have any; no test at all when clean,
# so plans stay right (as the runner's check of a block)
sub report_problems {
    my ($h, $name) = @_;
    my $root = $h->{servroot};
    if ($h->{valgrind}) {
        my @p = valgrind_problems($root);
        if (@p) {
            Test::More::fail("$name - valgrind reported problems");
            Test::More::diag($_) for @p;
        }
    }
    if (_use_sanitizer()) {
        my @p = sanitizer_problems($root);
        if (@p) {
            Test::More::fail("$name - sanitizer reported problems");
            Test::More::diag($_) for @p;
        }
    }
    return;
}

# valgrind_problems($servroot): list of problem descriptions found in the
# valgrind logs: any invalid read/write/free anywhere (memory corruption can
# surface in core code), and any "definitely lost" or uninitialised-value
# record whose stack involves our module, hiredis, yajl or a loaded .so.
# Debian's stripped nginx leaks a few blocks of its own at exit
# (ngx_set_environment, the connection array of ngx_event_process_init);
# those stacks name no module frame and are ignored.
sub valgrind_problems {
    my ($root) = @_;
    my @so = map { my $b = $_; $b =~ s{.*/}{}; quotemeta $b }
             split ' ', ($ENV{TEST_NGINX_LOAD_MODULES} || '');
    my $ours = join '|', 'ngx_http_quota', 'hiredis', 'redisAsync',
                         'redisReader', 'yajl', @so;
    my @problems;
    for my $f (sort glob("$root/logs/valgrind.*.log")) {
        my $text = _slurp($f);
        for my $rec (split /\n==\d+==\s*\n/, $text) {
            next unless $rec =~ /^==\d+== \S/m;
            my $bad = 0;
            if ($rec =~ /^==\d+== (Invalid (read|write|free)|Mismatched free|Source and destination overlap)/m) {
                $bad = 1;
            } elsif ($rec =~ /(are definitely lost in loss record|^==\d+== (Conditional jump|Use of uninitialised|Syscall param))/m
                     && $rec =~ /$ours/) {
                $bad = 1;
            }
            push @problems, "$f:\n$rec" if $bad;
        }
    }
    return @problems;
}

END {
    my $exit = $?;
    for my $pgid (keys %nginx_groups) {
        kill 'KILL', -$pgid;
        waitpid($pgid, 0);
    }
    for my $pid (keys %redis_servers) {
        kill 'TERM', $pid;
        my $t = time + 3;
        while (time < $t && waitpid($pid, POSIX::WNOHANG()) == 0) {
            sleep 0.01;
        }
        kill 'KILL', $pid;
        waitpid($pid, 0);
    }
    if ($servroot_private) {
        my $passing = $exit == 0 && eval { Test::More->builder->is_passing };
        if ($passing) {
            File::Path::rmtree([glob("$servroot_private*")]);
        } else {
            print STDERR "# logs kept in $servroot_private\n";
        }
    }
    $? = $exit;
}

# ----------------------------------------------------------- nginx -t ----

# QuotaTest::nginx_t($http): "nginx -t" on a configuration whose http{}
# block is $http (the modules of TEST_NGINX_LOAD_MODULES loaded). Returns
# (exit code, output, the conf file, the number of the line marked #HERE).
# Under valgrind it runs there too (the directives' parsers and their
# error paths run nowhere else): its problems are a failed test.
# Not exported: call it fully qualified.
sub nginx_t {
    my ($http) = @_;
    my $nginx = $ENV{TEST_NGINX_BINARY} || 'nginx';
    my @modules = split ' ', ($ENV{TEST_NGINX_LOAD_MODULES} // '');
    my $dir = File::Temp::tempdir(CLEANUP => 1);
    mkdir "$dir/conf"; mkdir "$dir/logs";
    my $conf = join('', map { "load_module $_;\n" } @modules)
        . "error_log logs/error.log;\npid logs/nginx.pid;\n"
        . "events { worker_connections 64; }\n"
        . "http {\n$http\n}\n";
    open my $fh, '>', "$dir/conf/nginx.conf" or die $!;
    print $fh $conf;
    close $fh;
    my @lines = split /\n/, $conf;
    my ($line) = grep { $lines[$_ - 1] =~ /#HERE/ } 1 .. @lines;
    my $vg = _use_valgrind() ? join(' ', _valgrind_cmd("$dir/logs")) . ' ' : '';
    my $out = `$vg$nginx -t -p $dir -c conf/nginx.conf 2>&1`;
    my $rc = $? >> 8;
    report_problems({ servroot => $dir, valgrind => 1 }, 'nginx -t') if $vg;
    return ($rc, $out, "$dir/conf/nginx.conf", $line);
}

# nginx_run(http_config => TEXT (alias conf), config => SERVER_TEXT,
#           main_config => TEXT, workers => N, log_level => L,
#           code => sub { my ($port, $servroot) = @_; ... })
# Starts nginx like the runner does (its own servroot, t/servroot_run),
# calls code, stops nginx and returns the error.log text. Dies when nginx
# does not start; reports valgrind problems as a failed test.
sub nginx_run {
    my (%o) = @_;
    my $root = $o{servroot} || _servroot_base() . '_run';
    my $port = $o{port} || free_port();
    local $ENV{TEST_NGINX_SERVER_PORT} = $port;
    local $ENV{TEST_NGINX_HTML_DIR} = "$root/html";
    my @errs;
    my %conf = (
        servroot    => $root,
        port        => $port,
        main_config => _expand_env($o{main_config}, \@errs),
        http_config => _expand_env(defined $o{http_config} ? $o{http_config}
                                                           : $o{conf}, \@errs),
        config      => _expand_env($o{config}, \@errs),
        workers     => $o{workers} || 1,
        master      => $o{master} || ($o{workers} && $o{workers} > 1),
        log_level   => $o{log_level},
        env         => $o{env},
        no_root_location => $o{no_root_location},
        listen_opts => $o{listen_opts},
    );
    die "nginx_run: @errs\n" if @errs;

    my $h = nginx_start(%conf);
    if ($h->{error}) {
        die "nginx_run: $h->{error}\n" . _slurp_tail("$root/logs/error.log", 20)
            . "\n" . _slurp_tail("$root/logs/stderr.log", 20) . "\n";
    }

    wait_module_ready($root, ($conf{http_config} || '') . "\n"
                             . ($conf{main_config} || ''), $conf{workers});
    my $ok = eval { $o{code}->($port, $root); 1 };
    my $err = $@;
    nginx_stop($h, master => $conf{master});
    die $err unless $ok;

    report_problems($h, 'nginx_run');
    return _slurp("$root/logs/error.log");
}


# ----------------------------------------------------------------- HTTP ----

# parse_http_response($raw) -> { status, headers => {lc name => value},
# body, raw_headers, complete, error }. Chunked bodies are decoded;
# repeated headers are joined with ", ".
sub parse_http_response {
    my ($raw) = @_;
    my $res = { status => '', headers => {}, body => '', raw_headers => '',
                complete => 0 };
    return $res unless defined $raw && length $raw;

    my $pos = index($raw, "\r\n\r\n");
    if ($pos < 0) {
        $res->{error} = 'incomplete response header';
        $res->{raw_headers} = $raw;
        return $res;
    }
    my $head = substr($raw, 0, $pos);
    my $body = substr($raw, $pos + 4);
    $res->{raw_headers} = "$head\r\n";

    my @lines = split /\r\n/, $head;
    my $status_line = shift @lines;
    if ($status_line =~ m{^HTTP/\d\.\d\s+(\d{3})}) {
        $res->{status} = $1;
    } else {
        $res->{error} = "bad status line: $status_line";
    }
    for my $l (@lines) {
        my ($k, $v) = split /:\s*/, $l, 2;
        next unless defined $k;
        $v = '' unless defined $v;
        $v =~ s/\s+$//;
        $k = lc $k;
        $res->{headers}{$k} = exists $res->{headers}{$k}
                              ? "$res->{headers}{$k}, $v" : $v;
    }

    my $te = $res->{headers}{'transfer-encoding'};
    my $len = $res->{headers}{'content-length'};
    # {consumed}: bytes of $raw this response took (the next pipelined
    # response starts there)
    $res->{consumed} = length $raw;
    if ($res->{status} =~ /^(?:1\d\d|204|304)$/) {
        $res->{complete} = 1;
        $res->{consumed} = $pos + 4;
    } elsif (defined $te && $te =~ /chunked/i) {
        my $decoded = '';
        my $p = 0;
        while (1) {
            my $eol = index($body, "\r\n", $p);
            if ($eol < 0) {
                $res->{error} = 'truncated chunked body';
                last;
            }
            my $size_line = substr($body, $p, $eol - $p);
            if ($size_line !~ /^\s*([0-9a-fA-F]+)/) {
                $res->{error} = "bad chunk size line: $size_line";
                last;
            }
            my $size = hex $1;
            $p = $eol + 2;
            if ($size == 0) {
                $res->{complete} = 1;
                my $end = index($body, "\r\n\r\n", $p - 2);
                $res->{consumed} = $pos + 4 + ($end < 0 ? length $body
                                                        : $end + 4);
                last;
            }
            if (length($body) < $p + $size + 2) {
                $res->{error} = 'truncated chunk';
                $decoded .= substr($body, $p);
                last;
            }
            $decoded .= substr($body, $p, $size);
            $p += $size + 2;
        }
        $res->{body} = $decoded;
    } elsif (defined $len && $len =~ /^\d+$/) {
        if (length($body) < $len) {
            $res->{error} = "body truncated: $len expected, got "
                            . length($body);
        } else {
            $res->{complete} = 1;
        }
        $res->{body} = substr($body, 0, $len);
        $res->{consumed} = $pos + 4 + $len if $res->{complete};
    } else {
        $res->{body} = $body;
        $res->{complete} = 1;
    }
    return $res;
}

# build a request from method, path, headers and body
sub _build_request {
    my ($method, $path, $headers, $body) = @_;
    my %h = %{ $headers || {} };
    my %lc = map { lc($_) => 1 } keys %h;
    my $req = "$method $path HTTP/1.1\r\n";
    $req .= "Host: localhost\r\n" unless $lc{host};
    $req .= "Connection: close\r\n" unless $lc{connection};
    if (defined $body && !$lc{'content-length'}) {
        $req .= 'Content-Length: ' . length($body) . "\r\n";
    }
    for my $k (sort keys %h) {
        for my $v (ref $h{$k} ? @{ $h{$k} } : ($h{$k})) {
            $req .= "$k: $v\r\n";
        }
    }
    $req .= "\r\n";
    $req .= $body if defined $body;
    return $req;
}

# send $req on a fresh connection, read until EOF or $timeout;
# returns (raw response, timed_out)
sub http_exchange {
    my ($port, $req, $timeout) = @_;
    $timeout ||= 3;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                     PeerPort => $port, Proto => 'tcp',
                                     Timeout => $timeout)
        or die "cannot connect to 127.0.0.1:$port: $!\n";
    $sock->blocking(0);
    my $sel = IO::Select->new($sock);
    my $deadline = time + $timeout;
    my ($raw, $off) = ('', 0);
    local $SIG{PIPE} = 'IGNORE';

    while ($off < length $req) {
        my $left = $deadline - time;
        return ($raw, 1) if $left <= 0;
        if ($sel->can_write($left)) {
            my $n = syswrite($sock, $req, length($req) - $off, $off);
            if (!defined $n) {
                next if $!{EAGAIN} || $!{EINTR};
                last;    # peer closed early: read what it said
            }
            $off += $n;
        }
    }
    while (1) {
        my $left = $deadline - time;
        if ($left <= 0) {
            close $sock;
            return ($raw, 1);
        }
        next unless $sel->can_read($left);
        my $n = sysread($sock, $raw, 65536, length $raw);
        if (!defined $n) {
            next if $!{EAGAIN} || $!{EINTR};
            last;    # ECONNRESET after a complete response is fine
        }
        last if $n == 0;
    }
    close $sock;
    return ($raw, 0);
}

# http_request($port, $method, $path, \%headers, $body, $timeout)
#   -> { status, headers => {lc name => value}, body, timed_out }
sub http_request {
    my ($port, $method, $path, $headers, $body, $timeout) = @_;
    my ($raw, $to) = http_exchange($port,
        _build_request($method, $path, $headers, $body), $timeout);
    my $res = parse_http_response($raw);
    $res->{timed_out} = $to;
    $res->{raw} = $raw;
    return $res;
}

sub http_get {
    my ($port, $path, $headers, $timeout) = @_;
    return http_request($port, 'GET', $path, $headers, undef, $timeout);
}

# http_concurrent($port, $n, $request_text, $timeout) -> list of status codes
# (in connection order; '' for a connection that got no complete status).
# $request_text is sent as is (a full HTTP request, "Connection: close"
# advised); if it has no "HTTP/" on the first line it is treated as
# "METHOD /path" and completed like http_request does.
sub http_concurrent {
    my ($port, $n, $req, $timeout) = @_;
    $timeout ||= 10;
    if ($req !~ m{\A[^\r\n]*HTTP/1\.[01]\r?\n}) {
        my ($line, $body) = split /\n/, $req, 2;
        my ($m, $p) = split ' ', $line;
        $req = _build_request($m, $p || '/', {},
                              defined $body && length $body ? $body : undef);
    }
    my $addr = Socket::pack_sockaddr_in($port, Socket::inet_aton('127.0.0.1'));
    my (@conns, %by_fd);
    my $rsel = IO::Select->new;
    my $wsel = IO::Select->new;
    local $SIG{PIPE} = 'IGNORE';

    for my $i (0 .. $n - 1) {
        socket(my $s, Socket::PF_INET(), Socket::SOCK_STREAM(), 0)
            or die "http_concurrent: socket: $!\n";
        $s->blocking(0);
        connect($s, $addr);    # EINPROGRESS expected
        my $c = { sock => $s, out => $req, off => 0, raw => '', done => 0 };
        push @conns, $c;
        $by_fd{fileno $s} = $c;
        $wsel->add($s);
    }

    my $deadline = time + $timeout;
    my $pending = $n;
    while ($pending > 0) {
        my $left = $deadline - time;
        last if $left <= 0;
        my ($r, $w) = IO::Select->select($rsel, $wsel, undef, $left);
        last unless $r || $w;
        for my $s (@{ $w || [] }) {
            my $c = $by_fd{fileno $s};
            my $k = syswrite($s, $c->{out}, length($c->{out}) - $c->{off},
                             $c->{off});
            if (!defined $k) {
                next if $!{EAGAIN} || $!{EINPROGRESS};
                $wsel->remove($s);
                $c->{done} = 1;
                $pending--;
                next;
            }
            $c->{off} += $k;
            if ($c->{off} >= length $c->{out}) {
                $wsel->remove($s);
                $rsel->add($s);
            }
        }
        for my $s (@{ $r || [] }) {
            my $c = $by_fd{fileno $s};
            my $k = sysread($s, $c->{raw}, 65536, length $c->{raw});
            next if !defined $k && ($!{EAGAIN} || $!{EINTR});
            if (!$k) {
                $rsel->remove($s);
                $c->{done} = 1;
                $pending--;
            }
        }
    }
    my @codes;
    for my $c (@conns) {
        close $c->{sock};
        push @codes, parse_http_response($c->{raw})->{status};
    }
    return @codes;
}

1;

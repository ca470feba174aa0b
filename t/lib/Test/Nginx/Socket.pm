package Test::Nginx::Socket;

# Fallback for OpenResty's Test::Nginx::Socket (not packaged in Debian, and
# CPAN may be unreachable). t/*.t push t/lib at the END of @INC, so the real
# module wins wherever it is installed (scripts/test: TEST_NGINX_REAL_LIB).
#
# Parity rule: every section accepted here behaves like the real runner's
# (lib/Test/Nginx/Socket.pm and Util.pm of openresty/test-nginx; the
# references below are to those files). A section the real runner
# implements and we do not is a FAILING test, never a silent skip; sections
# the real runner does not know either (custom ones) are reported and
# ignored, as it ignores them. Where we are stricter than the real runner
# (alert/crit/emerg lines fail instead of warning, an --- eval section that
# dies fails, response_headers together with response_headers_like fails)
# DEVELOPERS.md ("Tests") says so.
#
# Built on Test::Base (libtest-base-perl): block parsing, filters (eval, ...),
# ONLY/SKIP, and the Test::More exports all come from it. nginx process
# management and HTTP parsing live in QuotaTest.pm, shared with nginx_run().

use strict;
use warnings;

use Test::Base -base;
use Cwd ();
use File::Path ();
use List::Util ();
use Time::HiRes qw(sleep time);
use QuotaTest ();

our $VERSION = '0.02-quota-fallback';

our @EXPORT = qw(
    run_tests run_test plan repeat_each workers master_on master_off
    log_level no_shuffle no_long_string no_root_location server_port
    server_root html_dir env_to_nginx add_block_preprocessor
    worker_connections timeout
);

our $RepeatEach = 1;
our $Workers = 1;
our $MasterProcessEnabled = 0;
our $LogLevel = $ENV{TEST_NGINX_LOG_LEVEL} || 'debug';    # real Util.pm:363
our $NoRootLocation = 0;
our $WorkerConnections = 1024;
our $Timeout = $ENV{TEST_NGINX_TIMEOUT} || 3;              # real Util.pm:77
our $NoShuffle = $ENV{TEST_NGINX_NO_SHUFFLE} || 0;         # real Util.pm:65
our $TestNginxSleep = $ENV{TEST_NGINX_SLEEP} || 0.015;     # real Util.pm:370
our @EnvToNginx;
our @BlockPreprocessors;
our $ServerPort;
our $ServRoot;
our $ShuffleSeed;
my $port_from_env = $ENV{TEST_NGINX_SERVER_PORT} ? 1 : 0;

sub repeat_each { $RepeatEach = shift if @_; return $RepeatEach }
sub workers { $Workers = shift if @_; return $Workers }
sub master_on { $MasterProcessEnabled = 1 }
sub master_off { $MasterProcessEnabled = 0 }
sub log_level { $LogLevel = shift if @_; return $LogLevel }
sub no_shuffle { $NoShuffle = 1 }
sub no_long_string { }     # plain is() is used for bodies anyway
sub no_root_location { $NoRootLocation = 1 }
sub worker_connections { $WorkerConnections = shift if @_;
                         return $WorkerConnections }
sub timeout { $Timeout = shift if @_; return $Timeout }
sub env_to_nginx { push @EnvToNginx, @_ }
sub add_block_preprocessor { push @BlockPreprocessors, shift }

sub server_port {
    if (@_) {
        $ServerPort = shift;
        $port_from_env = 1;
        $ENV{TEST_NGINX_SERVER_PORT} = $ServerPort;
    }
    _init_env();
    return $ServerPort;
}

sub server_root { _init_env(); return $ServRoot }
sub html_dir { _init_env(); return "$ServRoot/html" }

# --- init code runs in the real runner's package (real Util.pm:2367):
# these are the few Util functions it could call unqualified
{
    no strict 'refs';
    *{"Test::Nginx::Util::$_"} = \&{"Test::Nginx::Socket::$_"}
        for qw(server_root html_dir server_port);
}

my $env_done;

# sections implemented here
our %Known = map { $_ => 1 } qw(
    main_config http_config config init request raw_request
    raw_request_middle_delay pipelined_requests more_headers user_files
    log_level error_code error_code_like response_headers
    response_headers_like raw_response_headers_like
    raw_response_headers_unlike response_body response_body_like
    response_body_unlike error_log no_error_log grep_error_log
    grep_error_log_out access_log no_access_log timeout abort
    ignore_response wait must_die no_check_leak
    ONLY SKIP LAST
);

# sections the real runner implements (every $block->NAME it reads); one
# of these that is not in %Known above fails the block
our %Real = map { $_ => 1 } qw(
    SKIP access_log charset config curl curl_error curl_options curl_protocol
    error_code error_code_like error_log error_log_file grep_error_log
    grep_error_log_out http09 http2 http3 http_config ignore_response init
    log_level main_config more_headers must_die no_access_log no_check_leak
    no_error_log no_http2 no_http3 no_mockeagain no_shutdown_error_log
    pipelined_requests post_main_config post_setup_server_root
    quic_max_idle_timeout raw_request raw_request_middle_delay
    raw_response_headers_like raw_response_headers_unlike reload_fails
    req_headers request request_eval resp_title response_body
    response_body_eval response_body_filters response_body_json_sort
    response_body_like response_body_unlike response_headers
    response_headers_like server_addr_for_client server_name shutdown
    shutdown_error_log skip_eval skip_nginx skip_nginx2 skip_openssl
    skip_slave stap stap_out stap_out_like stap_out_unlike suppress_stderr
    tcp_listen tcp_no_close tcp_query tcp_query_auto_timeout tcp_query_len
    tcp_reply tcp_reply_delay tcp_shutdown tcp_shutdown_delay timeout todo
    todo_nginx udp_listen udp_query udp_reply udp_reply_delay user_files
    wait write_resp_body_file abort
);

# --- eval sections: Test::Base's eval filter turns a die into the section's
# value, silently (both runners share it). Keep its behaviour (same package,
# same code) and remember the error, so that the block fails loudly.
{
    require Test::Base::Filter;
    no warnings 'redefine';
    my $orig = \&Test::Base::Filter::eval;
    *Test::Base::Filter::eval = sub {
        my $self = $_[0];
        my @r = $orig->(@_);
        if ($@) {
            my $b = $self->current_block;
            push @{ $b->{_quota_eval_errors} }, "$@" if $b;
        }
        return wantarray ? @r : $r[-1];
    };
}

sub _init_env {
    return if $env_done;
    $env_done = 1;
    $ServRoot = QuotaTest::_servroot_base();
    $ServRoot = Cwd::getcwd() . "/$ServRoot" if $ServRoot !~ m{^/};
    $ServerPort ||= $ENV{TEST_NGINX_SERVER_PORT} || QuotaTest::free_port();
    $ENV{TEST_NGINX_SERVER_PORT} = $ServerPort;
    $ENV{TEST_NGINX_SERVER_ROOT} = $ServRoot;    # as real Util.pm:615
}

my $running;    # current nginx handle, killed by the signal handlers

for my $sig (qw(INT TERM HUP PIPE)) {
    $SIG{$sig} = sub {
        QuotaTest::nginx_stop($running) if $running;
        kill 'KILL', -$_ for keys %QuotaTest::nginx_groups;
        print STDERR "Test::Nginx::Socket: caught SIG$sig\n"
            unless $sig eq 'PIPE';
        exit 1;    # END blocks stop what is left (nginx, redis)
    };
}

# blocks run shuffled unless no_shuffle() (real Util.pm:859); the seed is
# printed when the file fails, TEST_NGINX_SHUFFLE_SEED=N repeats an order
sub _block_order {
    my @blocks = Test::Base::blocks();
    return @blocks if $NoShuffle;
    $ShuffleSeed = $ENV{TEST_NGINX_SHUFFLE_SEED} || (int(rand(1 << 30)) + 1);
    srand($ShuffleSeed);
    @blocks = List::Util::shuffle(@blocks);
    srand();
    return @blocks;
}

sub run_tests {
    _init_env();
    for my $block (_block_order()) {
        my $ok = eval { run_test($block); 1 };
        if (!$ok) {
            my $err = $@;
            QuotaTest::nginx_stop($running, master => 1) if $running;
            $running = undef;
            Test::More::fail($block->name . " - runner error");
            Test::More::diag($err);
        }
    }
    if ($ShuffleSeed && !Test::More->builder->is_passing) {
        Test::More::diag("blocks ran shuffled: TEST_NGINX_SHUFFLE_SEED="
                         . "$ShuffleSeed repeats this order");
    }
}

# lines -> list, comment lines and blank lines dropped
sub _lines {
    my ($v) = @_;
    return grep { /\S/ && !/^\s*#/ } split /\n/, $v;
}

# a check section's patterns (real check_error_log: lines, a Regexp or
# an array)
sub _as_list {
    my ($v) = @_;
    return () unless defined $v;
    return @$v if ref $v eq 'ARRAY';
    return ($v) if ref $v;
    chomp $v;
    return grep { length } split /\n+/, $v;
}

# real Socket.pm value_contains()
sub _value_contains {
    my ($v, $pat) = @_;
    return 0 unless defined $v;
    return (index("$v", $pat) >= 0) if !ref $v || ref $v eq 'Regexp';
    if (ref $v eq 'ARRAY') {
        _value_contains($_, $pat) && return 1 for @$v;
    }
    return 0;
}

sub _block_value {
    my ($block, $sec) = @_;
    my @v = $block->$sec;
    return undef unless @v;
    return $v[0] if @v == 1;
    return \@v;
}

# per-request value of a check section (real get_indexed_value): several
# requests need an array, one value per request; the real runner bails out
# otherwise, we fail the check
sub _indexed {
    my ($v, $idx, $need_array, $name, $section) = @_;
    if ($need_array) {
        return (1, $v->[$idx]) if ref $v eq 'ARRAY';
        Test::More::fail("$name - $section: several requests, so the "
                         . "expected results should be an eval'd array");
        return (0, undef);
    }
    return (1, ref $v eq 'ARRAY' ? $v->[0] : $v);
}

# time as the real runner reads it (Util.pm parse_time): "300ms", "1s", "2"
sub parse_time {
    my ($tm) = @_;
    return undef unless defined $tm;
    $tm =~ s/^\s+|\s+$//g;
    if ($tm =~ s/([^_a-zA-Z])ms$/$1/) {
        $tm = $tm / 1000;
    } else {
        $tm =~ s/([^_a-zA-Z])s$/$1/;
    }
    die "bad time value \"$tm\"\n" unless $tm =~ /^\d+(?:\.\d*)?$|^\.\d+$/;
    return $tm;
}

# "Name: value" lines of more_headers -> (text, chunked) (real
# parse_more_headers)
sub _more_headers {
    my ($v) = @_;
    return ('', 0) unless defined $v;
    my ($out, $chunked) = ('', 0);
    for my $l (split /\n+/, $v) {
        next if $l =~ /^\s*#/;
        my ($k, $val) = split /:\s*/, $l, 2;
        $val = '' unless defined $val;
        $chunked = 1 if lc($k) eq 'transfer-encoding' && $val eq 'chunked';
        $out .= "$k: $val\r\n";
    }
    return ($out, $chunked);
}

# "GET /t" or "POST /t\nbody" -> the full request text (real
# build_request_from_packets: HTTP/1.1 added, Host and Connection only when
# more_headers has none, the body trimmed and given a Content-Length unless
# more_headers sets one or it is chunked)
sub _build_request {
    my ($req, $more, $chunked, $conn) = @_;
    $req =~ s/^\s*#[^\n]+\s+|^\s+//gs while $req =~ /^\s*#|^\s/;
    my ($first, $body) = split /\n/, $req, 2;
    $first =~ s/^\s+|\s+$//g;
    my ($meth, $uri, $ver) = split /\s+/, $first;
    $uri = '/' unless defined $uri;
    $ver = 'HTTP/1.1' unless defined $ver;
    my $len = '';
    if (defined $body && length $body) {
        if (!$chunked && $more !~ /(?:^|\n)Content-Length:/) {
            $body =~ s/^\s+|\s+$//gs;
            $len = 'Content-Length: ' . length($body) . "\r\n";
        }
    } else {
        $body = '';
    }
    my $h = '';
    $h .= "Host: localhost\r\n" if $more !~ /(?:^|\n)Host:/msi;
    $h .= "Connection: $conn\r\n" if $more !~ /(?:^|\n)Connection/ms;
    return "$meth $uri $ver\r\n$h$more$len\r\n$body";
}

# returns a list of requests, each [packets, number of responses]
sub _requests {
    my ($block) = @_;
    my $name = $block->name;
    if (defined(my $raw = _block_value($block, 'raw_request'))) {
        return [[ref $raw eq 'ARRAY' ? @$raw : ($raw)], 1];
    }
    my $mh = _block_value($block, 'more_headers');
    my $more_for = sub {
        my ($i) = @_;
        return _more_headers(defined $mh ? $mh : '') unless ref $mh;
        die "$name - --- more_headers lacks data for request $i\n"
            unless defined $mh->[$i];
        return _more_headers($mh->[$i]);
    };

    if (defined(my $p = _block_value($block, 'pipelined_requests'))) {
        die "$name - --- pipelined_requests must be an eval'd array\n"
            unless ref $p eq 'ARRAY';
        my $all = '';
        for my $i (0 .. $#$p) {
            my $r = QuotaTest::_expand_env($p->[$i], []);
            $all .= _build_request($r, $more_for->($i),
                                   $i == $#$p ? 'close' : 'keep-alive');
        }
        return [[$all], scalar @$p];
    }

    my $req = _block_value($block, 'request');
    die "$name - request empty\n" unless defined $req;    # real: bail out
    my @reqs = ref $req eq 'ARRAY' ? @$req : ($req);
    my @out;
    for my $i (0 .. $#reqs) {
        push @out, [[_build_request($reqs[$i], $more_for->($i), 'close')], 1];
    }
    return @out;
}

sub _send {
    my ($packets, $timeout, $delay) = @_;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                     PeerPort => $ServerPort,
                                     Proto => 'tcp', Timeout => $timeout)
        or return ('', 0, "cannot connect to port $ServerPort: $!");
    $sock->blocking(0);
    my $sel = IO::Select->new($sock);
    my $deadline = time + $timeout;
    local $SIG{PIPE} = 'IGNORE';
    my $raw = '';

    PACKET:
    for my $i (0 .. $#$packets) {
        sleep($delay) if $i > 0 && $delay;
        my ($data, $off) = ($packets->[$i], 0);
        while ($off < length $data) {
            my $left = $deadline - time;
            if ($left <= 0) {
                close $sock;
                return ($raw, 1);
            }
            next unless $sel->can_write($left);
            my $n = syswrite($sock, $data, length($data) - $off, $off);
            if (!defined $n) {
                next if $!{EAGAIN} || $!{EINTR};
                last PACKET;
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
            last;
        }
        last if $n == 0;
    }
    close $sock;
    return ($raw, 0);
}

sub _show_response {
    my ($raw) = @_;
    $raw = '' unless defined $raw;
    $raw = substr($raw, 0, 4000) . "\n[... truncated]" if length $raw > 4000;
    return "response:\n$raw";
}

# user_files: ">>> name" lines, each followed by its content (real
# write_user_files), relative names under html/
sub _write_user_files {
    my ($block, $errs) = @_;
    my $files = $block->user_files;
    return unless defined $files;
    my @list;
    if (ref $files eq 'ARRAY') {
        @list = @$files;
    } else {
        my ($fname, $body);
        for my $l (split /^/, $files) {
            if ($l =~ /^>>> (\S+)/) {
                push @list, [$fname, $body] if defined $fname;
                ($fname, $body) = ($1, '');
            } else {
                $body .= $l;
            }
        }
        push @list, [$fname, $body] if defined $fname;
    }
    for my $f (@list) {
        my ($fname, $body) = @$f;
        my $path = $fname =~ m{^/} ? $fname : "$ServRoot/html/$fname";
        (my $dir = $path) =~ s{/[^/]*$}{};
        File::Path::mkpath($dir);
        open my $fh, '>', $path or die "user_files: $path: $!\n";
        print {$fh} QuotaTest::_expand_env(defined $body ? $body : '', $errs);
        close $fh;
    }
}

# the error log since the last read. The real runner (error_log_data())
# sleeps 3 x TEST_NGINX_SLEEP first, for lines of the log phase (after a
# lingering close) and of replies that come after the response; here the
# read waits until the log has not grown for TEST_NGINX_SLEEP, at most
# 3 x TEST_NGINX_SLEEP, as long as nginx runs (a quarter of the cost: the
# suite has hundreds of requests)
my $err_log_pos = 0;

# wait until the error log has not grown for TEST_NGINX_SLEEP (x10 under
# valgrind), at most 3 times as long
sub _settle_log {
    my $file = "$ServRoot/logs/error.log";
    my $quiet = $TestNginxSleep * (QuotaTest::_use_valgrind() ? 10 : 1);
    my $t0 = time;
    my ($size, $since) = (-s $file, $t0);
    while (time - $t0 < $quiet * 3) {
        sleep(0.003);
        my $now = -s $file;
        if (!defined $size || !defined $now || $now != $size) {
            ($size, $since) = ($now, time);
        } elsif (time - $since >= $quiet) {
            last;
        }
    }
}

sub _error_log_window {
    my ($stopped) = @_;
    my $file = "$ServRoot/logs/error.log";
    _settle_log() unless $stopped;
    open my $in, '<', $file or return [];
    seek $in, $err_log_pos, 0 if $err_log_pos;
    my @lines = <$in>;
    $err_log_pos = tell $in;
    close $in;
    chomp @lines;
    return \@lines;
}

sub run_test {
    my ($block) = @_;
    return if defined $block->SKIP;
    _init_env();
    $_->($block) for @BlockPreprocessors;

    my $name = $block->name;
    my $valgrind = QuotaTest::_use_valgrind();
    my $unsupported = 0;
    for my $sec (@{ ($block->{_section_order} || [])->[0] || [] }) {
        next if $Known{$sec};
        if ($Real{$sec}) {
            Test::More::fail("$name - section \"$sec\" of Test::Nginx is "
                             . "not implemented by the fallback runner");
            $unsupported++;
        } else {
            Test::More::diag("$name - section \"$sec\" is unknown to "
                             . "Test::Nginx (ignored, as the real one does)");
        }
    }
    for my $e (@{ $block->{_quota_eval_errors} || [] }) {
        Test::More::fail("$name - an --- eval section died: $e");
        $unsupported++;
    }
    if (defined $block->response_headers
        && defined $block->response_headers_like)
    {
        # the real runner checks only response_headers (Socket.pm:1017)
        Test::More::fail("$name - response_headers and "
            . "response_headers_like together: the real runner checks only "
            . "the first, use one (a \"Name: regex\" line per header)");
        $unsupported++;
    }
    return if $unsupported;

    my @errs;
    my $level = $block->log_level;
    $level =~ s/^\s+|\s+$//g if defined $level;
    my %conf = (
        servroot    => $ServRoot,
        port        => $ServerPort,
        main_config => QuotaTest::_expand_env(scalar $block->main_config, \@errs),
        http_config => QuotaTest::_expand_env(scalar $block->http_config, \@errs),
        config      => QuotaTest::_expand_env(scalar $block->config, \@errs),
        workers     => $Workers,
        master      => $MasterProcessEnabled,
        log_level   => $level || $LogLevel,
        env         => \@EnvToNginx,
        worker_connections => $WorkerConnections,
        no_root_location   => $NoRootLocation,
        expect_failure     => defined $block->must_die,
        setup       => sub { _write_user_files($block, \@errs) },
    );
    if (@errs) {
        Test::More::fail("$name - config: " . join('; ', @errs));
        return;
    }

    my $h = QuotaTest::nginx_start(%conf);
    if ($h->{error} && !$port_from_env
        && QuotaTest::_slurp("$ServRoot/logs/error.log") =~ /Address already in use/)
    {
        # someone took our port between blocks: pick another one
        $ServerPort = QuotaTest::free_port();
        $ENV{TEST_NGINX_SERVER_PORT} = $ServerPort;
        $h = QuotaTest::nginx_start(%conf, port => $ServerPort);
    }
    if (@errs) {
        QuotaTest::nginx_stop($h, master => $MasterProcessEnabled);
        Test::More::fail("$name - user_files: " . join('; ', @errs));
        return;
    }
    my $err_log = "$ServRoot/logs/error.log";
    $err_log_pos = 0;

    if (defined $block->must_die) {
        _check_must_die($block, $h);
        return;
    }

    if ($h->{error}) {
        Test::More::fail("$name - nginx started");
        Test::More::diag("$h->{error}\n--- error.log tail:\n"
            . QuotaTest::_slurp_tail($err_log, 30) . "\n--- stderr:\n"
            . QuotaTest::_slurp_tail("$ServRoot/logs/stderr.log", 10));
        return;
    }
    $running = $h;
    # the port listens before the workers' start-up work (the module's Redis
    # handshake) is done: let it finish, as the real runner sleeps after
    # the start (Util.pm:2321)
    _settle_log();
    QuotaTest::wait_module_ready($ServRoot, ($conf{http_config} || '') . "\n"
                                 . ($conf{main_config} || ''), $Workers);

    my $init_ok = 1;
    if (defined(my $init = $block->init)) {
        # the real runner: eval in Test::Nginx::Util under use strict, a die
        # is a bail-out (Util.pm:2367-2371)
        my $ok = eval "package Test::Nginx::Util; use strict; use warnings;\n"
                      . "#line 1 \"$name --- init\"\n$init\n; 1";
        if (!$ok) {
            Test::More::fail("$name - init failed: $@");
            $init_ok = 0;
        }
    }

    if ($init_ok) {
        for my $rep (0 .. $RepeatEach - 1) {
            _run_requests($block, $rep, $valgrind);
        }
    }

    QuotaTest::nginx_stop($h, master => $MasterProcessEnabled);
    $running = undef;
    if ($h->{killed}) {
        Test::More::diag("$name - nginx did not exit in time and was killed");
    }

    # beyond the real runner (which kills nginx unchecked): an alert at
    # shutdown ("open socket left in connection", a worker crash) fails too
    _check_bad_lines($block, "$name (shutdown)", _error_log_window(1), 0);

    if ($valgrind) {
        my @p = QuotaTest::valgrind_problems($ServRoot);
        if (@p) {
            Test::More::fail("$name - valgrind reported problems");
            Test::More::diag($_) for @p;
        }
    }
    if (QuotaTest::_use_sanitizer()) {
        my @p = QuotaTest::sanitizer_problems($ServRoot);
        if (@p) {
            Test::More::fail("$name - sanitizer reported problems");
            Test::More::diag($_) for @p;
        }
    }
}

# real Util.pm:2262-2296: the nginx command must fail (a number: with that
# exit code); then the error log as usual
sub _check_must_die {
    my ($block, $h) = @_;
    my $name = $block->name;
    my $want = $block->must_die;
    $want =~ s/^\s+|\s+$//g;
    if (!$h->{exited}) {
        Test::More::fail("$name - die as expected");
        Test::More::diag($h->{error} || 'nginx is still running');
    } elsif (($h->{status} & 127) || ($h->{status} & 128)) {
        Test::More::fail("$name - nginx died of signal "
                         . ($h->{status} & 127));
    } elsif (length $want && $want =~ /^\d+$/) {
        Test::More::is($h->{status} >> 8, $want,
                       "$name - die with the expected exit code");
    } else {
        Test::More::isnt($h->{status}, 0, "$name - die as expected");
    }
    my $lines = _error_log_window(1);
    push @$lines, split /\n/,
        QuotaTest::_slurp("$ServRoot/logs/stderr.log");
    _check_error_log($block, $lines, 0, 1);
}

sub _run_requests {
    my ($block, $rep, $valgrind) = @_;
    my $name = $block->name;
    my @reqs = _requests($block);
    my $timeout = parse_time($block->timeout);
    $timeout = $Timeout unless defined $timeout;
    $timeout *= 5 if $valgrind && !defined $block->abort;
    my $delay = parse_time($block->raw_request_middle_delay);
    my $wait = parse_time($block->wait);
    my $err_log = "$ServRoot/logs/error.log";
    my $need_array = @reqs > 1 || $reqs[0][1] > 1;
    my $idx = 0;

    for my $i (0 .. $#reqs) {
        my ($packets, $nres) = @{ $reqs[$i] };
        my $rname = $need_array ? "$name (req $idx)" : $name;
        $rname .= " (repeat $rep)" if $rep;
        my ($raw, $timed_out, $conn_err) = _send($packets, $timeout, $delay);
        if ($conn_err) {
            Test::More::fail("$rname - connect");
            Test::More::diag($conn_err);
        } elsif ($timed_out && !defined $block->abort) {
            Test::More::fail("ERROR: client socket timed out - $rname");
            Test::More::diag(_show_response($raw));
        }
        for my $r (1 .. $nres) {
            $rname = $need_array ? "$name (req $idx)" : $name;
            $rname .= " (repeat $rep)" if $rep;
            my $res = QuotaTest::parse_http_response($raw);
            if (!defined $block->ignore_response && !$conn_err) {
                if ($res->{error} && !($timed_out && defined $block->abort)) {
                    Test::More::diag("$rname - $res->{error}");
                }
                my $good = _check_response($block, $res, $idx, $need_array,
                                           $rname);
                if (!$good) {
                    Test::More::diag(_show_response($raw));
                    Test::More::diag("--- error.log tail:\n"
                                     . QuotaTest::_slurp_tail($err_log, 30));
                    if ($timed_out && defined $block->abort) {
                        Test::More::diag("$rname - the client aborted: add "
                            . "--- ignore_response to skip response checks");
                    }
                }
            }
            $raw = substr($raw, $res->{consumed} || length $raw);
            # the real runner checks the log after every request but the
            # last here, and after the last one below, each time only the
            # lines since the previous check (Socket.pm:808-820)
            if ($r < $nres || $i < $#reqs) {
                sleep($wait) if $wait;
                _check_error_log($block, _error_log_window(), $rep, 0,
                                 $rname);
            }
            $idx++;
        }
    }
    sleep($wait) if $wait;
    _check_error_log($block, _error_log_window(), $rep, 0,
                     $need_array ? "$name (req " . ($idx - 1) . ")" : undef);
}

sub _check_response {
    my ($block, $res, $i, $need_array, $name) = @_;
    my $good = 1;
    my $hdrs = $res->{headers};
    my $bname = $block->name;
    my ($ok, $v);

    if (defined(my $cl = _block_value($block, 'error_code_like'))) {
        ($ok, $v) = _indexed($cl, $i, $need_array, $bname, 'error_code_like');
        $good &= $ok && Test::More::like($res->{status}, qr/$v/sm,
                                         "$name - status code ok");
    } else {
        my $code = _block_value($block, 'error_code');
        ($ok, $v) = defined $code
            ? _indexed($code, $i, $need_array, $bname, 'error_code')
            : (1, 200);
        $v =~ s/^\s+|\s+$//g if defined $v;
        $good &= $ok && Test::More::is($res->{status}, $v,
                                       "$name - status code ok");
    }

    for my $sec (qw(raw_response_headers_like raw_response_headers_unlike)) {
        my $pat = _block_value($block, $sec) // next;
        ($ok, $v) = _indexed($pat, $i, $need_array, $bname, $sec);
        $good &= $ok && ($sec =~ /unlike/
            ? Test::More::unlike($res->{raw_headers}, qr/$v/s,
                                 "$name - raw resp headers unlike")
            : Test::More::like($res->{raw_headers}, qr/$v/s,
                               "$name - raw resp headers like"));
    }

    for my $sec (qw(response_headers response_headers_like)) {
        my $rh = _block_value($block, $sec) // next;
        ($ok, $v) = _indexed($rh, $i, $need_array, $bname, $sec);
        $good &= $ok;
        next unless $ok;
        for my $spec (_header_specs($v)) {
            my ($k, $want) = @$spec;
            my $got = $hdrs->{lc $k};
            if (!defined $want) {
                $good &= Test::More::ok(!defined $got,
                    "$name - header $k not present in the raw headers");
                next;
            }
            $want =~ s/\$ServerPort\b/$ServerPort/g;
            if ($sec eq 'response_headers') {
                $good &= Test::More::is(defined $got ? $got : '', $want,
                                        "$name - header $k ok");
            } else {
                $good &= Test::More::like(defined $got ? $got : '',
                    qr/^$want$/, "$name - header $k like ok");
            }
        }
    }

    if (defined(my $rb = _block_value($block, 'response_body'))) {
        ($ok, $v) = _indexed($rb, $i, $need_array, $bname, 'response_body');
        if (!$ok) {
            $good = 0;
        } elsif (ref $v eq 'Regexp') {
            $good &= Test::More::like($res->{body}, $v,
                                      "$name - response_body - like");
        } else {
            if (defined $v) {
                $v =~ s/\$ServerPort\b/$ServerPort/g;
                my @e;
                $v = QuotaTest::_expand_env($v, \@e);
                Test::More::fail("$name - response_body: @e") if @e;
            }
            $good &= Test::More::is($res->{body}, $v,
                "$name - response_body - response is expected");
        }
    } else {
        for my $sec (qw(response_body_like response_body_unlike)) {
            my $rl = _block_value($block, $sec) // next;
            ($ok, $v) = _indexed($rl, $i, $need_array, $bname, $sec);
            if (!$ok) {
                $good = 0;
                last;
            }
            $v =~ s/\$ServerPort\b/$ServerPort/g unless ref $v;
            my $summary = $res->{body};
            $summary =~ s/^\s+|\s+$//g;
            $summary = substr($summary, 0, 60) . '...'
                if length $summary > 63;
            my $t = "$name - ${sec} - response is expected ($summary)";
            $good &= $sec eq 'response_body_like'
                ? Test::More::like($res->{body}, qr/$v/s, $t)
                : Test::More::unlike($res->{body}, qr/$v/s, $t);
            last;    # like wins over unlike, as in the real runner
        }
    }
    return $good;
}

# "Name: value" lines -> [[name, value-or-undef(absent)], ...]
sub _header_specs {
    my ($v) = @_;
    my @specs;
    for my $l (_lines(defined $v ? $v : '')) {
        $l =~ s/^\s+|\s+$//g;
        if ($l =~ /^!\s*(\S+)/) {
            push @specs, [$1, undef];
            next;
        }
        my ($k, $val) = split /\s*:\s*/, $l, 2;
        push @specs, [$k, defined $val ? $val : ''];
    }
    return @specs;
}

sub _line_matches {
    my ($line, $pat) = @_;
    return ref $pat ? $line =~ $pat : index($line, $pat) >= 0;
}

# one window of the error log against error_log, no_error_log,
# grep_error_log, access_log (real check_error_log/check_access_log)
sub _check_error_log {
    my ($block, $lines, $rep, $must_die, $rname) = @_;
    my $name = defined $rname ? $rname : $block->name;
    my $bad = 0;

    for my $pat (_as_list(_block_value($block, 'error_log'))) {
        my $hit = grep { _line_matches($_, $pat) } @$lines;
        $bad++ unless Test::More::ok($hit,
            "$name - pattern \"$pat\" matches a line in error.log");
    }
    for my $pat (_as_list(_block_value($block, 'no_error_log'))) {
        my @hits = grep { _line_matches($_, $pat) } @$lines;
        if (!Test::More::ok(!@hits,
                "$name - pattern \"$pat\" should not match any line in error.log"))
        {
            $bad++;
            Test::More::diag("matched: $hits[0]");
        }
    }
    if (defined(my $gp = _block_value($block, 'grep_error_log'))) {
        my $pat = ref $gp eq 'ARRAY' ? $gp->[$rep] : $gp;
        my $want = _block_value($block, 'grep_error_log_out');
        die "$name - no --- grep_error_log_out\n" unless defined $want;
        $want = $want->[$rep] if ref $want eq 'ARRAY';
        my $got = '';
        for my $l (@$lines) {
            if (ref $pat ? $l =~ /$pat/ : $l =~ /\Q$pat\E/) {
                $got .= "$&\n" if $& !~ /\n/;
            }
        }
        if (ref $want eq 'Regexp') {
            $bad++ unless Test::More::like($got, $want,
                                           "$name - grep_error_log_out");
        } else {
            $bad++ unless Test::More::is($got, $want,
                                         "$name - grep_error_log_out");
        }
    }
    if (!$must_die) {
        my $acc = [split /\n/, QuotaTest::_slurp("$ServRoot/logs/access.log")];
        for my $pat (_as_list(_block_value($block, 'access_log'))) {
            $bad++ unless Test::More::ok(
                scalar(grep { _line_matches($_, $pat) } @$acc),
                "$name - pattern \"$pat\" matches a line in access.log");
        }
        for my $pat (_as_list(_block_value($block, 'no_access_log'))) {
            $bad++ unless Test::More::ok(
                !grep({ _line_matches($_, $pat) } @$acc),
                "$name - pattern \"$pat\" should not match any line in access.log");
        }
    }
    $bad += _check_bad_lines($block, $name, $lines, $must_die);
    if ($bad) {
        Test::More::diag("--- error.log window:\n"
            . join("\n", @$lines > 40 ? @$lines[-40 .. -1] : @$lines));
    }
}

# [alert], [crit], [emerg] lines fail the block unless its error_log or
# no_error_log names that level (the real runner only warns:
# Socket.pm:1389-1420); "Assertion ... failed" always fails (as real).
# A must_die block dies with an [emerg] line: that one is expected.
sub _check_bad_lines {
    my ($block, $name, $lines, $must_die) = @_;
    my $bad = 0;
    for my $level (qw(alert crit emerg)) {
        next if _value_contains(_block_value($block, 'error_log'), "[$level")
             || _value_contains(_block_value($block, 'no_error_log'),
                                "[$level");
        my @hits = grep { /\[$level\]/ } @$lines;
        next unless @hits;
        next if $must_die && $level eq 'emerg';
        $bad++;
        Test::More::fail("$name - no [$level] line in error.log");
        Test::More::diag("[$level] line: $_") for @hits;
    }
    for my $l (grep { /\bAssertion .*?failed\b/ } @$lines) {
        $bad++;
        Test::More::fail("$name - $l");
    }
    return $bad;
}

1;

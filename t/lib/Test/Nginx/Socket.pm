package Test::Nginx::Socket;

# Fallback for OpenResty's Test::Nginx::Socket (not packaged in Debian, and
# CPAN may be unreachable). t/*.t push t/lib at the END of @INC, so the real
# module wins wherever it is installed. This implements only the sections the
# suite uses, with the real module's names and behaviour; DEVELOPERS.md
# ("Tests") lists them and the deviations.
#
# Built on Test::Base (libtest-base-perl): block parsing, filters (eval, ...),
# ONLY/SKIP, and the Test::More exports all come from it. nginx process
# management and HTTP parsing live in QuotaTest.pm, shared with nginx_run().

use strict;
use warnings;

use Test::Base -base;
use Cwd ();
use Time::HiRes qw(sleep time);
use QuotaTest ();

our $VERSION = '0.01-quota-fallback';

our @EXPORT = qw(
    run_tests run_test plan repeat_each workers master_on master_off
    log_level no_shuffle no_long_string no_root_location server_port
    server_root html_dir env_to_nginx add_block_preprocessor
    worker_connections timeout
);

our $RepeatEach = 1;
our $Workers = 1;
our $MasterProcessEnabled = 0;
our $LogLevel = 'info';
our $NoRootLocation = 0;
our $WorkerConnections = 1024;
our $Timeout = 3;
our @EnvToNginx;
our @BlockPreprocessors;
our $ServerPort;
our $ServRoot;
my $port_from_env = $ENV{TEST_NGINX_SERVER_PORT} ? 1 : 0;

sub repeat_each { $RepeatEach = shift if @_; return $RepeatEach }
sub workers { $Workers = shift if @_; return $Workers }
sub master_on { $MasterProcessEnabled = 1 }
sub master_off { $MasterProcessEnabled = 0 }
sub log_level { $LogLevel = shift if @_; return $LogLevel }
sub no_shuffle { }         # blocks always run in file order here
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

my $env_done;

our %Known = map { $_ => 1 } qw(
    main_config http_config config init request raw_request
    raw_request_middle_delay more_headers error_code response_headers
    response_headers_like response_body response_body_like error_log
    no_error_log timeout abort ignore_response wait must_die no_check_leak
    ONLY SKIP LAST
);

sub _init_env {
    return if $env_done;
    $env_done = 1;
    $ServRoot = QuotaTest::_servroot_base();
    $ServRoot = Cwd::getcwd() . "/$ServRoot" if $ServRoot !~ m{^/};
    $ServerPort ||= $ENV{TEST_NGINX_SERVER_PORT} || QuotaTest::free_port();
    $ENV{TEST_NGINX_SERVER_PORT} = $ServerPort;
    $ENV{TEST_NGINX_HTML_DIR} = "$ServRoot/html";
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

sub run_tests {
    _init_env();
    for my $block (Test::Base::blocks()) {
        for my $rep (1 .. $RepeatEach) {
            my $ok = eval { run_test($block, $rep); 1 };
            if (!$ok) {
                my $err = $@;
                QuotaTest::nginx_stop($running, master => 1) if $running;
                $running = undef;
                Test::More::fail($block->name . " - runner error");
                Test::More::diag($err);
            }
        }
    }
}

# lines -> list, comment lines and blank lines dropped
sub _lines {
    my ($v) = @_;
    return grep { /\S/ && !/^\s*#/ } split /\n/, $v;
}

sub _as_list {
    my ($v) = @_;
    return () unless defined $v;
    return ref $v eq 'ARRAY' ? @$v : (ref $v ? ($v) : _lines($v));
}

# per-request value of a section: an array is indexed by request
sub _indexed {
    my ($v, $idx, $nreq, $name, $section) = @_;
    if (ref $v eq 'ARRAY') {
        return $v->[$idx];
    }
    if ($nreq > 1) {
        Test::More::diag("$name - $section: several requests, so this "
                         . "section should be an eval'd array (applied to "
                         . "every request here)");
    }
    return $v;
}

sub _block_value {
    my ($block, $sec) = @_;
    my @v = $block->$sec;
    return undef unless @v;
    return $v[0] if @v == 1;
    return \@v;
}

# "GET /t" or "POST /t\nbody" -> the full request text (Test::Nginx rules:
# HTTP/1.1 added, Host and Connection: close headers, the body trimmed and
# given a Content-Length unless more_headers sets one or is chunked)
sub _build_request {
    my ($req, $more) = @_;
    my ($first, $body) = split /\n/, $req, 2;
    $first =~ s/^\s+|\s+$//g;
    my ($meth, $uri, $ver) = split /\s+/, $first;
    $uri = '/' unless defined $uri;
    $ver = 'HTTP/1.1' unless defined $ver;
    my $chunked = $more =~ /^Transfer-Encoding:\s*chunked/mi;
    my $len = '';
    if (defined $body && length $body) {
        if (!$chunked && $more !~ /\bContent-Length:/i) {
            $body =~ s/^\s+|\s+$//gs;
            $len = 'Content-Length: ' . length($body) . "\r\n";
        }
    } else {
        $body = '';
    }
    return "$meth $uri $ver\r\nHost: localhost\r\nConnection: close\r\n"
           . "$more$len\r\n$body";
}

sub _more_headers {
    my ($v) = @_;
    return '' unless defined $v;
    my $out = '';
    for my $l (_lines($v)) {
        my ($k, $val) = split /:\s*/, $l, 2;
        $val = '' unless defined $val;
        $out .= "$k: $val\r\n";
    }
    return $out;
}

# "Name: value" lines -> [[name, value-or-undef(absent)], ...]
sub _header_specs {
    my ($v) = @_;
    my @specs;
    for my $l (_lines($v)) {
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

# returns a list of raw request texts (each an array ref of packets)
sub _requests {
    my ($block) = @_;
    my $name = $block->name;
    if (defined(my $raw = _block_value($block, 'raw_request'))) {
        return [ref $raw eq 'ARRAY' ? @$raw : ($raw)];
    }
    my $req = _block_value($block, 'request');
    return () unless defined $req;

    my $mh = _block_value($block, 'more_headers');
    my @reqs = ref $req eq 'ARRAY' ? @$req : ($req);
    my @out;
    for my $i (0 .. $#reqs) {
        my $more = ref $mh eq 'ARRAY' ? $mh->[$i] : $mh;
        push @out, [_build_request($reqs[$i], _more_headers($more))];
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
    my $write_failed;

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
                $write_failed = 1;
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

sub _expand_env_block {
    my ($text, $errs) = @_;
    return QuotaTest::_expand_env($text, $errs);
}

sub _show_response {
    my ($raw) = @_;
    $raw = '' unless defined $raw;
    $raw = substr($raw, 0, 4000) . "\n[... truncated]" if length $raw > 4000;
    return "response:\n$raw";
}

sub run_test {
    my ($block, $rep) = @_;
    $rep ||= 1;
    _init_env();
    $_->($block) for @BlockPreprocessors;

    my $name = $block->name;
    my $valgrind = QuotaTest::_use_valgrind();
    for my $sec (@{ ($block->{_section_order} || [])->[0] || [] }) {
        next if $Known{$sec};
        Test::More::diag("$name - section \"$sec\" is not supported by the "
                         . "fallback runner (ignored)");
    }
    my @errs;
    my %conf = (
        servroot    => $ServRoot,
        port        => $ServerPort,
        main_config => _expand_env_block(scalar $block->main_config, \@errs),
        http_config => _expand_env_block(scalar $block->http_config, \@errs),
        config      => _expand_env_block(scalar $block->config, \@errs),
        workers     => $Workers,
        master      => $MasterProcessEnabled,
        log_level   => $LogLevel,
        env         => \@EnvToNginx,
        worker_connections => $WorkerConnections,
        no_root_location   => $NoRootLocation,
        expect_failure     => defined $block->must_die,
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
    my $err_log = "$ServRoot/logs/error.log";

    if (defined $block->must_die) {
        if ($h->{error}) {
            Test::More::fail("$name - die as expected");
            Test::More::diag($h->{error});
        } else {
            Test::More::pass("$name - die as expected");
        }
        _check_error_log($block, $name, 1);
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

    if (defined(my $init = $block->init)) {
        my $ok = eval "package main; no strict 'vars';\n#line 1 \"init\"\n$init\n; 1";
        if (!$ok) {
            Test::More::fail("$name - init");
            Test::More::diag($@);
        }
    }

    my @reqs = _requests($block);
    my $nreq = @reqs;
    my $timeout = defined $block->timeout ? $block->timeout : $Timeout;
    $timeout =~ s/^\s+|\s+$//g;
    $timeout =~ s/s$//;
    $timeout *= 5 if $valgrind && !defined $block->abort;
    my $delay = $block->raw_request_middle_delay;

    for my $i (0 .. $#reqs) {
        my $rname = $nreq > 1 ? "$name (req $i)" : $name;
        my ($raw, $timed_out, $conn_err) = _send($reqs[$i], $timeout, $delay);
        if ($conn_err) {
            Test::More::fail("$rname - connect");
            Test::More::diag($conn_err);
            next;
        }
        if ($timed_out) {
            if (defined $block->abort) {
                # the client giving up is the point of the test
            } else {
                Test::More::fail("ERROR: client socket timed out - $rname");
                Test::More::diag(_show_response($raw));
            }
        }
        next if defined $block->ignore_response;
        my $res = QuotaTest::parse_http_response($raw);
        if ($res->{error} && !($timed_out && defined $block->abort)) {
            Test::More::diag("$rname - $res->{error}");
        }
        my $good = _check_response($block, $res, $i, $nreq, $rname);
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

    if (defined(my $wait = $block->wait)) {
        $wait =~ s/^\s+|\s+$//g;
        sleep($wait);
    }

    QuotaTest::nginx_stop($h, master => $MasterProcessEnabled);
    $running = undef;
    if ($h->{killed}) {
        Test::More::diag("$name - nginx did not exit in time and was killed");
    }

    _check_error_log($block, $name, 0);

    if ($valgrind) {
        my @p = QuotaTest::valgrind_problems($ServRoot);
        if (@p) {
            Test::More::fail("$name - valgrind reported problems");
            Test::More::diag($_) for @p;
        }
    }
}

sub _check_response {
    my ($block, $res, $i, $nreq, $name) = @_;
    my $good = 1;
    my $hdrs = $res->{headers};

    my $code = _block_value($block, 'error_code');
    $code = defined $code ? _indexed($code, $i, $nreq, $name, 'error_code')
                          : 200;
    $code =~ s/^\s+|\s+$//g if defined $code;
    $good &= Test::More::is($res->{status}, $code, "$name - status code ok");

    if (defined(my $rh = _block_value($block, 'response_headers'))) {
        my $v = _indexed($rh, $i, $nreq, $name, 'response_headers');
        for my $spec (_header_specs($v)) {
            my ($k, $want) = @$spec;
            my $got = $hdrs->{lc $k};
            if (!defined $want) {
                $good &= Test::More::ok(!defined $got,
                    "$name - header $k not present in the raw headers");
                next;
            }
            $good &= Test::More::is(defined $got ? $got : '', $want,
                                    "$name - header $k ok");
        }
    }

    if (defined(my $rh = _block_value($block, 'response_headers_like'))) {
        my $v = _indexed($rh, $i, $nreq, $name, 'response_headers_like');
        for my $spec (_header_specs($v)) {
            my ($k, $want) = @$spec;
            my $got = $hdrs->{lc $k};
            if (!defined $want) {
                $good &= Test::More::ok(!defined $got,
                    "$name - header $k not present in the raw headers");
                next;
            }
            $good &= Test::More::like(defined $got ? $got : '', qr/^$want$/,
                                      "$name - header $k like ok");
        }
    }

    if (defined(my $rb = _block_value($block, 'response_body'))) {
        my $want = _indexed($rb, $i, $nreq, $name, 'response_body');
        if (ref $want eq 'Regexp') {
            $good &= Test::More::like($res->{body}, $want,
                                      "$name - response_body - like");
        } else {
            $want =~ s/\$ServerPort\b/$ServerPort/g if defined $want;
            $good &= Test::More::is($res->{body}, $want,
                "$name - response_body - response is expected");
        }
    } elsif (defined(my $rl = _block_value($block, 'response_body_like'))) {
        my $pat = _indexed($rl, $i, $nreq, $name, 'response_body_like');
        $pat =~ s/\$ServerPort\b/$ServerPort/g unless ref $pat;
        my $summary = $res->{body};
        $summary =~ s/^\s+|\s+$//g;
        $summary = substr($summary, 0, 60) . '...' if length $summary > 63;
        $good &= Test::More::like($res->{body}, ref $pat ? $pat : qr/$pat/s,
            "$name - response_body_like - response is expected ($summary)");
    }
    return $good;
}

sub _check_error_log {
    my ($block, $name, $with_stderr) = @_;
    my $file = "$ServRoot/logs/error.log";
    my $log = QuotaTest::_slurp($file);
    $log .= QuotaTest::_slurp("$ServRoot/logs/stderr.log") if $with_stderr;
    my @lines = split /\n/, $log;
    my $bad = 0;

    for my $pat (_as_list(_block_value($block, 'error_log'))) {
        my $hit = grep { ref $pat ? $_ =~ $pat : index($_, $pat) >= 0 } @lines;
        $bad++ unless Test::More::ok($hit,
            "$name - pattern \"$pat\" matches a line in error.log");
    }
    for my $pat (_as_list(_block_value($block, 'no_error_log'))) {
        my @hits = grep { ref $pat ? $_ =~ $pat : index($_, $pat) >= 0 } @lines;
        if (!Test::More::ok(!@hits,
                "$name - pattern \"$pat\" should not match any line in error.log"))
        {
            $bad++;
            Test::More::diag("matched: $hits[0]");
        }
    }
    if ($bad) {
        Test::More::diag("--- error.log tail:\n"
                         . QuotaTest::_slurp_tail($file, 40));
    }
}

1;

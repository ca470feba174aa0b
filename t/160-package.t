# The version string and the Debian package (SPEC section 12, issue 11).
#
# Always: the one version string (NGX_HTTP_QUOTA_VERSION) is the one
# debian/changelog, README.md and CHANGELOG.md name, and nginx logs it at
# startup at notice level.
#
# With QUOTA_TEST_PACKAGE=1 (CI sets it in .ci/run): builds the package with
# scripts/package, installs it system-wide with apt-get, checks that the
# system nginx loads it through /etc/nginx/modules-enabled, runs the
# quickstart demo with the system paths on free 127.0.0.1 ports and a
# private Redis, removes and purges the package and checks that nginx is
# valid without it. This installs system packages, so it never runs
# unasked: it needs root, apt-get, dpkg-buildpackage, debhelper, nginx-dev
# and lintian, and refuses when the package is already installed or the
# system nginx service is running (the package's nginx-reload trigger would
# reload it). It never starts, stops or reloads the system nginx.

use strict;
use warnings;
use Test::More;
use Cwd qw(abs_path);
use Fcntl qw(:flock O_RDONLY O_DIRECTORY);
use File::Basename qw(dirname);
use File::Temp qw(tempdir);
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(sleep time);

use lib dirname(abs_path(__FILE__)) . '/lib';
use QuotaTest;

my $top = abs_path(dirname(abs_path(__FILE__)) . '/..');

sub slurp {
    my ($f) = @_;
    open my $fh, '<', $f or die "$f: $!\n";
    local $/;
    return scalar <$fh>;
}

# ------------------------------------------------------------- version ----

my ($version) = slurp("$top/src/ngx_http_quota_module.h")
    =~ /^#define NGX_HTTP_QUOTA_VERSION\s+"([^"]+)"$/m;
like($version // '', qr/^\d+\.\d+\.\d+$/,
     'NGX_HTTP_QUOTA_VERSION is a version');

my ($debversion) = slurp("$top/debian/changelog")
    =~ /^libnginx-mod-http-quota \(([^)]+)\)/;
is(($debversion // '') =~ s/-[^-]+$//r, $version,
   'debian/changelog: the newest entry packages this version');

my ($first) = slurp("$top/CHANGELOG.md") =~ /^## (\d+\.\d+\.\d+)/m;
is($first, $version, 'CHANGELOG.md: the newest section is this version');

like(slurp("$top/README.md"),
     qr/libnginx-mod-http-quota_\Q$debversion\E_amd64\.deb/,
     'README.md: "Install from the package" names this version');

# every library ./config links comes from a package debian/control
# build-depends on (a clean machine builds with those only)
SKIP: {
    skip 'dpkg is not available', 1
        unless grep { -x "$_/dpkg" } split /:/, $ENV{PATH};

    my ($bd) = slurp("$top/debian/control")
        =~ /^Build-Depends:(.*?)^\S/ms;
    my %bd = map { /^\s*([a-z0-9][a-z0-9+.-]+)/ ? ($1 => 1) : () }
             split /,/, $bd // '';
    my %libs = map { $_ => 1 } slurp("$top/config") =~ /-l([\w+-]+)/g;
    my @missing;
    for my $lib (sort keys %libs) {
        my ($dev) = `dpkg -S '*/lib$lib.so' 2>/dev/null`
            =~ /^([a-z0-9][a-z0-9+.-]+)(?::\w+)?: /m;
        push @missing, $dev ? "$dev (-l$lib)" : "-l$lib (no package)"
            unless $dev && $bd{$dev};
    }
    is("@missing", '', 'debian/control build-depends on the package of '
       . 'every library ./config links (' . join(' ', sort keys %libs)
       . ')');
}

SKIP: {
    skip 'TEST_NGINX_LOAD_MODULES is empty: no module to start', 2
        unless ($ENV{TEST_NGINX_LOAD_MODULES} // '') =~ /\S/;

    # one answered request: nginx_run returns once the port is bound,
    # which comes before init_module (a race under valgrind); a master,
    # because under valgrind a lone process with no timer can sleep in
    # epoll_wait through SIGTERM
    my $status;
    my $log = nginx_run(master => 1,
                        config => 'location = /t { return 204; }',
                        code => sub {
                            $status = http_get($_[0], '/t', {}, 20)->{status};
                        });
    is($status, 204, 'nginx started and answered');
    like($log,
         qr/\[notice\] .*ngx_http_quota_module\/\Q$version\E$/m,
         'nginx logs the module version at startup, notice level');
}

# ------------------------------------------------------------- package ----

my $pkg = 'libnginx-mod-http-quota';

unless (($ENV{QUOTA_TEST_PACKAGE} // '') eq '1') {
    SKIP: {
        skip 'the Debian package test installs system packages: it runs '
             . 'only with QUOTA_TEST_PACKAGE=1, as root (.ci/run sets it)', 1;
    }
    done_testing();
    exit 0;
}

# asked for: missing tools are a failure, so CI cannot skip it silently
my @missing;
push @missing, 'root' if $> != 0;
for my $cmd (qw(apt-get dpkg-buildpackage dh lintian redis-server)) {
    push @missing, $cmd unless grep { -x "$_/$cmd" } split /:/, $ENV{PATH};
}
push @missing, 'nginx-dev (dh-sequence-nginx)'
    unless -f '/usr/share/perl5/Debian/Debhelper/Sequence/nginx.pm';
push @missing, '/usr/sbin/nginx' unless -x '/usr/sbin/nginx';
if (@missing) {
    fail("QUOTA_TEST_PACKAGE=1 but missing: @missing "
         . '(scripts/setup installs the tools)');
    done_testing();
    exit 0;
}

# one package test at a time on this machine (it installs system-wide):
# a lock on the directory it changes, so no lock file is left behind
my $lockdir = '/etc/nginx/modules-enabled';
sysopen(my $lock, $lockdir, O_RDONLY | O_DIRECTORY) or die "$lockdir: $!\n";
my $waited = time;
until (flock($lock, LOCK_EX | LOCK_NB)) {
    die "another package test holds a lock on $lockdir\n"
        if time - $waited > 600;
    sleep 1;
}

sub dpkg_status {
    my $s = `dpkg-query -W -f='\${Status}' $pkg 2>/dev/null`;
    return $s // '';
}

if (dpkg_status() =~ / (installed|config-files|unpacked|half-\w+|triggers-\w+)$/) {
    fail("$pkg is already on this machine (" . dpkg_status() . '): '
         . 'the test would replace it; remove it first');
    done_testing();
    exit 0;
}

sub system_nginx_running {
    my $pid = eval { slurp('/run/nginx.pid') } // '';
    return $pid =~ /^(\d+)/ && kill(0, $1);
}

if (system_nginx_running()) {
    fail('the system nginx service runs (/run/nginx.pid): installing the '
         . 'package would reload it; run this test where it does not');
    done_testing();
    exit 0;
}

my $so = '/usr/lib/nginx/modules/ngx_http_quota_module.so';
my $avail = '/usr/share/nginx/modules-available/mod-http-quota.conf';
my $enabled = '/etc/nginx/modules-enabled/50-mod-http-quota.conf';

sub listing {
    my @l;
    for my $d ('/etc/nginx/modules-enabled', '/usr/lib/nginx/modules',
               '/usr/share/nginx/modules-available')
    {
        opendir my $dh, $d or next;
        push @l, map { "$d/$_" } grep { !/^\.\.?$/ } readdir $dh;
    }
    return join "\n", sort @l;
}

my $before = listing();

sub run {
    my (@cmd) = @_;
    my $out = `@cmd 2>&1`;
    return ($? >> 8, $out);
}

my $apt = 'DEBIAN_FRONTEND=noninteractive apt-get -y -q '
        . '-o DPkg::Lock::Timeout=300';

# whatever happens below, the package does not stay installed
my $installed = 0;
$SIG{INT} = $SIG{TERM} = sub { exit 1 };    # so that END purges
END {
    local $?;    # the test's exit status, not apt-get's
    if ($installed) {
        system("$apt purge $pkg >/dev/null 2>&1");
    }
}

my $tmp = tempdir('quota-test-package.XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $tmp;

# build: scripts/package from a clean copy, lintian with no error
my $t0 = time;
my ($rc, $out) = run("'$top/scripts/package' --out '$tmp/out'");
my ($deb) = $out =~ m{^(/\S+\.deb)$}m;
ok($rc == 0 && $deb && -f $deb, 'scripts/package builds the .deb, lintian '
   . 'reports no error') or diag($out);
diag(sprintf 'package built in %.0f s', time - $t0);
if (-f "$tmp/out/lintian.txt") {
    my @tags = grep { /^[EW]: / } split /\n/, slurp("$tmp/out/lintian.txt");
    diag("lintian: $_") for @tags;
}
BAIL_OUT("no package: $out") unless $rc == 0 && $deb;

my $deps = `dpkg-deb -f '$deb' Depends`;
my ($abi) = slurp('/usr/share/nginx/src/debian/libnginx-mod.abisubstvars')
    =~ /^nginx:abi=(\S+)/m;
like($deps, qr/(^|, )\Q$abi\E(,|$)/m, "Depends on the nginx ABI ($abi)");
like($deps, qr/libhiredis[\d.]+ \(/, 'Depends: hiredis from shlibs');
like($deps, qr/libyajl2 \(/, 'Depends: yajl from shlibs');

# install, as an operator would
my $debdir = dirname($deb);
my $debname = $deb =~ s{.*/}{}r;
$installed = 1;
($rc, $out) = run("cd '$debdir' && $apt install './$debname'");
is($rc, 0, "apt-get install ./$debname") or diag($out);
like(dpkg_status(), qr/install ok installed/, 'dpkg: installed');

ok(-f $so, "$so installed");
is(eval { slurp($avail) }, "load_module modules/ngx_http_quota_module.so;\n",
   "$avail loads the module");
is(readlink($enabled), $avail, "$enabled links to it");

# the system configuration, untouched, now loads it and stays valid
($rc, $out) = run('/usr/sbin/nginx -T');
is($rc, 0, 'nginx -T: the system configuration is valid with the module')
    or diag($out);
like($out, qr/^# configuration file \Q$enabled\E:\n
              load_module\ modules\/ngx_http_quota_module\.so;$/mx,
     'the system nginx lists the module through modules-enabled');

# the quickstart with the system paths: the module through the link,
# modules/ relative to Debian's prefix, logs and temp files in $tmp
my ($port, $uport) = (free_port(), free_port());
my $redis = start_redis();
my $conf = slurp("$top/conf.example/quickstart.conf");
my %subst = (
    'load_module ../ngx_http_quota_module.so;' => "include $enabled;",
    'error_log logs/error.log notice;' => "error_log $tmp/error.log notice;",
    'pid logs/nginx.pid;' => "pid $tmp/nginx.pid;",
    'access_log logs/access.log;' => "access_log $tmp/access.log;\n"
        . join('', map { "    ${_}_temp_path $tmp/$_;\n" }
                   qw(client_body proxy fastcgi uwsgi scgi)),
    '127.0.0.1:8080' => "127.0.0.1:$port",
    '127.0.0.1:8081' => "127.0.0.1:$uport",
    '127.0.0.1:6399' => "127.0.0.1:$redis->{port}",
);
for my $from (sort keys %subst) {
    ok($conf =~ s/\Q$from\E/$subst{$from}/g,
       "quickstart.conf adapted: $from");
}
open my $fh, '>', "$tmp/nginx.conf" or die $!;
print $fh $conf;
close $fh;

($rc, $out) = run("/usr/sbin/nginx -t -c '$tmp/nginx.conf'");
is($rc, 0, 'nginx -t: the quickstart with the system paths') or diag($out);

my $pid = fork;
die "fork: $!" unless defined $pid;
if ($pid == 0) {
    POSIX::setpgid(0, 0);
    QuotaTest::_die_with_parent();
    open STDOUT, '>', "$tmp/stdout.log";
    open STDERR, '>&', \*STDOUT;
    exec '/usr/sbin/nginx', '-c', "$tmp/nginx.conf", '-g', 'daemon off;'
        or POSIX::_exit(127);
}

my $up = 0;
for (1 .. 200) {
    last if waitpid($pid, POSIX::WNOHANG()) == $pid;
    if (IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port)) {
        $up = 1;
        last;
    }
    sleep 0.05;
}
ok($up, 'the quickstart nginx serves 127.0.0.1:' . $port)
    or diag(eval { slurp("$tmp/stdout.log") . slurp("$tmp/error.log") });

if ($up) {
    sleep 0.3;    # let the workers finish their Redis handshake
    my @res = map {
        http_request($port, 'POST', '/api/v2/demo/tests',
                     { 'X-API-Key' => "package-test-$$" }, undef, 10)
    } 1 .. 6;
    is($res[0]{status}, 200, 'first write: 200');
    is($res[0]{headers}{'x-quota-limit'}, 5, 'X-Quota-Limit: 5');
    is($res[0]{headers}{'x-quota-remaining'}, 4, 'X-Quota-Remaining: 4');
    is(join(' ', map { $_->{status} } @res[1 .. 5]), '200 200 200 200 402',
       'writes 2-5: 200, the sixth: 402');
    like($res[5]{body}, qr/QUOTA_EXCEEDED/, 'the 402 body says why');
}

kill 'TERM', $pid;
my $deadline = time + 10;
while (time < $deadline && waitpid($pid, POSIX::WNOHANG()) != $pid) {
    sleep 0.05;
}
if (kill 0, $pid) {
    kill 'KILL', -$pid;
    waitpid($pid, 0);
}
kill 'KILL', -$pid;    # any worker left in the group
stop_redis($redis);

my $log = eval { slurp("$tmp/error.log") } // '';
like($log, qr/\[notice\] .*ngx_http_quota_module\/\Q$version\E$/m,
     "the packaged module logs its version ($version)");
unlike($log, qr/\[(alert|crit|emerg)\]/, 'no alert, crit or emerg');

# remove: the module and the link go, nginx stays valid
($rc, $out) = run("$apt remove $pkg");
is($rc, 0, "apt-get remove $pkg") or diag($out);
ok(!-e $so, 'the module is gone');
ok(!-e $avail, 'the modules-available snippet is gone');
ok(!-l $enabled && !-e $enabled, 'the modules-enabled link is gone');
($rc, $out) = run('/usr/sbin/nginx -T');
is($rc, 0, 'nginx -t: the system configuration is valid without it')
    or diag($out);
unlike($out, qr/ngx_http_quota_module/, 'nginx no longer loads it');

# purge: Debian keeps a disabled link (NAME.removed) until then
($rc, $out) = run("$apt purge $pkg");
is($rc, 0, "apt-get purge $pkg") or diag($out);
$installed = 0;
unlike(dpkg_status(), qr/ (installed|config-files|unpacked|half-\w+)$/,
       'dpkg: not installed, no configuration files left');
is(listing(), $before,
   'modules-enabled, modules and modules-available as they were');

done_testing();

# scripts/build in a copied checkout builds the copy's sources.
#
# The configured nginx tree under build/ names the module sources by
# absolute path.  A checkout copied with its build/ (cp -a, as scripts/mutate
# and anyone bisecting do) used to reuse that tree and compile the ORIGINAL
# sources, so a change made in the copy never reached the copy's .so.
#
# Here: copy the checkout with a configured build/, change a source byte in
# the copy (a marker string), build the copy, and find the marker in the
# copy's .so and nowhere else.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use File::Temp qw(tempdir);
use Cwd qw(abs_path);

my $top = abs_path("$FindBin::Bin/..");
my $tmp = tempdir('quota-build-copy.XXXXXX', TMPDIR => 1, CLEANUP => 1);

sub sh {
    my ($cmd) = @_;
    my $out = `$cmd 2>&1`;
    return ($? == 0, $out);
}

sub slurp {
    my ($f) = @_;
    open my $fh, '<', $f or return '';
    binmode $fh;
    local $/;
    return scalar <$fh>;
}

# the checkout as it is, build/ included, test servroots left out
my ($ok, $out) = sh("mkdir -p $tmp/a && tar -C '$top' --exclude='./t/servroot*'"
                    . " --exclude='./t/unit/bin' -cf - . | tar -C $tmp/a -xf -");
ok($ok, 'checkout copied') or diag($out);

# a configured tree to inherit: the original's, or one built in the copy
if (!-f "$tmp/a/build/nginx-tree/.quota-configured"
    || !-f "$tmp/a/build/ngx_http_quota_module.so")
{
    ($ok, $out) = sh("$tmp/a/scripts/build");
    ok($ok, 'first copy built') or diag($out);
}
ok(-f "$tmp/a/build/nginx-tree/.quota-configured",
   'the copy carries a configured build tree');

# the second copy inherits that tree, cp -a as the audit did
($ok, $out) = sh("cp -a $tmp/a $tmp/b");
ok($ok, 'cp -a of the copy') or diag($out);

my $marker = "quota-build-copy-marker-$$-" . time;
open my $fh, '>>', "$tmp/b/src/ngx_http_quota_parse.c" or die "$!";
print {$fh} "\n\n/* t/170-build-copy.t */\n"
          . "__attribute__((used)) static const char"
          . " ngx_http_quota_build_marker[] = \"$marker\";\n";
close $fh;

my $before = slurp("$tmp/a/build/ngx_http_quota_module.so");
my $orig_before = slurp("$top/build/ngx_http_quota_module.so");

($ok, $out) = sh("$tmp/b/scripts/build");
ok($ok, 'scripts/build in the changed copy') or diag($out);

my $so = slurp("$tmp/b/build/ngx_http_quota_module.so");
ok(index($so, $marker) >= 0, "the copy's .so holds the copy's change");
isnt($so, $before, "the copy's .so differs from the one it inherited");
ok(index(slurp("$tmp/a/build/ngx_http_quota_module.so"), $marker) < 0,
   'the first copy was not rebuilt with the change');
is(slurp("$top/build/ngx_http_quota_module.so"), $orig_before,
   "the original checkout's .so is untouched");

my $mk = slurp("$tmp/b/build/nginx-tree/objs/Makefile");
ok(index($mk, "$tmp/b/src/ngx_http_quota_parse.c") >= 0
   && index($mk, "$tmp/a/src/") < 0 && index($mk, "$top/src/") < 0,
   "the copy's Makefile compiles the copy's sources only");

done_testing();

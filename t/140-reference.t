# README.md is the reference: every directive in the module's command table
# and every quota_plan statement has its entry there.

use strict;
use warnings;
use FindBin;
use Test::More;

my $root = "$FindBin::Bin/..";
my $module = do { local $/; open my $f, '<', "$root/ngx_http_quota_module.c" or die $!; <$f> };
my $readme = do { local $/; open my $f, '<', "$root/README.md" or die $!; <$f> };

my @directives = $module =~ /\{\s*ngx_string\("(quota\w*)"\)/g;
ok(@directives >= 25, 'the command table lists the directives (' . scalar(@directives) . ')');

for my $d (@directives) {
    ok($readme =~ /^### \Q$d\E$/m, "README documents $d");
    ok($readme =~ /^    Syntax:\s+\Q$d\E\b/m, "README gives the syntax of $d");
}

for my $s (qw(limit per_seat grace overage rate concurrency)) {
    ok($readme =~ /`\Q$s\E\b/, "README documents the plan statement $s");
}

for my $v (qw(quota_status quota_tenant quota_metric quota_cost quota_used
              quota_limit quota_remaining quota_percent quota_reset)) {
    ok($readme =~ /`\$\Q$v\E`/, "README documents \$$v");
}

done_testing();

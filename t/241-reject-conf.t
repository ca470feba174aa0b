# quota_reject_cache: bad configuration fails "nginx -t"
# with the file, the line and a clear message; a good one passes.

use strict;
use warnings;
use Test::More;
use File::Temp qw(tempdir);

my $nginx = $ENV{TEST_NGINX_BINARY} || 'nginx';
my @modules = split ' ', ($ENV{TEST_NGINX_LOAD_MODULES} // '');

# nginx -t on an http{} body; returns (exit code, output, file, line of #HERE)
sub nginx_t {
    my ($http) = @_;
    my $dir = tempdir(CLEANUP => 1);
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
    my $out = `$nginx -t -p $dir -c conf/nginx.conf 2>&1`;
    return ($? >> 8, $out, "$dir/conf/nginx.conf", $line);
}

my $base = "quota_redis 127.0.0.1:1;\nquota_metric a;\n";
my $zone = "quota_zone q:1m;\n";

my @cases = (
    [ 'quota_reject_cache without quota_zone',
      "server { listen 127.0.0.1:1;\n location / { quota_reject_cache 1s; #HERE\n } }",
      qr/"quota_reject_cache" in \S+:(\d+) needs "quota_zone" in the http block/,
      'own-line' ],
    [ 'quota_reject_cache: bad time', $zone . "quota_reject_cache soon; #HERE",
      qr/"quota_reject_cache" directive invalid value/ ],
    [ 'quota_reject_cache: negative', $zone . "quota_reject_cache -1s; #HERE",
      qr/"quota_reject_cache" directive invalid value/ ],
    [ 'quota_reject_cache: duplicate',
      $zone . "quota_reject_cache 1s;\nquota_reject_cache 2s; #HERE",
      qr/"quota_reject_cache" directive is duplicate/ ],
);

for my $c (@cases) {
    my ($name, $http, $re, $own) = @$c;
    my ($rc, $out, $file, $line) = nginx_t($base . $http);
    isnt($rc, 0, "$name: nginx -t fails");
    like($out, $re, "$name: message");
    if ($own) {
        # reported at the end of the http block, naming the directive's line
        my ($l) = $out =~ $re;
        is($l, $line, "$name: names line $line");
    } else {
        like($out, qr/\Q$file\E:$line\b/, "$name: points at $file:$line");
    }
}

for my $good (
    [ 'quota_zone written last', "quota_reject_cache 1s;\n$zone" ],
    [ '0 needs no quota_zone', "quota_reject_cache 0;" ],
    [ 'in a location', $zone . "server { listen 127.0.0.1:1;\n"
                       . " location / { quota_reject_cache 500ms; } }" ],
) {
    my ($rc, $out) = nginx_t($base . $good->[1]);
    is($rc, 0, "$good->[0]: nginx -t passes") or diag($out);
}

done_testing();

package QuotaProm;

# A strict parser of the Prometheus text exposition format 0.0.4, for the
# tests of quota_metrics: it dies, saying which line and why, on anything
# Prometheus would reject or misread (a bad name, label or escape, a value
# that is not a number, a sample before or outside its family's group, a
# family typed twice, a series twice, a histogram whose buckets decrease or
# whose +Inf bucket differs from _count).
#
#   my $m = QuotaProm::parse($text);                 # dies when invalid
#   QuotaProm::value($m, 'quota_redis_server_reconnects_total',
#                    server => '127.0.0.1:6379');    # undef when absent
#   QuotaProm::series($m, 'quota_redis_server_errors_total');
#                                    # [ [ {labels}, value ], ... ]

use strict;
use warnings;

my $NAME  = qr/[a-zA-Z_:][a-zA-Z0-9_:]*/;
my $LABEL = qr/[a-zA-Z_][a-zA-Z0-9_]*/;
my $VALUE = qr/[+-]?(?:Inf|NaN|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)/;
my %TYPES = map { $_ => 1 } qw(counter gauge histogram summary untyped);

sub _key {
    my ($name, $labels) = @_;
    return $name . '{' . join(',', map { "$_=\"$labels->{$_}\"" }
                                   sort keys %$labels) . '}';
}

# the family a sample name belongs to, given the TYPEs seen
sub _family {
    my ($name, $types) = @_;
    for my $suffix (qw(_bucket _sum _count)) {
        next unless $name =~ /^(.+)\Q$suffix\E$/;
        my $base = $1;
        return $base if ($types->{$base} // '') =~ /^(histogram|summary)$/
                        && ($suffix ne '_bucket'
                            || $types->{$base} eq 'histogram');
    }
    return $name;
}

sub _labels {
    my ($s, $where) = @_;
    my %l;
    while (length $s) {
        $s =~ s/^($LABEL)="((?:[^"\\\n]|\\["\\n])*)"(,?)//
            or die "QuotaProm: $where: bad label list at '$s'\n";
        my ($k, $v, $comma) = ($1, $2, $3);
        die "QuotaProm: $where: label $k twice\n" if exists $l{$k};
        $v =~ s/\\(["\\n])/$1 eq 'n' ? "\n" : $1/ge;
        $l{$k} = $v;
        die "QuotaProm: $where: labels not separated by ','\n"
            if length $s && !$comma;
    }
    return \%l;
}

sub parse {
    my ($text) = @_;
    die "QuotaProm: empty exposition\n" unless defined $text && length $text;
    die "QuotaProm: the last line does not end with a newline\n"
        unless $text =~ /\n\z/;

    my (%types, %help, %done, %m, $current);
    my $n = 0;
    for my $line (split /\n/, $text) {
        $n++;
        my $where = "line $n '$line'";
        next if $line =~ /^\s*$/;
        if ($line =~ /^#\s*(HELP|TYPE)\s+(\S+)(?:\s+(.*))?$/) {
            my ($what, $name, $rest) = ($1, $2, $3 // '');
            die "QuotaProm: $where: bad metric name\n" unless $name =~ /^$NAME$/;
            if ($what eq 'TYPE') {
                die "QuotaProm: $where: unknown type\n" unless $TYPES{$rest};
                die "QuotaProm: $where: TYPE twice\n" if exists $types{$name};
                die "QuotaProm: $where: TYPE after samples\n" if $done{$name}
                    || (defined $current && $current eq $name);
                $types{$name} = $rest;
            } else {
                die "QuotaProm: $where: HELP twice\n" if exists $help{$name};
                die "QuotaProm: $where: bad escape in HELP\n"
                    if $rest =~ /\\(?![\\n])/;
                $help{$name} = $rest;
            }
            next;
        }
        next if $line =~ /^#/;

        $line =~ /^($NAME)(?:\{(.*)\})?\s+($VALUE)(?:\s+-?\d+)?$/
            or die "QuotaProm: $where: not a sample\n";
        my ($name, $ls, $v) = ($1, $2 // '', $3);
        my $labels = _labels($ls, $where);
        my $family = _family($name, \%types);
        if (!defined $current || $current ne $family) {
            die "QuotaProm: $where: family $family is not one group\n"
                if $done{$family};
            $done{$current} = 1 if defined $current;
            $current = $family;
        }
        my $type = $types{$family} // 'untyped';
        if ($type eq 'histogram') {
            die "QuotaProm: $where: histogram sample '$name'\n"
                unless $name =~ /_(bucket|sum|count)$/;
            die "QuotaProm: $where: bucket without le\n"
                if $name =~ /_bucket$/ && !exists $labels->{le};
        }
        my $key = _key($name, $labels);
        die "QuotaProm: $where: series twice\n" if exists $m{$key};
        $m{$key} = $v + 0 eq $v ? $v + 0 : $v;
        push @{ $m{"\0series"}{$name} }, [ $labels, $m{$key} ];
    }

    # histograms: cumulative buckets, +Inf equals _count, per label set
    for my $h (grep { $types{$_} eq 'histogram' } keys %types) {
        my %sets;
        for my $s (@{ $m{"\0series"}{"${h}_bucket"} || [] }) {
            my %l = %{ $s->[0] };
            my $le = delete $l{le};
            push @{ $sets{ _key('', \%l) } }, [ $le, $s->[1], \%l ];
        }
        for my $set (values %sets) {
            my @b = sort { $a->[0] eq '+Inf' ? 1 : $b->[0] eq '+Inf' ? -1
                           : $a->[0] <=> $b->[0] } @$set;
            die "QuotaProm: $h: no +Inf bucket\n" unless $b[-1][0] eq '+Inf';
            for my $i (1 .. $#b) {
                die "QuotaProm: $h: bucket le=$b[$i][0] below le=$b[$i-1][0]\n"
                    if $b[$i][1] < $b[$i-1][1];
            }
            my $count = $m{ _key("${h}_count", $b[-1][2]) };
            die "QuotaProm: $h: +Inf bucket $b[-1][1] is not _count "
                . ($count // 'none') . "\n"
                unless defined $count && $count == $b[-1][1];
            die "QuotaProm: $h: no _sum\n"
                unless defined $m{ _key("${h}_sum", $b[-1][2]) };
        }
    }
    return \%m;
}

sub value {
    my ($m, $name, %labels) = @_;
    return $m->{ _key($name, \%labels) };
}

sub series {
    my ($m, $name) = @_;
    return $m->{"\0series"}{$name} || [];
}

1;

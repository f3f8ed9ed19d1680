#!/usr/bin/perl
# bench/learning/sa-score.pl — SpamAssassin's own Bayes probability for
# each message file named on standard input (one path a line), printed as
# "PROBABILITY PATH" ("none" when Bayes did not answer). One
# Mail::SpamAssassin object for the whole run (rules compiled once, as
# spamd does), local tests only; the configuration (a Bayes-only rule set,
# the bayes_path) is the benchmark's own: bench/learning/run writes it.
use strict;
use warnings;
use Mail::SpamAssassin;
use Time::HiRes qw(time);

my ($configpath, $sitepath) = @ARGV;
die "usage: sa-score.pl CONFIGPATH SITECONFIGPATH < paths\n" unless defined $sitepath;
my $sa = Mail::SpamAssassin->new({
	rules_filename => $configpath,
	site_rules_filename => $sitepath,
	userprefs_filename => "$sitepath/user_prefs",
	dont_copy_prefs => 1,
	local_tests_only => 1,
});
$sa->init(1);
my $t0 = time;
my $n = 0;
while (my $path = <STDIN>) {
	chomp $path;
	open(my $fh, '<', $path) or die "$path: $!\n";
	binmode $fh;
	local $/;
	my $text = <$fh>;
	close $fh;
	my $mail = $sa->parse($text);
	my $st = $sa->check($mail);
	my $p = $st->{bayes_score};
	printf "%s %s\n", defined $p ? sprintf("%.9f", $p) : "none", $path;
	$st->finish;
	$mail->finish;
	$n++;
}
printf STDERR "sa-score: %d messages in %.2f s\n", $n, time - $t0;
$sa->finish;

/*
 * bayes.c — the classifier's maths: Robinson's f(w) and Fisher's
 * chi-square combining, as SpamAssassin's Bayes plugin computes them
 * (Mail::SpamAssassin::Bayes::Combine::Chi and Plugin::Bayes):
 *
 *   p(w) = (s/N_s) / (s/N_s + h/N_h)
 *   f(w) = (S * X + n * p(w)) / (S + n),   n = s + h
 *   tokens with |f(w) - 0.5| < min_strength are ignored, the
 *   max_tokens strongest kept;
 *   H = 1 - Q(-2 (ln N_h/N + sum ln f(w)), 2m),
 *   S = 1 - Q(-2 (ln N_s/N + sum ln (1 - f(w))), 2m),  N = N_s + N_h
 *   P(spam) = (1 + S - H) / 2
 *
 * where Q is the chi-square survival function and m the number of tokens
 * used; the constants are CombineChi's: S = 0.030, X = 0.538. SpamAssassin multiplies the probabilities and rescales with
 * frexp(); summing logarithms is the same number without the underflow.
 */
#include "config.h"

#include <math.h>
#include <stdlib.h>

#include "filters/bayes.h"
#include "lib/lib.h"

double bayes_token_prob(const struct bayes_params *p, double n_s, double n_h,
			double N_s, double N_h)
{
	double n = n_s + n_h, ratio_s, ratio_h, pw;

	if (n <= 0 || N_s <= 0 || N_h <= 0)
		return p->x;
	ratio_s = n_s / N_s;
	ratio_h = n_h / N_h;
	pw = ratio_s / (ratio_s + ratio_h);
	return (p->s * p->x + n * pw) / (p->s + n);
}

double bayes_chi2q(double x2, unsigned v)
{
	double m = x2 / 2.0, sum, term;

	if (x2 <= 0)
		return 1.0;
	sum = term = exp(-m);
	for (unsigned i = 1; i < v / 2; i++) {
		term *= m / i;
		sum += term;
	}
	return sum < 1.0 ? sum : 1.0;
}

double bayes_combine(const double *f, size_t n, uint32_t N_s, uint32_t N_h)
{
	double ls = 0, lh = 0, S, H;

	if (n == 0)
		return 0.5;
	if (N_s > 0 && N_h > 0) {
		/* the products start at the classes' shares of what was learnt
		 * (SpamAssassin's CombineChi, its bug 3118) */
		ls = log((double)N_s / ((double)N_s + N_h));
		lh = log((double)N_h / ((double)N_s + N_h));
	}
	for (size_t i = 0; i < n; i++) {
		/* f is within (0, 1) by construction: S > 0 keeps it off 0 and 1 */
		ls += log(1.0 - f[i]);
		lh += log(f[i]);
	}
	S = 1.0 - bayes_chi2q(-2.0 * ls, (unsigned)(2 * n));
	H = 1.0 - bayes_chi2q(-2.0 * lh, (unsigned)(2 * n));
	return (S - H + 1.0) / 2.0;
}

struct scored {
	double f, strength;
};

static int by_strength(const void *a, const void *b)
{
	const struct scored *x = a, *y = b;

	if (x->strength != y->strength)
		return x->strength < y->strength ? 1 : -1;
	return x->f < y->f ? -1 : x->f > y->f ? 1 : 0; /* deterministic cut */
}

double bayes_classify(const struct bayes_params *p, const struct bayes_count *c, size_t n,
		      uint32_t N_s, uint32_t N_h, size_t *n_used_r)
{
	struct scored *sc = xcalloc(n + 1, sizeof(*sc));
	double *f, r;
	size_t m = 0;

	for (size_t i = 0; i < n; i++) {
		if (c[i].spam == 0 && c[i].ham == 0)
			continue;
		double fw = bayes_token_prob(p, c[i].spam, c[i].ham, N_s, N_h);
		double st = fabs(fw - 0.5);
		if (st < p->min_strength)
			continue;
		sc[m++] = (struct scored){ .f = fw, .strength = st };
	}
	qsort(sc, m, sizeof(*sc), by_strength);
	if (m > p->max_tokens)
		m = p->max_tokens;
	f = xcalloc(m + 1, sizeof(*f));
	for (size_t i = 0; i < m; i++)
		f[i] = sc[i].f;
	r = bayes_combine(f, m, N_s, N_h);
	free(f);
	free(sc);
	if (n_used_r != NULL)
		*n_used_r = m;
	return r;
}

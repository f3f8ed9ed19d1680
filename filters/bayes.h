/*
 * bayes.h — the learning classifier (doc/learning.md): the tokeniser
 * (filters/bayes_tok.c), the Robinson–Fisher maths (filters/bayes.c) and
 * the SQLite token store (filters/bayes_store.c). The stage is
 * filters/bayes_stage.c, the learn commands ctl/learn_cmd.c.
 */
#ifndef MXGUARD_BAYES_H
#define MXGUARD_BAYES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct msgtext;

/* ------------------------------------------------------------ tokeniser */
/* Limits: unique tokens kept per message (the first ones seen, in the
 * order body, subject, headers, URIs... see bayes_tok.c), body words of
 * more than BAYES_WORD_MAX characters become "sk:" + their first 7
 * characters (SpamAssassin's skip tokens), header tokens are cut at
 * BAYES_HDRTOK_MAX octets. */
#define BAYES_TOKENS_MAX 5000
#define BAYES_WORD_MIN 3       /* characters; 2 for words with non-ASCII letters */
#define BAYES_WORD_MAX 15      /* characters */
#define BAYES_HDRTOK_MAX 64    /* octets */
#define BAYES_RECEIVED_MAX 3   /* Received fields read, the newest first */

struct bayes_tok_opts {
	bool pairs;  /* also "a b" for every two consecutive body words */
};

struct bayes_tokens {
	char **tok;       /* unique (by hash), NUL-terminated UTF-8 */
	uint64_t *hash;   /* bayes_hash(tok[i]) */
	size_t n;
	bool truncated;   /* BAYES_TOKENS_MAX was reached */
	void *mem;        /* where the strings are (bayes_tokens_free) */
};

/* The tokens of one message's text views (lib/msgtext.c): never fails;
 * free with bayes_tokens_free(). */
void bayes_tokenize(const struct msgtext *t, const struct bayes_tok_opts *opts,
		    struct bayes_tokens *out);
void bayes_tokens_free(struct bayes_tokens *toks);
/* The 64-bit key a token is stored under (FNV-1a, then a mixer). */
uint64_t bayes_hash(const char *tok);
/* The learnt-message digest: SHA-256 over the Message-ID and the decoded
 * body text (so headers added on the way — ours included — do not change
 * it). out gets 32 octets. */
void bayes_digest(const struct msgtext *t, unsigned char out[32]);

/* ---------------------------------------------------------------- maths */
struct bayes_params {
	double s;              /* Robinson's strength of the prior (SA's CombineChi: 0.030) */
	double x;              /* the prior probability of an unknown token (SA: 0.538) */
	double min_strength;   /* |f(w) - 0.5| a token needs to count (SA: 0.346) */
	unsigned max_tokens;   /* the most significant ones used (SA: 150) */
};
#define BAYES_PARAMS_DEFAULT { .s = 0.030, .x = 0.538, .min_strength = 0.346, .max_tokens = 150 }

/* Robinson's f(w) of a token seen in n_s spam and n_h ham messages, of
 * N_s spam and N_h ham learnt (both > 0). */
double bayes_token_prob(const struct bayes_params *p, double n_s, double n_h,
			double N_s, double N_h);
/* The chi-square survival function Q(x2, v) for an even number of degrees
 * of freedom v (SpamAssassin's chi2q). */
double bayes_chi2q(double x2, unsigned v);
/* Fisher's chi-square combining of probabilities f[0..n) as SpamAssassin
 * does it: (1 + S - H) / 2 with S = 1 - Q(-2 (ln N_s/N + sum ln(1 - f)), 2n),
 * H = 1 - Q(-2 (ln N_h/N + sum ln f), 2n), N = N_s + N_h (no such term
 * when N_s or N_h is 0); 0.5 for n = 0. */
double bayes_combine(const double *f, size_t n, uint32_t N_s, uint32_t N_h);

/* One token's counts, as the store gives them. */
struct bayes_count {
	uint32_t spam, ham;
};
/* The message's probability of being spam from its tokens' counts (c[i]
 * for token i; 0/0 = unknown) and the class totals: selects the tokens with
 * |f - 0.5| >= min_strength, the max_tokens strongest, and combines them.
 * *n_used_r gets how many counted. */
double bayes_classify(const struct bayes_params *p, const struct bayes_count *c, size_t n,
		      uint32_t N_s, uint32_t N_h, size_t *n_used_r);

/* ---------------------------------------------------------------- store */
/*
 * A SQLite database per scope (the site, or one user): tokens(tok INTEGER
 * PRIMARY KEY, spam, ham, atime), seen(digest, class), meta(k, v). WAL
 * mode, so the daemon's readers and mxguardctl's writer do not block each
 * other; writes take a busy timeout. atime is the store's learn counter
 * when the token was last learnt; bayes_store_expire() drops the oldest.
 */
struct bayes_store;
enum bayes_class { BAYES_HAM = 0, BAYES_SPAM = 1 };

/* Open (readonly: never create) the store at path. NULL, *error_r malloc'd. */
struct bayes_store *bayes_store_open(const char *path, bool readonly, char **error_r);
void bayes_store_close(struct bayes_store **st);
/* Totals of learnt messages; 0 / -1 on error. */
int bayes_store_totals(struct bayes_store *st, uint32_t *n_spam, uint32_t *n_ham);
/* Counts of n tokens (0/0 for unknown ones). */
int bayes_store_lookup(struct bayes_store *st, const uint64_t *hash, size_t n,
		       struct bayes_count *out);
enum bayes_learn_result {
	BAYES_LEARNT,      /* new */
	BAYES_RELEARNT,    /* was learnt as the other class: moved */
	BAYES_ALREADY,     /* already learnt as this class: nothing done */
	BAYES_UNLEARNT,    /* (unlearn) removed */
	BAYES_NOT_LEARNT,  /* (unlearn) was never learnt */
	BAYES_ERROR = -1,
};
/* Learn (or with unlearn, forget) one message's tokens under its digest,
 * in one transaction. */
enum bayes_learn_result bayes_store_learn(struct bayes_store *st, const unsigned char digest[32],
					  const struct bayes_tokens *toks, enum bayes_class cls,
					  bool unlearn, char **error_r);
/* A run of learns (mxguardctl): on, they commit together every
 * BAYES_BATCH messages instead of one by one; off commits the rest. Each
 * learn stays all-or-nothing (a savepoint). Nothing for Redis. */
#define BAYES_BATCH 200
int bayes_store_batch(struct bayes_store *st, bool on);
/* Keep at most max_tokens tokens: drop the least recently learnt down to
 * 3/4 of it. Returns how many were dropped, -1 on error. */
long bayes_store_expire(struct bayes_store *st, uint64_t max_tokens);
struct bayes_store_stats {
	uint32_t n_spam, n_ham;
	uint64_t n_tokens, n_seen, file_bytes, learn_counter;
};
int bayes_store_stats(struct bayes_store *st, struct bayes_store_stats *out);
/* The same store in Redis (filters/bayes_redis.c): addr "host:port",
 * "[v6]:port" or "unix:/path"; keys under prefix + scope. Expiry does
 * nothing there. */
struct bayes_store *bayes_store_open_redis(const char *addr, const char *prefix,
					   const char *scope, long timeout_ms, char **error_r);
/* A Redis store whose connection failed (the pool drops it). */
bool bayes_store_broken(const struct bayes_store *st);

/* filters/bayes_redis.c, behind bayes_store_* */
struct bayes_redis;
struct bayes_redis *bayes_redis_open(const char *addr, const char *prefix, const char *scope,
				     long timeout_ms, char **error_r);
void bayes_redis_close(struct bayes_redis **r);
bool bayes_redis_broken(const struct bayes_redis *r);
int bayes_redis_totals(struct bayes_redis *r, uint32_t *n_spam, uint32_t *n_ham);
int bayes_redis_lookup(struct bayes_redis *r, const uint64_t *hash, size_t n,
		       struct bayes_count *out);
enum bayes_learn_result bayes_redis_learn(struct bayes_redis *r, const unsigned char digest[32],
					  const struct bayes_tokens *toks, enum bayes_class cls,
					  bool unlearn, char **error_r);
int bayes_redis_stats(struct bayes_redis *r, struct bayes_store_stats *out);

/* ---------------------------------------------------- the stage's config */
struct cfg_t;
struct bayes_band {
	char name[32];  /* the hit, "BAYES_95" */
	double lower;   /* the band is [lower, the next band's lower) */
	double score;
};
struct bayes_conf {
	char *path;          /* the site store */
	bool per_user;
	char *user_dir;      /* USER.db per user */
	long min_spam, min_ham;
	struct bayes_tok_opts tok;
	struct bayes_params params;
	struct bayes_band *bands;
	size_t n_bands;
	char *header;
	bool autolearn;
	double autolearn_spam, autolearn_ham;
	bool learn_from_moves; /* IMAP moves into/out of Junk teach the store */
	long max_tokens;
	char *redis;         /* "" = the local SQLite store */
	char *redis_prefix;
	long redis_timeout;  /* milliseconds */
};
/* The bayes section's values (sec NULL: the defaults); -1, *error_r. */
int bayes_conf_load(struct cfg_t *sec, struct bayes_conf *c, char **error_r);
void bayes_conf_clear(struct bayes_conf *c);
const struct bayes_band *bayes_band_of(const struct bayes_conf *c, double p);
/* user_dir/USER.db (lower-cased), NULL when user is not a plain
 * local@domain; malloc'd. */
char *bayes_user_path(const struct bayes_conf *c, const char *user);
/* The store of user (NULL: the site's), in Redis or SQLite as configured;
 * its name (a path, or "redis:SCOPE") in *name_r (malloc'd, may be NULL).
 * SQLite: with create false a store that does not exist gives NULL with
 * *error_r NULL; create makes its directory and file. */
struct bayes_store *bayes_conf_open(const struct bayes_conf *c, const char *user, bool readonly,
				    bool create, char **name_r, char **error_r);

/*
 * A user moved (or copied) a message into the junk folder (to_junk) or
 * out of it, over IMAP: learn it as spam or ham in the store the stage
 * reads (the user's with per_user), once, as `mxguardctl learn` would.
 * Blocking (SQLite or Redis): the worker pool only. 1 when the bayes
 * stage is not in the pipeline's stages or learn_from_moves is off
 * (nothing done), 0 when learnt (or already learnt so), -1 with *error_r.
 */
struct mx_config;
int bayes_learn_moved(const struct mx_config *cfg, const char *user, const char *data, size_t len,
		      bool to_junk, char **error_r);

#endif

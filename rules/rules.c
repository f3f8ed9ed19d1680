/*
 * rules.c — rule files: parse, compile (PCRE2, JIT), evaluate.
 *
 * The language is SpamAssassin's (Mail::SpamAssassin::Conf): `header`,
 * `body`, `rawbody`, `full`, `uri`, `meta`, `score`, `describe`, `tflags`,
 * `if`/`ifplugin`/`else`/`endif`, `include`, comments — and mxguard's own
 * lines for what SpamAssassin has no words for: `envfrom`, `envrcpt`,
 * `helo`, `rdns`, `client` (CIDR), `filename`, `mimetype` and `action`. doc/
 * rules.md is the reference; what follows is how it is done.
 *
 * Loading never fails on what SpamAssassin files legitimately contain but
 * mxguard cannot run: `eval:` tests (Perl functions), blocks of plugins we
 * do not have (`ifplugin`), rules on headers SpamAssassin makes up itself
 * (X-Spam-Relays-*, ALL-TRUSTED, ...) are skipped and counted, and
 * configuration directives that define no rule (lang, report, whitelists,
 * ...) are ignored and counted. What is wrong is an error: a regex that
 * does not compile, a line that does not parse, a meta rule that depends
 * on itself. Unknown keywords are warnings (a newer SpamAssassin may have
 * them).
 *
 * Matching follows SpamAssassin where it matters:
 * - a header rule sees every instance of the header, decoded (RFC 2047)
 *   and unfolded, each followed by "\n"; a missing header is "" (or the
 *   rule's [if-unset: STRING]); `:raw` the values as they are; `:addr` and
 *   `:name` the address and display name of each; `ALL` every header as
 *   "Name: value\n"; `ToCc` To then Cc; `MESSAGEID` the message-id
 *   headers; `EnvelopeFrom` the envelope sender; `exists:Name`.
 * - body and rawbody rules see the text views (paragraphs of the rendered
 *   text with the Subject first, resp. the decoded undrendered lines)
 *   joined with "\n" and matched once, with PCRE2_MULTILINE so that ^ and
 *   $ still anchor at each paragraph as SpamAssassin's per-paragraph match
 *   does (a pattern with \s or /s can therefore span two paragraphs where
 *   SpamAssassin's cannot: rare, and stated in doc/rules.md).
 * - uri rules see each URI, full rules the whole message as received.
 * - a rule hits once, or with `tflags multiple` once per match (capped by
 *   maxhits=N); meta rules compute over the hit counts (0 for a rule that
 *   does not exist, as SpamAssassin does since bug 6558), && || ! + - * /
 *   and comparisons, with Perl's precedence.
 * - scores: the first of one or four values (score set 0: no Bayes, no
 *   network tests); 1.0 when no score line names the rule (0.01 for T_
 *   rules); __ rules never score; a score of 0 disables the rule, and so
 *   does `tflags net` (network tests are off, as with spamassassin -L).
 *
 * Every match has PCRE2 match and depth limits: a catastrophic pattern
 * meets the limit, counts as no match, and is logged and counted.
 * Patterns are byte patterns (no PCRE2_UTF), as SpamAssassin's are.
 */
#include "config.h"

#define PCRE2_CODE_UNIT_WIDTH 8

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <glob.h>
#include <limits.h>
#include <math.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "rules/rules.h"
#include "lib/lib.h"

#define RULES_INCLUDE_DEPTH 10
#define RULES_LINE_MAX 65536
#define RULES_IF_DEPTH 64
#define RULES_META_DEPTH 200     /* nesting of one expression */
#define RULES_DEFAULT_MATCH_LIMIT 200000UL
#define RULES_DEFAULT_DEPTH_LIMIT 10000UL
#define RULES_MAXHITS_DEFAULT 1000u

/* SpamAssassin's version the files are judged against: Debian 12's. */
#define RULES_SA_VERSION 4.000001

enum rule_kind {
	RK_NONE = 0, /* only score/describe/tflags seen so far */
	RK_HEADER, RK_BODY, RK_RAWBODY, RK_FULL, RK_URI, RK_META,
	RK_ENVFROM, RK_ENVRCPT, RK_HELO, RK_RDNS, RK_CLIENT, RK_FILENAME, RK_MIMETYPE, RK_STAGE,
	RK_SKIPPED, /* defined by a construct we cannot run */
};

enum hdr_mod { HM_NONE, HM_RAW, HM_ADDR, HM_NAME };
enum hdr_pseudo { HP_NONE, HP_ALL, HP_TOCC, HP_MESSAGEID, HP_ENVFROM };

struct cidr {
	int family;
	unsigned char addr[16];
	int bits;
};

enum meta_op {
	MO_NUM, MO_RULE, MO_NOT, MO_NEG,
	MO_MUL, MO_DIV, MO_ADD, MO_SUB, MO_LT, MO_GT, MO_LE, MO_GE, MO_EQ, MO_NE, MO_AND, MO_OR,
};

struct meta_node {
	enum meta_op op;
	double num;
	char *name;     /* MO_RULE until resolved */
	long rule;      /* index, -1 for a rule that does not exist */
	struct meta_node *a, *b;
};

struct rule {
	char *name;
	enum rule_kind kind;
	char *file;
	int line;
	/* header rules */
	char *header;
	enum hdr_mod mod;
	enum hdr_pseudo pseudo;
	bool exists, negate;
	char *if_unset;
	size_t hkey;    /* which header value (name, pseudo, modifier) it reads */
	/* regex rules */
	pcre2_code *re;
	char *pattern;  /* as written, for lint and tests */
	uint32_t re_flags;
	/* meta */
	struct meta_node *meta;
	/* client */
	struct cidr *cidrs;
	size_t n_cidrs;
	/* score and flags */
	double score;
	bool score_set;
	char *describe;
	bool multiple;
	bool net;       /* tflags net: a network test, off as with spamassassin -L */
	unsigned maxhits;
	/* action */
	bool has_action;
	enum rules_verdict action;
	struct rules_reply action_reply;
	/* counters */
	atomic_uint_fast64_t hits, usec;
};

/* SpamAssassin's ReplaceTags: named pieces of regex (replace_tag,
 * replace_pre, replace_inter, replace_post) put into the patterns of the
 * rules named by replace_rules, at the end of loading. */
enum tag_kind { TAG_TAG, TAG_PRE, TAG_INTER, TAG_POST };
struct replace_tag {
	enum tag_kind kind;
	char *name, *value;
};

struct rule_set {
	struct rule *rules;
	size_t n, alloc;
	struct replace_tag *tags;
	size_t n_tags;
	char **replace_rules;
	size_t n_replace_rules;
	size_t n_hkeys;     /* distinct header values the header rules read */
	size_t *index;      /* open-addressing table of rule names: index + 1, 0 empty */
	size_t index_size;  /* a power of two, over twice n */
	size_t *order;      /* non-meta rules, then metas with their deps first */
	size_t n_order;
	struct rules_stats stats;
	unsigned long match_limit;
	atomic_uint_fast64_t limit_count;
};

/* ------------------------------------------------------------ loading */

struct loader {
	struct rule_set *rs;
	const struct rules_load_opts *opts;
	bool allow_errors;
	struct rules_diag *diags;
	size_t n_diags;
	char *first_error;
	int depth;
	/* where we are */
	const char *file;
	int line;
};

static void ldiag(struct loader *ld, bool error, int col, const char *fmt, ...) ATTR_PRINTF(4, 5);

static void
ldiag(struct loader *ld, bool error, int col, const char *fmt, ...)
{
	va_list ap;
	char *msg;

	va_start(ap, fmt);
	if (vasprintf(&msg, fmt, ap) < 0)
		abort();
	va_end(ap);
	if (error) {
		ld->rs->stats.errors++;
		if (ld->first_error == NULL)
			ld->first_error = xasprintf("%s:%d:%d: %s", ld->file, ld->line, col, msg);
	} else {
		ld->rs->stats.warnings++;
	}
	ld->diags = xrealloc(ld->diags, (ld->n_diags + 1) * sizeof(*ld->diags));
	ld->diags[ld->n_diags].file = xstrdup(ld->file);
	ld->diags[ld->n_diags].line = ld->line;
	ld->diags[ld->n_diags].col = col;
	ld->diags[ld->n_diags].error = error;
	ld->diags[ld->n_diags].message = msg;
	ld->n_diags++;
}

static bool
valid_rule_name(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 100)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (!isalnum((unsigned char)s[i]) && s[i] != '_')
			return false;
	}
	return true;
}

static size_t
name_hash(const char *s)
{
	size_t h = 14695981039346656037ULL;

	for (; *s != '\0'; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

/* The slot of name in the index: where it is, or the empty one it goes to. */
static size_t
index_slot(const struct rule_set *rs, const char *name)
{
	size_t mask = rs->index_size - 1, k = name_hash(name) & mask;

	while (rs->index[k] != 0 && strcmp(rs->rules[rs->index[k] - 1].name, name) != 0)
		k = (k + 1) & mask;
	return k;
}

static void
index_grow(struct rule_set *rs)
{
	free(rs->index);
	rs->index_size = rs->index_size ? rs->index_size * 2 : 1024;
	rs->index = xcalloc(rs->index_size, sizeof(*rs->index));
	for (size_t i = 0; i < rs->n; i++)
		rs->index[index_slot(rs, rs->rules[i].name)] = i + 1;
}

static long
rule_index(const struct rule_set *rs, const char *name)
{
	if (rs->index_size == 0)
		return -1;
	size_t k = index_slot(rs, name);
	return rs->index[k] != 0 ? (long)rs->index[k] - 1 : -1;
}

/* The rule named name, made (RK_NONE) when it is not there yet. */
static struct rule *
rule_get(struct rule_set *rs, const char *name)
{
	long i = rule_index(rs, name);

	if (i >= 0)
		return &rs->rules[i];
	if (rs->n == rs->alloc) {
		rs->alloc = rs->alloc ? rs->alloc * 2 : 256;
		rs->rules = xrealloc(rs->rules, rs->alloc * sizeof(*rs->rules));
	}
	struct rule *r = &rs->rules[rs->n++];
	memset(r, 0, sizeof(*r));
	r->name = xstrdup(name);
	r->maxhits = RULES_MAXHITS_DEFAULT;
	if (rs->n * 2 > rs->index_size)
		index_grow(rs);
	else
		rs->index[index_slot(rs, name)] = rs->n;
	return r;
}

static void
meta_free(struct meta_node *m)
{
	if (m == NULL)
		return;
	meta_free(m->a);
	meta_free(m->b);
	free(m->name);
	free(m);
}

/* Forget what defined a rule (a later definition replaces an earlier one,
 * as in SpamAssassin); its score, description and flags stay. */
static void
rule_clear_definition(struct rule *r)
{
	free(r->header);
	free(r->if_unset);
	free(r->pattern);
	if (r->re != NULL)
		pcre2_code_free(r->re);
	meta_free(r->meta);
	free(r->cidrs);
	free(r->file);
	r->header = r->if_unset = r->pattern = r->file = NULL;
	r->re = NULL;
	r->meta = NULL;
	r->cidrs = NULL;
	r->n_cidrs = 0;
	r->kind = RK_NONE;
	r->mod = HM_NONE;
	r->pseudo = HP_NONE;
	r->exists = r->negate = false;
}

/* Skip spaces; returns the new position. */
static const char *
skip_ws(const char *p)
{
	while (*p == ' ' || *p == '\t')
		p++;
	return p;
}

/* The next word (up to whitespace) into a malloc'd string. */
static char *
next_word(const char **pp)
{
	const char *p = skip_ws(*pp), *s = p;

	while (*p != '\0' && *p != ' ' && *p != '\t')
		p++;
	*pp = p;
	return p > s ? xstrndup(s, (size_t)(p - s)) : NULL;
}

/*
 * A Perl regex as written: /re/flags, m{re}flags, m!re!flags and the other
 * delimiters m allows. Compiles it (JIT); NULL with an error diag. *pp is
 * moved past it.
 */
static pcre2_code *
parse_regex(struct loader *ld, const char *line, const char **pp, bool multiline, char **pattern_r,
	    uint32_t *flags_r)
{
	const char *p = skip_ws(*pp);
	char open, close;
	int col = (int)(p - line) + 1;

	if (*p == 'm' && p[1] != '\0' && !isalnum((unsigned char)p[1]) && p[1] != ' ' && p[1] != '_')
		p++;
	else if (*p != '/') {
		ldiag(ld, true, col, "expected a regex (/.../ or m{...})");
		return NULL;
	}
	open = *p;
	switch (open) {
	case '{': close = '}'; break;
	case '(': close = ')'; break;
	case '[': close = ']'; break;
	case '<': close = '>'; break;
	default: close = open; break;
	}
	p++;
	const char *start = p;
	int nest = 0;
	while (*p != '\0') {
		if (*p == '\\' && p[1] != '\0') {
			p += 2;
			continue;
		}
		if (open != close && *p == open)
			nest++;
		else if (*p == close) {
			if (nest == 0)
				break;
			nest--;
		}
		p++;
	}
	if (*p != close) {
		ldiag(ld, true, col, "regex not closed with '%c'", close);
		return NULL;
	}
	size_t plen = (size_t)(p - start);
	p++;
	uint32_t flags = multiline ? PCRE2_MULTILINE : 0;
	while (*p != '\0' && *p != ' ' && *p != '\t') {
		switch (*p) {
		case 'i': flags |= PCRE2_CASELESS; break;
		case 'm': flags |= PCRE2_MULTILINE; break;
		case 's': flags |= PCRE2_DOTALL; break;
		case 'x': flags |= PCRE2_EXTENDED; break;
		case 'g': case 'o': break; /* meaningless here, as in SpamAssassin */
		default:
			ldiag(ld, true, (int)(p - line) + 1, "unknown regex flag '%c'", *p);
			return NULL;
		}
		p++;
	}
	*pp = p;
	if (flags_r != NULL)
		*flags_r = flags;
	/* in Perl, "\/" in a /.../ regex is a plain "/": PCRE2 takes it too */
	int errcode;
	PCRE2_SIZE erroff;
	pcre2_code *re = pcre2_compile((PCRE2_SPTR)start, plen, flags, &errcode, &erroff, NULL);
	if (re == NULL && errcode == PCRE2_ERROR_CODE_POINT_TOO_BIG) {
		/* \x{2019} and friends: a character beyond one octet, so the
		 * pattern is about UTF-8 text (the views are UTF-8): match it as
		 * UTF-8, tolerating invalid sequences in the subject */
		re = pcre2_compile((PCRE2_SPTR)start, plen, flags | PCRE2_UTF | PCRE2_MATCH_INVALID_UTF,
				   &errcode, &erroff, NULL);
	}
	if (re == NULL) {
		PCRE2_UCHAR msg[256];
		pcre2_get_error_message(errcode, msg, sizeof(msg));
		ldiag(ld, true, col + 1 + (int)erroff, "regex does not compile: %s", (char *)msg);
		return NULL;
	}
	/* JIT where the platform has it; the interpreter otherwise */
	(void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
	if (pattern_r != NULL)
		*pattern_r = xstrndup(start, plen);
	return re;
}

/* --------------------------------------------------------- meta parser */

struct mparse {
	struct loader *ld;
	const char *line, *p;
	int depth;
	bool bad;
};

static struct meta_node *meta_or(struct mparse *m);

static struct meta_node *
meta_node(enum meta_op op, struct meta_node *a, struct meta_node *b)
{
	struct meta_node *n = xcalloc(1, sizeof(*n));

	n->op = op;
	n->a = a;
	n->b = b;
	n->rule = -1;
	return n;
}

static void
meta_error(struct mparse *m, const char *what)
{
	if (!m->bad)
		ldiag(m->ld, true, (int)(m->p - m->line) + 1, "meta: %s", what);
	m->bad = true;
}

static struct meta_node *
meta_primary(struct mparse *m)
{
	m->p = skip_ws(m->p);
	if (++m->depth > RULES_META_DEPTH) {
		meta_error(m, "expression nested too deeply");
		return NULL;
	}
	struct meta_node *n = NULL;
	if (*m->p == '(') {
		m->p++;
		n = meta_or(m);
		m->p = skip_ws(m->p);
		if (*m->p != ')') {
			meta_error(m, "expected ')'");
			meta_free(n);
			n = NULL;
		} else {
			m->p++;
		}
	} else if (*m->p == '!') {
		m->p++;
		struct meta_node *a = meta_primary(m);
		n = a != NULL ? meta_node(MO_NOT, a, NULL) : NULL;
	} else if (*m->p == '-') {
		m->p++;
		struct meta_node *a = meta_primary(m);
		n = a != NULL ? meta_node(MO_NEG, a, NULL) : NULL;
	} else if (isdigit((unsigned char)*m->p) || (*m->p == '.' && isdigit((unsigned char)m->p[1]))) {
		char *end;
		n = meta_node(MO_NUM, NULL, NULL);
		n->num = strtod(m->p, &end);
		m->p = end;
	} else if (isalpha((unsigned char)*m->p) || *m->p == '_') {
		const char *s = m->p;
		while (isalnum((unsigned char)*m->p) || *m->p == '_')
			m->p++;
		n = meta_node(MO_RULE, NULL, NULL);
		n->name = xstrndup(s, (size_t)(m->p - s));
	} else {
		meta_error(m, *m->p == '\0' ? "expression ends early" : "unexpected character");
	}
	m->depth--;
	return n;
}

/* Binary levels by precedence, lowest first: || && (== !=) (< > <= >=) (+ -) (* /) */
static int
meta_binop(struct mparse *m, int level, enum meta_op *op_r)
{
	const char *p = skip_ws(m->p);
	static const struct { int level; const char *tok; enum meta_op op; } ops[] = {
		{ 0, "||", MO_OR }, { 1, "&&", MO_AND }, { 2, "==", MO_EQ }, { 2, "!=", MO_NE },
		{ 3, "<=", MO_LE }, { 3, ">=", MO_GE }, { 3, "<", MO_LT }, { 3, ">", MO_GT },
		{ 4, "+", MO_ADD }, { 4, "-", MO_SUB }, { 5, "*", MO_MUL }, { 5, "/", MO_DIV },
	};

	for (size_t i = 0; i < N_ELEMENTS(ops); i++) {
		size_t n = strlen(ops[i].tok);
		if (ops[i].level == level && strncmp(p, ops[i].tok, n) == 0) {
			*op_r = ops[i].op;
			return (int)((p + n) - m->p);
		}
	}
	return 0;
}

static struct meta_node *
meta_level(struct mparse *m, int level)
{
	if (level == 6)
		return meta_primary(m);
	struct meta_node *a = meta_level(m, level + 1);
	while (a != NULL) {
		enum meta_op op;
		int adv = meta_binop(m, level, &op);
		if (adv == 0)
			break;
		m->p += adv;
		struct meta_node *b = meta_level(m, level + 1);
		if (b == NULL) {
			meta_free(a);
			return NULL;
		}
		a = meta_node(op, a, b);
	}
	return a;
}

static struct meta_node *
meta_or(struct mparse *m)
{
	return meta_level(m, 0);
}

/* -------------------------------------------------------- conditionals */

/* `if` expressions: version, plugin(Name), can(Name), numbers, !, &&, ||,
 * comparisons, parentheses. Plugins: none is present; can(): the
 * features whose behaviour mxguard has. */
static bool
feature_known(const char *name)
{
	static const char *const features[] = {
		"Mail::SpamAssassin::Conf::feature_bug6558_free",
		"Mail::SpamAssassin::Conf::feature_welcomelist_blocklist",
		"Mail::SpamAssassin::Conf::feature_originating_ip_headers",
		NULL,
	};

	for (size_t i = 0; features[i] != NULL; i++) {
		if (strcmp(features[i], name) == 0)
			return true;
	}
	return false;
}

/* The SpamAssassin plugins whose behaviour mxguard has. */
static bool
plugin_known(const char *name)
{
	return strcmp(name, "Mail::SpamAssassin::Plugin::ReplaceTags") == 0;
}

struct cparse {
	const char *p;
	bool bad;
};

static double cond_or(struct cparse *c);

static double
cond_primary(struct cparse *c)
{
	c->p = skip_ws(c->p);
	if (*c->p == '(') {
		c->p++;
		double v = cond_or(c);
		c->p = skip_ws(c->p);
		if (*c->p == ')')
			c->p++;
		else
			c->bad = true;
		return v;
	}
	if (*c->p == '!') {
		c->p++;
		return cond_primary(c) == 0 ? 1 : 0;
	}
	if (isdigit((unsigned char)*c->p)) {
		char *end;
		double v = strtod(c->p, &end);
		c->p = end;
		return v;
	}
	if (strncmp(c->p, "version", 7) == 0) {
		c->p += 7;
		return RULES_SA_VERSION;
	}
	bool is_plugin = strncmp(c->p, "plugin(", 7) == 0, is_can = strncmp(c->p, "can(", 4) == 0;
	if (is_plugin || is_can) {
		c->p += is_plugin ? 7 : 4;
		const char *s = c->p;
		while (*c->p != '\0' && *c->p != ')')
			c->p++;
		char *name = xstrndup(s, (size_t)(c->p - s));
		if (*c->p == ')')
			c->p++;
		else
			c->bad = true;
		bool v = is_can ? feature_known(name) : plugin_known(name);
		free(name);
		return v ? 1 : 0;
	}
	c->bad = true;
	return 0;
}

static double
cond_cmp(struct cparse *c)
{
	double a = cond_primary(c);
	for (;;) {
		const char *p = skip_ws(c->p);
		static const char *const ops[] = { ">=", "<=", "==", "!=", ">", "<" };
		size_t k;
		for (k = 0; k < N_ELEMENTS(ops); k++) {
			if (strncmp(p, ops[k], strlen(ops[k])) == 0)
				break;
		}
		if (k == N_ELEMENTS(ops))
			return a;
		c->p = p + strlen(ops[k]);
		double b = cond_primary(c);
		switch (k) {
		case 0: a = a >= b; break;
		case 1: a = a <= b; break;
		case 2: a = a == b; break;
		case 3: a = a != b; break;
		case 4: a = a > b; break;
		default: a = a < b; break;
		}
	}
}

static double
cond_and(struct cparse *c)
{
	double a = cond_cmp(c);
	for (;;) {
		const char *p = skip_ws(c->p);
		if (strncmp(p, "&&", 2) != 0)
			return a;
		c->p = p + 2;
		double b = cond_cmp(c);
		a = (a != 0 && b != 0) ? 1 : 0;
	}
}

static double
cond_or(struct cparse *c)
{
	double a = cond_and(c);
	for (;;) {
		const char *p = skip_ws(c->p);
		if (strncmp(p, "||", 2) != 0)
			return a;
		c->p = p + 2;
		double b = cond_and(c);
		a = (a != 0 || b != 0) ? 1 : 0;
	}
}

/* ------------------------------------------------------------- lines */

/* Directives SpamAssassin files carry that define no rule: ignored. */
static bool
ignored_directive(const char *kw)
{
	static const char *const words[] = {
		"lang", "report", "add_header", "remove_header", "clear_headers", "required_score",
		"required_hits", "report_safe", "rewrite_header", "use_bayes", "bayes_auto_learn",
		"bayes_ignore_header", "def_whitelist_auth", "def_welcomelist_auth",
		"def_whitelist_from_dkim", "def_welcomelist_from_dkim", "def_whitelist_from_spf",
		"def_welcomelist_from_spf", "whitelist_from", "welcomelist_from", "blacklist_from",
		"blocklist_from", "freemail_domains", "util_rb_tld", "util_rb_2tld", "util_rb_3tld",
		"enlist_uri_host", "enlist_addrlist", "url_shortener", "url_shortener_get",
		"uridnsbl_skip_domain", "reuse", "priority", "test", "require_version", "version_tag",
		"dns_local_ports_avoid", "dns_local_ports_permit", "adsp_override", "redirector_pattern",
		"unsafe_report", "report_contact", "clear_report_template", "clear_unsafe_report_template",
		"originating_ip_headers", "askdns", "urirhssub", "urirhsbl", "uridnssub", "uridnsbl",
		"dns_block_rule", "loadplugin", "tryplugin", "mimeheader", "describe_lang",
		"envelope_sender_header", "trusted_networks", "internal_networks", "msa_networks",
		"ok_locales", "ok_languages", "normalize_charset", "body_part_scan_size",
		"rawbody_part_scan_size", "skip_rbl_checks", "dns_available", "use_auto_whitelist",
		"use_txrep", "score_set", "util_rb_tld", "whitelist_auth", "welcomelist_auth",
		"unwhitelist_from", "unwelcomelist_from", "pyzor_options", "razor_config",
		"dcc_options", "shortcircuit", "bayes_stopword", "bayes_stopwords", "check_rbl",
		NULL,
	};

	for (size_t i = 0; words[i] != NULL; i++) {
		if (strcasecmp(words[i], kw) == 0)
			return true;
	}
	return false;
}

/* Headers SpamAssassin makes up from its own analysis; rules on them are
 * skipped (a rule on a header nobody provides would silently never hit,
 * or always hit with !~). */
static bool
sa_made_header(const char *h)
{
	return strncasecmp(h, "X-Spam-Relays-", 14) == 0 || strncasecmp(h, "ALL-", 4) == 0 ||
	       strcasecmp(h, "X-Spam-DCC") == 0 || strcasecmp(h, "X-Spam-Pyzor") == 0 ||
	       strcasecmp(h, "X-Spam-Razor") == 0 || strcasecmp(h, "X-Spam-Status") == 0 ||
	       strcasecmp(h, "X-SpamAssassin-Internal") == 0 || strncasecmp(h, "X-Spam-", 7) == 0;
}

static void
rule_skip(struct loader *ld, struct rule *r, const char *why, size_t *counter)
{
	rule_clear_definition(r);
	r->kind = RK_SKIPPED;
	(*counter)++;
	if (ld->opts->lint)
		ldiag(ld, false, 1, "%s: skipped: %s", r->name, why);
}

static void
rule_defined(struct loader *ld, struct rule *r, enum rule_kind kind)
{
	r->kind = kind;
	r->file = xstrdup(ld->file);
	r->line = ld->line;
}

/* header NAME Header[:mod] =~ /re/ [if-unset: X] | exists:Header | eval:... */
static void
parse_header_rule(struct loader *ld, const char *line, const char *p, struct rule *r)
{
	p = skip_ws(p);
	if (strncmp(p, "eval:", 5) == 0) {
		rule_skip(ld, r, "eval: tests are SpamAssassin's Perl functions", &ld->rs->stats.skipped_eval);
		return;
	}
	if (strncmp(p, "exists:", 7) == 0) {
		char *h = next_word(&(const char *){ p + 7 });
		if (h == NULL) {
			ldiag(ld, true, (int)(p - line) + 1, "exists: needs a header name");
			rule_clear_definition(r);
			return;
		}
		rule_clear_definition(r);
		rule_defined(ld, r, RK_HEADER);
		r->header = h;
		r->exists = true;
		if (strcmp(h, "ToCc") == 0)
			r->pseudo = HP_TOCC;
		else if (strcmp(h, "MESSAGEID") == 0)
			r->pseudo = HP_MESSAGEID;
		else if (strcmp(h, "EnvelopeFrom") == 0)
			r->pseudo = HP_ENVFROM;
		else if (strcmp(h, "ALL") == 0)
			r->pseudo = HP_ALL;
		return;
	}
	const char *hs = p;
	while (*p != '\0' && *p != ' ' && *p != '\t' && *p != '=' && *p != '!')
		p++;
	char *h = xstrndup(hs, (size_t)(p - hs));
	enum hdr_mod mod = HM_NONE;
	char *colon = strchr(h, ':');
	if (colon != NULL) {
		const char *m = colon + 1;
		*colon = '\0';
		if (strcmp(m, "raw") == 0)
			mod = HM_RAW;
		else if (strcmp(m, "addr") == 0)
			mod = HM_ADDR;
		else if (strcmp(m, "name") == 0)
			mod = HM_NAME;
		else {
			char *why = xasprintf("header modifier :%s is not supported", m);
			rule_skip(ld, r, why, &ld->rs->stats.skipped_other);
			free(why);
			free(h);
			return;
		}
	}
	if (h[0] == '\0') {
		ldiag(ld, true, (int)(hs - line) + 1, "header rule needs a header name");
		free(h);
		return;
	}
	p = skip_ws(p);
	bool negate;
	if (strncmp(p, "=~", 2) == 0)
		negate = false;
	else if (strncmp(p, "!~", 2) == 0)
		negate = true;
	else {
		ldiag(ld, true, (int)(p - line) + 1, "expected =~ or !~");
		free(h);
		return;
	}
	p += 2;
	if (sa_made_header(h)) {
		char *why = xasprintf("%s is made by SpamAssassin's own analysis", h);
		rule_skip(ld, r, why, &ld->rs->stats.skipped_other);
		free(why);
		free(h);
		return;
	}
	char *pattern = NULL;
	uint32_t flags = 0;
	pcre2_code *re = parse_regex(ld, line, &p, false, &pattern, &flags);
	if (re == NULL) {
		free(h);
		return;
	}
	rule_clear_definition(r);
	rule_defined(ld, r, RK_HEADER);
	r->header = h;
	r->mod = mod;
	r->negate = negate;
	r->re = re;
	r->pattern = pattern;
	r->re_flags = flags;
	if (strcmp(h, "ALL") == 0)
		r->pseudo = HP_ALL;
	else if (strcmp(h, "ToCc") == 0)
		r->pseudo = HP_TOCC;
	else if (strcmp(h, "MESSAGEID") == 0)
		r->pseudo = HP_MESSAGEID;
	else if (strcmp(h, "EnvelopeFrom") == 0)
		r->pseudo = HP_ENVFROM;
	p = skip_ws(p);
	if (strncmp(p, "[if-unset:", 10) == 0) {
		const char *s = skip_ws(p + 10), *e = strchr(s, ']');
		if (e == NULL) {
			ldiag(ld, true, (int)(p - line) + 1, "[if-unset: ...] not closed");
		} else {
			while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
				e--;
			r->if_unset = xstrndup(s, (size_t)(e - s));
			p = strchr(p, ']') + 1;
		}
	}
	p = skip_ws(p);
	if (*p != '\0')
		ldiag(ld, false, (int)(p - line) + 1, "%s: text after the regex ignored", r->name);
}

static bool
parse_cidr(const char *s, struct cidr *c)
{
	char buf[64];
	const char *slash = strchr(s, '/');
	size_t n = slash != NULL ? (size_t)(slash - s) : strlen(s);

	if (n == 0 || n >= sizeof(buf))
		return false;
	memcpy(buf, s, n);
	buf[n] = '\0';
	memset(c, 0, sizeof(*c));
	if (inet_pton(AF_INET, buf, c->addr) == 1) {
		c->family = AF_INET;
		c->bits = 32;
	} else if (inet_pton(AF_INET6, buf, c->addr) == 1) {
		c->family = AF_INET6;
		c->bits = 128;
	} else {
		return false;
	}
	if (slash != NULL) {
		char *end;
		long b = strtol(slash + 1, &end, 10);
		if (*end != '\0' || slash[1] == '\0' || b < 0 || b > c->bits)
			return false;
		c->bits = (int)b;
	}
	return true;
}

/* action NAME reject|tempfail|quarantine|discard|accept ["[CODE [X.Y.Z] ]text"] */
static void
parse_action(struct loader *ld, const char *line, const char *p, struct rule *r)
{
	char *word = next_word(&p);
	static const struct { const char *w; enum rules_verdict v; } verbs[] = {
		{ "reject", RULES_REJECT }, { "tempfail", RULES_TEMPFAIL },
		{ "quarantine", RULES_QUARANTINE }, { "discard", RULES_DISCARD },
		{ "accept", RULES_ACCEPT },
	};
	size_t k;

	for (k = 0; word != NULL && k < N_ELEMENTS(verbs); k++) {
		if (strcasecmp(word, verbs[k].w) == 0)
			break;
	}
	if (word == NULL || k == N_ELEMENTS(verbs)) {
		ldiag(ld, true, (int)(p - line) + 1,
		      "action: expected reject, tempfail, quarantine, discard or accept");
		free(word);
		return;
	}
	free(word);
	memset(&r->action_reply, 0, sizeof(r->action_reply));
	r->has_action = true;
	r->action = verbs[k].v;
	p = skip_ws(p);
	if (*p == '\0')
		return;
	if (*p != '"') {
		ldiag(ld, true, (int)(p - line) + 1, "action: the reply text goes in double quotes");
		return;
	}
	const char *s = ++p, *e = strrchr(p, '"');
	if (e == NULL || e < s) {
		ldiag(ld, true, (int)(s - line), "action: reply text not closed with '\"'");
		return;
	}
	char *text = xstrndup(s, (size_t)(e - s));
	const char *t = text;
	bool temp = r->action == RULES_TEMPFAIL;
	if (isdigit((unsigned char)t[0]) && isdigit((unsigned char)t[1]) &&
	    isdigit((unsigned char)t[2]) && (t[3] == ' ' || t[3] == '\0')) {
		unsigned code = (unsigned)strtoul(t, NULL, 10);
		if ((temp && code / 100 != 4) || (!temp && code / 100 != 5) ||
		    (r->action != RULES_REJECT && r->action != RULES_TEMPFAIL)) {
			ldiag(ld, true, (int)(s - line) + 1, "action: code %u does not fit %s", code,
			      verbs[k].w);
			free(text);
			return;
		}
		r->action_reply.code = code;
		t = skip_ws(t + 3);
		size_t el = strspn(t, "0123456789.");
		if (el >= 5 && el < sizeof(r->action_reply.enhanced) && t[0] == text[0] &&
		    (t[el] == ' ' || t[el] == '\0')) {
			memcpy(r->action_reply.enhanced, t, el);
			t = skip_ws(t + el);
		}
	}
	for (const char *c = t; *c != '\0'; c++) {
		if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f) {
			ldiag(ld, true, (int)(s - line) + 1, "action: reply text must be printable ASCII");
			free(text);
			return;
		}
	}
	str_copy(r->action_reply.text, t, sizeof(r->action_reply.text));
	free(text);
}

static int load_file(struct loader *ld, const char *path);

/* One logical line (comments stripped, trimmed, non-empty). */
static void
parse_line(struct loader *ld, char *line, const char *dir)
{
	const char *p = line;
	char *kw = next_word(&p);
	char *name = NULL;

	if (kw == NULL)
		return;
	if (strcmp(kw, "include") == 0) {
		const char *f = skip_ws(p);
		char *path = f[0] == '/' ? xstrdup(f) : xasprintf("%s/%s", dir, f);
		if (ld->depth >= RULES_INCLUDE_DEPTH)
			ldiag(ld, true, (int)(f - line) + 1, "include: nested more than %d deep",
			      RULES_INCLUDE_DEPTH);
		else
			(void)load_file(ld, path);
		free(path);
		free(kw);
		return;
	}
	static const struct { const char *kw; enum tag_kind kind; } tagkw[] = {
		{ "replace_tag", TAG_TAG }, { "replace_pre", TAG_PRE },
		{ "replace_inter", TAG_INTER }, { "replace_post", TAG_POST },
	};
	for (size_t i = 0; i < N_ELEMENTS(tagkw); i++) {
		if (strcmp(kw, tagkw[i].kw) != 0)
			continue;
		char *tname = next_word(&p);
		const char *v = skip_ws(p);
		if (tname == NULL || *v == '\0') {
			ldiag(ld, true, 1, "%s: expected a name and a value", kw);
		} else {
			struct rule_set *rs = ld->rs;
			rs->tags = xrealloc(rs->tags, (rs->n_tags + 1) * sizeof(*rs->tags));
			rs->tags[rs->n_tags].kind = tagkw[i].kind;
			rs->tags[rs->n_tags].name = tname;
			rs->tags[rs->n_tags].value = xstrdup(v);
			rs->n_tags++;
			tname = NULL;
		}
		free(tname);
		free(kw);
		return;
	}
	if (strcmp(kw, "replace_rules") == 0) {
		for (;;) {
			char *rn = next_word(&p);
			if (rn == NULL)
				break;
			struct rule_set *rs = ld->rs;
			rs->replace_rules = xrealloc(rs->replace_rules,
						     (rs->n_replace_rules + 1) * sizeof(char *));
			rs->replace_rules[rs->n_replace_rules++] = rn;
		}
		free(kw);
		return;
	}
	static const struct { const char *kw; enum rule_kind kind; } defs[] = {
		{ "header", RK_HEADER }, { "body", RK_BODY }, { "rawbody", RK_RAWBODY },
		{ "full", RK_FULL }, { "uri", RK_URI }, { "meta", RK_META },
		{ "envfrom", RK_ENVFROM }, { "envrcpt", RK_ENVRCPT }, { "helo", RK_HELO },
		{ "rdns", RK_RDNS }, { "client", RK_CLIENT }, { "filename", RK_FILENAME }, { "mimetype", RK_MIMETYPE },
		{ "stage", RK_STAGE },
	};
	enum rule_kind kind = RK_NONE;
	for (size_t i = 0; i < N_ELEMENTS(defs); i++) {
		if (strcmp(kw, defs[i].kw) == 0)
			kind = defs[i].kind;
	}
	bool other = strcmp(kw, "score") == 0 || strcmp(kw, "describe") == 0 ||
		     strcmp(kw, "tflags") == 0 || strcmp(kw, "action") == 0;
	if (kind == RK_NONE && !other) {
		if (ignored_directive(kw))
			ld->rs->stats.ignored_lines++;
		else {
			ldiag(ld, false, 1, "unknown keyword \"%s\" (line ignored)", kw);
			ld->rs->stats.ignored_lines++;
		}
		free(kw);
		return;
	}
	const char *name_at = skip_ws(p);
	name = next_word(&p);
	if (name == NULL || !valid_rule_name(name)) {
		ldiag(ld, true, (int)(name_at - line) + 1, "%s: expected a rule name (letters, digits, _)",
		      kw);
		free(kw);
		free(name);
		return;
	}
	struct rule *r = rule_get(ld->rs, name);
	p = skip_ws(p);
	if (kind != RK_NONE && r->kind != RK_NONE && r->kind != RK_SKIPPED && ld->opts->lint)
		ldiag(ld, false, 1, "%s: defined again (first at %s:%d); the later one counts", name,
		      r->file, r->line);
	switch (kind) {
	case RK_HEADER:
		parse_header_rule(ld, line, p, r);
		break;
	case RK_BODY:
	case RK_RAWBODY:
	case RK_FULL:
	case RK_URI:
	case RK_ENVFROM:
	case RK_ENVRCPT:
	case RK_HELO:
	case RK_RDNS:
	case RK_STAGE:
	case RK_FILENAME:
	case RK_MIMETYPE: {
		if (strncmp(p, "eval:", 5) == 0) {
			rule_skip(ld, r, "eval: tests are SpamAssassin's Perl functions",
				  &ld->rs->stats.skipped_eval);
			break;
		}
		char *pattern = NULL;
		uint32_t flags = 0;
		bool ml = kind == RK_BODY || kind == RK_RAWBODY;
		pcre2_code *re = parse_regex(ld, line, &p, ml, &pattern, &flags);
		if (re == NULL) {
			if (r->kind == RK_NONE)
				rule_clear_definition(r);
			break;
		}
		rule_clear_definition(r);
		rule_defined(ld, r, kind);
		r->re = re;
		r->pattern = pattern;
		r->re_flags = flags;
		p = skip_ws(p);
		if (*p != '\0')
			ldiag(ld, false, (int)(p - line) + 1, "%s: text after the regex ignored", name);
		break;
	}
	case RK_META: {
		struct mparse m = { ld, line, p, 0, false };
		struct meta_node *n = meta_or(&m);
		m.p = skip_ws(m.p);
		if (n != NULL && *m.p != '\0')
			meta_error(&m, "unexpected text after the expression");
		if (m.bad || n == NULL) {
			meta_free(n);
			break;
		}
		rule_clear_definition(r);
		rule_defined(ld, r, RK_META);
		r->meta = n;
		break;
	}
	case RK_CLIENT: {
		struct cidr *cs = NULL;
		size_t n = 0;
		bool bad = false;
		for (;;) {
			const char *at = skip_ws(p);
			char *w = next_word(&p);
			if (w == NULL)
				break;
			cs = xrealloc(cs, (n + 1) * sizeof(*cs));
			if (!parse_cidr(w, &cs[n])) {
				ldiag(ld, true, (int)(at - line) + 1, "client: \"%s\" is not an address or "
				      "CIDR block", w);
				bad = true;
			}
			n++;
			free(w);
		}
		if (n == 0 && !bad)
			ldiag(ld, true, (int)(p - line) + 1, "client: needs addresses or CIDR blocks");
		if (bad || n == 0) {
			free(cs);
			break;
		}
		rule_clear_definition(r);
		rule_defined(ld, r, RK_CLIENT);
		r->cidrs = cs;
		r->n_cidrs = n;
		break;
	}
	default:
		if (strcmp(kw, "score") == 0) {
			char *end;
			double v = strtod(p, &end);
			if (end == p || (*end != '\0' && *end != ' ' && *end != '\t') || !isfinite(v)) {
				ldiag(ld, true, (int)(p - line) + 1, "score: expected a number");
			} else {
				/* one value, or four (score sets): set 0 is ours */
				size_t nv = 1;
				const char *q = end;
				for (;;) {
					q = skip_ws(q);
					if (*q == '\0')
						break;
					char *e2;
					(void)strtod(q, &e2);
					if (e2 == q) {
						/* SpamAssassin allows a trailing comment-like "(...)" */
						if (*q == '(')
							break;
						ldiag(ld, true, (int)(q - line) + 1, "score: expected a number");
						nv = 0;
						break;
					}
					q = e2;
					nv++;
				}
				if (nv == 1 || nv == 4) {
					r->score = v;
					r->score_set = true;
				} else if (nv != 0) {
					ldiag(ld, true, (int)(p - line) + 1, "score: one value or four, not %zu", nv);
				}
			}
		} else if (strcmp(kw, "describe") == 0) {
			free(r->describe);
			r->describe = xstrdup(p);
		} else if (strcmp(kw, "tflags") == 0) {
			for (;;) {
				char *w = next_word(&p);
				if (w == NULL)
					break;
				if (strcmp(w, "multiple") == 0)
					r->multiple = true;
				else if (strcmp(w, "net") == 0)
					r->net = true;
				else if (strncmp(w, "maxhits=", 8) == 0) {
					long mh = strtol(w + 8, NULL, 10);
					if (mh <= 0)
						ldiag(ld, true, 1, "tflags: maxhits=N needs N > 0");
					else {
						r->maxhits = (unsigned)(mh > 1000000 ? 1000000 : mh);
						r->multiple = true;
					}
				}
				/* nice, net, learn, noautolearn, publish, userconf, ...:
				 * informational here */
				free(w);
			}
		} else if (strcmp(kw, "action") == 0) {
			parse_action(ld, line, p, r);
		}
		break;
	}
	free(kw);
	free(name);
}

/* Strip a SpamAssassin comment: an unescaped # to the end of the line;
 * "\#" stands for "#". Then trim. */
static char *
clean_line(char *s)
{
	char *w = s;

	for (char *r = s; *r != '\0'; r++) {
		if (*r == '#' && (r == s || r[-1] != '\\'))
			break;
		if (*r == '\\' && r[1] == '#') {
			*w++ = '#';
			r++;
			continue;
		}
		*w++ = *r;
	}
	*w = '\0';
	while (w > s && (w[-1] == ' ' || w[-1] == '\t' || w[-1] == '\r' || w[-1] == '\n'))
		*--w = '\0';
	while (*s == ' ' || *s == '\t')
		s++;
	return s;
}

static int
load_file(struct loader *ld, const char *path)
{
	FILE *f = fopen(path, "r");
	const char *saved_file = ld->file;
	int saved_line = ld->line;
	char *buf = NULL;
	size_t cap = 0;
	ssize_t n;
	/* the if/ifplugin stack: is each level active? */
	bool active[RULES_IF_DEPTH + 1];
	bool skipped_by_plugin[RULES_IF_DEPTH + 1];
	bool else_seen[RULES_IF_DEPTH + 1];
	int top = 0;

	if (f == NULL) {
		ldiag(ld, true, 0, "%s: %s", path, strerror(errno));
		return -1;
	}
	char *dir = xstrdup(path), *slash = strrchr(dir, '/');
	if (slash != NULL)
		*slash = '\0';
	else
		strcpy(dir, ".");
	ld->depth++;
	ld->file = path;
	ld->line = 0;
	active[0] = true;
	skipped_by_plugin[0] = false;
	while ((n = getline(&buf, &cap, f)) >= 0) {
		ld->line++;
		if ((size_t)n > RULES_LINE_MAX) {
			ldiag(ld, true, 1, "line longer than %d octets", RULES_LINE_MAX);
			continue;
		}
		if (memchr(buf, '\0', (size_t)n) != NULL) {
			ldiag(ld, true, 1, "NUL octet in the line");
			continue;
		}
		char *line = clean_line(buf);
		if (*line == '\0')
			continue;
		const char *p = line;
		char *kw = next_word(&p);
		bool is_if = strcmp(kw, "if") == 0, is_ifplugin = strcmp(kw, "ifplugin") == 0;
		if (is_if || is_ifplugin) {
			bool v = false, plugin = false;
			if (is_ifplugin) {
				/* of SpamAssassin's plugins, mxguard does ReplaceTags */
				v = plugin_known(skip_ws(p));
				plugin = !v;
			} else {
				struct cparse c = { p, false };
				v = cond_or(&c) != 0;
				c.p = skip_ws(c.p);
				if (c.bad || *c.p != '\0') {
					ldiag(ld, true, (int)(c.p - line) + 1, "if: cannot read the condition");
					v = false;
				}
			}
			if (top == RULES_IF_DEPTH) {
				ldiag(ld, true, 1, "if: nested more than %d deep", RULES_IF_DEPTH);
			} else {
				top++;
				else_seen[top] = false;
				active[top] = active[top - 1] && v;
				skipped_by_plugin[top] = active[top - 1] && !v && plugin;
			}
		} else if (strcmp(kw, "else") == 0) {
			if (top == 0)
				ldiag(ld, true, 1, "else without if");
			else {
				/* the other branch: active when the first was not (an
				 * ifplugin's else runs, no plugin being present) */
				active[top] = active[top - 1] && !active[top] && !else_seen[top];
				else_seen[top] = true;
				skipped_by_plugin[top] = false;
			}
		} else if (strcmp(kw, "endif") == 0) {
			if (top == 0)
				ldiag(ld, true, 1, "endif without if");
			else
				top--;
		} else if (active[top]) {
			parse_line(ld, line, dir);
		} else {
			/* count the rules an unknown plugin's block defines */
			bool plugin_block = false;
			for (int k = 1; k <= top; k++)
				plugin_block = plugin_block || skipped_by_plugin[k];
			if (plugin_block) {
				static const char *const defs[] = { "header", "body", "rawbody", "full",
								    "uri", "meta", "mimeheader", NULL };
				for (size_t k = 0; defs[k] != NULL; k++) {
					if (strcmp(kw, defs[k]) != 0)
						continue;
					ld->rs->stats.skipped_plugin++;
					/* remembered, so that metas on it are skipped too */
					char *rn = next_word(&p);
					if (rn != NULL && valid_rule_name(rn)) {
						struct rule *r = rule_get(ld->rs, rn);
						if (r->kind == RK_NONE)
							r->kind = RK_SKIPPED;
					}
					free(rn);
				}
			}
		}
		free(kw);
	}
	if (top != 0)
		ldiag(ld, true, 0, "if/ifplugin without endif at the end of the file");
	free(buf);
	fclose(f);
	free(dir);
	ld->depth--;
	ld->file = saved_file;
	ld->line = saved_line;
	return 0;
}

/* -------------------------------------------------------- finishing */

/* Depth-first order of metas (dependencies first); a cycle is an error. */
static int
order_visit(struct loader *ld, struct rule_set *rs, size_t i, unsigned char *mark)
{
	if (mark[i] == 2)
		return 0;
	if (mark[i] == 1) {
		ld->file = rs->rules[i].file;
		ld->line = rs->rules[i].line;
		ldiag(ld, true, 1, "meta %s depends on itself", rs->rules[i].name);
		return -1;
	}
	mark[i] = 1;
	/* walk the expression's rules */
	struct meta_node *stack[RULES_META_DEPTH * 2 + 8];
	size_t sp = 0;
	stack[sp++] = rs->rules[i].meta;
	while (sp > 0) {
		struct meta_node *n = stack[--sp];
		if (n == NULL)
			continue;
		if (n->op == MO_RULE && n->rule >= 0 && rs->rules[n->rule].kind == RK_META &&
		    order_visit(ld, rs, (size_t)n->rule, mark) < 0)
			return -1;
		if (sp + 2 < N_ELEMENTS(stack)) {
			stack[sp++] = n->a;
			stack[sp++] = n->b;
		}
	}
	mark[i] = 2;
	rs->order[rs->n_order++] = i;
	return 0;
}

static void
meta_resolve(struct loader *ld, struct rule_set *rs, struct rule *r, struct meta_node *n)
{
	if (n == NULL)
		return;
	if (n->op == MO_RULE) {
		n->rule = rule_index(rs, n->name);
		if (n->rule >= 0 && (rs->rules[n->rule].kind == RK_NONE))
			n->rule = -1;
		if (n->rule < 0 && ld->opts->lint) {
			ld->file = r->file;
			ld->line = r->line;
			ldiag(ld, false, 1, "meta %s names %s, which is not defined (counts as 0)",
			      r->name, n->name);
		}
	}
	meta_resolve(ld, rs, r, n->a);
	meta_resolve(ld, rs, r, n->b);
}

static const char *
tag_value(const struct rule_set *rs, enum tag_kind kind, const char *name, size_t len)
{
	/* the last definition counts, as in SpamAssassin's config hash */
	for (size_t i = rs->n_tags; i-- > 0;) {
		const struct replace_tag *t = &rs->tags[i];
		if (t->kind == kind && strlen(t->name) == len && strncmp(t->name, name, len) == 0)
			return t->value;
	}
	return NULL;
}

/* Take the first "<WORD NAME>" modifier out of s; its NAME's value. */
static const char *
take_modifier(const struct rule_set *rs, char *s, const char *word, enum tag_kind kind)
{
	size_t wl = strlen(word);

	for (char *p = strchr(s, '<'); p != NULL; p = strchr(p + 1, '<')) {
		if (strncmp(p + 1, word, wl) != 0 || p[1 + wl] != ' ')
			continue;
		char *name = p + 2 + wl, *e = strchr(name, '>');
		if (e == NULL || e == name)
			return NULL;
		const char *v = tag_value(rs, kind, name, (size_t)(e - name));
		memmove(p, e + 1, strlen(e + 1) + 1);
		return v;
	}
	return NULL;
}

/*
 * One pass of SpamAssassin's ReplaceTags over a pattern: the pre/post/
 * inter modifiers taken out; each "<TAG>" gets pre before and post after
 * it and is replaced by its value (when there is one); an empty stretch
 * between two tags (or before a first one at the start) becomes inter.
 * Sets *again when a value brought tags of its own.
 */
static char *
replace_pass(const struct rule_set *rs, const char *pattern, bool *again)
{
	char *s = xstrdup(pattern);
	const char *pre = take_modifier(rs, s, "pre", TAG_PRE);
	const char *post = take_modifier(rs, s, "post", TAG_POST);
	const char *inter = take_modifier(rs, s, "inter", TAG_INTER);
	char *out = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&out, &len);
	const char *p = s, *text = s;

	if (f == NULL)
		abort();
	*again = false;
	while (*p != '\0') {
		const char *e = NULL;
		if (*p == '<') {
			e = p + 1;
			while (*e != '\0' && *e != '<' && *e != '>')
				e++;
			if (*e != '>' || e == p + 1)
				e = NULL;
		}
		if (e == NULL) {
			p++;
			continue;
		}
		/* the text before this tag; empty: inter goes there */
		if (p == text && inter != NULL)
			fputs(inter, f);
		else
			fwrite(text, 1, (size_t)(p - text), f);
		if (pre != NULL)
			fputs(pre, f);
		const char *v = tag_value(rs, TAG_TAG, p + 1, (size_t)(e - p - 1));
		if (v != NULL) {
			fputs(v, f);
			if (strchr(v, '<') != NULL && strchr(v, '>') != NULL)
				*again = true;
		} else {
			fwrite(p, 1, (size_t)(e + 1 - p), f);
		}
		if (post != NULL)
			fputs(post, f);
		p = text = e + 1;
	}
	fputs(text, f);
	if (fclose(f) != 0)
		abort();
	free(s);
	return out;
}

static void
replace_tags(struct loader *ld, struct rule_set *rs)
{
	for (size_t k = 0; k < rs->n_replace_rules; k++) {
		long i = rule_index(rs, rs->replace_rules[k]);
		if (i < 0)
			continue;
		struct rule *r = &rs->rules[i];
		if (r->re == NULL || r->pattern == NULL)
			continue; /* SpamAssassin ignores it too */
		char *re = xstrdup(r->pattern);
		bool again = true;
		for (int pass = 0; again && pass <= 5; pass++) {
			char *next = replace_pass(rs, re, &again);
			free(re);
			re = next;
		}
		if (strcmp(re, r->pattern) == 0) {
			free(re);
			continue;
		}
		int errcode;
		PCRE2_SIZE erroff;
		pcre2_code *c = pcre2_compile((PCRE2_SPTR)re, strlen(re), r->re_flags, &errcode,
					      &erroff, NULL);
		if (c == NULL && errcode == PCRE2_ERROR_CODE_POINT_TOO_BIG)
			c = pcre2_compile((PCRE2_SPTR)re, strlen(re),
					  r->re_flags | PCRE2_UTF | PCRE2_MATCH_INVALID_UTF, &errcode,
					  &erroff, NULL);
		if (c == NULL) {
			PCRE2_UCHAR msg[256];
			pcre2_get_error_message(errcode, msg, sizeof(msg));
			char *file = xstrdup(r->file);
			ld->file = file;
			ld->line = r->line;
			if (errcode == PCRE2_ERROR_PATTERN_TOO_LARGE) {
				/* Perl takes it; this PCRE2's compiled patterns stop at
				 * 64 KiB: skipped and counted, not an error */
				rule_skip(ld, r, "too large for PCRE2 once its tags are replaced",
					  &rs->stats.skipped_other);
			} else {
				ldiag(ld, true, 1, "%s: the regex with its tags replaced does not "
				      "compile: %s", r->name, (char *)msg);
			}
			ld->file = "(rules)";
			free(file);
			free(re);
			continue;
		}
		(void)pcre2_jit_compile(c, PCRE2_JIT_COMPLETE);
		pcre2_code_free(r->re);
		r->re = c;
		free(r->pattern);
		r->pattern = re;
	}
}

/* Number the distinct header values header rules read: (pseudo, name in
 * any case, modifier) — so that rules on the same header share one. */
static void
assign_hkeys(struct rule_set *rs)
{
	size_t *first = xcalloc(rs->n + 1, sizeof(*first)); /* hkey -> a rule having it */

	rs->n_hkeys = 0;
	for (size_t i = 0; i < rs->n; i++) {
		struct rule *r = &rs->rules[i];
		if (r->kind != RK_HEADER || r->exists)
			continue;
		size_t k;
		for (k = 0; k < rs->n_hkeys; k++) {
			const struct rule *o = &rs->rules[first[k]];
			if (o->pseudo == r->pseudo && o->mod == r->mod &&
			    strcasecmp(o->header, r->header) == 0)
				break;
		}
		if (k == rs->n_hkeys)
			first[rs->n_hkeys++] = i;
		r->hkey = k;
	}
	free(first);
}

/* The name of a skipped rule the expression needs, or NULL. */
static const char *
meta_skipped_dep(const struct rule_set *rs, const struct meta_node *n)
{
	if (n == NULL)
		return NULL;
	if (n->op == MO_RULE && n->rule >= 0 && rs->rules[n->rule].kind == RK_SKIPPED)
		return n->name;
	const char *d = meta_skipped_dep(rs, n->a);
	return d != NULL ? d : meta_skipped_dep(rs, n->b);
}

static int
rules_finish(struct loader *ld)
{
	struct rule_set *rs = ld->rs;
	unsigned char *mark = xcalloc(rs->n + 1, 1);
	int ret = 0;

	rs->order = xcalloc(rs->n + 1, sizeof(*rs->order));
	replace_tags(ld, rs);
	assign_hkeys(rs);
	for (size_t i = 0; i < rs->n; i++) {
		struct rule *r = &rs->rules[i];
		if (r->kind == RK_NONE && (r->score_set || r->describe != NULL || r->has_action) &&
		    ld->opts->lint) {
			ld->file = "(rules)";
			ld->line = 0;
			ldiag(ld, false, 0, "%s has a score, description or action but no definition",
			      r->name);
		}
		if (!r->score_set) {
			r->score = strncmp(r->name, "__", 2) == 0 ? 0
				   : strncmp(r->name, "T_", 2) == 0 ? 0.01 : 1.0;
		}
		if (r->kind == RK_META)
			meta_resolve(ld, rs, r, r->meta);
	}
	/* a meta that needs a rule we skipped is skipped too: with a missing
	 * term it could hit where SpamAssassin's does not (!EVAL_RULE) */
	for (bool changed = true; changed;) {
		changed = false;
		for (size_t i = 0; i < rs->n; i++) {
			struct rule *r = &rs->rules[i];
			const char *dep = r->kind == RK_META ? meta_skipped_dep(rs, r->meta) : NULL;
			if (dep == NULL)
				continue;
			char *why = xasprintf("it needs %s, which is skipped", dep);
			char *file = xstrdup(r->file != NULL ? r->file : "(rules)");
			ld->file = file;
			ld->line = r->line;
			rule_skip(ld, r, why, &rs->stats.skipped_other);
			ld->file = "(rules)";
			free(file);
			free(why);
			changed = true;
		}
	}
	for (size_t i = 0; i < rs->n; i++) {
		enum rule_kind k = rs->rules[i].kind;
		if (k != RK_NONE && k != RK_SKIPPED)
			rs->stats.loaded++;
		if (k != RK_META && k != RK_NONE && k != RK_SKIPPED)
			rs->order[rs->n_order++] = i;
	}
	for (size_t i = 0; i < rs->n && ret == 0; i++) {
		if (rs->rules[i].kind == RK_META && order_visit(ld, rs, i, mark) < 0)
			ret = -1;
	}
	free(mark);
	return ret;
}

struct rule_set *
rules_load(const char *const *files, size_t n_files, const struct rules_load_opts *opts,
	   bool allow_errors, struct rules_diag **diags, size_t *n_diags, char **error_r)
{
	static const struct rules_load_opts defaults;
	struct rule_set *rs = xcalloc(1, sizeof(*rs));
	struct loader ld = { .rs = rs, .opts = opts != NULL ? opts : &defaults,
			     .allow_errors = allow_errors, .file = "(rules)" };

	rs->match_limit = ld.opts->match_limit != 0 ? ld.opts->match_limit
						    : RULES_DEFAULT_MATCH_LIMIT;
	for (size_t i = 0; i < n_files; i++)
		(void)load_file(&ld, files[i]);
	int fin = rules_finish(&ld);
	if (diags != NULL) {
		*diags = ld.diags;
		*n_diags = ld.n_diags;
	} else {
		rules_diags_free(ld.diags, ld.n_diags);
	}
	if ((rs->stats.errors > 0 && !allow_errors) || fin < 0) {
		*error_r = ld.first_error != NULL ? ld.first_error : xstrdup("rules: load failed");
		rules_free(&rs);
		return NULL;
	}
	free(ld.first_error);
	return rs;
}

void
rules_diags_free(struct rules_diag *d, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(d[i].file);
		free(d[i].message);
	}
	free(d);
}

void
rules_free(struct rule_set **rsp)
{
	struct rule_set *rs = *rsp;

	*rsp = NULL;
	if (rs == NULL)
		return;
	for (size_t i = 0; i < rs->n; i++) {
		rule_clear_definition(&rs->rules[i]);
		free(rs->rules[i].name);
		free(rs->rules[i].describe);
	}
	free(rs->rules);
	free(rs->order);
	free(rs->index);
	for (size_t i = 0; i < rs->n_tags; i++) {
		free(rs->tags[i].name);
		free(rs->tags[i].value);
	}
	free(rs->tags);
	for (size_t i = 0; i < rs->n_replace_rules; i++)
		free(rs->replace_rules[i]);
	free(rs->replace_rules);
	free(rs);
}

void
rules_get_stats(const struct rule_set *rs, struct rules_stats *st)
{
	*st = rs->stats;
}

size_t
rules_count(const struct rule_set *rs)
{
	return rs->n;
}

const char *
rules_name(const struct rule_set *rs, size_t i)
{
	return i < rs->n ? rs->rules[i].name : NULL;
}

bool
rules_is_loaded(const struct rule_set *rs, size_t i)
{
	return i < rs->n && rs->rules[i].kind != RK_NONE && rs->rules[i].kind != RK_SKIPPED;
}

void
rules_counters(const struct rule_set *rs, size_t i, uint64_t *hits, uint64_t *usec)
{
	*hits = atomic_load(&rs->rules[i].hits);
	*usec = atomic_load(&rs->rules[i].usec);
}

uint64_t
rules_limit_count(const struct rule_set *rs)
{
	return atomic_load(&rs->limit_count);
}

/* ------------------------------------------------------------ matching */

/* What one evaluation thread keeps between messages: match data and a
 * match context with the limits and a JIT stack. Freed at thread exit. */
struct matcher {
	pcre2_match_data *md;
	pcre2_match_context *mc;
	pcre2_jit_stack *js;
	unsigned long limit;
};

static pthread_key_t matcher_key;
static pthread_once_t matcher_once = PTHREAD_ONCE_INIT;

static void
matcher_free(void *p)
{
	struct matcher *m = p;

	pcre2_match_data_free(m->md);
	pcre2_match_context_free(m->mc);
	pcre2_jit_stack_free(m->js);
	free(m);
}

static void
matcher_key_init(void)
{
	(void)pthread_key_create(&matcher_key, matcher_free);
}

static struct matcher *
matcher_get(unsigned long limit)
{
	struct matcher *m;

	pthread_once(&matcher_once, matcher_key_init);
	m = pthread_getspecific(matcher_key);
	if (m == NULL) {
		m = xcalloc(1, sizeof(*m));
		m->md = pcre2_match_data_create(1, NULL);
		m->mc = pcre2_match_context_create(NULL);
		m->js = pcre2_jit_stack_create(32 * 1024, 1024 * 1024, NULL);
		if (m->md == NULL || m->mc == NULL || m->js == NULL)
			abort(); /* only without memory */
		pcre2_jit_stack_assign(m->mc, NULL, m->js);
		pcre2_set_depth_limit(m->mc, RULES_DEFAULT_DEPTH_LIMIT);
		(void)pthread_setspecific(matcher_key, m);
	}
	if (m->limit != limit) {
		pcre2_set_match_limit(m->mc, (uint32_t)(limit > UINT32_MAX ? UINT32_MAX : limit));
		m->limit = limit;
	}
	return m;
}

struct evalctx {
	const struct rule_set *rs;
	struct matcher *m;
	const struct rule *rule;
	char match[80];
	bool have_match;
	unsigned long limit_hits;
	struct hval {
		char *buf;
		size_t len, found;
		bool built;
	} *hvals;
};

static void
note_match(struct evalctx *ec, const char *s, size_t off, size_t end)
{
	if (ec->have_match)
		return;
	size_t n = end - off, o = 0;
	if (n > sizeof(ec->match) - 1)
		n = sizeof(ec->match) - 1;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[off + i];
		ec->match[o++] = c >= 0x20 && c < 0x7f ? (char)c : c == '\n' ? ' ' : '?';
	}
	ec->match[o] = '\0';
	ec->have_match = true;
}

/* Matches of re in s[0..len): 0, 1, or (multiple) up to max. */
static unsigned
count_matches(struct evalctx *ec, const pcre2_code *re, const char *s, size_t len, unsigned max)
{
	unsigned hits = 0;
	size_t off = 0;

	while (hits < max && off <= len) {
		int rc = pcre2_match(re, (PCRE2_SPTR)s, len, off, 0, ec->m->md, ec->m->mc);
		if (rc == PCRE2_ERROR_NOMATCH)
			break;
		if (rc < 0 && rc != 0) {
			if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT ||
			    rc == PCRE2_ERROR_JIT_STACKLIMIT) {
				atomic_fetch_add((atomic_uint_fast64_t *)&ec->rs->limit_count, 1);
				ec->limit_hits++;
				log_msg(LOG_LEVEL_WARN, "rules: %s stopped at the match limit "
					"(counts as no match)", ec->rule->name);
			}
			break;
		}
		PCRE2_SIZE *ov = pcre2_get_ovector_pointer(ec->m->md);
		note_match(ec, s, ov[0], ov[1]);
		hits++;
		if (ov[1] == ov[0])
			off = ov[1] + 1; /* an empty match: step on */
		else
			off = ov[1];
	}
	return hits;
}

/* Append one header value and "\n". */
static void
hbuf_add(char **buf, size_t *len, size_t *cap, const char *s)
{
	size_t n = strlen(s);

	if (*len + n + 2 > *cap) {
		*cap = (*len + n + 2) * 2;
		*buf = xrealloc(*buf, *cap);
	}
	memcpy(*buf + *len, s, n);
	*len += n;
	(*buf)[(*len)++] = '\n';
	(*buf)[*len] = '\0';
}

static void
hbuf_header(const struct msgtext *t, const char *name, enum hdr_mod mod, char **buf, size_t *len,
	    size_t *cap, size_t *found)
{
	char tmp[1024];

	for (size_t i = 0;; i++) {
		const char *v = msgtext_header(t, name, i, mod == HM_RAW);
		if (v == NULL)
			break;
		(*found)++;
		if (mod == HM_ADDR) {
			msgtext_addr(v, tmp, sizeof(tmp));
			v = tmp;
		} else if (mod == HM_NAME) {
			msgtext_name(v, tmp, sizeof(tmp));
			v = tmp;
		}
		hbuf_add(buf, len, cap, v);
	}
}

static unsigned
eval_header(struct evalctx *ec, const struct rule *r, const struct msgtext *t,
	    const struct rules_envelope *env)
{
	char *buf = NULL;
	size_t len = 0, cap = 0, found = 0;
	unsigned hits;

	if (r->exists) {
		/* the pseudo-headers exist when one of theirs does */
		switch (r->pseudo) {
		case HP_ENVFROM:
			return env->mail_from != NULL ? 1 : 0;
		case HP_ALL:
			return t != NULL && t->n_headers > 0 ? 1 : 0;
		case HP_TOCC:
			return t != NULL && (msgtext_header(t, "To", 0, true) != NULL ||
					     msgtext_header(t, "Cc", 0, true) != NULL) ? 1 : 0;
		case HP_MESSAGEID:
			return t != NULL && (msgtext_header(t, "Message-Id", 0, true) != NULL ||
					     msgtext_header(t, "Resent-Message-Id", 0, true) != NULL ||
					     msgtext_header(t, "X-Message-Id", 0, true) != NULL) ? 1 : 0;
		default:
			return t != NULL && msgtext_header(t, r->header, 0, true) != NULL ? 1 : 0;
		}
	}
	struct hval *hv = &ec->hvals[r->hkey];
	if (!hv->built) {
		hv->built = true;
		switch (r->pseudo) {
		case HP_ENVFROM:
			hbuf_add(&buf, &len, &cap, env->mail_from != NULL ? env->mail_from : "");
			found = 1;
			break;
		case HP_ALL:
			for (size_t i = 0; t != NULL && i < t->n_headers; i++) {
				const struct msgtext_header *h = &t->headers[i];
				char *line = xasprintf("%s: %s", h->name, r->mod == HM_RAW ? h->raw : h->decoded);
				hbuf_add(&buf, &len, &cap, line);
				free(line);
				found++;
			}
			break;
		case HP_TOCC:
			if (t != NULL) {
				hbuf_header(t, "To", r->mod, &buf, &len, &cap, &found);
				hbuf_header(t, "Cc", r->mod, &buf, &len, &cap, &found);
			}
			break;
		case HP_MESSAGEID:
			if (t != NULL) {
				hbuf_header(t, "Message-Id", r->mod, &buf, &len, &cap, &found);
				hbuf_header(t, "Resent-Message-Id", r->mod, &buf, &len, &cap, &found);
				hbuf_header(t, "X-Message-Id", r->mod, &buf, &len, &cap, &found);
			}
			break;
		default:
			if (t != NULL)
				hbuf_header(t, r->header, r->mod, &buf, &len, &cap, &found);
			break;
		}
		hv->buf = buf;
		hv->len = len;
		hv->found = found;
		buf = NULL;
	}
	found = hv->found;
	len = hv->len;
	const char *subject = hv->buf != NULL ? hv->buf : "";
	if (found == 0 && r->if_unset != NULL) {
		subject = r->if_unset;
		len = strlen(subject);
	}
	hits = count_matches(ec, r->re, subject, len, r->multiple ? r->maxhits : 1);
	if (r->negate) {
		ec->have_match = false;
		return hits == 0 ? 1 : 0;
	}
	return hits;
}

static unsigned
eval_list(struct evalctx *ec, const struct rule *r, const char *const *items, size_t n)
{
	unsigned hits = 0, max = r->multiple ? r->maxhits : 1;

	/* one per item that matches, as SpamAssassin counts URIs */
	for (size_t i = 0; i < n && hits < max; i++) {
		if (items[i] != NULL)
			hits += count_matches(ec, r->re, items[i], strlen(items[i]), 1);
	}
	return hits;
}

static bool
cidr_match(const struct cidr *c, const char *addr)
{
	unsigned char a[16];
	int family;

	if (inet_pton(AF_INET, addr, a) == 1)
		family = AF_INET;
	else if (inet_pton(AF_INET6, addr, a) == 1)
		family = AF_INET6;
	else
		return false;
	if (family == AF_INET6 && c->family == AF_INET) {
		/* a v4-mapped client address matches v4 blocks */
		static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
		if (memcmp(a, mapped, 12) != 0)
			return false;
		memmove(a, a + 12, 4);
		family = AF_INET;
	}
	if (family != c->family)
		return false;
	int full = c->bits / 8, rest = c->bits % 8;
	if (memcmp(a, c->addr, (size_t)full) != 0)
		return false;
	if (rest == 0)
		return true;
	unsigned char mask = (unsigned char)(0xff << (8 - rest));
	return (a[full] & mask) == (c->addr[full] & mask);
}

static double
meta_value(const struct meta_node *n, const unsigned *counts)
{
	double a, b;

	switch (n->op) {
	case MO_NUM: return n->num;
	case MO_RULE: return n->rule >= 0 ? counts[n->rule] : 0;
	case MO_NOT: return meta_value(n->a, counts) == 0 ? 1 : 0;
	case MO_NEG: return -meta_value(n->a, counts);
	default: break;
	}
	a = meta_value(n->a, counts);
	if (n->op == MO_AND && a == 0)
		return 0;
	if (n->op == MO_OR && a != 0)
		return 1;
	b = meta_value(n->b, counts);
	switch (n->op) {
	case MO_MUL: return a * b;
	case MO_DIV: return b != 0 ? a / b : 0;
	case MO_ADD: return a + b;
	case MO_SUB: return a - b;
	case MO_LT: return a < b;
	case MO_GT: return a > b;
	case MO_LE: return a <= b;
	case MO_GE: return a >= b;
	case MO_EQ: return a == b;
	case MO_NE: return a != b;
	case MO_AND: return b != 0 ? 1 : 0;
	case MO_OR: return b != 0 ? 1 : 0;
	default: return 0;
	}
}

/* The joined text of a view: its elements, each ending in "\n" (the
 * views' elements mostly do already). */
static char *
join_lines(char *const *lines, size_t n, size_t *len_r)
{
	size_t len = 0;

	for (size_t i = 0; i < n; i++)
		len += strlen(lines[i]) + 1;
	char *buf = xmalloc(len + 1), *p = buf;
	for (size_t i = 0; i < n; i++) {
		size_t l = strlen(lines[i]);
		memcpy(p, lines[i], l);
		p += l;
		if (l == 0 || lines[i][l - 1] != '\n')
			*p++ = '\n';
	}
	*p = '\0';
	*len_r = (size_t)(p - buf);
	return buf;
}

static uint64_t
now_usec(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Strongest first: what an action line decides when several hit. */
static int
verdict_rank(enum rules_verdict v)
{
	switch (v) {
	case RULES_REJECT: return 5;
	case RULES_TEMPFAIL: return 4;
	case RULES_QUARANTINE: return 3;
	case RULES_DISCARD: return 2;
	case RULES_ACCEPT: return 1;
	default: return 0;
	}
}

void
rules_eval(const struct rule_set *rs, const struct msgtext *t, const struct rules_envelope *env,
	   bool timing, struct rules_result *res)
{
	unsigned *counts = xcalloc(rs->n + 1, sizeof(*counts));
	char **matches = NULL;
	char *body = NULL, *rawbody = NULL;
	size_t body_len = 0, rawbody_len = 0;
	struct evalctx ec = { .rs = rs, .m = matcher_get(rs->match_limit) };
	/* each header value is built once per message, however many rules read it */
	ec.hvals = xcalloc(rs->n_hkeys + 1, sizeof(*ec.hvals));
	uint64_t start = now_usec();
	static const struct rules_envelope no_env;

	if (env == NULL)
		env = &no_env;
	memset(res, 0, sizeof(*res));
	res->verdict = RULES_CONTINUE;
	if (t != NULL) {
		body = join_lines(t->body, t->n_body, &body_len);
		rawbody = join_lines(t->rawbody, t->n_rawbody, &rawbody_len);
	}
	matches = xcalloc(rs->n + 1, sizeof(*matches));
	for (size_t k = 0; k < rs->n_order; k++) {
		size_t i = rs->order[k];
		const struct rule *r = &rs->rules[i];
		uint64_t t0 = timing ? now_usec() : 0;
		unsigned c = 0, max = r->multiple ? r->maxhits : 1;

		if ((r->score_set && r->score == 0 && strncmp(r->name, "__", 2) != 0) || r->net)
			continue; /* disabled, as SpamAssassin does (net: as with -L) */
		ec.rule = r;
		ec.have_match = false;
		switch (r->kind) {
		case RK_HEADER:
			c = eval_header(&ec, r, t, env);
			break;
		case RK_BODY:
			if (t != NULL)
				c = count_matches(&ec, r->re, body, body_len, max);
			break;
		case RK_RAWBODY:
			if (t != NULL)
				c = count_matches(&ec, r->re, rawbody, rawbody_len, max);
			break;
		case RK_FULL:
			if (t != NULL)
				c = count_matches(&ec, r->re, t->full, t->full_len, max);
			break;
		case RK_URI:
			if (t != NULL)
				c = eval_list(&ec, r, (const char *const *)t->uris, t->n_uris);
			break;
		case RK_ENVFROM: {
			const char *v = env->mail_from != NULL ? env->mail_from : "";
			c = count_matches(&ec, r->re, v, strlen(v), max);
			break;
		}
		case RK_ENVRCPT:
			c = eval_list(&ec, r, env->rcpts, env->n_rcpts);
			break;
		case RK_STAGE:
			c = eval_list(&ec, r, env->stage_hits, env->n_stage_hits);
			break;
		case RK_HELO:
		case RK_RDNS: {
			const char *v = r->kind == RK_HELO ? env->helo : env->client_rdns;
			if (v == NULL)
				v = "";
			c = count_matches(&ec, r->re, v, strlen(v), max);
			break;
		}
		case RK_CLIENT:
			for (size_t j = 0; j < r->n_cidrs && c == 0 && env->client_addr != NULL; j++) {
				if (cidr_match(&r->cidrs[j], env->client_addr)) {
					c = 1;
					str_copy(ec.match, env->client_addr, sizeof(ec.match));
					ec.have_match = true;
				}
			}
			break;
		case RK_FILENAME:
		case RK_MIMETYPE:
			for (size_t j = 0; t != NULL && j < t->n_parts && c < max; j++) {
				const char *v = r->kind == RK_FILENAME ? t->parts[j].filename
								       : t->parts[j].type;
				if (v != NULL)
					c += count_matches(&ec, r->re, v, strlen(v), 1);
			}
			break;
		case RK_META: {
			double v = meta_value(r->meta, counts);
			c = v != 0 ? 1 : 0;
			break;
		}
		default:
			break;
		}
		counts[i] = c;
		if (c > 0 && ec.have_match)
			matches[i] = xstrdup(ec.match);
		if (timing)
			atomic_fetch_add((atomic_uint_fast64_t *)&r->usec, now_usec() - t0);
	}
	/* hits, in rule order */
	for (size_t i = 0; i < rs->n; i++) {
		const struct rule *r = &rs->rules[i];
		if (counts[i] == 0)
			continue;
		atomic_fetch_add((atomic_uint_fast64_t *)&r->hits, 1);
		if (r->has_action && verdict_rank(r->action) > verdict_rank(res->verdict)) {
			res->verdict = r->action;
			res->action_rule = r->name;
			res->reply = r->action_reply;
		}
		if (strncmp(r->name, "__", 2) == 0)
			continue;
		res->hits = xrealloc(res->hits, (res->n_hits + 1) * sizeof(*res->hits));
		struct rules_hit *h = &res->hits[res->n_hits++];
		memset(h, 0, sizeof(*h));
		h->rule = i;
		h->name = r->name;
		h->count = counts[i];
		h->score = r->score * (r->multiple ? counts[i] : 1);
		h->describe = r->describe;
		if (matches[i] != NULL)
			str_copy(h->match, matches[i], sizeof(h->match));
		res->score += h->score;
	}
	for (size_t i = 0; i < rs->n; i++)
		free(matches[i]);
	for (size_t i = 0; i < rs->n_hkeys; i++)
		free(ec.hvals[i].buf);
	free(ec.hvals);
	free(matches);
	free(counts);
	free(body);
	free(rawbody);
	res->limit_hits = ec.limit_hits;
	res->usec = now_usec() - start;
}

void
rules_result_clear(struct rules_result *res)
{
	free(res->hits);
	memset(res, 0, sizeof(*res));
}

/* Expand the globs; a pattern with no file is an error (a typo would
 * otherwise load no rules quietly). */
int
rules_expand_files(char *const *patterns, size_t n, char ***files_r, size_t *n_files_r,
		   char **error_r)
{
	char **files = NULL;
	size_t nf = 0;

	for (size_t i = 0; i < n; i++) {
		glob_t g;
		int rc = glob(patterns[i], GLOB_ERR, NULL, &g);
		if (rc != 0) {
			*error_r = xasprintf("rules: files: \"%s\": %s", patterns[i],
					     rc == GLOB_NOMATCH ? "no such file" : "cannot be read");
			if (rc != GLOB_NOMATCH)
				globfree(&g);
			for (size_t k = 0; k < nf; k++)
				free(files[k]);
			free(files);
			return -1;
		}
		files = xrealloc(files, (nf + g.gl_pathc + 1) * sizeof(*files));
		for (size_t k = 0; k < g.gl_pathc; k++)
			files[nf++] = xstrdup(g.gl_pathv[k]);
		globfree(&g);
	}
	if (files == NULL)
		files = xcalloc(1, sizeof(*files));
	files[nf] = NULL;
	*files_r = files;
	*n_files_r = nf;
	return 0;
}

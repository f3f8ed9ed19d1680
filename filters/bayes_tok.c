/*
 * bayes_tok.c — the learning classifier's tokeniser: a message's text
 * views (lib/msgtext.c, built once from the shared GMime tree) become a
 * set of unique tokens. Pure: no I/O, no state; bounded by the limits in
 * bayes.h.
 *
 * What becomes a token (prefixes keep the sources apart):
 *   body words      the rendered body (SpamAssassin's "body": decoded
 *                   subject, text/plain, HTML reduced to text): runs of
 *                   letters, digits and ' - $ % ! . (inner . and - kept,
 *                   trailing punctuation dropped), case-folded with
 *                   g_utf8_casefold() and NFKC-normalised; 3..15
 *                   characters (2 when a word has non-ASCII letters),
 *                   longer ones "sk:" + their first 7 characters
 *   pairs           (opts->pairs) "a b" for two consecutive body words
 *   S:word          the decoded Subject's words again
 *   H:from:@domain  From, Reply-To, Sender, Return-Path, To, Cc domains,
 *   H:from:a@b      and the (lower-cased) addresses themselves
 *   H:fromname:w    words of the From display name
 *   H:ct:type       the top-level Content-Type; P:ct:type every leaf part,
 *                   P:ext:ext attachment file-name extensions
 *   H:xm:w          X-Mailer / User-Agent words (and H:xm:first-word)
 *   H:mid:@domain   the Message-ID's domain
 *   H:rcvd:name     host names and H:rcvdip:a.b.c networks of the newest
 *                   BAYES_RECEIVED_MAX Received fields
 *   U:host, UD:dom  every URI's host and registered domain
 *   (body words)    the words of every URI's path and query
 * Our own X-Spam-* headers are never read, so a message learnt from a
 * mailbox (where it arrived with them) tokenises as it did at DATA.
 */
#include "config.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>
#include <openssl/evp.h>

#include "filters/bayes.h"
#include "lib/lib.h"

/* The set being built: the tokens' strings live in blocks of one
 * allocation each (out->mem), uniqueness is by hash in an open-addressing
 * table (the store keys tokens by that hash anyway). */
#define TOKSET_SLOTS 8192 /* a power of two, > BAYES_TOKENS_MAX / 0.7 */
#define TOKBLOCK 16384

struct tokblock {
	struct tokblock *next;
	size_t used;
	char s[];
};

struct tokset {
	struct bayes_tokens *out;
	uint64_t *slot; /* TOKSET_SLOTS hashes, 0: empty */
	bool have_zero; /* a token hashing to 0 was added */
	size_t cap;
	size_t room;    /* free octets in the newest block */
};

uint64_t bayes_hash(const char *tok)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (const unsigned char *p = (const unsigned char *)tok; *p != '\0'; p++) {
		h ^= *p;
		h *= 0x100000001b3ULL;
	}
	/* murmur3's finaliser: FNV's low bits are weak */
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	return h;
}

/* True when h was not in the set (it is now). */
static bool set_insert(struct tokset *ts, uint64_t h)
{
	size_t i;

	if (h == 0) {
		bool was = ts->have_zero;
		ts->have_zero = true;
		return !was;
	}
	for (i = (size_t)h & (TOKSET_SLOTS - 1); ts->slot[i] != 0; i = (i + 1) & (TOKSET_SLOTS - 1)) {
		if (ts->slot[i] == h)
			return false;
	}
	ts->slot[i] = h;
	return true;
}

static char *tok_copy(struct tokset *ts, const char *tok, size_t len)
{
	struct tokblock *b = ts->out->mem;
	char *p;

	if (len + 1 > ts->room) {
		size_t sz = len + 1 > TOKBLOCK ? len + 1 : TOKBLOCK;
		b = xmalloc(sizeof(*b) + sz);
		b->next = ts->out->mem;
		b->used = 0;
		ts->out->mem = b;
		ts->room = sz;
	}
	p = b->s + b->used;
	memcpy(p, tok, len + 1);
	b->used += len + 1;
	ts->room -= len + 1;
	return p;
}

/* Add tok (copied), unless seen or the set is full. */
static void tok_add(struct tokset *ts, const char *tok)
{
	struct bayes_tokens *o = ts->out;
	uint64_t h;

	if (tok[0] == '\0')
		return;
	if (o->n >= BAYES_TOKENS_MAX) {
		o->truncated = true;
		return;
	}
	h = bayes_hash(tok);
	if (!set_insert(ts, h))
		return;
	if (o->n == ts->cap) {
		ts->cap = ts->cap == 0 ? 256 : ts->cap * 2;
		o->tok = xrealloc(o->tok, ts->cap * sizeof(*o->tok));
		o->hash = xrealloc(o->hash, ts->cap * sizeof(*o->hash));
	}
	o->tok[o->n] = tok_copy(ts, tok, strlen(tok));
	o->hash[o->n] = h;
	o->n++;
}

static void tok_add2(struct tokset *ts, const char *prefix, const char *val)
{
	char buf[BAYES_HDRTOK_MAX + 1];
	size_t pl = strlen(prefix), vl = strlen(val);

	if (vl == 0)
		return;
	if (pl + vl > BAYES_HDRTOK_MAX) {
		/* cut at a character boundary */
		vl = BAYES_HDRTOK_MAX - pl;
		while (vl > 0 && ((unsigned char)val[vl] & 0xC0) == 0x80)
			vl--;
	}
	memcpy(buf, prefix, pl);
	memcpy(buf + pl, val, vl);
	buf[pl + vl] = '\0';
	tok_add(ts, buf);
}

static bool word_char(gunichar c)
{
	if (c < 0x80)
		return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		       c == '\'' || c == '-' || c == '$' || c == '%' || c == '!' || c == '.';
	return g_unichar_isalnum(c) || c == '\'' || c == '-' || c == '$' || c == '%' ||
	       c == '!' || c == '.' || g_unichar_ismark(c);
}

/* Trailing/leading punctuation that does not belong to a word. */
static bool edge_punct(gunichar c)
{
	return c == '\'' || c == '-' || c == '.' || c == '!';
}

/*
 * The normalised form of one word (s, len octets of valid UTF-8) in buf, or
 * false when it is too short. Case-folded and NFKC-composed, so "Ｆｒｅｅ",
 * "FREE" and "free" are one token.
 */
static bool word_norm(const char *s, size_t len, char *buf, size_t bufsz)
{
	const char *b = s, *e = s + len, *p;
	char *fold, *norm;
	long nchars;
	bool non_ascii = false;

	while (b < e && edge_punct(g_utf8_get_char(b)))
		b = g_utf8_next_char(b);
	while (e > b) {
		const char *q = g_utf8_find_prev_char(b, e);
		if (q == NULL || !edge_punct(g_utf8_get_char(q)))
			break;
		e = q;
	}
	if (e <= b)
		return false;
	for (p = b; p < e && (unsigned char)*p < 0x80; p++)
		;
	if (p == e) {
		/* ASCII (most words): folding and NFKC are lower-casing */
		size_t n = (size_t)(e - b);
		if (n < BAYES_WORD_MIN)
			return false;
		if (n > BAYES_WORD_MAX) {
			memcpy(buf, "sk:", 3);
			for (size_t i = 0; i < 7; i++)
				buf[3 + i] = (char)tolower((unsigned char)b[i]);
			buf[10] = '\0';
		} else {
			for (size_t i = 0; i < n; i++)
				buf[i] = (char)tolower((unsigned char)b[i]);
			buf[n] = '\0';
		}
		return true;
	}
	fold = g_utf8_casefold(b, e - b);
	norm = g_utf8_normalize(fold, -1, G_NORMALIZE_NFKC);
	g_free(fold);
	if (norm == NULL)
		return false;
	for (p = norm; *p != '\0'; p++) {
		if ((unsigned char)*p >= 0x80)
			non_ascii = true;
	}
	nchars = g_utf8_strlen(norm, -1);
	if (nchars < (non_ascii ? 2 : BAYES_WORD_MIN)) {
		g_free(norm);
		return false;
	}
	if (nchars > BAYES_WORD_MAX) {
		const char *cut = g_utf8_offset_to_pointer(norm, 7);
		size_t n = (size_t)(cut - norm);
		if (n + 4 > bufsz)
			n = 0;
		memcpy(buf, "sk:", 3);
		memcpy(buf + 3, norm, n);
		buf[3 + n] = '\0';
	} else {
		str_copy(buf, norm, bufsz);
	}
	g_free(norm);
	return true;
}

/* Words of a UTF-8 text; with prefix, each as prefix+word; with pairs
 * (prefix NULL only), consecutive words too (prev keeps the last word
 * across calls). */
#define WORD_BUF (BAYES_WORD_MAX * 4 * 3 + 8) /* NFKC may grow a character */
static void tok_text(struct tokset *ts, const char *text, const char *prefix, bool pairs,
		     char *prev)
{
	const char *p = text, *start = NULL;
	char w[WORD_BUF];

	if (!g_utf8_validate(text, -1, NULL))
		return; /* msgtext's views are UTF-8; a raw value might not be */
	for (;;) {
		gunichar c = (unsigned char)*p < 0x80 ? (unsigned char)*p : g_utf8_get_char(p);
		bool wc = c != 0 && word_char(c);
		if (wc && start == NULL)
			start = p;
		if (!wc && start != NULL) {
			if (word_norm(start, (size_t)(p - start), w, sizeof(w))) {
				if (prefix != NULL) {
					tok_add2(ts, prefix, w);
				} else {
					tok_add(ts, w);
					if (pairs && prev[0] != '\0') {
						char pair[2 * WORD_BUF + 2];
						snprintf(pair, sizeof(pair), "%s %s", prev, w);
						tok_add(ts, pair);
					}
					if (pairs)
						str_copy(prev, w, WORD_BUF);
				}
			}
			start = NULL;
		}
		if (c == 0)
			break;
		p = c < 0x80 ? p + 1 : g_utf8_next_char(p);
	}
}

static void tok_addr_domain(struct tokset *ts, const char *prefix, const char *value)
{
	char addr[20][512], dom[DNSNAME_BUF];
	size_t n = msgtext_addrs(value, addr[0], sizeof(addr[0]), N_ELEMENTS(addr));

	char name[32]; /* "H:from:@" -> "H:from:" for the whole address */
	str_copy(name, prefix, sizeof(name));
	name[strcspn(name, "@")] = '\0';
	for (size_t i = 0; i < n; i++) {
		if (dnslist_addr_domain(addr[i], dom) == 0)
			tok_add2(ts, prefix, dom);
		else
			tok_add2(ts, prefix, "(none)");
		/* and the address itself, as SpamAssassin's U* and D* tokens
		 * together say it */
		str_lower(addr[i]);
		tok_add2(ts, name, addr[i]);
	}
}

/* Host names (with a dot) and IPv4 networks in a Received field. */
static void tok_received(struct tokset *ts, const char *value)
{
	const char *p = value;

	while (*p != '\0') {
		const char *s = p;
		while (*p != '\0' && (isalnum((unsigned char)*p) || *p == '.' || *p == '-'))
			p++;
		size_t n = (size_t)(p - s);
		if (n > 0 && n < DNSNAME_BUF && memchr(s, '.', n) != NULL) {
			char w[DNSNAME_BUF];
			unsigned a, b, c, d;
			char tail;
			memcpy(w, s, n);
			w[n] = '\0';
			if (sscanf(w, "%u.%u.%u.%u%c", &a, &b, &c, &d, &tail) == 4 &&
			    a < 256 && b < 256 && c < 256 && d < 256) {
				char net[32];
				snprintf(net, sizeof(net), "%u.%u.%u", a, b, c);
				tok_add2(ts, "H:rcvdip:", net);
			} else if (isalpha((unsigned char)w[n - 1])) {
				str_lower(w);
				tok_add2(ts, "H:rcvd:", w);
			}
		}
		if (*p != '\0')
			p++;
	}
}

/* The words of a URI after its host (path, query, fragment; for one
 * without "://", e.g. mailto:, all of it) as body words, as SpamAssassin
 * tokenises its URI list: / ? = & _ + # : separate them. */
static void tok_uri_words(struct tokset *ts, const char *uri)
{
	const char *u = uri, *sch = strstr(uri, "://");
	char *w;

	if (sch != NULL) {
		u = sch + 3;
		u += strcspn(u, "/");
	}
	if (*u == '\0')
		return;
	w = xstrdup(u);
	for (char *q = w; *q != '\0'; q++) {
		if (strchr("/?=&_+#:", *q) != NULL)
			*q = ' ';
	}
	tok_text(ts, w, NULL, false, NULL);
	free(w);
}

void bayes_tokenize(const struct msgtext *t, const struct bayes_tok_opts *opts,
		    struct bayes_tokens *out)
{
	struct tokset ts = { .out = out };
	char prev[WORD_BUF] = "";
	bool pairs = opts != NULL && opts->pairs;
	const char *v;

	memset(out, 0, sizeof(*out));
	if (t == NULL)
		return;
	ts.slot = xcalloc(TOKSET_SLOTS, sizeof(*ts.slot));

	for (size_t i = 0; i < t->n_body; i++)
		tok_text(&ts, t->body[i], NULL, pairs, prev);
	if ((v = msgtext_header(t, "Subject", 0, false)) != NULL)
		tok_text(&ts, v, "S:", false, NULL);

	static const char *const addr_hdrs[][2] = {
		{ "From", "H:from:@" }, { "Reply-To", "H:replyto:@" }, { "Sender", "H:sender:@" },
		{ "Return-Path", "H:rpath:@" }, { "To", "H:to:@" }, { "Cc", "H:cc:@" },
	};
	for (size_t i = 0; i < N_ELEMENTS(addr_hdrs); i++) {
		const char *raw = msgtext_header(t, addr_hdrs[i][0], 0, true);
		if (raw != NULL)
			tok_addr_domain(&ts, addr_hdrs[i][1], raw);
	}
	if ((v = msgtext_header(t, "From", 0, true)) != NULL) {
		char name[512];
		msgtext_name(v, name, sizeof(name));
		tok_text(&ts, name, "H:fromname:", false, NULL);
	}
	if ((v = msgtext_header(t, "Content-Type", 0, false)) != NULL) {
		char ct[BAYES_HDRTOK_MAX];
		size_t n = strcspn(v, "; \t");
		if (n >= sizeof(ct))
			n = sizeof(ct) - 1;
		memcpy(ct, v, n);
		ct[n] = '\0';
		str_lower(ct);
		tok_add2(&ts, "H:ct:", ct);
	} else {
		tok_add(&ts, "H:ct:(none)");
	}
	for (size_t i = 0; i < t->n_parts; i++) {
		const char *fn = t->parts[i].filename, *dot;
		tok_add2(&ts, "P:ct:", t->parts[i].type);
		if (fn != NULL && (dot = strrchr(fn, '.')) != NULL && dot[1] != '\0') {
			char ext[BAYES_HDRTOK_MAX];
			str_copy(ext, dot + 1, sizeof(ext));
			str_lower(ext);
			tok_add2(&ts, "P:ext:", ext);
		}
	}
	static const char *const mailer_hdrs[] = { "X-Mailer", "User-Agent" };
	for (size_t i = 0; i < N_ELEMENTS(mailer_hdrs); i++) {
		if ((v = msgtext_header(t, mailer_hdrs[i], 0, false)) != NULL) {
			char first[BAYES_HDRTOK_MAX];
			size_t n = strcspn(v, " \t/(");
			if (n >= sizeof(first))
				n = sizeof(first) - 1;
			memcpy(first, v, n);
			first[n] = '\0';
			str_lower(first);
			tok_add2(&ts, "H:xm1:", first);
			tok_text(&ts, v, "H:xm:", false, NULL);
		}
	}
	if ((v = msgtext_header(t, "Message-ID", 0, false)) != NULL) {
		const char *at = strrchr(v, '@');
		if (at != NULL) {
			char dom[BAYES_HDRTOK_MAX];
			size_t n = strcspn(at + 1, ">");
			if (n >= sizeof(dom))
				n = sizeof(dom) - 1;
			memcpy(dom, at + 1, n);
			dom[n] = '\0';
			str_lower(dom);
			tok_add2(&ts, "H:mid:@", dom);
		}
	} else {
		tok_add(&ts, "H:mid:(none)");
	}
	for (size_t i = 0; i < BAYES_RECEIVED_MAX; i++) {
		if ((v = msgtext_header(t, "Received", i, false)) == NULL)
			break;
		tok_received(&ts, v);
	}
	for (size_t i = 0; i < t->n_uris; i++) {
		char host[DNSNAME_BUF], dom[DNSNAME_BUF];
		if (dnslist_uri_host(t->uris[i], host) < 0)
			continue;
		tok_add2(&ts, "U:", host);
		if (dnslist_registered_domain(host, dom) == 0)
			tok_add2(&ts, "UD:", dom);
		tok_uri_words(&ts, t->uris[i]);
	}
	free(ts.slot);
}

void bayes_tokens_free(struct bayes_tokens *toks)
{
	for (struct tokblock *b = toks->mem, *next; b != NULL; b = next) {
		next = b->next;
		free(b);
	}
	free(toks->tok);
	free(toks->hash);
	memset(toks, 0, sizeof(*toks));
}

void bayes_digest(const struct msgtext *t, unsigned char out[32])
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	const char *mid = t != NULL ? msgtext_header(t, "Message-ID", 0, false) : NULL;
	unsigned len = 32;

	if (ctx == NULL)
		abort(); /* out of memory, as x*alloc */
	EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	if (mid != NULL)
		EVP_DigestUpdate(ctx, mid, strlen(mid));
	EVP_DigestUpdate(ctx, "\n", 1);
	for (size_t i = 0; t != NULL && i < t->n_body; i++)
		EVP_DigestUpdate(ctx, t->body[i], strlen(t->body[i]));
	EVP_DigestFinal_ex(ctx, out, &len);
	EVP_MD_CTX_free(ctx);
}

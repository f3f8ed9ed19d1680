/*
 * auth_stage.c — the "auth" stage: who a message claims to come from, checked
 * at the end of DATA with the field's own libraries — SPF (RFC 7208,
 * libspf2), DKIM (RFC 6376, OpenDKIM's libopendkim) and DMARC (RFC 7489,
 * OpenDMARC's libopendmarc, with the public suffix list) — and written down
 * in an Authentication-Results header (RFC 8601).
 *
 *   auth {
 *       resolvers = {"127.0.0.1:53"}   # IPv4 ADDRESS[:PORT]; default /etc/resolv.conf
 *       dns_timeout = 2000             # ms, one query (whole seconds for libresolv)
 *       deadline = 10000               # ms, every lookup of one message
 *       spf = true  dkim = true  dmarc = true
 *       scores = {"SPF_FAIL=2.5"}      # RESULT=SCORE, over the defaults
 *       actions = {"DMARC_REJECT=reject", "DMARC_QUARANTINE=quarantine"}
 *       reject_text = "..."            # %d: the From domain
 *   }
 *
 * What runs where. Everything happens at the end of DATA, in one job on
 * the worker pool's scan lane (stage_submit_job): the libraries ask DNS
 * synchronously, so they run where blocking is allowed, and never on a
 * loop. Every query they make goes through auth_dns.c (libresolv with the
 * configured nameservers, a per-query time limit, a deadline for the whole
 * message, and a TTL cache shared by all threads): libspf2 through a DNS
 * layer of ours (SPF_dns_server_t), libopendkim through its query hooks
 * (dkim_dns_set_query_start/waitreply), and the DMARC record is fetched by
 * us and handed to libopendmarc (opendmarc_policy_store_dmarc), whose own
 * resolver is never used.
 *
 * SPF is checked for the envelope sender (for <>: postmaster@ the HELO
 * name, RFC 7208 section 2.4) and the client's address, with the RFC's
 * limit of 10 DNS-querying mechanisms (libspf2's max_dns_mech/mx/ptr).
 * DKIM: every signature is verified; rsa-sha1 ones that verify are
 * reported as "policy" (weak, RFC 8301: not valid) and do not count for
 * DMARC; a signature whose l= leaves part of the body unsigned passes as
 * OpenDKIM says, with the DKIM_PARTIAL hit. DMARC: the From field must
 * hold exactly one domain (no From or no address: dmarc=none; several
 * From fields or several domains: dmarc=permerror, RFC 7489 6.6.1 leaves
 * the choice — we do not guess whose policy applies); the record of the
 * From domain, else of its organisational domain (public suffix list);
 * alignment relaxed or strict as the record says; p= or sp=; pct= samples
 * (a message outside the sample is treated one step lighter, 6.6.4).
 *
 * What results do. Every result is a hit of the stage (SPF_PASS,
 * DKIM_FAIL, DMARC_REJECT, ...; the log line's hits=, X-Spam-Status
 * tests=) with a score (the defaults in auth_results[], changed with
 * scores = {...}) and an action (score, reject, quarantine, tempfail;
 * actions = {...}): by default a failing DMARC with an effective p=reject
 * is refused (550 5.7.1 naming DMARC) and p=quarantine is quarantined;
 * SPF and DKIM only score. A temporary error (DNS timeout, SERVFAIL) of
 * any of the three makes the check fail: on_error decides (accept: go on
 * with the results there are; tempfail: 451).
 *
 * Authentication-Results: the authserv-id is the daemon's hostname
 * setting, which the session passes in filter_msg.hostname (the backends
 * get the same name and drop a sender's Authentication-Results claiming
 * it, with the X-Spam-* fields: lib/headers.c). Outside the daemon (tests)
 * the system's host name is used.
 */
#include "config.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <confuse.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>
#include <unistd.h>

#include <dkim.h>
#include <opendmarc/dmarc.h>
#include <spf2/spf.h>
#include <spf2/spf_dns.h>

#include "filters/auth.h"
#include "filters/filters.h"
#include "lib/lib.h"

/* in libopendmarc, not in its header: the organisational domain of
 * domain from the public suffix list read by opendmarc_tld_read_file */
int opendmarc_get_tld(u_char *domain, u_char *tld, size_t tld_len);

/* --------------------------------------------------------- the results */

enum auth_act { ACT_SCORE, ACT_REJECT, ACT_QUARANTINE, ACT_TEMPFAIL };
static const char *const auth_act_names[] = { "score", "reject", "quarantine", "tempfail", NULL };

enum auth_res {
	R_SPF_PASS, R_SPF_FAIL, R_SPF_SOFTFAIL, R_SPF_NEUTRAL, R_SPF_NONE, R_SPF_TEMPERROR,
	R_SPF_PERMERROR,
	R_DKIM_PASS, R_DKIM_FAIL, R_DKIM_WEAK, R_DKIM_PARTIAL, R_DKIM_NONE, R_DKIM_NEUTRAL,
	R_DKIM_TEMPERROR, R_DKIM_PERMERROR,
	R_DMARC_PASS, R_DMARC_FAIL, R_DMARC_REJECT, R_DMARC_QUARANTINE, R_DMARC_NONE,
	R_DMARC_TEMPERROR, R_DMARC_PERMERROR,
	R_COUNT
};

static const struct {
	const char *name;
	double score;
	enum auth_act act;
} auth_results[R_COUNT] = {
	[R_SPF_PASS] = { "SPF_PASS", -0.1, ACT_SCORE },
	[R_SPF_FAIL] = { "SPF_FAIL", 2.0, ACT_SCORE },
	[R_SPF_SOFTFAIL] = { "SPF_SOFTFAIL", 1.0, ACT_SCORE },
	[R_SPF_NEUTRAL] = { "SPF_NEUTRAL", 0.5, ACT_SCORE },
	[R_SPF_NONE] = { "SPF_NONE", 0.0, ACT_SCORE },
	[R_SPF_TEMPERROR] = { "SPF_TEMPERROR", 0.0, ACT_SCORE },
	[R_SPF_PERMERROR] = { "SPF_PERMERROR", 0.5, ACT_SCORE },
	[R_DKIM_PASS] = { "DKIM_PASS", -0.1, ACT_SCORE },
	[R_DKIM_FAIL] = { "DKIM_FAIL", 1.0, ACT_SCORE },
	[R_DKIM_WEAK] = { "DKIM_WEAK", 0.5, ACT_SCORE },
	[R_DKIM_PARTIAL] = { "DKIM_PARTIAL", 0.5, ACT_SCORE },
	[R_DKIM_NONE] = { "DKIM_NONE", 0.0, ACT_SCORE },
	[R_DKIM_NEUTRAL] = { "DKIM_NEUTRAL", 0.5, ACT_SCORE },
	[R_DKIM_TEMPERROR] = { "DKIM_TEMPERROR", 0.0, ACT_SCORE },
	[R_DKIM_PERMERROR] = { "DKIM_PERMERROR", 0.5, ACT_SCORE },
	[R_DMARC_PASS] = { "DMARC_PASS", -0.1, ACT_SCORE },
	[R_DMARC_FAIL] = { "DMARC_FAIL", 1.0, ACT_SCORE },
	[R_DMARC_REJECT] = { "DMARC_REJECT", 4.0, ACT_REJECT },
	[R_DMARC_QUARANTINE] = { "DMARC_QUARANTINE", 3.0, ACT_QUARANTINE },
	[R_DMARC_NONE] = { "DMARC_NONE", 0.0, ACT_SCORE },
	[R_DMARC_TEMPERROR] = { "DMARC_TEMPERROR", 0.0, ACT_SCORE },
	[R_DMARC_PERMERROR] = { "DMARC_PERMERROR", 0.5, ACT_SCORE },
};

#define AUTH_SIGS_MAX 8
#define AUTH_NAME 256

struct auth_stage {
	struct stage hdr; /* must be first */
	struct auth_dns *dns;
	bool spf, dkim, dmarc, header;
	double score[R_COUNT];
	enum auth_act act[R_COUNT];
	char *reject_text;
	DKIM_LIB *dkim_lib;
};

/* One signature's outcome. */
struct auth_sig {
	char domain[AUTH_NAME], selector[AUTH_NAME];
	const char *alg;      /* "rsa-sha256", ... */
	const char *result;   /* RFC 8601: pass fail policy neutral temperror permerror */
	char reason[96];
	bool partial;         /* l= left part of the body unsigned */
};

/* What the job finds; read by done() on the loop. */
struct auth_job {
	const struct auth_stage *st;
	struct msgbody *body;
	char client_addr[64], helo[AUTH_NAME], mail_from[512], authserv_id[AUTH_NAME];
	/* results */
	bool spf_done;
	const char *spf_result;  /* pass fail softfail neutral none temperror permerror */
	char spf_identity[560];  /* smtp.mailfrom=... or smtp.helo=... */
	bool spf_helo;
	char spf_domain[AUTH_NAME];
	bool dkim_done;
	struct auth_sig sigs[AUTH_SIGS_MAX];
	size_t n_sigs;
	bool dkim_temperror;
	char dkim_error[96];
	bool dmarc_done;
	const char *dmarc_result; /* pass fail none temperror permerror */
	char dmarc_domain[AUTH_NAME];
	char dmarc_reason[128];
	enum auth_res dmarc_hit;  /* R_DMARC_* */
	char policy[16];          /* what the record says: none quarantine reject */
	unsigned queries, cached;
};

static cfg_opt_t auth_opts[] = {
	CFG_STR_LIST("resolvers", "{}", CFGF_NONE),
	CFG_INT("dns_timeout", 2000, CFGF_NONE),
	CFG_INT("deadline", 10000, CFGF_NONE),
	CFG_INT("cache_size", 4096, CFGF_NONE),
	CFG_INT("min_ttl", 10, CFGF_NONE),
	CFG_INT("max_ttl", 86400, CFGF_NONE),
	CFG_INT("negative_ttl", 300, CFGF_NONE),
	CFG_BOOL("spf", cfg_true, CFGF_NONE),
	CFG_BOOL("dkim", cfg_true, CFGF_NONE),
	CFG_BOOL("dmarc", cfg_true, CFGF_NONE),
	CFG_BOOL("header", cfg_true, CFGF_NONE),
	CFG_STR("public_suffix_list", "/usr/share/publicsuffix/public_suffix_list.dat",
		CFGF_NONE),
	CFG_STR_LIST("scores", "{}", CFGF_NONE),
	CFG_STR_LIST("actions", "{}", CFGF_NONE),
	CFG_STR("reject_text", "DMARC policy of %d says reject: the sender is not authenticated",
		CFGF_NONE),
	CFG_END()
};

/* ------------------------------------------------------------------ SPF */

/* libspf2's DNS layer: every query through auth_dns_query(). */
static SPF_dns_rr_t *
auth_spf_lookup(SPF_dns_server_t *server, const char *domain, ns_type type, int should_cache)
{
	struct auth_dns_ctx *ctx = server->hook;
	unsigned char buf[AUTH_DNS_BUF];
	int herr, len, cnt = 0;
	ns_msg msg;
	ns_rr rr;
	SPF_dns_rr_t *out;

	(void)should_cache;
	len = auth_dns_query(ctx, domain, type, buf, sizeof(buf), &herr);
	if (len < 0)
		return SPF_dns_rr_new_init(server, domain, type, 0,
					   herr == NO_RECOVERY ? NO_RECOVERY : herr);
	if (ns_initparse(buf, len, &msg) < 0)
		return SPF_dns_rr_new_init(server, domain, type, 0, NO_RECOVERY);
	out = SPF_dns_rr_new_init(server, domain, type, 0, NETDB_SUCCESS);
	if (out == NULL)
		return NULL;
	for (int i = 0; i < ns_msg_count(msg, ns_s_an); i++) {
		const unsigned char *rd;
		char name[NS_MAXDNAME];

		if (ns_parserr(&msg, ns_s_an, i, &rr) < 0)
			break;
		if (ns_rr_type(rr) != type)
			continue; /* a CNAME on the way */
		rd = ns_rr_rdata(rr);
		if (cnt == 0 || (time_t)ns_rr_ttl(rr) < out->ttl)
			out->ttl = ns_rr_ttl(rr);
		switch (type) {
		case ns_t_a:
			if (ns_rr_rdlen(rr) != 4 || SPF_dns_rr_buf_realloc(out, cnt, 4) != SPF_E_SUCCESS)
				continue;
			memcpy(&out->rr[cnt]->a, rd, 4);
			break;
		case ns_t_aaaa:
			if (ns_rr_rdlen(rr) != 16 ||
			    SPF_dns_rr_buf_realloc(out, cnt, 16) != SPF_E_SUCCESS)
				continue;
			memcpy(&out->rr[cnt]->aaaa, rd, 16);
			break;
		case ns_t_mx:
		case ns_t_ptr: {
			const unsigned char *np = type == ns_t_mx ? rd + 2 : rd;
			if ((type == ns_t_mx && ns_rr_rdlen(rr) < 3) ||
			    ns_name_uncompress(ns_msg_base(msg), ns_msg_end(msg), np, name,
					       sizeof(name)) < 0)
				continue;
			if (SPF_dns_rr_buf_realloc(out, cnt, strlen(name) + 1) != SPF_E_SUCCESS)
				continue;
			strcpy(type == ns_t_mx ? out->rr[cnt]->mx : out->rr[cnt]->ptr, name);
			break;
		}
		case ns_t_txt:
		case ns_t_spf: {
			/* the character-strings of one record, joined (RFC 7208 3.3) */
			size_t rdlen = ns_rr_rdlen(rr), tl = 0;
			if (SPF_dns_rr_buf_realloc(out, cnt, rdlen + 1) != SPF_E_SUCCESS)
				continue;
			char *t = out->rr[cnt]->txt;
			for (size_t k = 0; k < rdlen;) {
				size_t sl = rd[k++];
				if (sl > rdlen - k)
					sl = rdlen - k;
				memcpy(t + tl, rd + k, sl);
				tl += sl;
				k += sl;
			}
			t[tl] = '\0';
			break;
		}
		default:
			continue;
		}
		cnt++;
	}
	out->num_rr = cnt;
	if (cnt == 0)
		out->herrno = NO_DATA;
	return out;
}

static void
auth_spf_destroy(SPF_dns_server_t *server)
{
	free(server);
}

static void
auth_run_spf(struct auth_job *j, struct auth_dns_ctx *ctx)
{
	SPF_dns_server_t *dns = xcalloc(1, sizeof(*dns));
	SPF_server_t *srv;
	SPF_request_t *req;
	SPF_response_t *resp = NULL;
	const char *at;
	char sender[600];
	int r;

	dns->destroy = auth_spf_destroy;
	dns->lookup = auth_spf_lookup;
	dns->name = "mxguard";
	dns->hook = ctx;
	srv = SPF_server_new_dns(dns, 0);
	if (srv == NULL) {
		free(dns);
		j->spf_result = "temperror";
		return;
	}
	SPF_server_set_rec_dom(srv, j->authserv_id);
	SPF_server_set_max_dns_mech(srv, 10);
	SPF_server_set_max_dns_ptr(srv, 10);
	SPF_server_set_max_dns_mx(srv, 10);
	req = SPF_request_new(srv);
	if (strchr(j->client_addr, ':') != NULL)
		r = SPF_request_set_ipv6_str(req, j->client_addr);
	else
		r = SPF_request_set_ipv4_str(req, j->client_addr);
	if (j->mail_from[0] == '\0') {
		snprintf(sender, sizeof(sender), "postmaster@%s", j->helo);
		j->spf_helo = true;
		snprintf(j->spf_identity, sizeof(j->spf_identity), "smtp.helo=%s", j->helo);
		str_copy(j->spf_domain, j->helo, sizeof(j->spf_domain));
	} else {
		str_copy(sender, j->mail_from, sizeof(sender));
		snprintf(j->spf_identity, sizeof(j->spf_identity), "smtp.mailfrom=%s", j->mail_from);
		at = strrchr(j->mail_from, '@');
		str_copy(j->spf_domain, at != NULL ? at + 1 : j->mail_from, sizeof(j->spf_domain));
	}
	if (r != SPF_E_SUCCESS || SPF_request_set_helo_dom(req, j->helo) != SPF_E_SUCCESS ||
	    SPF_request_set_env_from(req, sender) != SPF_E_SUCCESS) {
		j->spf_result = "permerror";
		goto out;
	}
	unsigned failed = ctx->failed;
	SPF_request_query_mailfrom(req, &resp);
	SPF_result_t res = resp != NULL ? SPF_response_result(resp) : SPF_RESULT_TEMPERROR;
	/* libspf2 1.2.10 answers a record lookup that timed out (TRY_AGAIN)
	 * with SPF_RESULT_INVALID, "never returned": that is a temperror */
	if (res == SPF_RESULT_INVALID && ctx->failed > failed)
		res = SPF_RESULT_TEMPERROR;
	switch (res) {
	case SPF_RESULT_PASS: j->spf_result = "pass"; break;
	case SPF_RESULT_FAIL: j->spf_result = "fail"; break;
	case SPF_RESULT_SOFTFAIL: j->spf_result = "softfail"; break;
	case SPF_RESULT_NEUTRAL: j->spf_result = "neutral"; break;
	case SPF_RESULT_NONE: j->spf_result = "none"; break;
	case SPF_RESULT_TEMPERROR: j->spf_result = "temperror"; break;
	default: j->spf_result = "permerror"; break;
	}
out:
	if (resp != NULL)
		SPF_response_free(resp);
	SPF_request_free(req);
	/* a server made with SPF_server_new_dns() leaves its DNS layer to us */
	SPF_server_free(srv);
	free(dns);
	j->spf_done = true;
}

/* ----------------------------------------------------------------- DKIM */

struct auth_dkim_q {
	int len;
	int herr;
};

/* A negative answer as a DNS message (the cache keeps no bytes of it):
 * header and question, rcode NXDOMAIN or NOERROR with no answer. */
static int
auth_negative_msg(const char *name, int type, int herr, unsigned char *buf, size_t buflen)
{
	int n;

	if (buflen < HFIXEDSZ + QFIXEDSZ + 2)
		return -1;
	memset(buf, 0, HFIXEDSZ);
	buf[2] = 0x81;                                    /* QR, RD */
	buf[3] = 0x80 | (herr == HOST_NOT_FOUND ? 3 : 0); /* RA, rcode */
	buf[5] = 1;                                       /* one question */
	n = dn_comp(name, buf + HFIXEDSZ, (int)(buflen - HFIXEDSZ - QFIXEDSZ), NULL, NULL);
	if (n < 0)
		return -1;
	unsigned char *q = buf + HFIXEDSZ + n;
	q[0] = (unsigned char)(type >> 8);
	q[1] = (unsigned char)type;
	q[2] = 0;
	q[3] = 1; /* IN */
	return HFIXEDSZ + n + QFIXEDSZ;
}

static int
auth_dkim_start(void *srv, int type, unsigned char *query, unsigned char *buf, size_t buflen,
		void **qh)
{
	struct auth_dkim_q *q = xcalloc(1, sizeof(*q));

	(void)srv;
	if (auth_dns_current == NULL) {
		q->len = -1;
		q->herr = TRY_AGAIN;
	} else {
		q->len = auth_dns_query(auth_dns_current, (const char *)query, type, buf, buflen,
					&q->herr);
		if (q->len < 0 && (q->herr == HOST_NOT_FOUND || q->herr == NO_DATA))
			q->len = auth_negative_msg((const char *)query, type, q->herr, buf, buflen);
	}
	*qh = q;
	return DKIM_DNS_SUCCESS;
}

static int
auth_dkim_init(void **srv)
{
	(void)srv;
	return 0;
}

static void
auth_dkim_close(void *srv)
{
	(void)srv;
}

static int
auth_dkim_cancel(void *srv, void *qh)
{
	(void)srv;
	free(qh);
	return DKIM_DNS_SUCCESS;
}

static int
auth_dkim_wait(void *srv, void *qh, struct timeval *to, size_t *bytes, int *error, int *dnssec)
{
	struct auth_dkim_q *q = qh;

	(void)srv;
	(void)to;
	if (dnssec != NULL)
		*dnssec = DKIM_DNSSEC_UNKNOWN;
	if (q->len < 0) {
		if (error != NULL)
			*error = q->herr;
		return DKIM_DNS_ERROR;
	}
	if (bytes != NULL)
		*bytes = (size_t)q->len;
	return DKIM_DNS_SUCCESS;
}

static const char *
auth_dkim_alg(DKIM_SIGINFO *sig)
{
	dkim_alg_t alg = DKIM_SIGN_UNKNOWN;

	(void)dkim_sig_getsignalg(sig, &alg);
	switch (alg) {
	case DKIM_SIGN_RSASHA1: return "rsa-sha1";
	case DKIM_SIGN_RSASHA256: return "rsa-sha256";
	case DKIM_SIGN_ED25519SHA256: return "ed25519-sha256";
	default: return "unknown";
	}
}

static void
auth_run_dkim(struct auth_job *j, const char *data, size_t len, const struct msg_format *f)
{
	DKIM_STAT status;
	DKIM *dkim = dkim_verify(j->st->dkim_lib, (const unsigned char *)"mxguard", NULL, &status);
	size_t pos = 0, span[2];
	DKIM_SIGINFO **sigs = NULL;
	int nsigs = 0;

	j->dkim_done = true;
	if (dkim == NULL) {
		j->dkim_temperror = true;
		str_copy(j->dkim_error, "cannot start the verification", sizeof(j->dkim_error));
		return;
	}
	while (msg_header_next(data, f->header_len, "", &pos, span)) {
		size_t e = span[1];
		/* the field without its final line end */
		if (e > span[0] && data[e - 1] == '\n')
			e--;
		if (e > span[0] && data[e - 1] == '\r')
			e--;
		(void)dkim_header(dkim, (u_char *)(uintptr_t)(data + span[0]), e - span[0]);
	}
	status = dkim_eoh(dkim);
	if (status == DKIM_STAT_NOSIG) {
		dkim_free(dkim);
		return; /* no signature: dkim=none */
	}
	if (len > f->header_len)
		(void)dkim_body(dkim, (u_char *)(uintptr_t)(data + f->header_len),
				len - f->header_len);
	(void)dkim_eom(dkim, NULL);
	if (dkim_getsiglist(dkim, &sigs, &nsigs) != DKIM_STAT_OK)
		nsigs = 0;
	for (int i = 0; i < nsigs && j->n_sigs < AUTH_SIGS_MAX; i++) {
		DKIM_SIGINFO *sig = sigs[i];
		struct auth_sig *s = &j->sigs[j->n_sigs];
		unsigned flags = dkim_sig_getflags(sig);
		int err = dkim_sig_geterror(sig);
		const unsigned char *d = dkim_sig_getdomain(sig), *sel = dkim_sig_getselector(sig);
		ssize_t msglen = 0, canonlen = 0, signlen = -1;

		if (flags & DKIM_SIGFLAG_IGNORE)
			continue;
		memset(s, 0, sizeof(*s));
		str_copy(s->domain, d != NULL ? (const char *)d : "", sizeof(s->domain));
		str_copy(s->selector, sel != NULL ? (const char *)sel : "", sizeof(s->selector));
		s->alg = auth_dkim_alg(sig);
		if ((flags & DKIM_SIGFLAG_PROCESSED) == 0 && err == DKIM_SIGERROR_UNKNOWN) {
			s->result = "permerror";
			str_copy(s->reason, "not processed", sizeof(s->reason));
		} else if (DKIM_SIG_CHECK(sig)) {
			s->result = strcmp(s->alg, "rsa-sha1") == 0 ? "policy" : "pass";
			if (strcmp(s->result, "policy") == 0)
				str_copy(s->reason, "weak algorithm rsa-sha1", sizeof(s->reason));
			if (dkim_sig_getcanonlen(dkim, sig, &msglen, &canonlen, &signlen) ==
			    DKIM_STAT_OK && signlen >= 0 && canonlen >= 0 && msglen > signlen)
				s->partial = true;
		} else if (err == DKIM_SIGERROR_KEYFAIL) {
			s->result = "temperror";
			str_copy(s->reason, "key query failed", sizeof(s->reason));
			j->dkim_temperror = true;
		} else if (err == DKIM_SIGERROR_BADSIG || err == DKIM_SIGERROR_OK ||
			   err == DKIM_SIGERROR_EXPIRED || err == DKIM_SIGERROR_FUTURE ||
			   err == DKIM_SIGERROR_TOOLARGE_L || err == DKIM_SIGERROR_KEYTOOSMALL) {
			s->result = "fail";
			str_copy(s->reason, err == DKIM_SIGERROR_OK ? "body hash did not verify" :
				 dkim_sig_geterrorstr(err), sizeof(s->reason));
		} else {
			s->result = "permerror";
			str_copy(s->reason, dkim_sig_geterrorstr(err) != NULL ?
				 dkim_sig_geterrorstr(err) : "error", sizeof(s->reason));
		}
		j->n_sigs++;
	}
	dkim_free(dkim);
}

/* ---------------------------------------------------------------- DMARC */

/* The DMARC record at name: 1 found (copied to rec), 0 none, -1 temporary
 * error, -2 several records (RFC 7489 6.6.3: as if none). */
static int
auth_dmarc_fetch(struct auth_dns_ctx *ctx, const char *domain, char *rec, size_t recsz)
{
	unsigned char buf[AUTH_DNS_BUF];
	char name[AUTH_NAME + 8];
	int herr, len, found = 0;
	ns_msg msg;
	ns_rr rr;

	snprintf(name, sizeof(name), "_dmarc.%s", domain);
	len = auth_dns_query(ctx, name, ns_t_txt, buf, sizeof(buf), &herr);
	if (len < 0)
		return herr == TRY_AGAIN ? -1 : 0;
	if (ns_initparse(buf, len, &msg) < 0)
		return -1;
	for (int i = 0; i < ns_msg_count(msg, ns_s_an); i++) {
		char t[2048];
		size_t tl = 0;
		if (ns_parserr(&msg, ns_s_an, i, &rr) < 0 || ns_rr_type(rr) != ns_t_txt)
			continue;
		const unsigned char *rd = ns_rr_rdata(rr);
		size_t rdlen = ns_rr_rdlen(rr);
		for (size_t k = 0; k < rdlen;) {
			size_t sl = rd[k++];
			if (sl > rdlen - k)
				sl = rdlen - k;
			if (tl + sl >= sizeof(t))
				break;
			memcpy(t + tl, rd + k, sl);
			tl += sl;
			k += sl;
		}
		t[tl] = '\0';
		/* "v=DMARC1" first, then ";" or blanks */
		const char *p = t;
		while (*p == ' ' || *p == '\t')
			p++;
		if (strncmp(p, "v", 1) != 0)
			continue;
		p++;
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p != '=')
			continue;
		p++;
		while (*p == ' ' || *p == '\t')
			p++;
		if (strncmp(p, "DMARC1", 6) != 0 || (p[6] != '\0' && p[6] != ';' && p[6] != ' ' &&
						     p[6] != '\t'))
			continue;
		if (found++ == 0)
			str_copy(rec, t, recsz);
	}
	return found > 1 ? -2 : found;
}

static pthread_once_t auth_psl_once = PTHREAD_ONCE_INIT;
static char auth_psl_path[1024];
static int auth_psl_status;

static void
auth_psl_load(void)
{
	OPENDMARC_LIB_T lib;

	memset(&lib, 0, sizeof(lib));
	lib.tld_type = OPENDMARC_TLD_TYPE_MOZILLA;
	str_copy((char *)lib.tld_source_file, auth_psl_path, sizeof(lib.tld_source_file));
	auth_psl_status = opendmarc_policy_library_init(&lib);
}

/* The From domain(s), from the first From field (lib/msgtext.c's view). */
static int
auth_from_domains(struct auth_job *j, const struct msg_format *f, char *domain, size_t dsz)
{
	const struct msgtext *t = msgbody_text(j->body);
	const char *v;
	char addr[512];
	size_t n = 0;

	if (f->n_from == 0 || t == NULL || (v = msgtext_header(t, "From", 0, true)) == NULL)
		return 0;
	if (f->n_from > 1)
		return -1;
	for (size_t i = 0; i < 16 && msgtext_addr_nth(v, i, addr, sizeof(addr)); i++) {
		const char *at = strrchr(addr, '@');
		if (at == NULL || at[1] == '\0')
			continue;
		if (n > 0 && strcasecmp(domain, at + 1) == 0)
			continue;
		if (n++ == 0)
			str_copy(domain, at + 1, dsz);
	}
	if (n > 1)
		return -1;
	for (char *p = domain; *p != '\0'; p++) {
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p - 'A' + 'a');
	}
	return (int)n;
}

/* The organisational domain (RFC 7489 3.2) from libopendmarc's copy of
 * the public suffix list; a TLD the list does not know is a public suffix
 * by the list's default rule ("*"), which libopendmarc does not apply: it
 * answers with the TLD itself, and the domain's last two labels are used. */
static void
auth_org_domain(const char *domain, char *org, size_t orgsz)
{
	const char *dot;

	if (opendmarc_get_tld((u_char *)(uintptr_t)domain, (u_char *)org, orgsz) != 0 ||
	    org[0] == '\0' || strchr(org, '.') == NULL) {
		const char *last = strrchr(domain, '.');
		str_copy(org, domain, orgsz);
		if (last == NULL)
			return;
		for (dot = last - 1; dot > domain && *dot != '.'; dot--)
			;
		str_copy(org, *dot == '.' ? dot + 1 : domain, orgsz);
	}
}

static void
auth_run_dmarc(struct auth_job *j, struct auth_dns_ctx *ctx, const struct msg_format *f)
{
	char rec[2048], org[AUTH_NAME];
	const char *rec_org = NULL;
	DMARC_POLICY_T *p;
	int r, pct = 100, pol;

	j->dmarc_done = true;
	j->dmarc_hit = R_DMARC_NONE;
	j->dmarc_result = "none";
	r = auth_from_domains(j, f, j->dmarc_domain, sizeof(j->dmarc_domain));
	if (r < 0) {
		j->dmarc_result = "permerror";
		j->dmarc_hit = R_DMARC_PERMERROR;
		str_copy(j->dmarc_reason, "several From domains", sizeof(j->dmarc_reason));
		return;
	}
	if (r == 0) {
		str_copy(j->dmarc_reason, "no From domain", sizeof(j->dmarc_reason));
		return;
	}
	r = auth_dmarc_fetch(ctx, j->dmarc_domain, rec, sizeof(rec));
	if (r == 0) {
		auth_org_domain(j->dmarc_domain, org, sizeof(org));
		if (strcasecmp(org, j->dmarc_domain) != 0) {
			r = auth_dmarc_fetch(ctx, org, rec, sizeof(rec));
			rec_org = org;
		}
	}
	if (r == -1) {
		j->dmarc_result = "temperror";
		j->dmarc_hit = R_DMARC_TEMPERROR;
		str_copy(j->dmarc_reason, "DNS lookup failed", sizeof(j->dmarc_reason));
		return;
	}
	if (r <= 0)
		return; /* no record (or several: as none) */
	p = opendmarc_policy_connect_init((u_char *)j->client_addr,
					  strchr(j->client_addr, ':') != NULL ?
					  DMARC_POLICY_IP_TYPE_IPV6 : DMARC_POLICY_IP_TYPE_IPV4);
	if (p == NULL) {
		j->dmarc_result = "temperror";
		j->dmarc_hit = R_DMARC_TEMPERROR;
		return;
	}
	if (opendmarc_policy_store_from_domain(p, (u_char *)j->dmarc_domain) != DMARC_PARSE_OKAY ||
	    opendmarc_policy_store_dmarc(p, (u_char *)rec, (u_char *)j->dmarc_domain,
					 (u_char *)rec_org) != DMARC_PARSE_OKAY) {
		j->dmarc_result = "permerror";
		j->dmarc_hit = R_DMARC_PERMERROR;
		str_copy(j->dmarc_reason, "record does not parse", sizeof(j->dmarc_reason));
		opendmarc_policy_connect_shutdown(p);
		return;
	}
	if (j->spf_done && j->spf_result != NULL) {
		int o = strcmp(j->spf_result, "pass") == 0 ? DMARC_POLICY_SPF_OUTCOME_PASS :
			strcmp(j->spf_result, "temperror") == 0 ? DMARC_POLICY_SPF_OUTCOME_TMPFAIL :
			strcmp(j->spf_result, "none") == 0 ? DMARC_POLICY_SPF_OUTCOME_NONE :
			DMARC_POLICY_SPF_OUTCOME_FAIL;
		(void)opendmarc_policy_store_spf(p, (u_char *)j->spf_domain, o,
						 j->spf_helo ? DMARC_POLICY_SPF_ORIGIN_HELO :
						 DMARC_POLICY_SPF_ORIGIN_MAILFROM, NULL);
	}
	for (size_t i = 0; i < j->n_sigs; i++) {
		const struct auth_sig *s = &j->sigs[i];
		int o = strcmp(s->result, "pass") == 0 ? DMARC_POLICY_DKIM_OUTCOME_PASS :
			strcmp(s->result, "temperror") == 0 ? DMARC_POLICY_DKIM_OUTCOME_TMPFAIL :
			DMARC_POLICY_DKIM_OUTCOME_FAIL;
		(void)opendmarc_policy_store_dkim(p, (u_char *)(uintptr_t)s->domain,
						  (u_char *)(uintptr_t)s->selector, o, NULL);
	}
	pol = opendmarc_get_policy_to_enforce(p);
	(void)opendmarc_policy_fetch_pct(p, &pct);
	int rp = 0;
	(void)opendmarc_policy_fetch_p(p, &rp);
	if (rec_org != NULL) {
		int sp = 0;
		if (opendmarc_policy_fetch_sp(p, &sp) == DMARC_PARSE_OKAY && sp != 0)
			rp = sp;
	}
	str_copy(j->policy, rp == DMARC_RECORD_P_REJECT ? "reject" :
		 rp == DMARC_RECORD_P_QUARANTINE ? "quarantine" : "none", sizeof(j->policy));
	opendmarc_policy_connect_shutdown(p);
	switch (pol) {
	case DMARC_POLICY_PASS:
		j->dmarc_result = "pass";
		j->dmarc_hit = R_DMARC_PASS;
		break;
	case DMARC_POLICY_REJECT:
	case DMARC_POLICY_QUARANTINE: {
		bool sampled = pct >= 100 || (pct > 0 && (random() % 100) < pct);
		j->dmarc_result = "fail";
		/* outside pct's sample: one step lighter (RFC 7489 6.6.4) */
		if (pol == DMARC_POLICY_REJECT)
			j->dmarc_hit = sampled ? R_DMARC_REJECT : R_DMARC_QUARANTINE;
		else
			j->dmarc_hit = sampled ? R_DMARC_QUARANTINE : R_DMARC_FAIL;
		snprintf(j->dmarc_reason, sizeof(j->dmarc_reason), "p=%s%s", j->policy,
			 sampled ? "" : " outside pct");
		break;
	}
	case DMARC_POLICY_NONE:
		j->dmarc_result = "fail";
		j->dmarc_hit = R_DMARC_FAIL;
		snprintf(j->dmarc_reason, sizeof(j->dmarc_reason), "p=none");
		break;
	default:
		break; /* absent */
	}
}

/* ------------------------------------------------------------- the job */

static void
auth_work(void *arg)
{
	struct auth_job *j = arg;
	struct auth_dns_ctx ctx;
	struct msg_format f;
	size_t len = 0;
	const char *data = msgbody_contents(j->body, &len);

	auth_dns_ctx_init(&ctx, j->st->dns);
	auth_dns_current = &ctx;
	if (j->st->spf && j->client_addr[0] != '\0' && j->helo[0] != '\0')
		auth_run_spf(j, &ctx);
	if (data != NULL) {
		msg_format_scan(data, len, &f);
		if (j->st->dkim)
			auth_run_dkim(j, data, len, &f);
		if (j->st->dmarc)
			auth_run_dmarc(j, &ctx, &f);
	}
	auth_dns_current = NULL;
	j->queries = ctx.queries;
	j->cached = ctx.cached;
	auth_dns_ctx_done(&ctx);
}

void
auth_format_text(const char *text, const char *domain, char *out, size_t outsz)
{
	size_t o = 0;

	for (const char *p = text; *p != '\0' && o + 1 < outsz; p++) {
		if (p[0] == '%' && p[1] == 'd') {
			for (const char *d = domain; *d != '\0' && o + 1 < outsz; d++)
				out[o++] = *d;
			p++;
			continue;
		}
		out[o++] = *p;
	}
	out[o] = '\0';
}

/* Authentication-Results' value (RFC 8601), one line: filter_tx folds it. */
char *
auth_format_results(const char *authserv_id, const char *spf_result, const char *spf_identity,
		    const struct auth_ar_sig *sigs, size_t n_sigs, bool dkim_checked,
		    const char *dmarc_result, const char *dmarc_domain, const char *dmarc_reason)
{
	char *out = xasprintf("%s", authserv_id);
	size_t n_methods = 0;

#define AR_APPEND(...) do { \
		char *piece_ = xasprintf(__VA_ARGS__); \
		char *next_ = xasprintf("%s;%s", out, piece_); \
		free(piece_); free(out); out = next_; n_methods++; \
	} while (0)
	if (spf_result != NULL)
		AR_APPEND(" spf=%s %s", spf_result, spf_identity != NULL ? spf_identity : "");
	for (size_t i = 0; i < n_sigs; i++) {
		const struct auth_ar_sig *s = &sigs[i];
		AR_APPEND(" dkim=%s%s%s%s header.d=%s header.s=%s header.a=%s", s->result,
			  s->reason != NULL && s->reason[0] != '\0' ? " (" : "",
			  s->reason != NULL ? s->reason : "",
			  s->reason != NULL && s->reason[0] != '\0' ? ")" : "",
			  s->domain, s->selector, s->alg);
	}
	if (dkim_checked && n_sigs == 0)
		AR_APPEND(" dkim=none");
	if (dmarc_result != NULL)
		AR_APPEND(" dmarc=%s%s%s%s%s%s", dmarc_result,
			  dmarc_reason != NULL && dmarc_reason[0] != '\0' ? " (" : "",
			  dmarc_reason != NULL ? dmarc_reason : "",
			  dmarc_reason != NULL && dmarc_reason[0] != '\0' ? ")" : "",
			  dmarc_domain != NULL && dmarc_domain[0] != '\0' ? " header.from=" : "",
			  dmarc_domain != NULL ? dmarc_domain : "");
#undef AR_APPEND
	if (n_methods == 0) {
		char *next = xasprintf("%s; none", out);
		free(out);
		out = next;
	}
	return out;
}

static enum auth_res
auth_spf_res(const char *r)
{
	static const char *const names[] = { "pass", "fail", "softfail", "neutral", "none",
					      "temperror", "permerror" };

	for (size_t i = 0; i < N_ELEMENTS(names); i++) {
		if (strcmp(r, names[i]) == 0)
			return (enum auth_res)(R_SPF_PASS + i);
	}
	return R_SPF_PERMERROR;
}

static enum auth_res
auth_dkim_res(const struct auth_sig *s)
{
	if (strcmp(s->result, "pass") == 0)
		return R_DKIM_PASS;
	if (strcmp(s->result, "policy") == 0)
		return R_DKIM_WEAK;
	if (strcmp(s->result, "fail") == 0)
		return R_DKIM_FAIL;
	if (strcmp(s->result, "temperror") == 0)
		return R_DKIM_TEMPERROR;
	if (strcmp(s->result, "neutral") == 0)
		return R_DKIM_NEUTRAL;
	return R_DKIM_PERMERROR;
}

/* One hit, with the action it carries (the first refusal wins). */
static void
auth_hit(const struct auth_stage *st, struct stage_call *call, enum auth_res r, const char *desc,
	 const char *dmarc_domain)
{
	struct filter_result *res = &call->result;

	filter_tx_add_score(call->fx, st->hdr.name, auth_results[r].name, st->score[r], desc);
	if (st->act[r] == ACT_SCORE || res->verdict != VERDICT_CONTINUE)
		return;
	switch (st->act[r]) {
	case ACT_REJECT:
		res->verdict = VERDICT_REJECT;
		res->code = 550;
		str_copy(res->enhanced, "5.7.1", sizeof(res->enhanced));
		auth_format_text(st->reject_text, dmarc_domain != NULL ? dmarc_domain : "",
				 res->text, sizeof(res->text));
		break;
	case ACT_QUARANTINE:
		res->verdict = VERDICT_QUARANTINE;
		break;
	case ACT_TEMPFAIL:
		res->verdict = VERDICT_TEMPFAIL;
		res->code = 451;
		str_copy(res->enhanced, "4.7.1", sizeof(res->enhanced));
		snprintf(res->text, sizeof(res->text), "%s: try again later",
			 auth_results[r].name);
		break;
	case ACT_SCORE:
		break;
	}
}

static void
auth_done(struct stage_call *call, void *arg)
{
	struct auth_job *j = arg;
	const struct auth_stage *st = j->st;
	bool temperror = false;
	char desc[600];

	if (call == NULL) {
		free(j);
		return;
	}
	memset(&call->result, 0, sizeof(call->result));
	call->result.verdict = VERDICT_CONTINUE;
	if (j->spf_done) {
		enum auth_res r = auth_spf_res(j->spf_result);
		snprintf(desc, sizeof(desc), "%s", j->spf_identity);
		auth_hit(st, call, r, desc, NULL);
		temperror |= r == R_SPF_TEMPERROR;
	}
	if (j->dkim_done) {
		bool seen[R_COUNT] = { false };
		if (j->n_sigs == 0 && !j->dkim_temperror)
			auth_hit(st, call, R_DKIM_NONE, NULL, NULL);
		if (j->n_sigs == 0 && j->dkim_temperror)
			auth_hit(st, call, R_DKIM_TEMPERROR, j->dkim_error, NULL);
		for (size_t i = 0; i < j->n_sigs; i++) {
			enum auth_res r = auth_dkim_res(&j->sigs[i]);
			if (!seen[r]) {
				seen[r] = true;
				snprintf(desc, sizeof(desc), "d=%s s=%s", j->sigs[i].domain,
					 j->sigs[i].selector);
				auth_hit(st, call, r, desc, NULL);
			}
			if (j->sigs[i].partial && !seen[R_DKIM_PARTIAL]) {
				seen[R_DKIM_PARTIAL] = true;
				auth_hit(st, call, R_DKIM_PARTIAL, "l= leaves part of the body unsigned",
					 NULL);
			}
			temperror |= r == R_DKIM_TEMPERROR;
		}
	}
	if (j->dmarc_done) {
		/* a failure with a policy also counts as DMARC_FAIL */
		if (j->dmarc_hit == R_DMARC_REJECT || j->dmarc_hit == R_DMARC_QUARANTINE)
			auth_hit(st, call, R_DMARC_FAIL, j->dmarc_domain, j->dmarc_domain);
		auth_hit(st, call, j->dmarc_hit, j->dmarc_domain, j->dmarc_domain);
		temperror |= j->dmarc_hit == R_DMARC_TEMPERROR;
	}
	if (st->header) {
		struct auth_ar_sig ars[AUTH_SIGS_MAX];
		for (size_t i = 0; i < j->n_sigs; i++) {
			ars[i] = (struct auth_ar_sig){ .result = j->sigs[i].result,
						       .reason = j->sigs[i].reason,
						       .domain = j->sigs[i].domain,
						       .selector = j->sigs[i].selector,
						       .alg = j->sigs[i].alg };
		}
		char *v = auth_format_results(j->authserv_id, j->spf_done ? j->spf_result : NULL,
					      j->spf_identity, ars, j->n_sigs, j->dkim_done,
					      j->dmarc_done ? j->dmarc_result : NULL,
					      j->dmarc_domain, j->dmarc_reason);
		(void)filter_tx_add_header(call->fx, "Authentication-Results", v);
		free(v);
	}
	log_msg(LOG_LEVEL_INFO, "%s auth spf=%s dkim=%zu%s dmarc=%s%s%s queries=%u cached=%u",
		call->msg->session_id != NULL ? call->msg->session_id : "-",
		j->spf_done ? j->spf_result : "-", j->n_sigs,
		j->n_sigs > 0 ? j->sigs[0].result : "", j->dmarc_done ? j->dmarc_result : "-",
		j->dmarc_domain[0] != '\0' ? " from=" : "", j->dmarc_domain, j->queries, j->cached);
	enum check_status status = CHECK_DONE;
	if (temperror && call->result.verdict == VERDICT_CONTINUE &&
	    st->hdr.on_error == ON_ERROR_TEMPFAIL) {
		call->result.code = 451;
		str_copy(call->result.enhanced, "4.7.0", sizeof(call->result.enhanced));
		str_copy(call->result.text, "Sender authentication (SPF/DKIM/DMARC) temporarily "
			 "failed, try again later", sizeof(call->result.text));
		status = CHECK_FAILED;
	}
	free(j);
	stage_call_done(call, status);
}

static enum check_status
auth_check(struct stage *stage, struct stage_call *call)
{
	const struct auth_stage *st = (const struct auth_stage *)stage;
	const struct filter_msg *m = call->msg;
	struct auth_job *j;

	memset(&call->result, 0, sizeof(call->result));
	if (call->phase != PHASE_DATA || m->body == NULL)
		return CHECK_DONE;
	j = xcalloc(1, sizeof(*j));
	j->st = st;
	j->body = m->body;
	str_copy(j->client_addr, m->client_addr != NULL ? m->client_addr : "",
		 sizeof(j->client_addr));
	str_copy(j->helo, m->helo != NULL ? m->helo : "", sizeof(j->helo));
	str_copy(j->mail_from, m->mail_from != NULL ? m->mail_from : "", sizeof(j->mail_from));
	if (m->hostname != NULL && m->hostname[0] != '\0')
		str_copy(j->authserv_id, m->hostname, sizeof(j->authserv_id));
	else if (gethostname(j->authserv_id, sizeof(j->authserv_id) - 1) < 0)
		str_copy(j->authserv_id, "localhost", sizeof(j->authserv_id));
	if (stage_submit_job(call, auth_work, auth_done, j) < 0) {
		free(j);
		str_copy(call->result.text, "Sender authentication busy, try again later",
			 sizeof(call->result.text));
		return CHECK_FAILED;
	}
	return CHECK_PENDING;
}

/* --------------------------------------------------------------- create */

static void
auth_free(struct auth_stage *st)
{
	if (st->dkim_lib != NULL)
		dkim_close(st->dkim_lib);
	auth_dns_free(&st->dns);
	free(st->reject_text);
	free(st);
}

static int
auth_result_named(const char *name, size_t n)
{
	for (int i = 0; i < R_COUNT; i++) {
		if (strlen(auth_results[i].name) == n && strncasecmp(auth_results[i].name, name, n) == 0)
			return i;
	}
	return -1;
}

static int
auth_create(cfg_t *section, const struct mx_config *cfg, struct stage **st_r, char **error_r)
{
	struct auth_stage *st = xcalloc(1, sizeof(*st));
	static const struct { const char *name; long min, max; } bounds[] = {
		{ "dns_timeout", 100, 60000 }, { "deadline", 100, 600000 },
		{ "cache_size", 0, 1000000 }, { "min_ttl", 0, 86400 }, { "max_ttl", 0, 604800 },
		{ "negative_ttl", 0, 86400 },
	};

	for (size_t i = 0; i < N_ELEMENTS(bounds); i++) {
		long v = cfg_getint(section, bounds[i].name);
		if (v < bounds[i].min || v > bounds[i].max) {
			*error_r = xasprintf("auth: %s must be %ld..%ld, not %ld", bounds[i].name,
					     bounds[i].min, bounds[i].max, v);
			free(st);
			return -1;
		}
	}
	st->dns = auth_dns_new(cfg_getint(section, "cache_size"));
	st->dns->timeout_ms = cfg_getint(section, "dns_timeout");
	st->dns->deadline_ms = cfg_getint(section, "deadline");
	st->dns->min_ttl = cfg_getint(section, "min_ttl");
	st->dns->max_ttl = cfg_getint(section, "max_ttl");
	st->dns->negative_ttl = cfg_getint(section, "negative_ttl");
	st->spf = cfg_getbool(section, "spf");
	st->dkim = cfg_getbool(section, "dkim");
	st->dmarc = cfg_getbool(section, "dmarc");
	st->header = cfg_getbool(section, "header");
	st->reject_text = xstrdup(cfg_getstr(section, "reject_text"));
	long stage_timeout = cfg_getint(section, "timeout") > 0 ? cfg_getint(section, "timeout") :
		pipeline_settings(cfg)->stage_timeout;
	if (st->dns->deadline_ms >= stage_timeout) {
		*error_r = xasprintf("auth: deadline (%ld ms) must be below the stage's timeout "
				     "(%ld ms)", st->dns->deadline_ms, stage_timeout);
		goto fail;
	}
	if (st->dns->min_ttl > st->dns->max_ttl) {
		*error_r = xstrdup("auth: min_ttl must not be above max_ttl");
		goto fail;
	}
	size_t nr = cfg_size(section, "resolvers");
	if (nr > MAXNS) {
		*error_r = xasprintf("auth: at most %d resolvers", MAXNS);
		goto fail;
	}
	for (size_t i = 0; i < nr; i++) {
		const char *r = cfg_getnstr(section, "resolvers", i);
		if (auth_dns_parse_ns(r, &st->dns->ns[i]) < 0) {
			*error_r = xasprintf("auth: resolver \"%s\" is not an IPv4 ADDRESS or "
					     "ADDRESS:PORT", r);
			goto fail;
		}
	}
	st->dns->n_ns = (int)nr;
	for (int i = 0; i < R_COUNT; i++) {
		st->score[i] = auth_results[i].score;
		st->act[i] = auth_results[i].act;
	}
	for (size_t i = 0; i < cfg_size(section, "scores"); i++) {
		const char *v = cfg_getnstr(section, "scores", i), *eq = strchr(v, '=');
		char *end = NULL;
		int k = eq != NULL ? auth_result_named(v, (size_t)(eq - v)) : -1;
		double s = eq != NULL ? strtod(eq + 1, &end) : 0;
		if (k < 0 || end == eq + 1 || *end != '\0') {
			*error_r = xasprintf("auth: scores: \"%s\" is not RESULT=SCORE with a result "
					     "such as SPF_FAIL or DMARC_REJECT", v);
			goto fail;
		}
		st->score[k] = s;
	}
	for (size_t i = 0; i < cfg_size(section, "actions"); i++) {
		const char *v = cfg_getnstr(section, "actions", i), *eq = strchr(v, '=');
		int k = eq != NULL ? auth_result_named(v, (size_t)(eq - v)) : -1, a = -1;
		for (int x = 0; k >= 0 && auth_act_names[x] != NULL; x++) {
			if (strcmp(auth_act_names[x], eq + 1) == 0)
				a = x;
		}
		if (k < 0 || a < 0) {
			*error_r = xasprintf("auth: actions: \"%s\" is not RESULT=ACTION (score, "
					     "reject, quarantine or tempfail)", v);
			goto fail;
		}
		st->act[k] = (enum auth_act)a;
	}
	if (st->dmarc) {
		/* the public suffix list is read once per process (libopendmarc
		 * keeps it in a global): a reload that names another file needs
		 * a restart */
		if (auth_psl_path[0] == '\0')
			str_copy(auth_psl_path, cfg_getstr(section, "public_suffix_list"),
				 sizeof(auth_psl_path));
		if (access(auth_psl_path, R_OK) < 0) {
			*error_r = xasprintf("auth: public_suffix_list %s: cannot be read (Debian: "
					     "publicsuffix)", auth_psl_path);
			goto fail;
		}
		pthread_once(&auth_psl_once, auth_psl_load);
		if (auth_psl_status != DMARC_PARSE_OKAY) {
			*error_r = xasprintf("auth: libopendmarc: cannot load %s", auth_psl_path);
			goto fail;
		}
	}
	if (st->dkim) {
		unsigned timeout = (unsigned)((st->dns->timeout_ms + 999) / 1000);
		st->dkim_lib = dkim_init(NULL, NULL);
		if (st->dkim_lib == NULL) {
			*error_r = xstrdup("auth: dkim_init failed");
			goto fail;
		}
		(void)dkim_options(st->dkim_lib, DKIM_OP_SETOPT, DKIM_OPTS_TIMEOUT, &timeout,
				   sizeof(timeout));
		/* our hooks replace the library's resolver entirely: its
		 * init and close would res_ninit/res_nclose+free the service
		 * handle, which is ours (and unused) */
		dkim_dns_set_init(st->dkim_lib, auth_dkim_init);
		dkim_dns_set_close(st->dkim_lib, auth_dkim_close);
		(void)dkim_dns_set_query_service(st->dkim_lib, st);
		dkim_dns_set_query_start(st->dkim_lib, auth_dkim_start);
		dkim_dns_set_query_cancel(st->dkim_lib, auth_dkim_cancel);
		dkim_dns_set_query_waitreply(st->dkim_lib, auth_dkim_wait);
	}
	log_msg(LOG_LEVEL_INFO, "auth: spf %s, dkim %s, dmarc %s, resolvers %s, deadline %ld ms",
		st->spf ? "on" : "off", st->dkim ? "on" : "off", st->dmarc ? "on" : "off",
		nr > 0 ? "from the config" : "from /etc/resolv.conf", st->dns->deadline_ms);
	*st_r = &st->hdr;
	return 0;
fail:
	auth_free(st);
	return -1;
}

static void
auth_destroy(struct stage *stage)
{
	auth_free((struct auth_stage *)stage);
}

const struct stage_ops auth_stage_ops = {
	.name = "auth",
	.phases = PHASE_BIT(PHASE_DATA),
	.default_on_error = ON_ERROR_ACCEPT,
	.opts = auth_opts,
	.create = auth_create,
	.check = auth_check,
	.destroy = auth_destroy,
};

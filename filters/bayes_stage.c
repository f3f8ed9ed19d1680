/*
 * bayes_stage.c — the "bayes" stage: the learning classifier at DATA
 * (doc/learning.md).
 *
 *   bayes {
 *       path = "./var/bayes/site.db"     # the site's store (SQLite)
 *       per_user = false                 # one recipient: that user's store
 *       user_dir = "./var/bayes/users"   # ... USER.db there, when it exists
 *       min_spam = 200                   # abstain until this many of each
 *       min_ham = 200                    #   were learnt
 *       pairs = false                    # token pairs (bench/learning)
 *       bands = {"BAYES_00:0:-1.9", ...} # NAME:LOWER_PROBABILITY:SCORE
 *       header = "X-Spam-Bayes"
 *       autolearn = false
 *       autolearn_spam = 12.0            # score of the stages before, at least
 *       autolearn_ham = -2.0             #   / at most
 *       max_tokens = 1000000             # expiry keeps the store below this
 *   }
 *
 * The message's text views (lib/msgtext.c, shared with the rules stage)
 * are tokenised on the worker pool's scan lane, the counts read from the
 * store there (SQLite, blocking), classified, and back on the loop the
 * probability's band becomes a hit (BAYES_95 ..., which a later rules
 * stage sees as `stage bayes /BAYES_9/`) and a header entry. Store handles
 * are kept in a small pool shared by the pool's threads (one thread uses a
 * handle at a time).
 */
#include "config.h"

#include <confuse.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "filters/bayes.h"
#include "filters/filters.h"
#include "lib/lib.h"

#define BAYES_POOL_MAX 8

struct bayes_stage {
	struct stage hdr; /* must be first */
	struct bayes_conf conf;
	pthread_mutex_t lock; /* the pool */
	struct bayes_store *pool[BAYES_POOL_MAX];
	char *pool_path[BAYES_POOL_MAX];
	size_t n_pool;
};

struct bayes_job {
	struct bayes_stage *st;
	struct msgbody *body;
	char *user;        /* the single recipient when per_user, else NULL */
	double score_before;
	/* results */
	bool ok, abstain;
	char *error;
	double prob;
	size_t n_tokens, n_used;
	uint32_t n_spam, n_ham;
	bool user_store;
	const char *autolearnt; /* "spam", "ham", NULL */
};

static const char *const default_bands[] = {
	/* SpamAssassin 4.0's 50_scores.cf, the net-less/bayes set */
	"BAYES_00:0:-1.9", "BAYES_05:0.01:-0.5", "BAYES_20:0.05:-0.001",
	"BAYES_40:0.20:-0.001", "BAYES_50:0.40:0.8", "BAYES_60:0.60:1.5",
	"BAYES_80:0.80:2.0", "BAYES_95:0.95:3.0", "BAYES_99:0.99:3.5",
};

static cfg_opt_t bayes_opts[] = {
	CFG_STR("path", "./var/bayes/site.db", CFGF_NONE),
	CFG_BOOL("per_user", cfg_false, CFGF_NONE),
	CFG_STR("user_dir", "./var/bayes/users", CFGF_NONE),
	CFG_INT("min_spam", 200, CFGF_NONE),
	CFG_INT("min_ham", 200, CFGF_NONE),
	CFG_BOOL("pairs", cfg_false, CFGF_NONE),
	CFG_STR_LIST("bands", "{\"BAYES_00:0:-1.9\", \"BAYES_05:0.01:-0.5\", "
		     "\"BAYES_20:0.05:-0.001\", \"BAYES_40:0.20:-0.001\", \"BAYES_50:0.40:0.8\", "
		     "\"BAYES_60:0.60:1.5\", \"BAYES_80:0.80:2.0\", \"BAYES_95:0.95:3.0\", "
		     "\"BAYES_99:0.99:3.5\"}", CFGF_NONE),
	CFG_STR("header", "X-Spam-Bayes", CFGF_NONE),
	CFG_BOOL("autolearn", cfg_false, CFGF_NONE),
	CFG_BOOL("learn_from_moves", cfg_true, CFGF_NONE),
	CFG_FLOAT("autolearn_spam", 12.0, CFGF_NONE),
	CFG_FLOAT("autolearn_ham", -2.0, CFGF_NONE),
	CFG_INT("max_tokens", 1000000, CFGF_NONE),
	CFG_STR("redis", "", CFGF_NONE),
	CFG_STR("redis_prefix", "mxguard:bayes:", CFGF_NONE),
	CFG_INT("redis_timeout", 2000, CFGF_NONE),
	CFG_END()
};

static int band_parse(const char *s, struct bayes_band *b, char **error_r)
{
	const char *c1 = strchr(s, ':'), *c2 = c1 != NULL ? strchr(c1 + 1, ':') : NULL;
	char *end;
	size_t nl = c1 != NULL ? (size_t)(c1 - s) : 0;

	if (c2 == NULL || nl == 0 || nl >= sizeof(b->name)) {
		*error_r = xasprintf("bayes: band '%s': expected NAME:LOWER:SCORE", s);
		return -1;
	}
	memcpy(b->name, s, nl);
	b->name[nl] = '\0';
	for (size_t i = 0; i < nl; i++) {
		char ch = b->name[i];
		if (!((ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' ||
		      (ch >= 'a' && ch <= 'z'))) {
			*error_r = xasprintf("bayes: band '%s': the name is letters, digits, _", s);
			return -1;
		}
	}
	errno = 0;
	b->lower = strtod(c1 + 1, &end);
	if (errno != 0 || end != c2 || b->lower < 0 || b->lower > 1) {
		*error_r = xasprintf("bayes: band '%s': LOWER is a probability 0..1", s);
		return -1;
	}
	b->score = strtod(c2 + 1, &end);
	if (errno != 0 || *end != '\0' || end == c2 + 1) {
		*error_r = xasprintf("bayes: band '%s': SCORE is a number", s);
		return -1;
	}
	return 0;
}

int bayes_conf_load(struct cfg_t *sec, struct bayes_conf *c, char **error_r)
{
	struct bayes_params defp = BAYES_PARAMS_DEFAULT;

	memset(c, 0, sizeof(*c));
	c->params = defp;
	if (sec == NULL) {
		/* no section: the defaults */
		c->path = xstrdup("./var/bayes/site.db");
		c->user_dir = xstrdup("./var/bayes/users");
		c->min_spam = c->min_ham = 200;
		c->header = xstrdup("X-Spam-Bayes");
		c->max_tokens = 1000000;
		c->learn_from_moves = true;
		c->redis = xstrdup("");
		c->redis_prefix = xstrdup("mxguard:bayes:");
		c->redis_timeout = 2000;
		c->n_bands = N_ELEMENTS(default_bands);
		c->bands = xcalloc(c->n_bands, sizeof(*c->bands));
		for (size_t i = 0; i < c->n_bands; i++)
			(void)band_parse(default_bands[i], &c->bands[i], error_r);
		return 0;
	}
	c->path = xstrdup(cfg_getstr(sec, "path"));
	c->per_user = cfg_getbool(sec, "per_user");
	c->user_dir = xstrdup(cfg_getstr(sec, "user_dir"));
	c->min_spam = cfg_getint(sec, "min_spam");
	c->min_ham = cfg_getint(sec, "min_ham");
	c->tok.pairs = cfg_getbool(sec, "pairs");
	c->header = xstrdup(cfg_getstr(sec, "header"));
	c->autolearn = cfg_getbool(sec, "autolearn");
	c->learn_from_moves = cfg_getbool(sec, "learn_from_moves");
	c->autolearn_spam = cfg_getfloat(sec, "autolearn_spam");
	c->autolearn_ham = cfg_getfloat(sec, "autolearn_ham");
	c->max_tokens = cfg_getint(sec, "max_tokens");
	c->redis = xstrdup(cfg_getstr(sec, "redis"));
	c->redis_prefix = xstrdup(cfg_getstr(sec, "redis_prefix"));
	c->redis_timeout = cfg_getint(sec, "redis_timeout");
	if (c->redis_timeout < 10 || c->redis_timeout > 60000) {
		*error_r = xstrdup("bayes: redis_timeout is 10 to 60000 milliseconds");
		goto fail;
	}
	if (c->path[0] == '\0' || c->min_spam < 1 || c->min_ham < 1 || c->max_tokens < 1000 ||
	    (c->per_user && c->user_dir[0] == '\0')) {
		*error_r = xstrdup("bayes: need a path, min_spam and min_ham >= 1, "
				   "max_tokens >= 1000 (and a user_dir with per_user)");
		goto fail;
	}
	if (c->autolearn && !(c->autolearn_ham < c->autolearn_spam)) {
		*error_r = xstrdup("bayes: autolearn_ham must be below autolearn_spam");
		goto fail;
	}
	c->n_bands = cfg_size(sec, "bands");
	if (c->n_bands == 0) {
		*error_r = xstrdup("bayes: bands is empty");
		goto fail;
	}
	c->bands = xcalloc(c->n_bands, sizeof(*c->bands));
	for (size_t i = 0; i < c->n_bands; i++) {
		if (band_parse(cfg_getnstr(sec, "bands", i), &c->bands[i], error_r) < 0)
			goto fail;
		if (i > 0 && !(c->bands[i].lower > c->bands[i - 1].lower)) {
			*error_r = xasprintf("bayes: bands must be in increasing LOWER order (%s)",
					     c->bands[i].name);
			goto fail;
		}
	}
	if (c->bands[0].lower != 0) {
		*error_r = xstrdup("bayes: the first band must start at 0");
		goto fail;
	}
	return 0;
fail:
	bayes_conf_clear(c);
	return -1;
}

void bayes_conf_clear(struct bayes_conf *c)
{
	free(c->path);
	free(c->user_dir);
	free(c->header);
	free(c->bands);
	free(c->redis);
	free(c->redis_prefix);
	memset(c, 0, sizeof(*c));
}

const struct bayes_band *bayes_band_of(const struct bayes_conf *c, double p)
{
	const struct bayes_band *b = &c->bands[0];

	for (size_t i = 0; i < c->n_bands; i++) {
		if (p >= c->bands[i].lower)
			b = &c->bands[i];
	}
	return b;
}

char *bayes_user_path(const struct bayes_conf *c, const char *user)
{
	char *u;

	/* local@domain, no path separators, no leading dot */
	if (user == NULL || user[0] == '\0' || user[0] == '.' || strchr(user, '/') != NULL ||
	    strchr(user, '@') == NULL || strlen(user) > 320)
		return NULL;
	u = xstrdup(user);
	str_lower(u);
	char *p = xasprintf("%s/%s.db", c->user_dir, u);
	free(u);
	return p;
}

struct bayes_store *bayes_conf_open(const struct bayes_conf *c, const char *user, bool readonly,
				    bool create, char **name_r, char **error_r)
{
	struct bayes_store *s;
	char *path;

	*error_r = NULL;
	if (name_r != NULL)
		*name_r = NULL;
	if (c->redis != NULL && c->redis[0] != '\0') {
		char *scope, *u = NULL;
		if (user != NULL) {
			if ((path = bayes_user_path(c, user)) == NULL) {
				*error_r = xasprintf("invalid user: %s (expected local@domain)", user);
				return NULL;
			}
			free(path);
			u = xstrdup(user);
			str_lower(u);
		}
		scope = u != NULL ? xasprintf("user:%s", u) : xstrdup("site");
		free(u);
		s = bayes_store_open_redis(c->redis, c->redis_prefix, scope, c->redis_timeout, error_r);
		if (name_r != NULL)
			*name_r = xasprintf("redis:%s", scope);
		free(scope);
		return s;
	}
	if (user != NULL) {
		if ((path = bayes_user_path(c, user)) == NULL) {
			*error_r = xasprintf("invalid user: %s (expected local@domain)", user);
			return NULL;
		}
	} else {
		path = xstrdup(c->path);
	}
	if (access(path, F_OK) != 0) {
		if (!create) {
			if (name_r != NULL)
				*name_r = path;
			else
				free(path);
			return NULL;
		}
		char *dir = xstrdup(path), *sl = strrchr(dir, '/');
		if (sl != NULL && sl != dir) {
			*sl = '\0';
			(void)fs_mkdir_p(dir, 0750);
		}
		free(dir);
	}
	s = bayes_store_open(path, readonly && !create, error_r);
	if (name_r != NULL)
		*name_r = path;
	else
		free(path);
	return s;
}

/* ------------------------------------------------------------ the pool */
static struct bayes_store *pool_get(struct bayes_stage *st, const char *path, const char *user,
				    bool readonly, bool create, char **error_r)
{
	struct bayes_store *s = NULL;

	pthread_mutex_lock(&st->lock);
	for (size_t i = 0; i < st->n_pool; i++) {
		if (strcmp(st->pool_path[i], path) == 0) {
			s = st->pool[i];
			free(st->pool_path[i]);
			st->n_pool--;
			st->pool[i] = st->pool[st->n_pool];
			st->pool_path[i] = st->pool_path[st->n_pool];
			break;
		}
	}
	pthread_mutex_unlock(&st->lock);
	if (s != NULL)
		return s;
	return bayes_conf_open(&st->conf, user, readonly, create, NULL, error_r);
}

static void pool_put(struct bayes_stage *st, const char *path, struct bayes_store *s)
{
	if (bayes_store_broken(s)) {
		/* a Redis connection that failed: the next job reconnects */
		bayes_store_close(&s);
		return;
	}
	pthread_mutex_lock(&st->lock);
	if (st->n_pool < BAYES_POOL_MAX) {
		st->pool[st->n_pool] = s;
		st->pool_path[st->n_pool] = xstrdup(path);
		st->n_pool++;
		s = NULL;
	}
	pthread_mutex_unlock(&st->lock);
	bayes_store_close(&s);
}

/* ------------------------------------------------------------ the check */
static int bayes_create(cfg_t *section, const struct mx_config *cfg, struct stage **st_r,
			char **error_r)
{
	struct bayes_stage *st = xcalloc(1, sizeof(*st));

	(void)cfg;
	if (bayes_conf_load(section, &st->conf, error_r) < 0) {
		free(st);
		return -1;
	}
	pthread_mutex_init(&st->lock, NULL);
	*st_r = &st->hdr;
	return 0;
}

static void bayes_job_free(struct bayes_job *j)
{
	free(j->user);
	free(j->error);
	free(j);
}

/* Score with the store of user (NULL: the site's), read-write only when
 * autolearn may write there. 1: scored or abstained, 0: the store is not
 * there (SQLite), -1: failed. */
static int score_with(struct bayes_job *j, const char *user, bool create,
		      const struct bayes_tokens *toks, const struct msgtext *t)
{
	struct bayes_stage *st = j->st;
	const struct bayes_conf *c = &st->conf;
	struct bayes_store *s;
	char *err = NULL, *key;
	bool redis = c->redis[0] != '\0';

	if (redis) {
		key = user != NULL ? xasprintf("redis:user:%s", user) : xstrdup("redis:site");
	} else if (user != NULL) {
		if ((key = bayes_user_path(c, user)) == NULL)
			return 0;
	} else {
		key = xstrdup(c->path);
	}
	if (!redis && !create && access(key, F_OK) != 0) {
		free(key);
		return 0;
	}
	if ((s = pool_get(st, key, user, !c->autolearn, create, &err)) == NULL) {
		free(key);
		if (err == NULL)
			return 0;
		j->error = err;
		return -1;
	}
	if (bayes_store_totals(s, &j->n_spam, &j->n_ham) < 0) {
		j->error = xasprintf("%s: cannot read the totals", key);
		goto fail;
	}
	if (j->n_spam < (uint32_t)c->min_spam || j->n_ham < (uint32_t)c->min_ham) {
		j->abstain = true;
	} else {
		struct bayes_count *cnt = xcalloc(toks->n + 1, sizeof(*cnt));
		if (bayes_store_lookup(s, toks->hash, toks->n, cnt) < 0) {
			j->error = xasprintf("%s: cannot read the tokens", key);
			free(cnt);
			goto fail;
		}
		j->prob = bayes_classify(&c->params, cnt, toks->n, j->n_spam, j->n_ham,
					 &j->n_used);
		free(cnt);
	}
	if (user == NULL && c->autolearn && (j->score_before >= c->autolearn_spam ||
					     j->score_before <= c->autolearn_ham)) {
		unsigned char dg[32];
		enum bayes_class cls = j->score_before >= c->autolearn_spam ? BAYES_SPAM : BAYES_HAM;
		bayes_digest(t, dg);
		enum bayes_learn_result r = bayes_store_learn(s, dg, toks, cls, false, &err);
		if (r == BAYES_ERROR) {
			log_msg(LOG_LEVEL_WARN, "bayes: autolearn: %s", err);
			free(err);
		} else if (r == BAYES_LEARNT || r == BAYES_RELEARNT) {
			j->autolearnt = cls == BAYES_SPAM ? "spam" : "ham";
			(void)bayes_store_expire(s, (uint64_t)c->max_tokens);
		}
	}
	pool_put(st, key, s);
	free(key);
	return 1;
fail:
	bayes_store_close(&s);
	free(key);
	return -1;
}

static void bayes_work(void *arg)
{
	struct bayes_job *j = arg;
	const struct bayes_conf *c = &j->st->conf;
	const struct msgtext *t = msgbody_text(j->body);
	struct bayes_tokens toks;
	int r = 0;

	if (t == NULL) {
		j->error = xstrdup("the message's text cannot be read");
		return;
	}
	bayes_tokenize(t, &c->tok, &toks);
	j->n_tokens = toks.n;
	if (j->user != NULL) {
		r = score_with(j, j->user, false, &toks, t);
		/* a user store that has not learnt enough: the site's */
		if (r == 1 && j->abstain) {
			j->abstain = false;
			r = 0;
		}
		j->user_store = r == 1;
	}
	if (r == 0) {
		r = score_with(j, NULL, c->autolearn, &toks, t);
		if (r == 0) {
			/* nothing learnt yet: no store */
			j->n_spam = j->n_ham = 0;
			j->abstain = true;
			r = 1;
		}
	}
	j->ok = r == 1;
	bayes_tokens_free(&toks);
}

static void bayes_done(struct stage_call *call, void *arg)
{
	struct bayes_job *j = arg;
	const struct bayes_conf *c = &j->st->conf;

	if (call != NULL) {
		memset(&call->result, 0, sizeof(call->result));
		call->result.verdict = VERDICT_CONTINUE;
		if (!j->ok) {
			log_msg(LOG_LEVEL_WARN, "bayes: %s: %s", call->msg->txid,
				j->error != NULL ? j->error : "failed");
			stage_call_done(call, CHECK_FAILED);
			bayes_job_free(j);
			return;
		}
		char *hv;
		if (j->abstain) {
			hv = xasprintf("none (learnt %u spam, %u ham; needs %ld and %ld)%s%s",
				       j->n_spam, j->n_ham, c->min_spam, c->min_ham,
				       j->autolearnt != NULL ? "; autolearn=" : "",
				       j->autolearnt != NULL ? j->autolearnt : "");
		} else {
			const struct bayes_band *b = bayes_band_of(c, j->prob);
			char desc[96];
			snprintf(desc, sizeof(desc), "Bayes spam probability %.4f", j->prob);
			filter_tx_add_score(call->fx, call->stage->name, b->name, b->score, desc);
			hv = xasprintf("%.4f %s score=%.3f tokens=%zu/%zu learnt=%u/%u store=%s%s%s",
				       j->prob, b->name, b->score, j->n_used, j->n_tokens, j->n_spam,
				       j->n_ham, j->user_store ? "user" : "site",
				       j->autolearnt != NULL ? " autolearn=" : "",
				       j->autolearnt != NULL ? j->autolearnt : "");
		}
		if (c->header[0] != '\0')
			(void)filter_tx_add_header(call->fx, c->header, hv);
		free(hv);
		stage_call_done(call, CHECK_DONE);
	}
	bayes_job_free(j);
}

static enum check_status bayes_check(struct stage *stage, struct stage_call *call)
{
	struct bayes_stage *st = (struct bayes_stage *)stage;
	const struct filter_msg *msg = call->msg;
	struct bayes_job *j = xcalloc(1, sizeof(*j));

	j->st = st;
	j->body = msg->body;
	j->score_before = filter_tx_score(call->fx);
	if (st->conf.per_user && msg->n_rcpts == 1) {
		j->user = xstrdup(msg->rcpts[0]);
		str_lower(j->user);
	}
	if (stage_submit_job(call, bayes_work, bayes_done, j) < 0) {
		bayes_job_free(j);
		return CHECK_FAILED;
	}
	return CHECK_PENDING;
}

static void bayes_destroy(struct stage *stage)
{
	struct bayes_stage *st = (struct bayes_stage *)stage;

	for (size_t i = 0; i < st->n_pool; i++) {
		bayes_store_close(&st->pool[i]);
		free(st->pool_path[i]);
	}
	pthread_mutex_destroy(&st->lock);
	bayes_conf_clear(&st->conf);
	free(st);
}

const struct stage_ops bayes_stage_ops = {
	.name = "bayes",
	.phases = PHASE_BIT(PHASE_DATA),
	.default_on_error = ON_ERROR_ACCEPT,
	.opts = bayes_opts,
	.create = bayes_create,
	.check = bayes_check,
	.destroy = bayes_destroy,
};

/* ------------------------------------------ learning from a user's move */
int bayes_learn_moved(const struct mx_config *cfg, const char *user, const char *data, size_t len,
		      bool to_junk, char **error_r)
{
	const struct pipeline_settings *ps = pipeline_settings(cfg);
	struct bayes_conf conf;
	struct bayes_store *store;
	struct bayes_tokens toks;
	struct msgbody *b;
	const struct msgtext *t;
	unsigned char dg[32];
	enum bayes_learn_result r;
	bool on = false;

	*error_r = NULL;
	for (size_t i = 0; i < ps->n_stages; i++)
		on = on || strcmp(ps->stages[i], "bayes") == 0;
	if (!on)
		return 1;
	if (bayes_conf_load(cfg_getsec(cfg->cfg, "bayes"), &conf, error_r) < 0)
		return -1;
	if (!conf.learn_from_moves) {
		bayes_conf_clear(&conf);
		return 1;
	}
	store = bayes_conf_open(&conf, conf.per_user ? user : NULL, false, true, NULL, error_r);
	if (store == NULL) {
		if (*error_r == NULL)
			*error_r = xstrdup("the store cannot be opened");
		bayes_conf_clear(&conf);
		return -1;
	}
	b = msgbody_new("/tmp", SIZE_MAX / 2);
	if (msgbody_append(b, data, len) < 0 || msgbody_seal(b) < 0 || (t = msgbody_text(b)) == NULL) {
		*error_r = xstrdup("the message cannot be read");
		msgbody_free(&b);
		bayes_store_close(&store);
		bayes_conf_clear(&conf);
		return -1;
	}
	bayes_tokenize(t, &conf.tok, &toks);
	bayes_digest(t, dg);
	/* into Junk: spam; out of it: ham (a message learnt as the other
	 * class before is moved over, one learnt as this class is left) */
	r = bayes_store_learn(store, dg, &toks, to_junk ? BAYES_SPAM : BAYES_HAM, false, error_r);
	bayes_tokens_free(&toks);
	msgbody_free(&b);
	bayes_store_close(&store);
	bayes_conf_clear(&conf);
	return r == BAYES_ERROR ? -1 : 0;
}

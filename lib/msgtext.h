/*
 * msgtext.h — the text views of a message that SpamAssassin-style rules
 * read: the top-level header (raw and decoded), SpamAssassin's "body"
 * (rendered text, one element per line of paragraphs), "rawbody" (decoded
 * but not rendered), "full" (the message as received), the URIs that "uri"
 * rules see, and the type and file name of every leaf MIME part.
 *
 * The views are built from the body's shared GMime tree (msgbody_mime())
 * on first use, once, however many threads ask, and belong to the body:
 * they are freed with it, and callers must hold a body reference while they
 * read them. They are read-only. lib/msgtext.c's opening comment says which
 * SpamAssassin behaviour each view follows and where it differs.
 *
 * Every string is NUL-terminated; all but the raw header values and `full`
 * are valid UTF-8. Hostile input is bounded by the limits below; hitting
 * one sets `truncated` and leaves the views partial but consistent.
 */
#ifndef MXGUARD_MSGTEXT_H
#define MXGUARD_MSGTEXT_H

#include <stdbool.h>
#include <stddef.h>

#define MSGTEXT_PARTS_MAX 100          /* MIME nodes walked (containers count) */
#define MSGTEXT_DEPTH_MAX 20           /* multipart / message/rfc822 levels */
#define MSGTEXT_TEXT_MAX (4u << 20)    /* decoded octets in body, and in rawbody */
#define MSGTEXT_URIS_MAX 1000
#define MSGTEXT_URI_LEN_MAX 8192       /* longer URIs are cut (SA: MAX_URI_LENGTH) */
#define MSGTEXT_LINE_MAX (64u << 10)   /* a header value; body lines are far shorter */
#define MSGTEXT_HEADERS_MAX 1000
/* SpamAssassin's MAX_BODY_LINE_LENGTH: body lines are split near it, and
 * rawbody into chunks of one to two times it. */
#define MSGTEXT_SA_LINE 2048

struct msgbody;

struct msgtext_header {
	char *name;    /* as in the message, e.g. "Subject" */
	/* the value as SpamAssassin's :raw gives it: everything after the
	 * colon, leading white space and folding line breaks kept, line
	 * endings as LF, without the final line ending */
	char *raw;
	/* unfolded (a line break and the blanks after it are one space),
	 * trimmed, RFC 2047 decoded to UTF-8 (not for Received, Date,
	 * Message-ID, References, In-Reply-To, MIME-Version, List-*:
	 * SpamAssassin leaves those encoded) */
	char *decoded;
};

struct msgtext_part {
	char *type;     /* lower-case "type/subtype" of a leaf part */
	/* Content-Disposition filename, else Content-Type name, decoded
	 * (RFC 2231, RFC 2047); NULL when the part has none */
	char *filename;
};

struct msgtext {
	/* the top-level header fields, in message order */
	struct msgtext_header *headers;
	size_t n_headers;
	/* SpamAssassin's "body": the decoded Subject and "\n", then the text
	 * of the text/plain and text/html parts (HTML rendered), white space
	 * folded as SpamAssassin does — a paragraph per line — and split into
	 * elements of at most MSGTEXT_SA_LINE + 1 octets; every element but
	 * the last ends in "\n", as SpamAssassin's do */
	char **body;
	size_t n_body;
	/* SpamAssassin's "rawbody": each text/... and message/... leaf
	 * (not text/calendar) decoded to UTF-8, HTML not rendered, in chunks of
	 * up to 2 * MSGTEXT_SA_LINE octets broken at a line end when possible */
	char **rawbody;
	size_t n_rawbody;
	/* the whole message as received, borrowed from the body: NOT
	 * NUL-terminated, may hold NUL octets */
	const char *full;
	size_t full_len;
	/* what "uri" rules see: URIs from the body text (http, https, ftp,
	 * www., ftp., mailto:, bare e-mail addresses as mailto:, host names
	 * ending in a top-level domain as http://) and from HTML attributes,
	 * each followed by its canonicalised variants; no duplicates, in order
	 * of appearance (body text first) */
	char **uris;
	size_t n_uris;
	struct msgtext_part *parts;
	size_t n_parts;
	/* GMime parsed the body as a message; false: it did not, and the views
	 * show the bytes as one text/plain part without a header */
	bool mime;
	bool truncated;  /* a limit was hit: the views are partial */
};

/* The text views of a sealed body, built on first use (see above). NULL
 * when the body is not sealed or its bytes cannot be read. */
const struct msgtext *msgbody_text(struct msgbody *b);
/* True once the body's text views were built (tests, metrics). */
bool msgbody_text_built(struct msgbody *b);

/* The nth (0-based) header field named name (any case): its decoded or
 * its raw value; NULL when there is none. */
const char *msgtext_header(const struct msgtext *t, const char *name, size_t nth, bool raw);

/* SpamAssassin's :addr and :name on a header value (raw preferably, as
 * SpamAssassin parses the raw one): the first address ("user@example.org",
 * group members included) and the first display name (a comment when there
 * is no phrase: "joe@example.org (Joe)" gives "Joe"; RFC 2047 decoded, white
 * space folded, one level of single quotes dropped); "" when there is none.
 * out gets at most outsz - 1 octets, cut at a character boundary. */
void msgtext_addr(const char *value, char *out, size_t outsz);
void msgtext_name(const char *value, char *out, size_t outsz);
/* The same for the nth (0-based) address or name — SpamAssassin 4 matches
 * a rule against all of them. False (and "" in out) when there is none. */
bool msgtext_addr_nth(const char *value, size_t nth, char *out, size_t outsz);
bool msgtext_name_nth(const char *value, size_t nth, char *out, size_t outsz);

#endif

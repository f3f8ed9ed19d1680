/*
 * mime.h — what the IMAP service needs of a message's MIME structure:
 * FETCH ENVELOPE, BODY, BODYSTRUCTURE, BODY[section]<partial> (MIME part
 * numbers, HEADER, HEADER.FIELDS (...), HEADER.FIELDS.NOT (...), TEXT,
 * MIME) and the content keys of SEARCH (HEADER, FROM, TO, CC, BCC,
 * SUBJECT, BODY, TEXT, SENTBEFORE/ON/SINCE), from GMime 3 — the same
 * parser the filters use — over a message's bytes as stored.
 *
 * This is imap/'s private interface between the protocol side (session
 * and parser: sequence sets, the FETCH attribute syntax, partial ranges,
 * literals) and the message side (mime.c). Everything here is pure: no
 * I/O, no locks, no globals besides GMime's one-time init; it runs on the
 * worker pool. Results match what Dovecot answers for the same message.
 *
 * Line ends: a stored message may have LF or CRLF line ends; everything
 * appended to `out` has CRLF line ends, because IMAP's sizes and octet
 * offsets count CRLF (RFC822.SIZE, literals, BODY[]<o.n>). Strings are
 * written in IMAP syntax — NIL, "quoted" (with \ and " escaped), or a
 * {N}CRLF literal when the value holds CR, LF, NUL or 8-bit octets that a
 * quoted string may not carry.
 */
#ifndef MXGUARD_IMAP_MIME_H
#define MXGUARD_IMAP_MIME_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

struct evbuffer;

/* ----------------------------------------------------------- sections */
#define IMAP_SECTION_DEPTH_MAX 32   /* part numbers in "1.2.3..." */
#define IMAP_SECTION_FIELDS_MAX 128 /* names in HEADER.FIELDS (...) */

enum imap_section_kind {
	IMAP_SECTION_ALL,              /* BODY[] or BODY[1.2]: the part whole */
	IMAP_SECTION_HEADER,           /* BODY[HEADER], BODY[1.2.HEADER] (message/rfc822 part) */
	IMAP_SECTION_HEADER_FIELDS,    /* ... HEADER.FIELDS (A B) */
	IMAP_SECTION_HEADER_FIELDS_NOT,/* ... HEADER.FIELDS.NOT (A B) */
	IMAP_SECTION_TEXT,             /* BODY[TEXT], BODY[1.2.TEXT] */
	IMAP_SECTION_MIME,             /* BODY[1.2.MIME]: the part's own MIME header */
};

/* A parsed section spec (what is between "BODY[" and "]"), filled by the
 * protocol side's parser. */
struct imap_section {
	unsigned part[IMAP_SECTION_DEPTH_MAX]; /* 1-based part numbers */
	size_t n_part;                          /* 0: the message itself */
	enum imap_section_kind kind;
	char *fields[IMAP_SECTION_FIELDS_MAX];  /* malloc'd names, as the client wrote them */
	size_t n_fields;
};
void imap_section_clear(struct imap_section *sec);

/* ------------------------------------------------------------ messages */
struct imap_msg;

/*
 * A message over data[0..len) (not copied: it must outlive the
 * imap_msg). Parsing is lazy: header-only questions (ENVELOPE, HEADER,
 * HEADER.FIELDS, header SEARCH keys, the Date) read the top-level header
 * without building a MIME tree, so data may then be just the header
 * section (through its blank line) when the caller only asks those.
 * Never fails: a message that does not parse as MIME is one text/plain
 * part, as Dovecot treats it.
 */
struct imap_msg *imap_msg_new(const char *data, size_t len);
void imap_msg_free(struct imap_msg **m);

/* ENVELOPE (RFC 3501 7.4.2): the parenthesised list, appended to out. */
void imap_msg_envelope(struct imap_msg *m, struct evbuffer *out);
/* BODYSTRUCTURE (extended = true) or BODY (false), appended to out. */
void imap_msg_bodystructure(struct imap_msg *m, bool extended, struct evbuffer *out);
/*
 * The octets of a section (CRLF line ends), appended to out without any
 * IMAP quoting: the caller applies <partial> and writes the literal.
 * Returns false, with nothing appended, when the section names a part
 * the message does not have (the caller answers with an empty string, as
 * Dovecot does).
 */
bool imap_msg_section(struct imap_msg *m, const struct imap_section *sec, struct evbuffer *out);

/* ------------------------------------------------------------- SEARCH */
/* Substring matches are case-insensitive over decoded text (RFC 2047
 * words, transfer encodings and charsets decoded to UTF-8); an empty
 * needle matches any message that has the field. */
bool imap_msg_header_contains(struct imap_msg *m, const char *field, const char *needle);
/* BODY: the text of the body's parts (not the top-level header). */
bool imap_msg_body_contains(struct imap_msg *m, const char *needle);
/* TEXT: header or body. */
bool imap_msg_text_contains(struct imap_msg *m, const char *needle);
/* The Date: header (SENTBEFORE/SENTON/SENTSINCE compare its date in its
 * own zone): true with the time and the zone's offset in seconds east of
 * UTC, false when missing or unparseable. */
bool imap_msg_sent_date(struct imap_msg *m, time_t *t_r, int *tz_offset_r);

#endif

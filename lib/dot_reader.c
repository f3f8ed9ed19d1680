/*
 * dot_reader.c — the DATA phase byte stream: un-dot-stuffing and finding the
 * end of the message, keeping the line endings exactly as received.
 *
 * This is where SMTP smuggling is won or lost. Only CRLF "." CRLF ends a
 * message (RFC 5321 4.1.1.4); the upstream server we relay to, or the one
 * behind it, may disagree with us about "\n.\n" or "\r.\r\n", and any byte
 * sequence that one side treats as the end and the other as content lets a
 * sender hide a second message inside the first. So the rules here are
 * narrow and stated once: beginning-of-line is reached only through CRLF
 * (or the start of DATA, whose own CRLF counts); a bare LF is content that
 * leaves us mid-line; a bare CR is content too; a "." is special only at
 * beginning-of-line. Bare CR and LF are counted so the session can refuse
 * the message by policy. The reader is a byte-at-a-time state machine so a
 * marker split across any number of reads is handled the same as one in a
 * single read; a CR or ".\r" whose meaning depends on the next byte is held
 * in the state (not emitted) until that byte arrives.
 *
 * Line endings pass through: CRLF comes out as CRLF, a bare LF as a bare LF
 * and a bare CR as a bare CR, so the body is what the client sent minus the
 * stuffed dots and the end marker, and whoever needs LF (the Maildir
 * writer) or CRLF (a relay) converts knowing which was which. Only the
 * marker's CRLF "." CRLF is dropped; the CRLF ending the last line is
 * content.
 */
#include "config.h"

#include "lib/lib.h"

enum dot_state {
	DOT_STATE_BOL = 0,     /* beginning of line: after CRLF or at start */
	DOT_STATE_BOL_DOT,     /* BOL, "." seen (dropped: dot-unstuffing) */
	DOT_STATE_BOL_DOT_CR,  /* BOL, ".\r" seen, CR held back */
	DOT_STATE_MID,         /* inside a line */
	DOT_STATE_MID_CR,      /* inside a line, CR held back */
};

void dot_reader_init(struct dot_reader *r)
{
	r->state = DOT_STATE_BOL;
	r->size = 0;
	r->bare_lf = 0;
	r->bare_cr = 0;
	r->line_len = 0;
	r->longest_line = 0;
	r->done = false;
}

bool dot_reader_feed(struct dot_reader *r, const char *in, size_t in_len,
		     size_t *consumed, char *out, size_t *out_len)
{
	size_t i = 0, o = 0;
	int state = r->state;

	if (r->done) {
		*consumed = 0;
		*out_len = 0;
		return true;
	}

	while (i < in_len) {
		char c = in[i];

		switch (state) {
		case DOT_STATE_BOL:
			if (c == '.') {
				state = DOT_STATE_BOL_DOT;
				i++;
				continue;
			}
			/* not a dot: the same as inside a line */
			state = DOT_STATE_MID;
			continue;
		case DOT_STATE_BOL_DOT:
			if (c == '\r') {
				state = DOT_STATE_BOL_DOT_CR;
				i++;
				continue;
			}
			/* the stuffed dot is dropped; the byte is ordinary */
			state = DOT_STATE_MID;
			continue;
		case DOT_STATE_BOL_DOT_CR:
			if (c == '\n') {
				i++;
				r->done = true;
				goto out;
			}
			/* ".\r" + something: dot dropped, the CR was bare */
			out[o++] = '\r';
			r->bare_cr++;
			state = DOT_STATE_MID;
			continue;
		case DOT_STATE_MID:
			i++;
			if (c == '\r') {
				state = DOT_STATE_MID_CR;
			} else {
				/* a bare LF is content and does not start a
				 * line: "\n.\r\n" must never end the message */
				if (c == '\n')
					r->bare_lf++;
				out[o++] = c;
			}
			continue;
		case DOT_STATE_MID_CR:
			if (c == '\n') {
				/* the held CR comes out with its LF: at most one
				 * byte more than this feed's input */
				i++;
				out[o++] = '\r';
				out[o++] = '\n';
				state = DOT_STATE_BOL;
				continue;
			}
			/* bare CR: emit it, then look at this byte again
			 * as inside a line ("\r." is content) */
			out[o++] = '\r';
			r->bare_cr++;
			state = DOT_STATE_MID;
			continue;
		default:
			/* cannot happen unless the caller scribbled on the
			 * struct; mid-line is the state that ends nothing */
			state = DOT_STATE_MID;
			continue;
		}
	}
out:
	/* line lengths over the octets as sent (dot-stuffing, CR and LF
	 * counted), lines ending at every LF: no line is ever held anywhere */
	for (size_t k = 0; k < i; k++) {
		if (++r->line_len > r->longest_line)
			r->longest_line = r->line_len;
		if (in[k] == '\n')
			r->line_len = 0;
	}
	r->state = state;
	r->size += o;
	*consumed = i;
	*out_len = o;
	return r->done;
}

/*
 * mime.c — the parsed-MIME view of a message body (GMime 3).
 *
 * Rules and the virus scanner both want the message as a tree of parts with
 * decoded contents; parsing it once per message and sharing the result is
 * the point of this file. The view is built lazily by the first caller of
 * msgbody_mime(), through the body's one view slot (msgbody_view() in
 * body.c), which runs the parse under the body's lock: two threads asking at
 * once parse once, and a body nobody asks about is never parsed. The view
 * belongs to the body and is unref'd when the body is freed.
 *
 * The parser reads a private copy of the sealed contents (GMime's memory
 * stream copies), so the tree does not depend on the body's own buffer or
 * mapping; the parts reference that copy instead of holding their own. The
 * body is parsed as received, CRLF line endings and all, which GMime reads
 * natively.
 *
 * g_mime_init() runs once per process (pthread_once) before the first parse.
 */
#include "config.h"

#include <pthread.h>
#include <stdatomic.h>

#include <gmime/gmime.h>

#include "lib/lib.h"

static pthread_once_t mime_once = PTHREAD_ONCE_INIT;
static atomic_ulong mime_parses;
static atomic_bool mime_initialised;

static void mime_init(void)
{
	g_mime_init();
	atomic_store(&mime_initialised, true);
}

static void *mime_build(struct msgbody *b)
{
	GMimeStream *stream;
	GMimeParser *parser;
	GMimeMessage *message;
	const char *data;
	size_t len;

	data = msgbody_contents(b, &len);
	if (data == NULL)
		return NULL;
	atomic_fetch_add_explicit(&mime_parses, 1, memory_order_relaxed);
	stream = g_mime_stream_mem_new_with_buffer(data, len);
	parser = g_mime_parser_new_with_stream(stream);
	g_object_unref(stream);
	message = g_mime_parser_construct_message(parser, NULL);
	g_object_unref(parser);
	return message;
}

static void mime_free(void *view)
{
	g_object_unref(view);
}

void mime_init_once(void)
{
	pthread_once(&mime_once, mime_init);
}

GMimeMessage *msgbody_mime(struct msgbody *b)
{
	pthread_once(&mime_once, mime_init);
	return msgbody_view(b, mime_build, mime_free);
}

bool msgbody_mime_parsed(struct msgbody *b)
{
	/* this view, not any of the body's views */
	return msgbody_view_built_by(b, mime_build);
}

unsigned long msgbody_mime_parse_count(void)
{
	return atomic_load_explicit(&mime_parses, memory_order_relaxed);
}

void mime_shutdown(void)
{
	/* only if it was ever initialised: nothing to tear down otherwise */
	if (atomic_exchange(&mime_initialised, false))
		g_mime_shutdown();
}

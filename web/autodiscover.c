/*
 * autodiscover.c — Outlook's autodiscover answer (the POX response
 * schema "outlook/responseschema/2006a") for the config's imap, pop3 and
 * smtp listeners, as web_autoconfig describes them to Thunderbird: one
 * Protocol block per listener, implicit-TLS ones first within each type
 * (a client takes the first block of a type it can use). SSL is on for
 * implicit TLS and for STARTTLS (Encryption says which), off for a
 * listener without TLS. Pure: the request was read by
 * web_autodiscover_parse (autodiscover_req.c).
 */
#include "config.h"

#include <string.h>

#include <glib.h>

#include "daemon/daemon.h"
#include "web/web.h"

static void
protocol_block(GString *x, const char *type, const char *host, const char *port, const char *login,
	       int tls)
{
	static const char *const ssl[] = { "off", "on", "on" };
	static const char *const enc[] = { "None", "TLS", "SSL" };

	g_string_append_printf(x,
			       "      <Protocol>\n"
			       "        <Type>%s</Type>\n"
			       "        <Server>%s</Server>\n"
			       "        <Port>%s</Port>\n"
			       "        <LoginName>%s</LoginName>\n"
			       "        <DomainRequired>off</DomainRequired>\n"
			       "        <SPA>off</SPA>\n"
			       "        <SSL>%s</SSL>\n"
			       "        <Encryption>%s</Encryption>\n"
			       "        <AuthRequired>on</AuthRequired>\n"
			       "      </Protocol>\n",
			       type, host, port, login, ssl[tls], enc[tls]);
}

char *
web_autodiscover(const struct mx_config *cfg, const char *hostname, const char *email, size_t *len_r)
{
	static const char *const protos[][2] = { { "imap", "IMAP" }, { "pop3", "POP3" }, { "smtp", "SMTP" } };
	const struct daemon_settings *ds = daemon_settings(cfg);
	bool cert = ds->tls_cert != NULL && ds->tls_cert[0] != '\0';
	char *host = g_markup_escape_text(hostname, -1);
	char *login = g_markup_escape_text(email, -1);
	GString *x = g_string_new(NULL);

	g_string_append(x, "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n"
			   "<Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/"
			   "responseschema/2006\">\n"
			   "  <Response xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/"
			   "responseschema/2006a\">\n"
			   "    <Account>\n"
			   "      <AccountType>email</AccountType>\n"
			   "      <Action>settings</Action>\n");
	for (size_t t = 0; t < G_N_ELEMENTS(protos); t++) {
		/* 2: implicit TLS, 1: STARTTLS, 0: none */
		for (int want = 2; want >= 0; want--) {
			for (size_t k = 0; k < ds->n_listeners; k++) {
				const struct listen_config *lc = &ds->listeners[k];
				const char *colon = strrchr(lc->address, ':');
				int tls = lc->implicit_tls ? 2 : cert ? 1 : 0;
				if (strcmp(lc->protocol, protos[t][0]) != 0 || colon == NULL || tls != want)
					continue;
				protocol_block(x, protos[t][1], host, colon + 1, login, tls);
			}
		}
	}
	g_string_append(x, "    </Account>\n  </Response>\n</Autodiscover>\n");
	g_free(host);
	g_free(login);
	*len_r = x->len;
	return g_string_free(x, FALSE);
}

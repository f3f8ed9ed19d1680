/*
 * parse.c — the milter service's pure functions: what it makes of the
 * strings the MTA and the config hand it (no libmilter, no I/O), for the
 * unit test and the fuzz target.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "milter/milter.h"

int
milter_conn_spec(const char *address, char *out, size_t outsz)
{
	const char *colon;
	char host[256];
	size_t hlen;
	int n;

	if (address == NULL || out == NULL || outsz == 0)
		return -1;
	if (strncmp(address, "unix:", 5) == 0) {
		/* libmilter's own form: "unix:/path" (also "local:") */
		if (address[5] != '/' || strcspn(address, "\r\n") != strlen(address))
			return -1;
		n = snprintf(out, outsz, "%s", address);
		return n < 0 || (size_t)n >= outsz ? -1 : 0;
	}
	if (address[0] == '[') {
		const char *end = strchr(address, ']');
		if (end == NULL || end[1] != ':' || end == address + 1)
			return -1;
		hlen = (size_t)(end - address - 1);
		if (hlen >= sizeof(host))
			return -1;
		memcpy(host, address + 1, hlen);
		host[hlen] = '\0';
		colon = end + 1;
	} else {
		colon = strrchr(address, ':');
		if (colon == NULL || colon == address || memchr(address, ':', (size_t)(colon - address)))
			return -1;
		hlen = (size_t)(colon - address);
		if (hlen >= sizeof(host))
			return -1;
		memcpy(host, address, hlen);
		host[hlen] = '\0';
	}
	const char *port = colon + 1;
	if (*port == '\0' || strlen(port) > 5 || strspn(port, "0123456789") != strlen(port) ||
	    atoi(port) <= 0 || atoi(port) > 65535)
		return -1;
	if (strspn(host, "0123456789abcdefABCDEF.:") != strlen(host))
		return -1; /* numeric addresses only, as every listener */
	n = snprintf(out, outsz, "%s:%s@%s", address[0] == '[' ? "inet6" : "inet", port, host);
	return n < 0 || (size_t)n >= outsz ? -1 : 0;
}

char *
milter_header_field(const char *name, const char *value, size_t *len_r)
{
	size_t nlen = strlen(name), vlen = strlen(value), len;
	char *field = xmalloc(nlen + 2 * vlen + 5);

	/* a name is printable (the MTA checked it); a control character in
	 * one would break the field, so it becomes '_' */
	for (size_t i = 0; i < nlen; i++)
		field[i] = (unsigned char)name[i] < 32 || name[i] == 127 ? '_' : name[i];
	memcpy(field + nlen, ": ", 2);
	len = nlen + 2;
	for (size_t i = 0; i < vlen; i++) {
		if (value[i] == '\n' && (i == 0 || value[i - 1] != '\r'))
			field[len++] = '\r';
		field[len++] = value[i];
	}
	field[len++] = '\r';
	field[len++] = '\n';
	field[len] = '\0';
	*len_r = len;
	return field;
}

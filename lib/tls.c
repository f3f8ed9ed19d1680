/*
 * tls.c — OpenSSL server contexts.
 *
 * A context is built from a certificate and a key setting (the caller
 * names them: this file knows no setting of its own). What goes wrong is
 * said in the admin's terms first — which setting, on which line, which
 * file, and why ("No such file or directory", "no PEM certificate in the
 * file", "does not match the certificate in tls_cert") — with OpenSSL's own
 * text after it when it adds something.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include "lib/lib.h"

/* "file:line: name = "path": " (or "file: ..." when the line is unknown) */
static char *
tls_setting_prefix(const struct mx_config *cfg, const char *name, const char *path)
{
	int line = cfg != NULL ? config_setting_line(cfg, name) : 0;

	if (cfg == NULL)
		return xasprintf("%s \"%s\": ", name, path);
	if (line > 0)
		return xasprintf("%s:%d: %s = \"%s\": ", cfg->path, line, name, path);
	return xasprintf("%s: %s = \"%s\": ", cfg->path, name, path);
}

/* The prefix, the reason, and OpenSSL's last error (if any) after it;
 * clears OpenSSL's error queue. */
static char *
tls_error(const struct mx_config *cfg, const char *name, const char *path, const char *reason)
{
	unsigned long e = ERR_peek_last_error();
	char *prefix = tls_setting_prefix(cfg, name, path);
	char *msg, detail[256];

	if (e != 0) {
		ERR_error_string_n(e, detail, sizeof(detail));
		msg = xasprintf("%s%s (OpenSSL: %s)", prefix, reason, detail);
	} else {
		msg = xasprintf("%s%s", prefix, reason);
	}
	ERR_clear_error();
	free(prefix);
	return msg;
}

enum pem_kind { PEM_CERT, PEM_KEY };

/* Why the file cannot serve as a PEM certificate or key, before OpenSSL
 * is asked (its own texts do not say "missing" or "wrong file"); NULL when
 * it looks right. Only the PEM armour lines are looked at. */
static const char *
tls_file_problem(const char *path, enum pem_kind kind)
{
	struct stat st;
	char line[256];
	bool found = false, encrypted = false;
	FILE *f;

	if (stat(path, &st) < 0)
		return strerror(errno);
	if (S_ISDIR(st.st_mode))
		return "is a directory, not a PEM file";
	f = fopen(path, "r");
	if (f == NULL)
		return strerror(errno);
	while (fgets(line, sizeof(line), f) != NULL) {
		if (strncmp(line, "-----BEGIN ", 11) == 0) {
			if (kind == PEM_CERT && strstr(line, "CERTIFICATE-----") != NULL)
				found = true;
			if (kind == PEM_KEY && strstr(line, "PRIVATE KEY-----") != NULL) {
				found = true;
				encrypted = encrypted || strstr(line, "ENCRYPTED") != NULL;
			}
		} else if (strncmp(line, "Proc-Type: 4,ENCRYPTED", 22) == 0) {
			encrypted = true;
		}
	}
	fclose(f);
	if (!found)
		return kind == PEM_CERT ? "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file"
					: "no PEM private key (-----BEGIN ... PRIVATE KEY-----) in the file";
	if (encrypted)
		return "the key is encrypted; mxguard needs it without a passphrase";
	return NULL;
}

/* An encrypted key would make OpenSSL prompt on the terminal: refuse. */
static int
tls_no_passphrase(char *buf, int size, int rwflag, void *userdata)
{
	return 0;
}

SSL_CTX *
tls_server_ctx_new(const struct mx_config *cfg, const char *cert_setting, const char *cert,
		   const char *key_setting, const char *key, char **error_r)
{
	SSL_CTX *ctx;
	const char *problem;
	unsigned long e;

	ERR_clear_error();
	if ((problem = tls_file_problem(cert, PEM_CERT)) != NULL) {
		*error_r = tls_error(cfg, cert_setting, cert, problem);
		return NULL;
	}
	if ((problem = tls_file_problem(key, PEM_KEY)) != NULL) {
		*error_r = tls_error(cfg, key_setting, key, problem);
		return NULL;
	}
	ctx = SSL_CTX_new(TLS_server_method());
	if (ctx == NULL) {
		*error_r = tls_error(cfg, cert_setting, cert, "cannot create a TLS context");
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
				 SSL_OP_CIPHER_SERVER_PREFERENCE);
	/* an idle session gives its read and write buffers back: about
	 * 9.5 KiB less per idle TLS connection (bench/idle-memory) */
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_default_passwd_cb(ctx, tls_no_passphrase);
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		*error_r = tls_error(cfg, cert_setting, cert, "not a valid PEM certificate chain");
		SSL_CTX_free(ctx);
		return NULL;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
		e = ERR_peek_last_error();
		char *why = ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH
				    ? xasprintf("does not match the certificate in %s", cert_setting)
				    : xstrdup("not a valid PEM private key");
		*error_r = tls_error(cfg, key_setting, key, why);
		free(why);
		SSL_CTX_free(ctx);
		return NULL;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		char *why = xasprintf("does not match the certificate in %s", cert_setting);
		*error_r = tls_error(cfg, key_setting, key, why);
		free(why);
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

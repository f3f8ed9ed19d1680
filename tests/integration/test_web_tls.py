"""test_web_tls — `tls = "implicit"` on the evhttp listeners (web, metrics).

A real mxguard with a web listener on plain HTTP and another on HTTPS
(the daemon's own test certificate), and a metrics listener over TLS.
Python's ssl (verifying the chain against the test certificate) and curl
--cacert are the clients: a login over HTTPS gets a Secure session
cookie and Strict-Transport-Security, the same login over plain HTTP
gets neither; /metrics answers over TLS; a plain-text request to a TLS
port gets no HTTP answer (nothing is ever spoken in clear there); a
failed handshake leaves the daemon serving; a reload's new certificate
is what the next connections get; a client that never starts its
handshake is dropped after the web section's timeout.
"""

import http.client
import os
import signal
import socket
import ssl
import subprocess
import time
import unittest

import mxtest
from mxtest import PASSWORD

USER = "demo@example.test"
LOGIN = b'{"user": "demo@example.test", "password": "%s"}' % PASSWORD.encode()


class WebTls(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = mxtest.Daemon(
            tls=True, users=(USER,),
            listen_extra={"web": {"protocol": "web"},
                          "webs": {"protocol": "web", "tls": "implicit"},
                          "metricss": {"protocol": "metrics", "tls": "implicit"}},
            extra_conf="web {\n\tstatic_dir = %s\n}\n" % mxtest.conf_value(
                os.path.join(mxtest.MX_SRCDIR, "web", "static")))
        cls.cert, _ = mxtest.test_cert()

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def https(self, port):
        return _Https(port, mxtest.client_tls_context())

    def login(self, conn):
        conn.request("POST", "/api/login", body=LOGIN, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        r.body = r.read()
        return r

    def test_login_over_https_secure_cookie(self):
        c = self.https(self.d.ports["webs"])
        try:
            r = self.login(c)
            self.assertEqual(r.status, 200, r.body)
            cookie = r.getheader("Set-Cookie")
            self.assertIn("mxguard_session=", cookie)
            attrs = [a.strip() for a in cookie.split(";")]
            self.assertIn("Secure", attrs)
            self.assertIn("HttpOnly", attrs)
            self.assertIn("SameSite=Strict", attrs)
            self.assertEqual(r.getheader("Strict-Transport-Security"), "max-age=31536000")
            self.assertIn("default-src 'self'", r.getheader("Content-Security-Policy"))
            # the session works on the same TLS connection (keep-alive)
            sid = cookie.split(";", 1)[0]
            c.request("GET", "/api/folders", headers={"Cookie": sid})
            r = c.getresponse()
            self.assertEqual(r.status, 200, r.read())
            self.assertEqual(r.getheader("Strict-Transport-Security"), "max-age=31536000")
            # the static page too
            c.request("GET", "/")
            r = c.getresponse()
            self.assertIn(b"app.js", r.read())
            self.assertEqual(r.getheader("Strict-Transport-Security"), "max-age=31536000")
        finally:
            c.close()
        self.d.wait_log(r"web name=webs serving the web page and /api/ over TLS")

    def test_login_over_http_no_secure(self):
        c = http.client.HTTPConnection("127.0.0.1", self.d.ports["web"], timeout=10)
        try:
            r = self.login(c)
            self.assertEqual(r.status, 200, r.body)
            attrs = [a.strip() for a in r.getheader("Set-Cookie").split(";")]
            self.assertNotIn("Secure", attrs)
            self.assertIn("HttpOnly", attrs)
            self.assertIsNone(r.getheader("Strict-Transport-Security"))
        finally:
            c.close()

    def test_curl_cacert(self):
        port = self.d.ports["webs"]
        r = subprocess.run(
            ["curl", "-sS", "-D", "-", "-o", "/dev/null", "--cacert", self.cert,
             "--resolve", "%s:%d:127.0.0.1" % (mxtest.HOSTNAME, port),
             "-H", "Content-Type: application/json", "--data-binary", LOGIN.decode(),
             "https://%s:%d/api/login" % (mxtest.HOSTNAME, port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"^HTTP/1\.1 200")
        self.assertRegex(r.stdout, r"(?im)^set-cookie: mxguard_session=[0-9a-f]{64}; Path=/; "
                         r"HttpOnly; SameSite=Strict; Secure\r?$")
        self.assertRegex(r.stdout, r"(?im)^strict-transport-security: max-age=31536000\r?$")
        # curl refuses a server it cannot verify: the chain is really checked
        r = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "https://127.0.0.1:%d/" % port],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30, text=True)
        self.assertNotEqual(r.returncode, 0)

    def test_metrics_over_tls(self):
        port = self.d.ports["metricss"]
        r = subprocess.run(
            ["curl", "-sS", "--cacert", self.cert,
             "--resolve", "%s:%d:127.0.0.1" % (mxtest.HOSTNAME, port),
             "https://%s:%d/metrics" % (mxtest.HOSTNAME, port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("# TYPE", r.stdout)
        self.assertIn("mxguard_", r.stdout)
        self.d.wait_log(r"metrics name=metricss serving /metrics over TLS")

    def test_plain_text_on_tls_port(self):
        # HTTP in clear to the TLS port: never an HTTP answer
        for name in ("webs", "metricss"):
            s = socket.create_connection(("127.0.0.1", self.d.ports[name]), timeout=10)
            try:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                got = b""
                try:
                    while len(got) < 65536:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        got += chunk
                except (ConnectionResetError, socket.timeout):
                    pass
                self.assertNotIn(b"HTTP/", got, name)
            finally:
                s.close()
        # and a bad handshake left both serving
        c = self.https(self.d.ports["webs"])
        try:
            c.request("GET", "/api/session")
            r = c.getresponse()
            r.read()
            self.assertEqual(r.status, 401)
        finally:
            c.close()
        self.assertTrue(self.d.running())

    def test_evhttp_error_over_tls(self):
        # a malformed request over TLS: evhttp's own 400, with HSTS and the rest
        ctx = mxtest.client_tls_context()
        with socket.create_connection(("127.0.0.1", self.d.ports["webs"]), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=mxtest.HOSTNAME) as s:
                s.sendall(b"GARBAGE\r\n\r\n")
                got = b""
                while True:
                    try:
                        chunk = s.recv(4096)
                    except ssl.SSLError:
                        break
                    if not chunk:
                        break
                    got += chunk
        head = got.partition(b"\r\n\r\n")[0].decode()
        self.assertTrue(head.startswith("HTTP/1.1 400 "), head)
        self.assertIn("\r\nStrict-Transport-Security: max-age=31536000\r\n", head)
        self.assertIn("\r\nX-Content-Type-Options: nosniff\r\n", head)
        self.assertIn("\r\nContent-Security-Policy: default-src 'self'", head)

    def test_plain_listener_no_hsts_on_errors(self):
        c = http.client.HTTPConnection("127.0.0.1", self.d.ports["web"], timeout=10)
        try:
            c.request("GET", "/nothing")
            r = c.getresponse()
            r.read()
            self.assertEqual(r.status, 404)
            self.assertIsNone(r.getheader("Strict-Transport-Security"))
        finally:
            c.close()
        c = self.https(self.d.ports["webs"])
        try:
            c.request("GET", "/nothing")
            r = c.getresponse()
            r.read()
            self.assertEqual(r.status, 404)
            self.assertEqual(r.getheader("Strict-Transport-Security"), "max-age=31536000")
        finally:
            c.close()


class Reload(unittest.TestCase):
    """A reload's new certificate is used by the next connections (the
    context is taken per connection), and a client that never sends its
    ClientHello is dropped after the web section's timeout."""

    @classmethod
    def setUpClass(cls):
        cls.d = mxtest.Daemon(
            tls=True, users=(USER,),
            listen_extra={"webs": {"protocol": "web", "tls": "implicit"}},
            extra_conf="web {\n\tstatic_dir = %s\n\ttimeout = 2\n}\n" % mxtest.conf_value(
                os.path.join(mxtest.MX_SRCDIR, "web", "static")))

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def peer_cert(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", self.d.ports["webs"]), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=mxtest.HOSTNAME) as s:
                der = s.getpeercert(binary_form=True)
                s.sendall(b"GET /api/session HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                got = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                self.assertTrue(got.startswith(b"HTTP/1.1 401 "), got[:60])
                return der

    def test_reload_new_certificate(self):
        old_pem, _ = mxtest.test_cert()
        with open(old_pem) as f:
            old = ssl.PEM_cert_to_DER_cert(f.read())
        self.assertEqual(self.peer_cert(), old)
        cert = os.path.join(self.d.dir, "cert2.pem")
        key = os.path.join(self.d.dir, "key2.pem")
        r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-subj", "/CN=" + mxtest.HOSTNAME, "-days", "2",
                            "-keyout", key, "-out", cert],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout)
        with open(cert) as f:
            new = ssl.PEM_cert_to_DER_cert(f.read())
        self.d.settings.update({"tls_cert": cert, "tls_key": key})
        self.d.write_config()
        off = len(self.d.log().encode())
        self.d.signal(signal.SIGHUP)
        self.assertTrue(self.d.wait_log(r"reloaded configuration", offset=off))
        # the loop switches to the new state on its own thread, soon after
        deadline = time.monotonic() + 10
        while self.peer_cert() != new and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.peer_cert(), new)

    def test_silent_client_dropped(self):
        s = socket.create_connection(("127.0.0.1", self.d.ports["webs"]), timeout=20)
        try:
            # nothing sent: evhttp's read timeout (timeout = 2) bounds the handshake
            self.assertEqual(s.recv(1), b"")
        finally:
            s.close()
        self.assertTrue(self.d.running())


def _Https(port, ctx):
    # the certificate names mx.example.test; connect to loopback with that name
    c = http.client.HTTPSConnection(mxtest.HOSTNAME, port, timeout=10, context=ctx)
    c._create_connection = lambda addr, timeout=None, source_address=None: \
        socket.create_connection(("127.0.0.1", port), timeout)
    return c


if __name__ == "__main__":
    mxtest.main(budget=120)

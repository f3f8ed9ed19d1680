"""test_web — the web service (web/, doc/web.md) with a real mxguard.

Mail is delivered over SMTP (smtplib) and read through the JSON API with
Python's http.client (cookies and the CSRF token handled by hand, so every
refusal can be checked), while an IMAP client (imaplib) on the same daemon
sees the same flags and folders: a browser's change lands in the Maildir
as IMAP's would. Also: login failures and the throttle shared with IMAP,
the security headers on every response, traversal folder names, the HTML
part's own sandboxing CSP, the static page and Thunderbird autoconfig.

Nothing here measures time; the failure delay is only seen through the
order of events.
"""

import http.client
import imaplib
import json
import os
import smtplib
import time
import xml.etree.ElementTree as ET
import unittest

import mxtest
from mxtest import PASSWORD

USER = "demo@example.test"


def web_daemon(failures_max=10, web=""):
    return mxtest.Daemon(
        users=(USER, "other@example.test"),
        listen_extra={"web": {"protocol": "web"}, "imap": {"protocol": "imap", "tls": "none"}},
        extra_conf=("web {\n\tstatic_dir = %s\n%s}\n" % (mxtest.conf_value(
            os.path.join(mxtest.MX_SRCDIR, "web", "static")), web)
            + "imap {\n\tplaintext_auth = \"loopback\"\n\tauth_failure_delay = 100\n"
            "\tauth_failures_max = %d\n\tauth_failure_window = 3600\n}\n" % failures_max))


def send_mail(d, subject, body="hello\r\n", extra="", encoding="utf-8"):
    msg = ("From: Alice <a@b.test>\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s@b.test>\r\n%s\r\n%s"
           % (USER, subject, subject.replace(" ", "-").replace("?", ""), extra, body))
    with smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.example.org", timeout=10) as s:
        s.sendmail("a@b.test", [USER], msg.encode(encoding))


class Web:
    """One browser: a cookie jar of one cookie, and the CSRF token."""

    def __init__(self, port):
        self.port = port
        self.cookie = None
        self.csrf = None

    def request(self, method, path, body=None, headers=None, csrf=True, raw=None):
        h = dict(headers or {})
        if self.cookie:
            h["Cookie"] = "mxguard_session=" + self.cookie
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
            if csrf and self.csrf:
                h["X-CSRF-Token"] = self.csrf
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            c.request(method, path, body=data, headers=h)
            r = c.getresponse()
            payload = r.read()
            r.body = payload
            for k, v in r.getheaders():
                if k.lower() == "set-cookie" and v.startswith("mxguard_session="):
                    val = v.split(";", 1)[0].split("=", 1)[1]
                    self.cookie = val or None
            return r
        finally:
            c.close()

    def json(self, method, path, body=None, **kw):
        r = self.request(method, path, body=body, **kw)
        try:
            j = json.loads(r.body)
        except ValueError:
            j = None
        return r.status, j

    def login(self, user=USER, password=PASSWORD):
        st, j = self.json("POST", "/api/login", {"user": user, "password": password})
        if st == 200:
            self.csrf = j["csrf"]
        return st, j


def check_headers(case, r, message_html=False):
    csp = r.getheader("Content-Security-Policy") or ""
    case.assertEqual(r.getheader("X-Content-Type-Options"), "nosniff")
    case.assertEqual(r.getheader("Referrer-Policy"), "no-referrer")
    if message_html:
        case.assertIn("default-src 'none'", csp)
        case.assertIn("sandbox", csp)
        case.assertNotIn("script-src", csp)
    else:
        case.assertIn("default-src 'self'", csp)
        case.assertIn("frame-ancestors 'none'", csp)
        case.assertEqual(r.getheader("X-Frame-Options"), "DENY")


class WebCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = web_daemon()
        cls.web_port = cls.d.ports["web"]
        cls.imap_port = cls.d.ports["imap"]

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def browser(self):
        b = Web(self.web_port)
        st, j = b.login()
        self.assertEqual(st, 200, j)
        return b

    def imap(self):
        m = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=10)
        m.login(USER, PASSWORD)
        self.addCleanup(m.logout)
        return m

    def find(self, b, folder, subject):
        st, j = b.json("GET", "/api/messages?folder=%s&per_page=200" % folder)
        self.assertEqual(st, 200, j)
        for m in j["messages"]:
            if m["subject"] == subject:
                return m
        return None


class Session(WebCase):
    def test_login_session_logout(self):
        b = self.browser()
        self.assertEqual(len(b.cookie), 64)
        st, j = b.json("GET", "/api/session")
        self.assertEqual(st, 200)
        self.assertEqual(j["user"], USER)
        self.assertEqual(j["csrf"], b.csrf)
        # logout needs the token too
        st, _ = b.json("POST", "/api/logout", {}, csrf=False)
        self.assertEqual(st, 403)
        st, _ = b.json("POST", "/api/logout", {})
        self.assertEqual(st, 200)
        self.assertIsNone(b.cookie)
        st, _ = b.json("GET", "/api/folders")
        self.assertEqual(st, 401)

    def test_old_cookie_after_logout(self):
        b = self.browser()
        old = b.cookie
        b.json("POST", "/api/logout", {})
        b.cookie = old
        st, _ = b.json("GET", "/api/session")
        self.assertEqual(st, 401)

    def test_cookie_attributes_and_secret_not_logged(self):
        c = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=10)
        body = json.dumps({"user": USER, "password": PASSWORD})
        c.request("POST", "/api/login", body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        c.close()
        self.assertEqual(r.status, 200)
        cookie = r.getheader("Set-Cookie")
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=Strict", cookie)
        sid = cookie.split(";")[0].split("=")[1]
        self.d.wait_log(r"web login client=127\.0\.0\.1 user=demo@example\.test")
        log = self.d.log()
        self.assertNotIn(sid, log)
        self.assertNotIn(PASSWORD, log)

    def test_wrong_password(self):
        b = Web(self.web_port)
        st, j = b.login(password="wrong")
        self.assertEqual(st, 401)
        self.assertIsNone(b.cookie)
        self.d.wait_log(r"web auth failed client=127\.0\.0\.1 user=demo@example\.test reason=bad_credentials")
        st, j = b.login(user="nobody@example.test")
        self.assertEqual(st, 401)

    def test_csrf_refused(self):
        b = self.browser()
        send_mail(self.d, "csrf probe")
        m = self.find(b, "INBOX", "csrf probe")
        for token in (None, "0" * 64, b.csrf[:-1] + ("0" if b.csrf[-1] != "0" else "1")):
            h = {"X-CSRF-Token": token} if token else {}
            st, j = b.json("POST", "/api/flags", {"folder": "INBOX", "uid": m["uid"], "flagged": True},
                           csrf=False, headers=h)
            self.assertEqual(st, 403, (token, j))
        # a form post (no JSON content type) is refused even with the token
        r = b.request("POST", "/api/flags", raw=b"folder=INBOX&uid=1",
                      headers={"Content-Type": "application/x-www-form-urlencoded",
                               "X-CSRF-Token": b.csrf})
        self.assertEqual(r.status, 415)
        # nothing changed
        self.assertFalse(self.find(b, "INBOX", "csrf probe")["flagged"])
        # another browser's token does not work for this session
        b2 = self.browser()
        st, _ = b.json("POST", "/api/flags", {"folder": "INBOX", "uid": m["uid"], "flagged": True},
                       csrf=False, headers={"X-CSRF-Token": b2.csrf})
        self.assertEqual(st, 403)

    def test_no_session(self):
        b = Web(self.web_port)
        for path in ("/api/folders", "/api/messages?folder=INBOX", "/api/message?folder=INBOX&uid=1",
                     "/api/message.html?folder=INBOX&uid=1"):
            r = b.request("GET", path)
            self.assertEqual(r.status, 401, path)
            check_headers(self, r)
        b.cookie = "f" * 64
        self.assertEqual(b.request("GET", "/api/folders").status, 401)
        b.cookie = "../../etc/passwd"
        self.assertEqual(b.request("GET", "/api/folders").status, 401)


class Headers(WebCase):
    def test_every_response(self):
        b = self.browser()
        paths = ["/", "/index.html", "/app.js", "/style.css", "/nothing", "/api/nothing",
                 "/api/folders", "/api/messages?folder=..", "/mail/config-v1.1.xml",
                 "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=demo@example.test"]
        for p in paths:
            r = b.request("GET", p)
            check_headers(self, r)
        # a method the service does not take: its own 405, with the headers
        r = b.request("PUT", "/api/folders")
        self.assertEqual(r.status, 405)
        self.assertEqual(r.getheader("Allow"), "GET, HEAD, POST")
        check_headers(self, r)
        r = Web(self.web_port).request("POST", "/api/login", body={"user": USER, "password": "x"})
        check_headers(self, r)

    def test_static_page(self):
        b = Web(self.web_port)
        r = b.request("GET", "/")
        self.assertEqual(r.status, 200)
        self.assertIn(b"app.js", r.body)
        self.assertTrue(r.getheader("Content-Type").startswith("text/html"))
        r = b.request("GET", "/app.js")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.getheader("Content-Type").startswith("text/javascript"))
        self.assertEqual(b.request("GET", "/../etc/passwd").status, 404)
        self.assertEqual(b.request("GET", "/web.h").status, 404)

    def test_limits(self):
        b = self.browser()
        r = b.request("GET", "/api/folders", headers={"X-Big": "a" * 20000})
        self.assertIn(r.status, (400, 413, 431))
        r = b.request("POST", "/api/flags", body={"pad": "a" * 40000, "folder": "INBOX", "uid": 1})
        self.assertIn(r.status, (400, 413))
        r = b.request("POST", "/api/flags", raw=b"{not json", headers={
            "Content-Type": "application/json", "X-CSRF-Token": b.csrf})
        self.assertEqual(r.status, 400)
        self.assertTrue(self.d.running())


def raw_http(port, data, head_first=False):
    """Send raw octets, read until the server closes: [(status, headers,
    body)]; head_first: the first answer is a HEAD's (no body)."""
    import socket
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(data)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    finally:
        s.close()
    out = []
    while got:
        head, _, rest = got.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers.setdefault(k.strip().lower(), v.strip())
            headers.setdefault("_count", {}).setdefault(k.strip().lower(), 0)
            headers["_count"][k.strip().lower()] += 1
        n = 0 if head_first and not out else int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:n]))
        got = rest[n:]
    return out


class RawHttp(WebCase):
    """Raw sockets: what evhttp's parser sees before the service does."""

    def assert_security(self, h):
        self.assertIn("default-src 'self'", h.get("content-security-policy", ""))
        self.assertEqual(h.get("x-content-type-options"), "nosniff")
        self.assertEqual(h.get("x-frame-options"), "DENY")
        self.assertEqual(h.get("referrer-policy"), "no-referrer")
        self.assertEqual(h.get("cache-control"), "no-store")
        # each once: the service's answers are not given them twice
        for k in ("content-security-policy", "x-content-type-options", "x-frame-options",
                  "referrer-policy", "cache-control", "cross-origin-opener-policy"):
            self.assertEqual(h["_count"].get(k), 1, k)
        self.assertNotIn("strict-transport-security", h)  # plain HTTP

    def test_methods_answered_by_the_service(self):
        for m in ("PUT", "DELETE", "OPTIONS", "TRACE", "PATCH"):
            [(st, h, body)] = raw_http(self.web_port, b"%s /api/folders HTTP/1.1\r\nHost: x\r\n"
                                       b"Connection: close\r\n\r\n" % m.encode())
            self.assertEqual(st, 405, m)
            self.assertEqual(h.get("allow"), "GET, HEAD, POST")
            self.assert_security(h)

    def test_expect_continue(self):
        # evhttp's interim 100 is left as it is; the final answer has the headers once
        import socket
        body = b'{"user": "demo@example.test", "password": "wrong"}'
        s = socket.create_connection(("127.0.0.1", self.web_port), timeout=10)
        try:
            s.sendall(b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Expect: 100-continue\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
                      % len(body))
            got = b""
            while b"\r\n\r\n" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            self.assertEqual(got, b"HTTP/1.1 100 Continue\r\n\r\n")
            s.sendall(body)
            rest = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                rest += chunk
        finally:
            s.close()
        head = rest.partition(b"\r\n\r\n")[0].decode()
        self.assertTrue(head.startswith("HTTP/1.1 401 "), head)
        self.assertEqual(head.lower().count("\r\nx-content-type-options: nosniff"), 1)
        self.assertEqual(head.lower().count("\r\ncontent-security-policy: "), 1)

    def test_head_keepalive(self):
        # HEAD: the headers and the length of a GET, no body; the next
        # request on the same connection is answered right after them
        [(st, h, body)] = raw_http(self.web_port, b"GET /app.js HTTP/1.1\r\nHost: x\r\n"
                                   b"Connection: close\r\n\r\n")
        size = int(h["content-length"])
        self.assertEqual(len(body), size)
        rs = raw_http(self.web_port, b"HEAD /app.js HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                      head_first=True)
        self.assertEqual([r[0] for r in rs], [200, 404])
        self.assertEqual(int(rs[0][1]["content-length"]), size)
        self.assertEqual(rs[0][2], b"")
        for r in rs:
            self.assert_security(r[1])

    def test_evhttp_own_errors(self):
        # answered by evhttp before the service sees a request: the status,
        # Connection: close, a fixed page that repeats nothing of the
        # request, and the security headers all the same (added after the
        # status line by the service's watch on the connection's output)
        mark = b"<script>x</script>"
        cases = [
            (b"GARBAGE" + mark + b"\r\n\r\n", 400),
            (b"GET /" + mark + b" HTTP/9.9\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20000 + mark + b"\r\n\r\n", 400),
            (b"POST /api/login HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + mark, 413),
            (b"FOO" + mark + b" / HTTP/1.1\r\nHost: x\r\n\r\n", 501),
        ]
        for req, want in cases:
            [(st, h, body)] = raw_http(self.web_port, req)
            self.assertEqual(st, want, req[:30])
            self.assertEqual(h.get("connection"), "close")
            self.assert_security(h)
            self.assertNotIn(b"script", body)
            self.assertNotIn(b"aaaa", body)
        self.assertTrue(self.d.running())


class Mail(WebCase):
    def test_folders_counts(self):
        b = self.browser()
        send_mail(self.d, "count one")
        st, j = b.json("GET", "/api/folders")
        self.assertEqual(st, 200)
        inbox = [f for f in j["folders"] if f["name"] == "INBOX"][0]
        self.assertGreaterEqual(inbox["total"], 1)
        self.assertGreaterEqual(inbox["unread"], 1)
        m = self.imap()
        typ, data = m.select("INBOX", readonly=True)
        self.assertEqual(int(data[0]), inbox["total"])

    def test_traversal_refused(self):
        b = self.browser()
        for name in ("..", "../other", ".hidden", "a/b", "a..b", "%2e%2e", "..%2F..", "*", "a\\b", ""):
            st, j = b.json("GET", "/api/messages?folder=" + name)
            self.assertIn(st, (400, 404), name)
            st, _ = b.json("POST", "/api/move", {"folder": "INBOX", "uid": 1, "to": name})
            self.assertIn(st, (400, 404), name)
        st, _ = b.json("GET", "/api/message?folder=INBOX&uid=-1")
        self.assertEqual(st, 400)
        st, _ = b.json("GET", "/api/message?folder=INBOX&uid=01")
        self.assertEqual(st, 400)
        st, _ = b.json("GET", "/api/message?folder=INBOX&uid=99999999")
        self.assertEqual(st, 404)

    def test_other_users_mail_unreachable(self):
        send_mail(self.d, "private one")
        b = self.browser()
        uid = self.find(b, "INBOX", "private one")["uid"]
        o = Web(self.web_port)
        st, _ = o.login(user="other@example.test")
        self.assertEqual(st, 200)
        st, j = o.json("GET", "/api/message?folder=INBOX&uid=%d" % uid)
        self.assertEqual(st, 404)
        st, j = o.json("GET", "/api/messages?folder=INBOX")
        self.assertEqual(j["total"], 0)

    def test_list_newest_first_and_paged(self):
        for i in range(3):
            send_mail(self.d, "page %d" % i)
        b = self.browser()
        st, j = b.json("GET", "/api/messages?folder=INBOX&per_page=200")
        subjects = [m["subject"] for m in j["messages"] if m["subject"].startswith("page ")]
        self.assertEqual(subjects, ["page 2", "page 1", "page 0"])
        uids = [m["uid"] for m in j["messages"]]
        self.assertEqual(uids, sorted(uids, reverse=True))
        st, j1 = b.json("GET", "/api/messages?folder=INBOX&per_page=1&page=1")
        self.assertEqual(j1["messages"][0]["uid"], uids[1])
        st, _ = b.json("GET", "/api/messages?folder=INBOX&per_page=100000")
        self.assertEqual(st, 400)

    def test_search_from_subject(self):
        send_mail(self.d, "needle in subject")
        send_mail(self.d, "other thing")
        b = self.browser()
        st, j = b.json("GET", "/api/messages?folder=INBOX&q=NEEDLE")
        self.assertEqual(st, 200)
        self.assertEqual([m["subject"] for m in j["messages"]], ["needle in subject"])
        self.assertEqual(j["total"], 1)
        # From: the display name, decoded
        st, j = b.json("GET", "/api/messages?folder=INBOX&q=alice&per_page=200")
        self.assertEqual(j["total"], len(j["messages"]))
        self.assertIn("other thing", [m["subject"] for m in j["messages"]])
        st, j = b.json("GET", "/api/messages?folder=INBOX&q=" + "x" * 201)
        self.assertEqual(st, 400)

    def test_read_decoded(self):
        send_mail(self.d, "=?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4=?=", body="Hall\xe9chen\r\n", encoding="latin-1",
                  extra="MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
                        "Content-Transfer-Encoding: 8bit\r\n")
        b = self.browser()
        m = self.find(b, "INBOX", "Gr\u00fc\u00dfe aus K\u00f6ln")
        self.assertIsNotNone(m)
        self.assertIn("Alice", m["from"])
        st, j = b.json("GET", "/api/message?folder=INBOX&uid=%d" % m["uid"])
        self.assertEqual(st, 200)
        self.assertEqual(j["subject"], "Gr\u00fc\u00dfe aus K\u00f6ln")
        self.assertIn("Hall\u00e9chen", j["text"])
        self.assertFalse(j["has_html"])

    def test_html_part_sandboxed(self):
        body = ("--b1\r\nContent-Type: text/plain\r\n\r\nplain side\r\n"
                "--b1\r\nContent-Type: text/html\r\n\r\n<p>html side</p><script>parent.x=1</script>"
                "<img src=\"http://remote.example/x.png\" onerror=\"alert(1)\">\r\n--b1--\r\n")
        send_mail(self.d, "html one", body=body,
                  extra="MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b1\r\n")
        b = self.browser()
        m = self.find(b, "INBOX", "html one")
        st, j = b.json("GET", "/api/message?folder=INBOX&uid=%d" % m["uid"])
        self.assertTrue(j["has_html"])
        self.assertIn("plain side", j["text"])
        self.assertNotIn("html side", j["text"])
        r = b.request("GET", "/api/message.html?folder=INBOX&uid=%d" % m["uid"])
        self.assertEqual(r.status, 200)
        self.assertTrue(r.getheader("Content-Type").startswith("text/html"))
        self.assertIn(b"html side", r.body)
        check_headers(self, r, message_html=True)

    def test_remote_images_switch(self):
        body = ("--b1\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
                "--b1\r\nContent-Type: text/html\r\n\r\n<p>pic</p>"
                "<img alt=x src=\"http://127.0.0.1:9/x.png\">\r\n--b1--\r\n")
        send_mail(self.d, "remote pic", body=body,
                  extra="MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b1\r\n")
        body2 = ("--b1\r\nContent-Type: text/html\r\n\r\n<p>only a <a href=\"http://x.test/\">link</a>"
                 " and <img src=\"data:image/png;base64,AAAA\"></p>\r\n--b1--\r\n")
        send_mail(self.d, "no remote pic", body=body2,
                  extra="MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b1\r\n")
        b = self.browser()
        m = self.find(b, "INBOX", "remote pic")
        st, j = b.json("GET", "/api/message?folder=INBOX&uid=%d" % m["uid"])
        self.assertTrue(j["remote_images"])
        m2 = self.find(b, "INBOX", "no remote pic")
        st, j2 = b.json("GET", "/api/message?folder=INBOX&uid=%d" % m2["uid"])
        self.assertTrue(j2["has_html"])
        self.assertFalse(j2["remote_images"])

        def csp(query):
            r = b.request("GET", "/api/message.html?folder=INBOX&uid=%d%s" % (m["uid"], query))
            self.assertEqual(r.status, 200)
            self.assertIn(b"pic", r.body)
            self.assertEqual(r.getheader("X-Frame-Options"), "SAMEORIGIN")
            self.assertEqual(len([k for k, _ in r.getheaders()
                                  if k.lower() == "content-security-policy"]), 1)
            return dict((d.strip().split(" ", 1) + [""])[:2]
                        for d in r.getheader("Content-Security-Policy").split(";"))
        off, off0, on = csp(""), csp("&remote=0"), csp("&remote=1")
        self.assertEqual(off, off0)
        self.assertEqual(off["img-src"], "data:")
        self.assertEqual(on["img-src"], "https: http: data:")
        # nothing else is loosened
        self.assertEqual({k: v for k, v in off.items() if k != "img-src"},
                         {k: v for k, v in on.items() if k != "img-src"})
        self.assertEqual(on["default-src"], "'none'")
        self.assertIn("sandbox", on)
        self.assertNotIn("script-src", on)
        for bad in ("2", "yes", ""):
            r = b.request("GET", "/api/message.html?folder=INBOX&uid=%d&remote=%s" % (m["uid"], bad))
            self.assertEqual(r.status, 400, bad)

    def test_attachment_download(self):
        body = ("--b2\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
                "--b2\r\nContent-Type: text/html; name=\"x.html\"\r\n"
                "Content-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22q%22.html\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\n"
                "PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==\r\n--b2--\r\n")
        send_mail(self.d, "with attachment", body=body,
                  extra="MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b2\r\n")
        b = self.browser()
        m = self.find(b, "INBOX", "with attachment")
        st, j = b.json("GET", "/api/message?folder=INBOX&uid=%d" % m["uid"])
        self.assertEqual(j["text"].strip(), "see attached")
        self.assertEqual(j["attachments"], [{"part": 0, "name": "r\u00e9sum\u00e9 \"q\".html",
                                             "type": "text/html"}])
        r = b.request("GET", "/api/attachment?folder=INBOX&uid=%d&part=0" % m["uid"])
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"<script>alert(1)</script>")
        self.assertEqual(r.getheader("Content-Disposition"),
                         "attachment; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22q%22.html")
        self.assertEqual(r.getheader("Content-Type"), "text/html")
        check_headers(self, r, message_html=True)
        self.assertEqual(b.request("GET", "/api/attachment?folder=INBOX&uid=%d&part=1" % m["uid"]).status, 404)
        self.assertEqual(b.request("GET", "/api/attachment?folder=INBOX&uid=%d&part=x" % m["uid"]).status, 400)
        self.assertEqual(Web(self.web_port).request(
            "GET", "/api/attachment?folder=INBOX&uid=%d&part=0" % m["uid"]).status, 401)

    def test_flags_seen_by_imap(self):
        send_mail(self.d, "flag me")
        b = self.browser()
        m = self.find(b, "INBOX", "flag me")
        self.assertFalse(m["seen"])
        st, j = b.json("POST", "/api/flags", {"folder": "INBOX", "uid": m["uid"], "seen": True,
                                              "flagged": True})
        self.assertEqual(st, 200, j)
        self.assertEqual(j, {"seen": True, "flagged": True})
        im = self.imap()
        im.select("INBOX", readonly=True)
        typ, data = im.uid("FETCH", str(m["uid"]), "(FLAGS)")
        self.assertIn(b"\\Seen", data[0])
        self.assertIn(b"\\Flagged", data[0])
        # and the reverse: IMAP clears \Flagged, the browser sees it
        im.select("INBOX")
        im.uid("STORE", str(m["uid"]), "-FLAGS", "(\\Flagged)")
        m2 = self.find(b, "INBOX", "flag me")
        self.assertEqual(m2["uid"], m["uid"])
        self.assertTrue(m2["seen"])
        self.assertFalse(m2["flagged"])

    def test_spam_notspam_delete_move(self):
        send_mail(self.d, "move me")
        b = self.browser()
        m = self.find(b, "INBOX", "move me")
        st, j = b.json("POST", "/api/spam", {"folder": "INBOX", "uid": m["uid"]})
        self.assertEqual(st, 200, j)
        self.assertEqual(j["folder"], "Junk")
        self.assertIsNone(self.find(b, "INBOX", "move me"))
        self.assertIsNotNone(self.find(b, "Junk", "move me"))
        im = self.imap()
        typ, data = im.select("Junk", readonly=True)
        self.assertEqual(typ, "OK")
        typ, data = im.uid("SEARCH", None, "SUBJECT", '"move me"')
        self.assertEqual(data[0].split(), [str(j["uid"]).encode()])
        junk_log = os.path.join(self.d.maildir(), "mxguard-junk-moves.log")
        with open(junk_log) as f:
            self.assertIn("\tmove\tto-junk\tINBOX\tJunk\t%d\t<move-me@b.test>" % j["uid"], f.read())
        # not spam: back to INBOX
        st, j2 = b.json("POST", "/api/notspam", {"folder": "Junk", "uid": j["uid"]})
        self.assertEqual(st, 200, j2)
        self.assertEqual(j2["folder"], "INBOX")
        with open(junk_log) as f:
            self.assertIn("\tmove\tfrom-junk\tJunk\tINBOX\t%d\t" % j2["uid"], f.read())
        # delete: into Trash, made on first use; IMAP lists it
        st, j3 = b.json("POST", "/api/delete", {"folder": "INBOX", "uid": j2["uid"]})
        self.assertEqual(st, 200, j3)
        self.assertEqual(j3["folder"], "Trash")
        typ, data = im.list()
        self.assertTrue(any(b'"Trash"' in l or l.endswith(b" Trash") for l in data), data)
        # move between folders; a folder that does not exist is refused
        st, _ = b.json("POST", "/api/move", {"folder": "Trash", "uid": j3["uid"], "to": "Nowhere"})
        self.assertEqual(st, 404)
        im.create("Archive")
        st, j4 = b.json("POST", "/api/move", {"folder": "Trash", "uid": j3["uid"], "to": "Archive"})
        self.assertEqual(st, 200)
        im.select("Archive", readonly=True)
        typ, data = im.uid("SEARCH", None, "ALL")
        self.assertEqual(data[0].split(), [str(j4["uid"]).encode()])
        # the old UID is gone
        st, _ = b.json("POST", "/api/move", {"folder": "Trash", "uid": j3["uid"], "to": "INBOX"})
        self.assertEqual(st, 404)


class Autoconfig(WebCase):
    def test_xml(self):
        for path in ("/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=demo%40example.test",
                     "/mail/config-v1.1.xml"):
            r = Web(self.web_port).request("GET", path)
            self.assertEqual(r.status, 200, path)
            root = ET.fromstring(r.body)
            prov = root.find("emailProvider")
            self.assertEqual(prov.find("domain").text, "example.test")
            inc = {s.get("type"): s for s in prov.findall("incomingServer")}
            self.assertEqual(inc["imap"].find("port").text, str(self.imap_port))
            self.assertEqual(inc["imap"].find("hostname").text, mxtest.HOSTNAME)
            self.assertEqual(inc["imap"].find("socketType").text, "plain")
            out = prov.findall("outgoingServer")
            self.assertEqual(out[0].find("port").text, str(self.d.port))
        r = Web(self.web_port).request("GET", "/mail/config-v1.1.xml?emailaddress=a@<script>")
        self.assertEqual(r.status, 400)


class Expiry(unittest.TestCase):
    """Idle and absolute expiry. The waits only ever exceed the limits
    (the server counts whole seconds of CLOCK_MONOTONIC), so a slow run
    cannot make a session end late; the "still alive" steps are a second
    apart against a 3-second idle limit."""

    @classmethod
    def setUpClass(cls):
        cls.d = web_daemon(web="\tsession_idle = 3\n\tsession_max = 6\n")

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def test_idle(self):
        b = Web(self.d.ports["web"])
        self.assertEqual(b.login()[0], 200)
        self.assertEqual(b.json("GET", "/api/session")[0], 200)
        time.sleep(4.5)
        self.assertEqual(b.json("GET", "/api/session")[0], 401)

    def test_absolute(self):
        b = Web(self.d.ports["web"])
        self.assertEqual(b.login()[0], 200)
        start = time.monotonic()
        while time.monotonic() - start < 7.5:
            st = b.json("GET", "/api/session")[0]
            if time.monotonic() - start < 4.5:
                self.assertEqual(st, 200)
            time.sleep(1)
        self.assertEqual(b.json("GET", "/api/session")[0], 401)


class Throttle(unittest.TestCase):
    """Failures over IMAP and the web count together (one process table)."""

    @classmethod
    def setUpClass(cls):
        cls.d = web_daemon(failures_max=3)

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def test_shared_throttle(self):
        b = Web(self.d.ports["web"])
        st, _ = b.login(password="bad1")
        self.assertEqual(st, 401)
        m = imaplib.IMAP4("127.0.0.1", self.d.ports["imap"], timeout=10)
        with self.assertRaises(imaplib.IMAP4.error):
            m.login(USER, "bad2")
        m.logout()
        st, _ = b.login(password="bad3")
        self.assertEqual(st, 401)
        # now blocked, even with the right password
        st, j = b.login()
        self.assertEqual(st, 429, j)
        self.assertIsNone(b.cookie)
        self.d.wait_log(r"web auth failed client=127\.0\.0\.1 user=demo@example\.test reason=throttled")
        m = imaplib.IMAP4("127.0.0.1", self.d.ports["imap"], timeout=10)
        with self.assertRaises(imaplib.IMAP4.error):
            m.login(USER, PASSWORD)
        m.logout()


if __name__ == "__main__":
    mxtest.main(budget=120)

"""test_smtp_security — what a hostile or careless client must not achieve.

No relaying (also through source routes, %-hacks, quoted and bang paths), no
unknown local users, bare LF refused by default, no SMTP smuggling through
fake end-of-data markers, STARTTLS that cannot be injected into, implicit TLS,
per-client connection limits, idle timeouts, and bounded memory for a client
that never sends a line end.
"""

import re
import smtplib
import socket
import threading
import time

import mxtest
from mxtest import DaemonTestCase, smtp_data, queued_id


class Relay(DaemonTestCase):
    daemon_args = dict(users=("demo@example.test",))

    def rcpt(self, addr):
        c = self.ehlo_client()
        r = c.cmd("MAIL FROM:<a@b.test>")
        self.assertEqual(r.code, 250, r)
        r = c.cmd("RCPT TO:<%s>" % addr)
        d = c.cmd("DATA")
        c.close()
        return r, d

    def test_unknown_local_user(self):
        r, d = self.rcpt("nobody@example.test")
        self.assertEqual((r.code, r.enhanced), (550, "5.1.1"), r)
        self.assertEqual(d.code, 503, d)

    def test_relay_denied(self):
        for addr in ("x@other.test", "demo@other.test", "demo@sub.example.test",
                     "demo@example.test.other.test", "demo@example.testx"):
            with self.subTest(addr=addr):
                r, d = self.rcpt(addr)
                self.assertEqual((r.code, r.enhanced), (550, "5.7.1"), r)
                self.assertEqual(d.code, 503, d)

    def test_routing_tricks_refused(self):
        cases = [
            ("@other.test:demo@example.test", (501, 550)),
            ("@other.test,@third.test:demo@example.test", (501, 550)),
            ("demo%other.test@example.test", (550,)),
            # a quoted local part that needs its quotes: 553, not relaying
            ('"demo@other.test"@example.test', (553,)),
            ("demo@other.test@example.test", (501, 550, 553)),
            ("demo!other@example.test", (550,)),
            ("other.test!demo@example.test", (550,)),
            ("demo@[127.0.0.1]", (501, 550, 553)),
        ]
        for addr, codes in cases:
            with self.subTest(addr=addr):
                r, d = self.rcpt(addr)
                self.assertIn(r.code, codes, r)
                self.assertTrue(r.all_enhanced(), r)
                self.assertEqual(d.code, 503, d)
        self.assertEqual(self.d.all_files("new"), [])

    def test_local_user_accepted(self):
        r, d = self.rcpt("demo@example.test")
        self.assertEqual((r.code, r.enhanced), (250, "2.1.5"), r)
        self.assertEqual(d.code, 354, d)


SMUGGLE_VARIANTS = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r", b"\r\n.\r\r\n",
                    b"\r.\n"]
SMUGGLED = (b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<demo@example.test>\r\nDATA\r\n"
            b"Subject: smuggled\r\n\r\nsecond\r\n.\r\n")


def has_bare_lf(b):
    return re.search(rb"(?<!\r)\n", b) is not None


class SmugglingMixin:
    accept = False

    def send_bare(self, body):
        """One transaction whose DATA is body (raw, incl. the real end
        marker), followed by VRFY as a marker. Returns every reply that
        arrived before the VRFY answer (252)."""
        c = self.ehlo_client()
        self.assertEqual(c.cmd("MAIL FROM:<a@b.test>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<demo@example.test>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(body + b"VRFY marker\r\n")
        replies = []
        for _ in range(12):
            r = c.reply()
            if r.code == 252:
                break
            replies.append(r)
        else:
            self.fail("no answer to the VRFY marker: %r" % replies)
        return c, replies

    def assertNoSmuggledMessage(self):
        for p in self.d.all_files("new") + self.d.all_files("cur"):
            with open(p, "rb") as f:
                data = f.read()
            hdr = mxtest.parse_headers(data)
            self.assertNotEqual(hdr.get("Subject"), "smuggled", p)
            self.assertNotIn(b"Return-Path: <evil@x.test>", data, p)

    def test_smuggling_variants(self):
        for variant in SMUGGLE_VARIANTS:
            with self.subTest(variant=variant):
                before = set(self.d.all_files("new"))
                body = b"Subject: a\r\n\r\nfirst" + variant + SMUGGLED
                c, replies = self.send_bare(body)
                self.assertEqual(len(replies), 1, "more than one reply: %r" % replies)
                r = replies[0]
                new = set(self.d.all_files("new")) - before
                if self.accept:
                    self.assertEqual(r.code, 250, r)
                elif has_bare_lf(variant):
                    self.assertEqual((r.code, r.enhanced), (550, "5.6.0"), r)
                if r.code == 250:
                    self.assertIsNotNone(queued_id(r), r)
                    self.assertEqual(len(new), 1, new)
                    with open(new.pop(), "rb") as f:
                        data = f.read()
                    hdr = mxtest.parse_headers(data)
                    self.assertEqual(hdr.get_all("Subject"), ["a"], data)
                    head, _, content = data.partition(b"\n\n")
                    self.assertIn(b"Subject: smuggled", content)
                    self.assertIn(b"MAIL FROM:<evil@x.test>", content)
                    self.assertIn(b"first", content)
                else:
                    self.assertEqual(r.code // 100, 5, r)
                    self.assertEqual(new, set())
                c.close()
                self.assertNoSmuggledMessage()


class BareLFReject(SmugglingMixin, DaemonTestCase):
    daemon_args = dict()
    accept = False

    def test_bare_lf_rejected(self):
        before = set(self.d.all_files("new"))
        off = self.d.log_size()
        c, replies = self.send_bare(b"Subject: bare\r\nMessage-ID: <bare.1@b.test>\r\n\r\n"
                                    b"line one\nline two\r\n.\r\n")
        self.assertEqual(len(replies), 1, replies)
        self.assertEqual((replies[0].code, replies[0].enhanced), (550, "5.6.0"), replies[0])
        # the tx line says it was refused, why, and which message it was
        m = self.d.wait_log(r"(?m)^.* smtp tx .*$", off)
        self.assertIsNotNone(m)
        for want in (" action=reject ", " result=rejected ", " dsn=5.6.0 ", " reason=bare_lf ",
                     " msgid=<bare.1@b.test> "):
            self.assertIn(want, m.group(0))
        self.assertEqual(set(self.d.all_files("new")), before)
        self.assertEqual(self.d.all_files("tmp"), [])
        # the session goes on
        fr = c.transaction("a@b.test", ["demo@example.test"], smtp_data(b"Subject: ok\n\nok\n"))[3]
        self.assertIsNotNone(queued_id(fr), fr)


class BareLFAccept(SmugglingMixin, DaemonTestCase):
    daemon_args = dict(settings={"bare_lf": "accept"})
    accept = True

    def test_bare_lf_accepted(self):
        before = set(self.d.all_files("new"))
        c, replies = self.send_bare(b"Subject: bare\r\n\r\nline one\nline two\r\n.\r\n")
        self.assertEqual(len(replies), 1, replies)
        self.assertIsNotNone(queued_id(replies[0]), replies[0])
        new = set(self.d.all_files("new")) - before
        self.assertEqual(len(new), 1)
        with open(new.pop(), "rb") as f:
            self.assertTrue(f.read().endswith(b"\nSubject: bare\n\nline one\nline two\n"))


class StartTLS(DaemonTestCase):
    daemon_args = dict(tls=True, implicit_tls=True)

    def test_smtplib_starttls(self):
        before = set(self.d.files())
        ctx = mxtest.client_tls_context(check_hostname=False)
        with smtplib.SMTP("127.0.0.1", self.d.port, local_hostname="client.example.org",
                          timeout=10) as s:
            s.ehlo()
            self.assertTrue(s.has_extn("starttls"))
            code, _ = s.starttls(context=ctx)
            self.assertEqual(code, 220)
            cert = s.sock.getpeercert()
            self.assertIn((("commonName", "mx.example.test"),), cert["subject"])
            code, text = s.ehlo()
            self.assertEqual(code, 250)
            self.assertFalse(s.has_extn("starttls"), text)
            self.assertTrue(s.has_extn("pipelining"))
            self.assertEqual(s.mail("a@b.test")[0], 250)
            self.assertEqual(s.rcpt("demo@example.test")[0], 250)
            code, text = s.data(b"Subject: tls\r\n\r\nover tls\r\n")
            self.assertEqual(code, 250, text)
        new = set(self.d.files()) - before
        self.assertEqual(len(new), 1)
        with open(new.pop(), "rb") as f:
            data = f.read()
        self.assertRegex(data, mxtest.received_re("client.example.org", "ESMTPS", None,
                                                   "demo@example.test"))

    def test_help_lists_starttls_only_when_offered(self):
        c = self.ehlo_client()
        verbs = "HELO EHLO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY"
        self.assertEqual(c.cmd("HELP").raw, ["214 2.0.0 Commands: %s STARTTLS" % verbs])
        r, leftover = c.starttls()
        self.assertEqual(r.code, 220, r)
        self.assertEqual(leftover, b"")
        # inside TLS STARTTLS is no longer offered: neither by EHLO nor HELP
        self.assertNotIn("STARTTLS", c.ehlo().lines)
        self.assertEqual(c.cmd("HELP").raw, ["214 2.0.0 Commands: %s" % verbs])

    def test_starttls_injection_noop(self):
        c = self.ehlo_client()
        c.send("STARTTLS\r\nNOOP\r\n")
        r = c.reply()
        self.assertEqual(r.code, 220, r)
        self.assertEqual(c.pending(), b"", "plaintext after the 220: %r" % c.pending())
        c.sock = mxtest.client_tls_context().wrap_socket(c.sock, server_hostname=mxtest.HOSTNAME)
        r = c.ehlo()
        self.assertEqual(r.code, 250, r)
        self.assertGreater(len(r.raw), 1, "first reply inside TLS is not the EHLO reply: %r" % r)
        self.assertTrue(r.lines[0].startswith("mx.example.test"), r)
        self.assertNotIn("STARTTLS", r.lines, r)
        self.assertEqual(c.cmd("NOOP").code, 250)

    def test_starttls_injection_transaction(self):
        c = self.ehlo_client()
        c.send("STARTTLS\r\nRSET\r\nMAIL FROM:<evil@x.test>\r\n")
        r = c.reply()
        self.assertEqual(r.code, 220, r)
        self.assertEqual(c.pending(), b"")
        c.sock = mxtest.client_tls_context().wrap_socket(c.sock, server_hostname=mxtest.HOSTNAME)
        r = c.ehlo()
        self.assertEqual(r.code, 250, r)
        self.assertGreater(len(r.raw), 1, "first reply inside TLS is not the EHLO reply: %r" % r)
        # the injected MAIL did not open a transaction
        r = c.cmd("RCPT TO:<demo@example.test>")
        self.assertEqual(r.code, 503, r)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.test>").code, 250)

    def test_state_reset_after_starttls(self):
        c = self.ehlo_client()
        r, leftover = c.starttls()
        self.assertEqual(r.code, 220, r)
        self.assertEqual(r.enhanced, "2.0.0", r)
        self.assertEqual(leftover, b"")
        r = c.cmd("MAIL FROM:<a@b.test>")
        self.assertEqual((r.code, r.enhanced), (503, "5.5.1"), r)
        r = c.ehlo()
        self.assertEqual(r.code, 250)
        self.assertNotIn("STARTTLS", [l.upper() for l in r.lines])
        self.assertEqual(c.cmd("MAIL FROM:<a@b.test>").code, 250)

    def test_starttls_twice_refused(self):
        c = self.ehlo_client()
        r, _ = c.starttls()
        self.assertEqual(r.code, 220, r)
        self.assertEqual(c.ehlo().code, 250)
        r = c.cmd("STARTTLS")
        self.assertNotEqual(r.code, 220, r)
        self.assertEqual(r.code // 100, 5, r)
        self.assertEqual(c.cmd("NOOP").code, 250)

    def test_starttls_on_implicit_listener_refused(self):
        c = mxtest.Client(self.d.tls_port, tls_context=mxtest.client_tls_context())
        self.addCleanup(c.close)
        c.ehlo()
        r = c.cmd("STARTTLS")
        self.assertEqual(r.code // 100, 5, r)
        self.assertEqual(c.cmd("NOOP").code, 250)

    def test_quit_inside_tls(self):
        # the 221 must be flushed through TLS before the connection closes
        c = self.ehlo_client()
        r, _ = c.starttls()
        self.assertEqual(r.code, 220, r)
        self.assertEqual(c.ehlo().code, 250)
        r = c.cmd("QUIT")
        self.assertEqual((r.code, r.enhanced), (221, "2.0.0"), r)
        self.assertTrue(c.closed())

    def test_quit_implicit_tls(self):
        c = mxtest.Client(self.d.tls_port, tls_context=mxtest.client_tls_context())
        self.addCleanup(c.close)
        r = c.cmd("QUIT")
        self.assertEqual((r.code, r.enhanced), (221, "2.0.0"), r)
        self.assertTrue(c.closed())

    def test_implicit_tls_raw(self):
        c = mxtest.Client(self.d.tls_port, tls_context=mxtest.client_tls_context())
        self.addCleanup(c.close)
        self.assertEqual(c.greeting.raw, ["220 mx.example.test ESMTP mxguard"])
        self.assertEqual(c.sock.getpeercert()["subject"], ((("commonName", "mx.example.test"),),))
        r = c.ehlo()
        self.assertEqual(r.code, 250)
        self.assertNotIn("STARTTLS", [l.upper() for l in r.lines], r)

    def test_implicit_tls_smtplib(self):
        before = set(self.d.files())
        ctx = mxtest.client_tls_context(check_hostname=False)
        with smtplib.SMTP_SSL("127.0.0.1", self.d.tls_port, local_hostname="client.example.org",
                              context=ctx, timeout=10) as s:
            self.assertEqual(s.ehlo()[0], 250)
            self.assertFalse(s.has_extn("starttls"))
            s.sendmail("a@b.test", ["demo@example.test"], b"Subject: implicit\r\n\r\nx\r\n")
        new = set(self.d.files()) - before
        self.assertEqual(len(new), 1)
        with open(new.pop(), "rb") as f:
            self.assertRegex(f.read(), mxtest.received_re("client.example.org", "ESMTPS", None,
                                                          "demo@example.test"))

    def test_plaintext_on_implicit_port_gets_no_smtp(self):
        s = socket.create_connection(("127.0.0.1", self.d.tls_port), timeout=10)
        self.addCleanup(s.close)
        s.sendall(b"EHLO x\r\n")
        try:
            data = s.recv(4096)
        except (ConnectionResetError, socket.timeout):
            data = b""
        self.assertFalse(data.startswith(b"220") or data.startswith(b"250"), data)


class SlotTestCase(DaemonTestCase):
    def greeting_when_admitted(self):
        """The greeting of a new connection, retried (bounded) until the
        server has noticed that an earlier connection went away."""
        deadline = time.monotonic() + 10
        while True:
            c = self.d.client(greeting=False)
            self.addCleanup(c.close)
            r = c.reply()
            if r.code == 220 or time.monotonic() > deadline:
                return r
            time.sleep(0.1)


class TLSHandshakeStall(SlotTestCase):
    """A client that opens the implicit-TLS port (or says STARTTLS) and then
    never handshakes is dropped by the greeting/command timeout and gives
    its connection slot back."""
    daemon_args = dict(tls=True, implicit_tls=True,
                       limits={"timeout_greeting": 1, "timeout_command": 1,
                               "connections_per_client": 2})

    def test_stalled_handshakes_are_dropped(self):
        socks = []
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", self.d.tls_port), timeout=10)
            self.addCleanup(s.close)
            socks.append(s)
        for s in socks:
            s.settimeout(15)
            self.assertEqual(s.recv(100), b"", "stalled TLS connection left open")
        # both slots are free again: a plaintext client is admitted
        r = self.greeting_when_admitted()
        self.assertEqual(r.code, 220, r)

    def test_silent_after_starttls_is_dropped(self):
        c = self.ehlo_client()
        self.assertEqual(c.cmd("STARTTLS").code, 220)
        c.sock.settimeout(15)
        self.assertEqual(c.sock.recv(100), b"", "connection left open after STARTTLS")


class ConnectionLimit(SlotTestCase):
    daemon_args = dict(limits={"connections_per_client": 3})

    def test_connections_per_client(self):
        clients = [self.client() for _ in range(3)]
        for c in clients:
            self.assertEqual(c.greeting.code, 220)
        extra = self.d.client(greeting=False)
        self.addCleanup(extra.close)
        r = extra.reply()
        self.assertEqual((r.code, r.enhanced), (421, "4.7.0"), r)
        self.assertTrue(extra.closed(), "over-limit connection left open")
        # the three admitted ones still work
        for c in clients:
            self.assertEqual(c.cmd("NOOP").code, 250)
        # once one quits, a new one is admitted (bounded retry: the server
        # notices the close asynchronously)
        clients[0].cmd("QUIT")
        self.assertTrue(clients[0].closed())
        r = self.greeting_when_admitted()
        self.assertEqual(r.code, 220, r)


class IdleTimeout(DaemonTestCase):
    daemon_args = dict(limits={"timeout_command": 2})

    def test_idle_connection_timed_out(self):
        c = self.ehlo_client()
        c.sock.settimeout(15)
        r = c.reply()
        self.assertEqual((r.code, r.enhanced), (421, "4.4.2"), r)
        self.assertTrue(c.closed(timeout=15), "connection left open after 421")

    def test_idle_in_transaction_timed_out(self):
        c = self.ehlo_client()
        self.assertEqual(c.cmd("MAIL FROM:<a@b.test>").code, 250)
        c.sock.settimeout(15)
        r = c.reply()
        self.assertEqual((r.code, r.enhanced), (421, "4.4.2"), r)
        self.assertTrue(c.closed(timeout=15))


class Memory(DaemonTestCase):
    daemon_args = dict()

    def flood(self, nbytes):
        """Send nbytes without any line end from a thread while reading the
        answer here. Returns (reply or None, closed)."""
        c = self.ehlo_client()
        errors = []

        def sender():
            chunk = b"A" * 65536
            sent = 0
            try:
                while sent < nbytes:
                    c.sock.sendall(chunk)
                    sent += len(chunk)
            except OSError as e:
                errors.append(e)

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        reply = None
        try:
            reply = c.reply()
        except (EOFError, ConnectionResetError) as e:
            errors.append(e)
        closed = c.closed(timeout=15)
        t.join(15)
        c.close()
        return reply, closed

    def test_megabyte_without_crlf(self):
        # warm up: one full transaction so per-thread allocations exist
        c = self.ehlo_client()
        self.assertIsNotNone(queued_id(c.transaction("a@b.test", ["demo@example.test"],
                                                     smtp_data(b"Subject: w\n\nw\n"))[3]))
        c.cmd("QUIT")
        c.close()
        rss_before = self.d.rss_kb()
        reply, closed = self.flood(1 << 20)
        self.assertIsNotNone(reply, "no reply before the connection went away")
        self.assertEqual(reply.code, 500, reply)
        self.assertTrue(closed, "connection left open after an overlong line")
        self.assertTrue(self.d.running())
        rss_after = self.d.rss_kb()
        if not mxtest.sanitized():
            self.assertLess(rss_after - rss_before, 4096,
                            "VmRSS grew from %d kB to %d kB" % (rss_before, rss_after))
        # and the daemon still serves
        c = self.ehlo_client()
        self.assertEqual(c.cmd("NOOP").code, 250)

    def test_parallel_floods(self):
        rss_before = self.d.rss_kb()
        results = []
        threads = [threading.Thread(target=lambda: results.append(self.flood(1 << 20)))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(len(results), 4)
        for reply, closed in results:
            self.assertIsNotNone(reply)
            self.assertEqual(reply.code, 500, reply)
            self.assertTrue(closed)
        rss_after = self.d.rss_kb()
        if not mxtest.sanitized():
            self.assertLess(rss_after - rss_before, 8192,
                            "VmRSS grew from %d kB to %d kB" % (rss_before, rss_after))


if __name__ == "__main__":
    mxtest.main(budget=180)

"""test_upstreams_selftest — the upstream servers of upstreams.py, on their own.

Each class is started and driven with Python's smtplib (smtplib.LMTP for
Dovecot, over TCP and over its unix socket): a message to a known user
arrives with its body byte for byte and its own headers kept, an unknown
user is refused at RCPT with 550 5.1.1; Postfix takes XCLIENT and XFORWARD
from loopback (the log shows the forwarded client), announces or hides
STARTTLS, 8BITMIME, SIZE and SMTPUTF8 as told and enforces its size limit;
Dovecot gives one reply per recipient after DATA, 250 for carol and the
quota failure for dave; smtp-sink dumps what it accepted and fails the
command it is told to fail. stop() leaves no process and no directory
behind, and the system Postfix's directories are not touched.

Run as root: python3 tests/integration/test_upstreams_selftest.py
"""

import os
import re
import smtplib
import socket
import ssl
import unittest
import uuid

import mxtest
import upstreams
from upstreams import Postfix, DovecotLMTP, SmtpSink, body_of


def message(tag, extra_body=b""):
    """A message (CRLF line ends) with headers of our own and a body that
    exercises dot-stuffing, an empty line, trailing blanks and a long line."""
    headers = (b"From: Sender <sender@origin.test>\r\n"
               b"To: someone@elsewhere.test\r\n"
               b"Subject: upstream selftest " + tag.encode() + b"\r\n"
               b"X-Selftest-Id: " + tag.encode() + b"\r\n"
               b"X-Folded: first\r\n\tsecond\r\n")
    body = (b"line one\r\n"
            b".a line that starts with a dot\r\n"
            b"..two dots\r\n"
            b"\r\n"
            b"trailing blanks   \r\n"
            + b"y" * 900 + b"\r\n"
            + extra_body +
            b"last line\r\n")
    return headers, body


def lf(data):
    return data.replace(b"\r\n", b"\n")


class BodyChecks:
    """Assertions on a delivered message: our headers kept in order, the
    body after the first empty line equal to what was sent."""

    def assertDelivered(self, stored, headers, body):
        head, sep, rest = stored.partition(b"\n\n")
        self.assertTrue(sep, stored[:300])
        self.assertIn(lf(headers), head + b"\n", "own headers missing or changed:\n%r" % head)
        self.assertEqual(body_of(stored), lf(body))
        self.assertEqual(rest, lf(body))


def fresh_tag():
    return uuid.uuid4().hex[:12]


# ------------------------------------------------------------------ Postfix
class PostfixDefaults(unittest.TestCase, BodyChecks):
    pf = None

    @classmethod
    def setUpClass(cls):
        cls.pf = Postfix()
        cls.pf.start()

    @classmethod
    def tearDownClass(cls):
        if cls.pf:
            cls.pf.stop()

    def smtp(self):
        s = smtplib.SMTP(self.pf.host, self.pf.port, local_hostname="client.test", timeout=10)
        self.addCleanup(s.close)
        return s

    def test_ehlo_defaults(self):
        s = self.smtp()
        code, _ = s.ehlo()
        self.assertEqual(code, 250)
        self.assertEqual(s.esmtp_features.get("size"), "10240000")
        self.assertIn("8bitmime", s.esmtp_features)
        self.assertIn("xclient", s.esmtp_features)
        self.assertIn("xforward", s.esmtp_features)
        self.assertNotIn("starttls", s.esmtp_features)
        self.assertNotIn("smtputf8", s.esmtp_features)

    def test_delivery_body_byte_for_byte(self):
        tag = fresh_tag()
        headers, body = message(tag)
        s = self.smtp()
        refused = s.sendmail("sender@origin.test", ["alice@relay.test"], headers + b"\r\n" + body)
        self.assertEqual(refused, {})
        s.quit()
        mine = self.pf.wait_for_messages("alice", "relay.test", 1,
                                         match=b"X-Selftest-Id: " + tag.encode())
        self.assertEqual(len(mine), 1, mine)
        self.assertDelivered(mine[0], headers, body)
        self.assertTrue(mine[0].startswith(b"Return-Path: <sender@origin.test>\n"), mine[0][:200])
        self.assertIn(b"\nDelivered-To: alice@relay.test\n", mine[0])
        # bob got nothing from it
        self.assertFalse([m for m in self.pf.maildir_messages("bob", "relay.test")
                          if tag.encode() in m])

    def test_unknown_user_and_domain_refused_at_rcpt(self):
        s = self.smtp()
        s.ehlo()
        self.assertEqual(s.mail("sender@origin.test")[0], 250)
        code, text = s.rcpt("zed@relay.test")
        self.assertEqual(code, 550, text)
        self.assertTrue(text.startswith(b"5.1.1 "), text)
        code, text = s.rcpt("alice@not-ours.test")
        self.assertEqual(code, 554, text)
        self.assertTrue(text.startswith(b"5.7.1 "), text)
        self.assertEqual(s.rcpt("alice@relay.test")[0], 250)
        self.pf.wait_for_log(r"reject: RCPT from \S+: 550 5\.1\.1 <zed@relay\.test>")

    def test_xclient_then_log_shows_client(self):
        tag = fresh_tag()
        headers, body = message(tag)
        s = self.smtp()
        s.ehlo()
        code, text = s.docmd("XCLIENT", "ADDR=127.0.0.9 NAME=[UNAVAILABLE] HELO=client.test PROTO=ESMTP")
        self.assertEqual(code, 220, text)
        s.ehlo_resp = s.helo_resp = None
        s.esmtp_features = {}
        # the EHLO after XCLIENT sets the HELO name again
        self.assertEqual(s.ehlo("client.test")[0], 250)
        self.assertEqual(s.mail("sender@origin.test")[0], 250)
        self.assertEqual(s.rcpt("bob@relay.test")[0], 250)
        code, text = s.data(headers + b"\r\n" + body)
        self.assertEqual(code, 250, text)
        m = re.search(rb"queued as ([0-9A-F]+)", text)
        self.assertTrue(m, text)
        qid = m.group(1).decode()
        s.quit()
        line = self.pf.wait_for_log(qid + r": client=(\S+)")
        self.assertEqual(line.group(1), "unknown[127.0.0.9]")
        mine = self.pf.wait_for_messages("bob", "relay.test", 1, match=tag.encode())
        self.assertEqual(len(mine), 1)
        self.assertDelivered(mine[0], headers, body)
        self.assertIn(b"Received: from client.test (unknown [127.0.0.9])", mine[0])

    def test_xforward_then_log_shows_orig_client(self):
        s = self.smtp()
        s.ehlo()
        code, text = s.docmd("XFORWARD", "ADDR=127.0.0.10 NAME=[UNAVAILABLE] HELO=fw.test PROTO=ESMTP")
        self.assertEqual(code, 250, text)
        self.assertEqual(s.mail("sender@origin.test")[0], 250)
        self.assertEqual(s.rcpt("bob@relay.test")[0], 250)
        code, text = s.data(b"Subject: xforward\r\n\r\nhi\r\n")
        self.assertEqual(code, 250, text)
        qid = re.search(rb"queued as ([0-9A-F]+)", text).group(1).decode()
        m = self.pf.wait_for_log(qid + r": client=(\S+), orig_client=(\S+)")
        self.assertEqual(m.group(2), "unknown[127.0.0.10]")

    def test_xclient_refused_from_unauthorized_hosts(self):
        """Control: with no authorized hosts the same XCLIENT is refused,
        so the test above really depends on smtpd_authorized_xclient_hosts."""
        with Postfix(xclient_hosts=None, xforward_hosts=None) as pf:
            s = smtplib.SMTP(pf.host, pf.port, local_hostname="client.test", timeout=10)
            self.addCleanup(s.close)
            s.ehlo()
            self.assertNotIn("xclient", s.esmtp_features)
            code, _ = s.docmd("XCLIENT", "ADDR=127.0.0.9")
            self.assertEqual(code, 550)
            code, _ = s.docmd("XFORWARD", "ADDR=127.0.0.9")
            self.assertEqual(code, 550)


class PostfixOptions(unittest.TestCase, BodyChecks):
    """tls, eight_bit=False, discard_ehlo, smtputf8, message_size_limit."""
    pf = None

    @classmethod
    def setUpClass(cls):
        cls.pf = Postfix(domains={"relay.test": ["alice"], "other.test": ["erin"]},
                         tls=True, eight_bit=False, discard_ehlo=["size"],
                         smtputf8=True, message_size_limit=4000)
        cls.pf.start()

    @classmethod
    def tearDownClass(cls):
        if cls.pf:
            cls.pf.stop()

    def smtp(self):
        s = smtplib.SMTP(self.pf.host, self.pf.port, local_hostname="client.test", timeout=10)
        self.addCleanup(s.close)
        return s

    def tls_context(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.pf.cert_path)
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def test_ehlo_keywords(self):
        s = self.smtp()
        s.ehlo()
        self.assertIn("starttls", s.esmtp_features)
        self.assertIn("smtputf8", s.esmtp_features)
        self.assertNotIn("8bitmime", s.esmtp_features)
        self.assertNotIn("size", s.esmtp_features)
        self.assertIn("pipelining", s.esmtp_features)

    def test_starttls_verified_by_name_and_address(self):
        for name in ("localhost", "127.0.0.1"):
            with self.subTest(server_hostname=name):
                tag = fresh_tag()
                headers, body = message(tag)
                # smtplib verifies the certificate against the name it connected to
                s = smtplib.SMTP(name, self.pf.port, local_hostname="client.test", timeout=10)
                self.addCleanup(s.close)
                self.assertEqual(s.sock.getpeername()[0], "127.0.0.1")
                s.ehlo()
                code, _ = s.starttls(context=self.tls_context())
                self.assertEqual(code, 220)
                self.assertEqual(s.sock.getpeercert()["subject"], ((("commonName", "localhost"),),))
                s.ehlo()
                self.assertNotIn("starttls", s.esmtp_features)
                self.assertEqual(s.sendmail("sender@origin.test", ["erin@other.test"],
                                            headers + b"\r\n" + body), {})
                s.quit()
                mine = self.pf.wait_for_messages("erin", "other.test", 1, match=tag.encode())
                self.assertEqual(len(mine), 1)
                self.assertDelivered(mine[0], headers, body)
                self.pf.wait_for_log(r"TLS connection established from \S+")

    def test_wrong_name_fails_verification(self):
        # mxtest.Client checks the name mx.example.test: not in the cert
        c = mxtest.Client(self.pf.port)
        self.addCleanup(c.close)
        self.assertEqual(c.ehlo().code, 250)
        with self.assertRaises(ssl.SSLCertVerificationError):
            c.starttls(self.tls_context())

    def test_size_limit(self):
        s = self.smtp()
        s.ehlo()
        with self.assertRaises(smtplib.SMTPDataError) as cm:
            s.sendmail("sender@origin.test", ["alice@relay.test"],
                       b"Subject: big\r\n\r\n" + (b"z" * 78 + b"\r\n") * 100)
        self.assertEqual(cm.exception.smtp_code, 552)
        self.assertTrue(cm.exception.smtp_error.startswith(b"5.3.4 "), cm.exception.smtp_error)
        self.assertEqual(s.sendmail("sender@origin.test", ["alice@relay.test"],
                                    b"Subject: small\r\n\r\nok\r\n"), {})

    def test_second_domain_unknown_user(self):
        s = self.smtp()
        s.ehlo()
        s.mail("sender@origin.test")
        code, text = s.rcpt("alice@other.test")
        self.assertEqual(code, 550, text)
        self.assertTrue(text.startswith(b"5.1.1 "))


# ------------------------------------------------------------------ Dovecot
class Dovecot(unittest.TestCase, BodyChecks):
    dv = None

    @classmethod
    def setUpClass(cls):
        cls.dv = DovecotLMTP(unix=True, user_quota_small=["dave"])
        cls.dv.start()

    @classmethod
    def tearDownClass(cls):
        if cls.dv:
            cls.dv.stop()

    def lmtp(self, unix=False):
        if unix:
            s = smtplib.LMTP(self.dv.socket_path, local_hostname="client.test", timeout=10)
        else:
            s = smtplib.LMTP(self.dv.host, self.dv.port, local_hostname="client.test", timeout=10)
        self.addCleanup(s.close)
        return s

    def test_lhlo(self):
        s = self.lmtp()
        code, text = s.ehlo()          # smtplib.LMTP sends LHLO
        self.assertEqual(code, 250)
        self.assertTrue(text.startswith(b"lmtp.upstream.test"), text)
        self.assertIn("pipelining", s.esmtp_features)

    def test_delivery_tcp_and_unix(self):
        for unix in (False, True):
            with self.subTest(unix=unix):
                tag = fresh_tag()
                headers, body = message(tag)
                s = self.lmtp(unix)
                self.assertEqual(s.sendmail("sender@origin.test", ["carol@lmtp.test"],
                                            headers + b"\r\n" + body), {})
                s.quit()
                mine = self.dv.wait_for_messages("carol", "lmtp.test", 1, match=tag.encode())
                self.assertEqual(len(mine), 1)
                self.assertDelivered(mine[0], headers, body)
                self.assertTrue(mine[0].startswith(b"Return-Path: <sender@origin.test>\n"))
        self.dv.wait_for_log(r"Connect from local")

    def test_unknown_user_refused_at_rcpt(self):
        for unix in (False, True):
            with self.subTest(unix=unix):
                s = self.lmtp(unix)
                s.ehlo()
                self.assertEqual(s.mail("sender@origin.test")[0], 250)
                code, text = s.rcpt("zed@lmtp.test")
                self.assertEqual(code, 550, text)
                self.assertTrue(text.startswith(b"5.1.1 "), text)
                code, text = s.rcpt("carol@other.test")
                self.assertEqual(code, 550, text)

    def test_mixed_results_after_data(self):
        """carol and dave accepted at RCPT; after DATA one reply each, in
        RCPT order: 250 for carol, the quota failure (552 5.2.2) for dave."""
        tag = fresh_tag()
        headers, body = message(tag)
        before = len(self.dv.maildir_messages("dave", "lmtp.test"))
        s = self.lmtp()
        s.ehlo()
        self.assertEqual(s.mail("sender@origin.test")[0], 250)
        self.assertEqual(s.rcpt("carol@lmtp.test")[0], 250)
        self.assertEqual(s.rcpt("dave@lmtp.test")[0], 250)
        code1, text1 = s.data(headers + b"\r\n" + body)   # reads the first reply
        code2, text2 = s.getreply()                       # the second one
        self.assertEqual(code1, 250, text1)
        self.assertIn(b"<carol@lmtp.test>", text1)
        self.assertEqual(code2, 552, text2)
        self.assertTrue(text2.startswith(b"5.2.2 <dave@lmtp.test>"), text2)
        # the session goes on
        self.assertEqual(s.noop()[0], 250)
        s.quit()
        mine = self.dv.wait_for_messages("carol", "lmtp.test", 1, match=tag.encode())
        self.assertEqual(len(mine), 1)
        self.assertDelivered(mine[0], headers, body)
        self.dv.wait_for_log(r"lmtp\(dave@lmtp\.test\).*Quota exceeded")
        self.assertEqual(len(self.dv.maildir_messages("dave", "lmtp.test")), before)

    def test_tempfail_quota_and_the_other_way_round(self):
        """quota_tempfail gives 452 4.2.2; with carol the small one, dave
        (no quota now) gets the mail: the failure follows the option."""
        with DovecotLMTP(user_quota_small=["carol@lmtp.test"], quota_tempfail=True) as dv:
            s = smtplib.LMTP(dv.host, dv.port, local_hostname="client.test", timeout=10)
            self.addCleanup(s.close)
            s.ehlo()
            s.mail("sender@origin.test")
            self.assertEqual(s.rcpt("carol@lmtp.test")[0], 250)
            self.assertEqual(s.rcpt("dave@lmtp.test")[0], 250)
            code1, text1 = s.data(b"Subject: reversed\r\n\r\nhello\r\n")
            code2, text2 = s.getreply()
            self.assertEqual(code1, 452, text1)
            self.assertTrue(text1.startswith(b"4.2.2 <carol@lmtp.test>"), text1)
            self.assertEqual(code2, 250, text2)
            s.quit()
            self.assertEqual(len(dv.wait_for_messages("dave", "lmtp.test", 1)), 1)
            self.assertEqual(dv.maildir_messages("carol", "lmtp.test"), [])


# ------------------------------------------------------------------ smtp-sink
class Sink(unittest.TestCase):

    def test_accepted_and_dumped(self):
        with SmtpSink() as sink:
            s = smtplib.SMTP(sink.host, sink.port, local_hostname="client.test", timeout=10)
            self.addCleanup(s.close)
            s.ehlo()
            self.assertIn("8bitmime", s.esmtp_features)
            data = (b"Subject: sink\r\nX-Selftest: 1\r\n\r\n.dot line\r\n\r\nend\r\n")
            self.assertEqual(s.sendmail("sender@origin.test", ["a@one.test", "b@two.test"], data,
                                        mail_options=["BODY=8BITMIME"]), {})
            s.quit()
            dumps = sink.wait_for_messages(1)
            self.assertEqual(len(dumps), 1)
            env, msg = SmtpSink.parse_dump(dumps[0])
            self.assertEqual(env["client_addr"], "127.0.0.1")
            self.assertEqual(env["proto"], "ESMTP")
            self.assertEqual(env["helo"], "client.test")
            self.assertEqual(env["mail"], "<sender@origin.test> BODY=8BITMIME")
            self.assertEqual(env["rcpts"], ["<a@one.test>", "<b@two.test>"])
            self.assertTrue(env["received"].startswith("Received: from client.test ([127.0.0.1])"))
            self.assertEqual(msg, lf(data))
            self.assertTrue(dumps[0].endswith(lf(data) + b"\n"))

    def test_options_fail_commands(self):
        # (options, the step that fails, its code, its text, dumps left:
        # smtp-sink writes the dump before it answers ".", so a refused
        # "." still leaves one)
        cases = [
            (["-f", "RCPT"], "rcpt", 500, b"5.3.0", 0),
            (["-r", "MAIL"], "mail", 450, b"4.3.0", 0),
            (["-B", "554 5.7.1 go away", "-f", "DATA"], "data", 554, b"5.7.1 go away", 0),
            (["-f", "."], "dot", 500, b"5.3.0", 1),
            (["-b", "451 4.3.5 later", "-r", "."], "dot", 451, b"4.3.5 later", 1),
            (["-Q", "RCPT"], "rcpt", 421, b"", 0),
        ]
        for opts, where, code, text, dumps in cases:
            with self.subTest(options=opts), SmtpSink(options=opts) as sink:
                s = smtplib.SMTP(sink.host, sink.port, local_hostname="client.test", timeout=10)
                self.addCleanup(s.close)
                s.ehlo()
                got = {}
                got["mail"] = s.mail("sender@origin.test")
                if got["mail"][0] == 250:
                    got["rcpt"] = s.rcpt("a@one.test")
                    if got["rcpt"][0] == 250:
                        got["data"] = s.docmd("DATA")
                        if got["data"][0] == 354:
                            s.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
                            got["dot"] = s.getreply()
                self.assertIn(where, got, got)
                self.assertEqual(got[where][0], code, got)
                self.assertTrue(got[where][1].startswith(text), got)
                for step in got:
                    if step != where:
                        self.assertIn(got[step][0], (250, 354), got)
                self.assertEqual(len(sink.messages()), dumps)

    def test_disconnect_option(self):
        with SmtpSink(options=["-q", "DATA"]) as sink:
            s = smtplib.SMTP(sink.host, sink.port, local_hostname="client.test", timeout=10)
            self.addCleanup(s.close)
            s.ehlo()
            s.mail("sender@origin.test")
            s.rcpt("a@one.test")
            with self.assertRaises(smtplib.SMTPServerDisconnected):
                s.docmd("DATA")
            self.assertEqual(sink.messages(), [])

    def test_refuse_connect_still_starts(self):
        with SmtpSink(options=["-f", "CONNECT"]) as sink:
            s = socket.create_connection((sink.host, sink.port), timeout=10)
            self.addCleanup(s.close)
            self.assertTrue(s.makefile("rb").readline().startswith(b"500 "))
        with SmtpSink(options=["-q", "CONNECT"]) as sink:
            s = socket.create_connection((sink.host, sink.port), timeout=10)
            self.addCleanup(s.close)
            self.assertEqual(s.recv(100), b"")


# ------------------------------------------------------------------ hygiene
def _stat_tree(top):
    out = {}
    for root, dirs, files in os.walk(top):
        for n in dirs + files:
            p = os.path.join(root, n)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            out[p] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size)
    return out


class StopCleansUp(unittest.TestCase):
    """stop() ends every process the server started (by PID) and removes
    its directory; the system Postfix directories stay as they were."""

    def check(self, server, pids_of):
        system = {d: _stat_tree(d) for d in ("/etc/postfix", "/var/spool/postfix", "/etc/dovecot")}
        server.start()
        d = server.dir
        pids = pids_of(server)
        self.assertTrue(pids)
        self.assertTrue(all(upstreams._pid_alive(p) for p in pids))
        self.assertTrue(os.path.isdir(d))
        server.stop()
        self.assertFalse(os.path.exists(d))
        self.assertEqual([p for p in pids if upstreams._pid_alive(p)], [])
        self.assertNotIn(server, mxtest._live_daemons)
        for top, before in system.items():
            self.assertEqual(_stat_tree(top), before, top)
        server.stop()                   # a second stop is harmless

    def test_postfix(self):
        def pids(pf):
            m = pf._read_master_pid()
            # an smtpd is running from the readiness probe
            return [m] + upstreams._descendants(m)
        self.check(Postfix(tls=True), pids)

    def test_dovecot(self):
        self.check(DovecotLMTP(unix=True),
                   lambda dv: [dv.proc.pid] + upstreams._descendants(dv.proc.pid))

    def test_sink(self):
        self.check(SmtpSink(), lambda sk: [sk.proc.pid])


if __name__ == "__main__":
    mxtest.main(budget=120)

"""test_smtp_basic — the everyday SMTP conversation with a real mxguard.

Greeting and EHLO capabilities, a message delivered with smtplib, the raw
bytes of what lands in the Maildir (headers we add, the message as sent),
several recipients, HELO vs EHLO, the null sender, case-insensitive
addresses, the per-transaction log line, and real clients (swaks, plain,
pipelined and STARTTLS).
"""

import os
import re
import smtplib
import stat
import time
import uuid

import mxtest
from mxtest import DaemonTestCase, smtp_data, queued_id, stored_re

SIZE_MAX = 2000000


class Basic(DaemonTestCase):
    daemon_args = dict(limits={"message_size_max": SIZE_MAX},
                       users=("demo@example.test", "alice@example.test"))

    def new_files(self, user="demo"):
        return set(self.d.files("new", user))

    def test_greeting(self):
        c = self.client()
        self.assertEqual(c.greeting.raw, ["220 mx.example.test ESMTP mxguard"])

    def test_ehlo_capabilities(self):
        c = self.client()
        r = c.ehlo("client.example.org")
        self.assertEqual(r.code, 250, r)
        self.assertTrue(r.lines[0].startswith("mx.example.test"), r)
        for l in r.raw[:-1]:
            self.assertTrue(l.startswith("250-"), r)
        self.assertTrue(r.raw[-1].startswith("250 "), r)
        caps = [l.upper() for l in r.lines[1:]]
        keywords = [c.split()[0] for c in caps]
        for want in ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SIZE"):
            self.assertIn(want, keywords, r)
        self.assertIn("SIZE %d" % SIZE_MAX, caps, r)
        for never in ("STARTTLS", "SMTPUTF8", "CHUNKING", "AUTH", "BINARYMIME"):
            self.assertNotIn(never, keywords, "%s advertised: %s" % (never, r))
        self.assertFalse(any(k.startswith("AUTH=") for k in keywords), r)

    def test_helo_reply(self):
        c = self.client()
        r = c.cmd("HELO client.example.org")
        self.assertEqual(r.code, 250, r)
        self.assertEqual(len(r.raw), 1, r)
        self.assertTrue(r.text.startswith("mx.example.test"), r)

    def test_smtplib_delivery(self):
        before = self.new_files()
        subject = "smtplib-" + uuid.uuid4().hex
        msg = ("From: a@b.test\r\nTo: demo@example.test\r\nSubject: %s\r\n\r\n"
               "hello from smtplib\r\n" % subject)
        with smtplib.SMTP("127.0.0.1", self.d.port, local_hostname="client.example.org",
                          timeout=10) as s:
            code, _ = s.ehlo()
            self.assertEqual(code, 250)
            self.assertTrue(s.has_extn("pipelining"))
            self.assertEqual(s.mail("a@b.test")[0], 250)
            code, text = s.rcpt("demo@example.test")
            self.assertEqual(code, 250)
            self.assertTrue(text.startswith(b"2.1.5"), text)
            code, text = s.data(msg)
            self.assertEqual(code, 250, text)
            self.assertRegex(text.decode(), r"^2\.0\.0 Ok: queued as [0-9A-Z]{16}$")
        new = self.new_files() - before
        self.assertEqual(len(new), 1)
        with open(new.pop(), "rb") as f:
            data = f.read()
        self.assertIn(("Subject: %s\n\nhello from smtplib\n" % subject).encode(), data)

    def test_stored_bytes_exact(self):
        # Everything a transport must keep intact: dot-stuffing, a lone dot
        # inside a line, 8-bit bytes, tabs, trailing blanks, empty lines, a
        # 998-octet line, and a last line that is only a dot (stuffed).
        message = (b"From: Sender <a@b.test>\nTo: demo@example.test\n"
                   b"Subject: exact \xc3\xa4\xc3\xb6\nX-Tab:\tvalue  \n\n"
                   b"line one\n.starts with a dot\n..two dots\n a . in the middle\n\n"
                   b"\xe2\x82\xac 8-bit \xff\xfe\n" + b"x" * 998 + b"\n.\n")
        c = self.client()
        self.assertEqual(c.ehlo("client.example.org").code, 250)
        before = self.new_files()
        mr, rr, dr, fr = c.transaction("a@b.test", ["demo@example.test"], smtp_data(message))
        self.assertEqual(mr.code, 250, mr)
        self.assertEqual(mr.enhanced, "2.1.0", mr)
        self.assertEqual(rr[0].code, 250, rr[0])
        self.assertEqual(rr[0].enhanced, "2.1.5", rr[0])
        self.assertEqual(dr.code, 354, dr)
        txid = queued_id(fr)
        self.assertIsNotNone(txid, "bad final reply %r" % fr)
        # On disk at the moment the 250 arrived.
        new = self.new_files() - before
        self.assertEqual(len(new), 1, new)
        path = new.pop()
        with open(path, "rb") as f:
            data = f.read()
        rx = stored_re("a@b.test", "demo@example.test", "client.example.org", "ESMTP", txid,
                       message)
        self.assertRegex(data, rx)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(self.d.files("tmp"), [])
        c.cmd("QUIT")

    def test_raw_dot_unstuffing(self):
        # Literal wire bytes, independent of the smtp_data() helper.
        c = self.client()
        c.ehlo()
        before = self.new_files()
        self.assertEqual(c.cmd("MAIL FROM:<a@b.test>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<demo@example.test>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(b"Subject: raw\r\n\r\n..dot\r\n...\r\nplain.\r\n.x\r\n.\r\n")
        self.assertIsNotNone(queued_id(c.reply()))
        new = self.new_files() - before
        with open(new.pop(), "rb") as f:
            data = f.read()
        self.assertTrue(data.endswith(b"\nSubject: raw\n\n.dot\n..\nplain.\nx\n"), data)

    def test_received_date_is_now(self):
        c = self.client()
        c.ehlo("client.example.org")
        before = self.new_files()
        fr = c.transaction("a@b.test", ["demo@example.test"],
                           smtp_data(b"Subject: date\n\nx\n"))[3]
        self.assertIsNotNone(queued_id(fr), fr)
        new = self.new_files() - before
        with open(new.pop(), "rb") as f:
            data = f.read()
        m = re.search(mxtest.received_re("client.example.org", "ESMTP", None,
                                          "demo@example.test"), data)
        self.assertIsNotNone(m, data[:400])
        import email.utils
        when = email.utils.parsedate_to_datetime(m.group(2).decode())
        self.assertLess(abs(when.timestamp() - time.time()), 24 * 3600, m.group(2))

    def test_multiple_recipients(self):
        c = self.client()
        c.ehlo("client.example.org")
        before_d, before_a = self.new_files("demo"), self.new_files("alice")
        message = b"Subject: two\n\nfor both\n"
        mr, rr, dr, fr = c.transaction("a@b.test", ["demo@example.test", "alice@example.test"],
                                       smtp_data(message))
        self.assertEqual([r.code for r in rr], [250, 250], rr)
        txid = queued_id(fr)
        self.assertIsNotNone(txid, fr)
        nd = self.new_files("demo") - before_d
        na = self.new_files("alice") - before_a
        self.assertEqual((len(nd), len(na)), (1, 1))
        for path, rcpt in ((nd.pop(), "demo@example.test"), (na.pop(), "alice@example.test")):
            with open(path, "rb") as f:
                data = f.read()
            self.assertRegex(data, stored_re("a@b.test", rcpt, "client.example.org", "ESMTP",
                                             txid, message, for_rcpt=False))
            self.assertNotIn(b"\tfor <", data)
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(self.d.files("tmp", "demo"), [])
        self.assertEqual(self.d.files("tmp", "alice"), [])

    def test_helo_means_smtp(self):
        c = self.client()
        self.assertEqual(c.cmd("HELO old.example.org").code, 250)
        before = self.new_files()
        message = b"Subject: helo\n\nold style\n"
        fr = c.transaction("a@b.test", ["demo@example.test"], smtp_data(message))[3]
        txid = queued_id(fr)
        self.assertIsNotNone(txid, fr)
        new = self.new_files() - before
        with open(new.pop(), "rb") as f:
            self.assertRegex(f.read(), stored_re("a@b.test", "demo@example.test",
                                                 "old.example.org", "SMTP", txid, message))

    def test_null_sender(self):
        c = self.client()
        c.ehlo("client.example.org")
        before = self.new_files()
        r = c.cmd("MAIL FROM:<>")
        self.assertEqual(r.code, 250, r)
        self.assertEqual(c.cmd("RCPT TO:<demo@example.test>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        message = b"Subject: bounce\n\nnull sender\n"
        c.send(smtp_data(message))
        txid = queued_id(c.reply())
        self.assertIsNotNone(txid)
        new = self.new_files() - before
        with open(new.pop(), "rb") as f:
            self.assertRegex(f.read(), stored_re("", "demo@example.test", "client.example.org",
                                                 "ESMTP", txid, message))

    def test_case_insensitive_addresses(self):
        for rcpt in ("demo@EXAMPLE.TEST", "DEMO@example.test", "Demo@Example.Test"):
            with self.subTest(rcpt=rcpt):
                c = self.client()
                c.ehlo()
                before = self.new_files()
                mr, rr, dr, fr = c.transaction("a@b.test", [rcpt],
                                               smtp_data(b"Subject: case\n\n%s\n" % rcpt.encode()))
                self.assertEqual(rr[0].code, 250, rr[0])
                self.assertEqual(rr[0].enhanced, "2.1.5", rr[0])
                self.assertIsNotNone(queued_id(fr), fr)
                new = self.new_files() - before
                self.assertEqual(len(new), 1)
                with open(new.pop(), "rb") as f:
                    data = f.read()
                self.assertTrue(data.lower().startswith(
                    b"return-path: <a@b.test>\ndelivered-to: demo@example.test\n"), data[:200])
                c.close()

    def test_every_reply_has_enhanced_code(self):
        c = self.client()
        c.ehlo()
        replies = [c.cmd("NOOP"), c.cmd("MAIL FROM:<a@b.test>"), c.cmd("RCPT TO:<demo@example.test>"),
                   c.cmd("RCPT TO:<nobody@example.test>"), c.cmd("RCPT TO:<x@other.test>"),
                   c.cmd("RSET"), c.cmd("VRFY demo"), c.cmd("HELP"), c.cmd("XYZZY"),
                   c.cmd("DATA"), c.cmd("EXPN demo"), c.cmd("QUIT")]
        for r in replies:
            self.assertTrue(r.all_enhanced(), "reply without enhanced status code: %r" % r)

    def test_log_line_per_transaction(self):
        c = self.client()
        c.ehlo()
        off = self.d.log_size()
        fr = c.transaction("logger@b.test", ["demo@example.test"],
                           smtp_data(b"Subject: log\n\nlogged\n"))[3]
        txid = queued_id(fr)
        self.assertIsNotNone(txid, fr)
        c.cmd("QUIT")
        m = self.d.wait_log(re.escape(txid) + r".*result=", off)
        self.assertIsNotNone(m, "no log line with %s and result=:\n%s" % (txid, self.d.log_since(off)))
        lines = [l for l in self.d.log_since(off).splitlines() if txid in l and "result=" in l]
        self.assertEqual(len(lines), 1, lines)
        line = lines[0]
        self.assertIn("client=127.0.0.1", line)
        self.assertIn("from=<logger@b.test>", line)
        self.assertRegex(line, r"(to|rcpts?)=<?demo@example\.test")
        self.assertRegex(line, r"size=\d+")
        self.assertRegex(line, r"verdict=\S+")
        self.assertRegex(line, r"result=\S+")

    def swaks_deliver(self, *extra):
        subject = "swaks-" + uuid.uuid4().hex
        before = self.new_files()
        r = mxtest.swaks(self.d.port, "--to", "demo@example.test", "--from", "a@b.test",
                         "--h-Subject", subject, "--body", "y", *extra)
        self.assertEqual(r.returncode, 0, r.stdout)
        new = self.new_files() - before
        self.assertEqual(len(new), 1, r.stdout)
        with open(new.pop(), "rb") as f:
            data = f.read()
        self.assertIn(b"Subject: " + subject.encode() + b"\n", data)
        self.assertRegex(data, rb"\n\ny\n+$")
        return r, data

    def test_swaks(self):
        self.swaks_deliver()

    def test_swaks_pipeline(self):
        r, _ = self.swaks_deliver("--pipeline")
        self.assertNotIn("not supported", r.stdout.lower())


class BasicTLS(DaemonTestCase):
    daemon_args = dict(tls=True)

    def test_starttls_advertised(self):
        c = self.client()
        r = c.ehlo()
        self.assertIn("STARTTLS", [l.upper() for l in r.lines[1:]], r)

    def test_swaks_tls(self):
        if not mxtest.swaks_has_tls():
            self.skipTest("swaks has no TLS support (install libnet-ssleay-perl)")
        subject = "swaks-tls-" + uuid.uuid4().hex
        before = set(self.d.files())
        r = mxtest.swaks(self.d.port, "--to", "demo@example.test", "--from", "a@b.test",
                         "--h-Subject", subject, "--body", "y", "--tls")
        self.assertEqual(r.returncode, 0, r.stdout)
        new = set(self.d.files()) - before
        self.assertEqual(len(new), 1)
        with open(new.pop(), "rb") as f:
            data = f.read()
        self.assertIn(b"Subject: " + subject.encode() + b"\n", data)
        self.assertRegex(data, rb"\n\tby mx\.example\.test \(mxguard\) with ESMTPS id ")


if __name__ == "__main__":
    mxtest.main(budget=150)

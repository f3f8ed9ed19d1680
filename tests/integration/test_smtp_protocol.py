"""test_smtp_protocol — the SMTP state machine, command by command.

Commands out of order, syntax errors, the informational commands (NOOP, RSET,
HELP, VRFY, EXPN), commands we refuse (AUTH, BDAT), QUIT, the error budget,
pipelining (replies in order, none lost), recipient and size limits, and the
command-line length limit.  Every reply but the greeting and EHLO/HELO must
carry an enhanced status code.
"""

import os
import re

import mxtest
from mxtest import DaemonTestCase, smtp_data, queued_id

SIZE_MAX = 200000


class Protocol(DaemonTestCase):
    daemon_args = dict(limits={"message_size_max": SIZE_MAX, "errors_max": 10},
                       users=("demo@example.test", "alice@example.test"))

    def assertReply(self, r, code, enhanced=None):
        self.assertEqual(r.code, code, r)
        self.assertTrue(r.all_enhanced(), "no enhanced status code: %r" % r)
        if enhanced is not None:
            if hasattr(enhanced, "match"):
                self.assertRegex(r.enhanced, enhanced, r)
            else:
                self.assertEqual(r.enhanced, enhanced, r)

    def test_helo_ehlo_need_argument(self):
        c = self.client()
        for cmd in ("HELO", "EHLO", "HELO ", "EHLO "):
            with self.subTest(cmd=cmd):
                r = c.cmd(cmd)
                self.assertReply(r, 501)
        # still usable afterwards
        self.assertEqual(c.ehlo().code, 250)

    def test_mail_before_helo(self):
        c = self.client()
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 503, "5.5.1")

    def test_rcpt_before_mail(self):
        c = self.ehlo_client()
        self.assertReply(c.cmd("RCPT TO:<demo@example.test>"), 503, re.compile(r"^5\.5\.\d$"))

    def test_data_before_rcpt(self):
        c = self.ehlo_client()
        self.assertReply(c.cmd("DATA"), 503, re.compile(r"^5\.5\.\d$"))
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
        self.assertReply(c.cmd("DATA"), 503, re.compile(r"^5\.5\.\d$"))
        # a refused recipient is not a successful RCPT either
        self.assertReply(c.cmd("RCPT TO:<nobody@example.test>"), 550, "5.1.1")
        self.assertReply(c.cmd("DATA"), 503, re.compile(r"^5\.5\.\d$"))
        # and the transaction still works once a recipient is accepted
        self.assertReply(c.cmd("RCPT TO:<demo@example.test>"), 250, "2.1.5")
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(smtp_data(b"Subject: late\n\nok\n"))
        self.assertIsNotNone(queued_id(c.reply()))

    def test_second_mail_in_transaction(self):
        c = self.ehlo_client()
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250)
        self.assertReply(c.cmd("MAIL FROM:<c@d.test>"), 503, re.compile(r"^5\.5\.\d$"))
        # the first transaction is intact
        self.assertReply(c.cmd("RCPT TO:<demo@example.test>"), 250)

    def test_unknown_command(self):
        c = self.ehlo_client()
        for cmd in ("XYZZY", "FOO bar", "MAILFROM:<a@b.test>"):
            with self.subTest(cmd=cmd):
                self.assertReply(c.cmd(cmd), 500, "5.5.1")

    def test_mail_syntax_errors(self):
        c = self.ehlo_client()
        for arg in ("MAIL FROM:<a@b.test", "MAIL TO:<a@b.test>", "MAIL", "MAIL FROM:",
                    "MAIL FROM:<a@b.test> <c@d.test>", "MAIL FROM:<a@@b.test>"):
            with self.subTest(cmd=arg):
                self.assertReply(c.cmd(arg), 501, re.compile(r"^5\.(1\.7|5\.\d)$"))
        # no transaction was started by any of them
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250)

    def test_rcpt_syntax_errors(self):
        c = self.ehlo_client()
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250)
        for arg in ("RCPT TO:<demo@example.test", "RCPT FROM:<demo@example.test>", "RCPT",
                    "RCPT TO:", "RCPT TO:<demo@@example.test>"):
            with self.subTest(cmd=arg):
                self.assertReply(c.cmd(arg), 501, re.compile(r"^5\.(1\.3|5\.\d)$"))
        r = c.cmd("RCPT TO:<>")
        self.assertIn(r.code, (501, 550, 553), r)
        self.assertReply(c.cmd("DATA"), 503)

    def test_noop(self):
        c = self.client()
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")
        c.ehlo()
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")
        self.assertReply(c.cmd("NOOP with an argument"), 250, "2.0.0")

    def test_rset_clears_transaction(self):
        c = self.ehlo_client()
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<demo@example.test>"), 250)
        self.assertReply(c.cmd("RSET"), 250, "2.0.0")
        self.assertReply(c.cmd("DATA"), 503)
        self.assertReply(c.cmd("RCPT TO:<demo@example.test>"), 503)
        # a new transaction after RSET works, and MAIL is allowed again
        self.assertReply(c.cmd("MAIL FROM:<c@d.test>"), 250)

    def test_help(self):
        c = self.ehlo_client()
        r = c.cmd("HELP")
        self.assertEqual(r.code, 214, r)
        self.assertTrue(r.all_enhanced(), r)

    def test_vrfy_reveals_nothing(self):
        c = self.ehlo_client()
        replies = [c.cmd("VRFY " + a) for a in ("demo", "demo@example.test",
                                                 "nosuchuser", "nosuchuser@example.test")]
        for r in replies:
            self.assertReply(r, 252)
        self.assertEqual(len({tuple(r.raw) for r in replies}), 1, replies)

    def test_expn(self):
        c = self.ehlo_client()
        self.assertReply(c.cmd("EXPN demo"), 502, re.compile(r"^5\.5\.\d$"))

    def test_auth_and_bdat_refused(self):
        c = self.ehlo_client()
        self.assertReply(c.cmd("AUTH PLAIN AGRlbW8Ac2VjcmV0"), 502, re.compile(r"^5\.5\.\d$"))
        self.assertReply(c.cmd("AUTH LOGIN"), 502, re.compile(r"^5\.5\.\d$"))
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<demo@example.test>"), 250)
        self.assertReply(c.cmd("BDAT 0 LAST"), 502, re.compile(r"^5\.5\.\d$"))
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")

    def test_starttls_without_certificate(self):
        # not advertised, so not available: refused, and the session goes on
        # in plaintext
        c = self.ehlo_client()
        r = c.cmd("STARTTLS")
        self.assertIn(r.code, (454, 502, 503), r)
        self.assertTrue(r.all_enhanced(), r)
        self.assertEqual(c.pending(), b"")
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")

    def test_quit(self):
        c = self.ehlo_client()
        self.assertReply(c.cmd("QUIT"), 221, "2.0.0")
        self.assertTrue(c.closed(), "connection still open after QUIT")

    def test_errors_max(self):
        c = self.ehlo_client()
        replies = []
        for i in range(11):
            try:
                replies.append(c.cmd("XYZZY%d" % i))
            except (EOFError, ConnectionError):
                break
            if replies[-1].code == 421:
                break
        codes = [r.code for r in replies]
        self.assertIn(421, codes, replies)
        self.assertEqual(replies[-1].code, 421, replies)
        self.assertEqual(replies[-1].enhanced, "4.7.0", replies[-1])
        # exactly errors_max protocol errors were tolerated before the 421
        # (the 10th error may itself be answered with the 421)
        self.assertIn(len(replies), (10, 11), codes)
        self.assertTrue(all(code == 500 for code in codes[:-1]), codes)
        self.assertTrue(c.closed(), "connection still open after 421")

    def test_pipelining_replies_in_order(self):
        c = self.ehlo_client()
        before = set(self.d.files())
        c.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<demo@example.test>\r\n"
               "RCPT TO:<nobody@example.test>\r\nDATA\r\n")
        replies = [c.reply() for _ in range(4)]
        self.assertEqual([r.code for r in replies], [250, 250, 550, 354], replies)
        c.send(smtp_data(b"Subject: pipelined\n\nbody\n") + b"QUIT\r\n")
        fin = c.reply()
        self.assertIsNotNone(queued_id(fin), fin)
        self.assertEqual(c.reply().code, 221)
        self.assertTrue(c.closed())
        self.assertEqual(len(set(self.d.files()) - before), 1)

    def test_pipelining_three_messages(self):
        c = self.ehlo_client()
        before = set(self.d.files())
        blob = b""
        for i in range(3):
            blob += b"MAIL FROM:<p%d@b.test>\r\nRCPT TO:<demo@example.test>\r\nDATA\r\n" % i
            blob += smtp_data(b"Subject: pipe %d\n\nmessage number %d\n" % (i, i))
        blob += b"QUIT\r\n"
        c.send(blob)
        codes = []
        ids = []
        for i in range(3):
            for _ in range(3):
                codes.append(c.reply().code)
            r = c.reply()
            codes.append(r.code)
            ids.append(queued_id(r))
        quit_reply = c.reply()
        self.assertEqual(codes, [250, 250, 354, 250] * 3)
        self.assertEqual(quit_reply.code, 221)
        self.assertNotIn(None, ids)
        self.assertEqual(len(set(ids)), 3, ids)
        new = sorted(set(self.d.files()) - before)
        self.assertEqual(len(new), 3)
        bodies = set()
        for p in new:
            with open(p, "rb") as f:
                data = f.read()
            m = re.search(rb"\nSubject: pipe (\d)\n\nmessage number (\d)\n$", data)
            self.assertIsNotNone(m, data)
            self.assertEqual(m.group(1), m.group(2))
            self.assertIn(b"Return-Path: <p%s@b.test>\n" % m.group(1), data)
            bodies.add(m.group(1))
        self.assertEqual(bodies, {b"0", b"1", b"2"})

    def test_size_parameter_too_big(self):
        c = self.ehlo_client()
        self.assertReply(c.cmd("MAIL FROM:<a@b.test> SIZE=%d" % (SIZE_MAX + 1)), 552, "5.3.4")
        self.assertReply(c.cmd("MAIL FROM:<a@b.test> SIZE=%d" % (SIZE_MAX * 1000)), 552, "5.3.4")
        self.assertReply(c.cmd("MAIL FROM:<a@b.test> SIZE=1000"), 250, "2.1.0")

    def test_body_too_big(self):
        c = self.ehlo_client()
        before_new, before_tmp = set(self.d.files()), set(self.d.files("tmp"))
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<demo@example.test>"), 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        line = b"y" * 76 + b"\n"
        big = b"Subject: big\n\n" + line * (SIZE_MAX // len(line) + 100)
        c.send(smtp_data(big))
        self.assertReply(c.reply(), 552, "5.3.4")
        self.assertEqual(set(self.d.files()), before_new)
        self.assertEqual(set(self.d.files("tmp")), before_tmp)
        # the session goes on: a normal message on the same connection works
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<demo@example.test>"), 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(smtp_data(b"Subject: small\n\nsmall\n"))
        self.assertIsNotNone(queued_id(c.reply()))
        self.assertEqual(len(set(self.d.files()) - before_new), 1)

    def test_command_line_too_long(self):
        c = self.ehlo_client()
        r = c.cmd("NOOP " + "x" * 1100)
        self.assertReply(r, 500, "5.5.6")
        r = c.cmd("MAIL FROM:<" + "a" * 1100 + "@b.test>")
        self.assertReply(r, 500, "5.5.6")

    def test_line_of_exactly_line_max_is_fine(self):
        # 1000 octets including CRLF is the RFC 5321 limit and must pass.
        c = self.ehlo_client()
        self.assertReply(c.cmd("NOOP " + "x" * (1000 - len("NOOP ") - 2)), 250, "2.0.0")


class RecipientsMax(DaemonTestCase):
    """101+ distinct users; the extra users are written into the passwd-file
    with the hash mxguardctl made for demo (the format is documented:
    "user@domain:{SCHEME}hash"), which saves 100 slow hashings."""

    N = 100

    @classmethod
    def setUpClass(cls):
        def add_many(d):
            d.ctl_ok("user", "add", "demo@example.test", stdin=mxtest.PASSWORD + "\n")
            path = os.path.join(d.dir, "passwd")
            with open(path) as f:
                line = [l for l in f if l.startswith("demo@example.test:")][0]
            hashed = line.split(":", 1)[1].strip()
            with open(path, "a") as f:
                for i in range(cls.N + 2):
                    f.write("u%03d@example.test:%s\n" % (i, hashed))
        cls.d = mxtest.Daemon(limits={"recipients_max": cls.N}, users=(), pre_start=add_many)

    def test_recipients_max(self):
        c = self.ehlo_client()
        blob = "MAIL FROM:<a@b.test>\r\n"
        for i in range(self.N + 2):
            blob += "RCPT TO:<u%03d@example.test>\r\n" % i
        c.send(blob)
        self.assertEqual(c.reply().code, 250)
        replies = [c.reply() for _ in range(self.N + 2)]
        self.assertEqual([r.code for r in replies[:self.N]], [250] * self.N,
                         [r for r in replies if r.code != 250][:3])
        for r in replies[self.N:]:
            self.assertEqual(r.code, 452, r)
            self.assertEqual(r.enhanced, "4.5.3", r)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(smtp_data(b"Subject: many\n\nto many\n"))
        self.assertIsNotNone(queued_id(c.reply()))
        for i in range(self.N):
            self.assertEqual(len(self.d.files("new", "u%03d" % i)), 1, "u%03d" % i)
        for i in (self.N, self.N + 1):
            self.assertEqual(self.d.files("new", "u%03d" % i), [], "u%03d" % i)


class CommandsMax(DaemonTestCase):
    """limits.commands_max bounds the commands that move no mail between two
    MAILs; a session that keeps sending mail is never cut off by it."""
    daemon_args = dict(limits={"commands_max": 10})

    def test_too_many_commands_closes(self):
        c = self.client()
        for _ in range(10):
            self.assertEqual(c.cmd("NOOP").code, 250)
        r = c.cmd("NOOP")
        self.assertEqual((r.code, r.enhanced), (421, "4.7.0"), r)
        self.assertTrue(c.closed(), "connection left open after 421")

    def test_count_restarts_at_each_mail(self):
        c = self.ehlo_client()            # EHLO is the first counted command
        for _ in range(3):
            for _ in range(7):
                self.assertEqual(c.cmd("NOOP").code, 250)
            self.assertEqual(c.cmd("MAIL FROM:<a@b.test>").code, 250)
            self.assertEqual(c.cmd("RSET").code, 250)
        self.assertEqual(c.cmd("NOOP").code, 250)


if __name__ == "__main__":
    mxtest.main(budget=150)

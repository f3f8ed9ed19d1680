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
        # exactly the verbs that are implemented; no certificate, so no
        # STARTTLS (AUTH, EXPN, BDAT... answer 502 and are not listed)
        self.assertEqual(r.raw, ["214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT "
                                 "HELP VRFY"])
        for verb in r.text.split(":", 1)[1].split():
            with self.subTest(verb=verb):
                v = c.cmd(verb)
                self.assertNotIn(v.code, (500, 502), v)
                if verb == "QUIT":
                    break
                c.cmd("RSET")

    def test_helo_without_name_says_it_once(self):
        c = self.client()
        self.assertEqual(c.cmd("HELO").raw, ["501 5.5.4 Syntax: HELO hostname"])
        self.assertEqual(c.cmd("EHLO  ").raw, ["501 5.5.4 Syntax: EHLO hostname"])
        r = c.cmd("EHLO two names")
        self.assertReply(r, 501, "5.5.4")
        self.assertEqual(r.text.count("Syntax"), 0, r)
        self.assertNotIn("(", r.text, r)

    def test_refused_second_ehlo_leaves_no_helo(self):
        # like a refused first one: not greeted, so MAIL needs a new HELO
        # (and nothing can ever be received under an empty name)
        for bad in ("EHLO", "EHLO bad\x01name", "HELO two names"):
            with self.subTest(bad=bad):
                c = self.ehlo_client()
                self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250)
                self.assertReply(c.cmd(bad), 501, "5.5.4")
                # the transaction went with the old HELO
                self.assertReply(c.cmd("RCPT TO:<demo@example.test>"), 503, "5.5.1")
                r = c.cmd("MAIL FROM:<a@b.test>")
                self.assertReply(r, 503, "5.5.1")
                self.assertIn("HELO/EHLO", r.text)
                before = set(self.d.files())
                self.assertEqual(c.ehlo("again.example.org").code, 250)
                fr = c.transaction("a@b.test", ["demo@example.test"],
                                   smtp_data(b"Subject: after a refused EHLO\n\nok\n"))[3]
                self.assertIsNotNone(queued_id(fr), fr)
                new = set(self.d.files()) - before
                self.assertEqual(len(new), 1)
                with open(new.pop(), "rb") as f:
                    data = f.read()
                self.assertRegex(data, mxtest.received_re("again.example.org", "ESMTP", queued_id(fr),
                                                         "demo@example.test"))
                self.assertNotIn(b"Received: from  (", data)
                c.close()

    def test_quoted_local_part(self):
        c = self.ehlo_client()
        before = set(self.d.files())
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250)
        # "demo" needs no quotes: it is demo
        self.assertReply(c.cmd('RCPT TO:<"demo"@example.test>'), 250, "2.1.5")
        # quotes that are needed are refused for what they are, not as relaying
        for addr in ('"de mo"@example.test', '"a\\"b"@example.test', '"x@y"@example.test'):
            with self.subTest(addr=addr):
                r = c.cmd("RCPT TO:<%s>" % addr)
                self.assertReply(r, 553, "5.1.3")
                self.assertEqual(r.text, "5.1.3 <%s>: quoted local parts are not accepted" % addr)
        self.assertEqual(c.cmd("DATA").code, 354)
        off = self.d.log_size()
        c.send(smtp_data(b"Subject: quoted\n\nok\n"))
        txid = queued_id(c.reply())
        self.assertIsNotNone(txid)
        new = set(self.d.files()) - before
        self.assertEqual(len(new), 1)
        with open(new.pop(), "rb") as f:
            self.assertIn(b"\nDelivered-To: demo@example.test\n", f.read())
        m = self.d.wait_log(r"(?m)^.*%s smtp tx .*$" % txid, off)
        self.assertIsNotNone(m)
        self.assertIn(" to=<demo@example.test> nrcpt=1 ", m.group(0))

    def test_starttls_without_certificate(self):
        # not advertised, so not implemented here: 502 5.5.1, and the
        # session goes on in plaintext
        c = self.ehlo_client()
        r = c.cmd("STARTTLS")
        self.assertEqual(r.raw, ["502 5.5.1 Command not implemented"])
        self.assertEqual(c.pending(), b"")
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")

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
        self.assertIsNotNone(self.d.wait_log(r'smtp reject .* reply="421 4\.7\.0 .*too many errors" '
                                             r'reason=too_many_errors'))

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

    def sized_message(self, octets, line=998):
        """DATA bytes whose message part (before the final ".\\r\\n") is
        exactly `octets` long as sent: CRLF line ends, lines of `line`
        octets plus CRLF. Stored with LF ends it is one octet per line
        smaller."""
        head = b"Subject: sized\r\n\r\n"
        full = line + 2
        n, rest = divmod(octets - len(head), full)
        body = (b"x" * line + b"\r\n") * n
        if rest:
            assert rest >= 3, rest
            body += b"y" * (rest - 2) + b"\r\n"
        data = head + body
        assert len(data) == octets
        return data + b".\r\n"

    def test_size_counts_octets_as_sent(self):
        # SIZE_MAX octets as sent pass; one more does not, although the
        # stored copy (LF line ends) would be ~200 octets under the limit
        c = self.ehlo_client()
        for octets, ok in ((SIZE_MAX, True), (SIZE_MAX + 1, False)):
            with self.subTest(octets=octets):
                off = self.d.log_size()
                self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250)
                self.assertReply(c.cmd("RCPT TO:<demo@example.test>"), 250)
                self.assertEqual(c.cmd("DATA").code, 354)
                c.send(self.sized_message(octets))
                r = c.reply()
                if ok:
                    txid = queued_id(r)
                    self.assertIsNotNone(txid, r)
                else:
                    self.assertReply(r, 552, "5.3.4")
                    txid = None
                m = self.d.wait_log(r"(?m)^.* smtp tx .*$", off)
                self.assertIsNotNone(m)
                line = m.group(0)
                if txid:
                    self.assertIn(txid, line)
                self.assertIn(" size=%d " % octets, line)
                if not ok:
                    self.assertIn(" action=reject ", line)
                    self.assertIn(" result=rejected ", line)
                    self.assertIn(" reason=size ", line)

    def test_dot_stuffing_counts_as_sent(self):
        # a stuffed dot is an octet on the wire: the last line of an
        # exactly SIZE_MAX message turned into ".yyy" and stuffed ("..yyy")
        # is one octet too many; with one "y" less it fits again
        c = self.ehlo_client()
        base = self.sized_message(SIZE_MAX)[:-3]
        last = base.rfind(b"\r\n", 0, len(base) - 2) + 2
        line = base[last:-2]
        for stuffed, ok in ((b"." + b"." + line[1:], False), (b"." + b"." + line[2:], True)):
            with self.subTest(ok=ok):
                msg = base[:last] + stuffed + b"\r\n"
                self.assertEqual(len(msg), SIZE_MAX + (0 if ok else 1))
                self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250)
                self.assertReply(c.cmd("RCPT TO:<demo@example.test>"), 250)
                self.assertEqual(c.cmd("DATA").code, 354)
                c.send(msg + b".\r\n")
                r = c.reply()
                if ok:
                    self.assertIsNotNone(queued_id(r), r)
                else:
                    self.assertReply(r, 552, "5.3.4")

    def test_data_line_max(self):
        # default limits.data_line_max = 65536 octets, CRLF included: the
        # longest allowed line passes, one octet more is read to the end
        # and refused; the session goes on
        c = self.ehlo_client()
        for length, ok in ((65536, True), (65537, False)):
            with self.subTest(length=length):
                before = set(self.d.files())
                off = self.d.log_size()
                self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250)
                self.assertReply(c.cmd("RCPT TO:<demo@example.test>"), 250)
                self.assertEqual(c.cmd("DATA").code, 354)
                c.send(b"Subject: long line\r\nMessage-ID: <long.%d@b.test>\r\n\r\n" % length +
                       b"L" * (length - 2) + b"\r\nshort\r\n.\r\nNOOP\r\n")
                r = c.reply()
                if ok:
                    self.assertIsNotNone(queued_id(r), r)
                    self.assertEqual(len(set(self.d.files()) - before), 1)
                else:
                    self.assertReply(r, 550, "5.6.0")
                    self.assertIn("line too long", r.text)
                    self.assertEqual(set(self.d.files()), before)
                    m = self.d.wait_log(r"(?m)^.* smtp tx .*$", off)
                    self.assertIsNotNone(m)
                    for want in (" action=reject ", " result=rejected ", " dsn=5.6.0 ",
                                 " reason=line_too_long ", " msgid=<long.%d@b.test> " % length):
                        self.assertIn(want, m.group(0))
                # the pipelined NOOP after the message is answered: nothing
                # of the message leaked into the command stream
                self.assertReply(c.reply(), 250, "2.0.0")

    def test_duplicates_count_towards_recipients_max(self):
        # recipients_max (default 100) counts accepted RCPT commands, as
        # Postfix does: 150 times the same address, the 101st gets 452;
        # the message is still delivered once
        c = self.ehlo_client()
        before = set(self.d.files())
        c.send("MAIL FROM:<a@b.test>\r\n" + "RCPT TO:<demo@example.test>\r\n" * 150)
        self.assertReply(c.reply(), 250)
        codes = [c.reply() for _ in range(150)]
        self.assertEqual([r.code for r in codes[:100]], [250] * 100)
        for r in codes[100:]:
            self.assertReply(r, 452, "4.5.3")
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(smtp_data(b"Subject: dup\n\nonce\n"))
        self.assertIsNotNone(queued_id(c.reply()))
        self.assertEqual(len(set(self.d.files()) - before), 1)

    def test_refusals_logged(self):
        # every refusal has one greppable line with client, helo, sender,
        # recipient, reply and reason — also when no recipient was accepted
        c = self.client()
        off = self.d.log_size()
        sid = None
        c.cmd("MAIL FROM:<early@b.test>")            # bad sequence, no HELO yet
        c.ehlo("logged.example.org")
        c.cmd("XYZZY")
        c.send(b"NO\0OP\r\n")
        c.reply()
        c.cmd("MAIL FROM:<big@b.test> SIZE=%d" % (SIZE_MAX + 1))
        c.cmd("MAIL FROM:<a@b.test> FROB=1")
        c.cmd("MAIL FROM:<sender@b.test>")
        c.cmd("RCPT TO:<nobody@example.test>")
        c.cmd("RCPT TO:<x@elsewhere.test>")
        c.cmd('RCPT TO:<"a b"@example.test>')
        c.cmd("RCPT TO:<broken")
        c.cmd("QUIT")
        self.assertTrue(c.closed())
        self.assertIsNotNone(self.d.wait_log(r"smtp disconnected .*reason=quit", off))
        lines = [l for l in self.d.log_since(off).splitlines() if " smtp reject " in l]
        base = r"^.* smtp reject client=127\.0\.0\.1 "
        want = [
            r'helo=- from=- reply="503 5\.5\.1 Error: send HELO/EHLO first" reason=bad_sequence$',
            r'helo=logged\.example\.org from=- reply="500 5\.5\.1 .*" reason=unknown_command$',
            r'helo=logged\.example\.org from=- reply="500 5\.5\.2 .*" reason=nul$',
            r'helo=logged\.example\.org from=<big@b\.test> reply="552 5\.3\.4 .*" reason=size$',
            r'helo=logged\.example\.org from=<a@b\.test> reply="555 5\.5\.4 .*FROB" reason=bad_param$',
            r'helo=logged\.example\.org from=<sender@b\.test> rcpt=<nobody@example\.test> '
            r'reply="550 5\.1\.1 <nobody@example\.test>: .*" reason=unknown_user$',
            r'helo=logged\.example\.org from=<sender@b\.test> rcpt=<x@elsewhere\.test> '
            r'reply="550 5\.7\.1 .*" reason=relay$',
            r'helo=logged\.example\.org from=<sender@b\.test> rcpt=<\"a b\"@example\.test> '
            r'reply="553 5\.1\.3 <\\"a b\\"@example\.test>: quoted local parts are not accepted" '
            r'reason=quoted_local$',
            r'helo=logged\.example\.org from=<sender@b\.test> reply="501 5\.1\.3 .*" reason=rcpt_syntax$',
        ]
        self.assertEqual(len(lines), len(want), "\n".join(lines))
        session_ids = set()
        for line, rx in zip(lines, want):
            self.assertRegex(line, base + rx)
            session_ids.add(line.split(" smtp reject ")[0].split()[-1])
        self.assertEqual(len(session_ids), 1, lines)

    def test_lost_connection_during_data_logged(self):
        c = self.ehlo_client()
        off = self.d.log_size()
        self.assertReply(c.cmd("MAIL FROM:<leaver@b.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<demo@example.test>"), 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(b"Subject: gone\r\n\r\n" + b"z" * 4981 + b"\r\n")   # 5000 octets
        c.close()
        m = self.d.wait_log(r"(?m)^.* smtp lost connection during DATA .*$", off)
        self.assertIsNotNone(m, self.d.log_since(off))
        self.assertRegex(m.group(0), r" client=127\.0\.0\.1 helo=client\.example\.org "
                                     r"from=<leaver@b\.test> nrcpt=1 octets=5000$")

    def test_command_line_too_long(self):
        c = self.ehlo_client()
        off = self.d.log_size()
        r = c.cmd("NOOP " + "x" * 1100)
        self.assertReply(r, 500, "5.5.6")
        self.assertIsNotNone(self.d.wait_log(r'smtp reject client=127\.0\.0\.1 helo=client\.example\.org '
                                             r'from=- reply="500 5\.5\.6 Error: line too long" '
                                             r'reason=line_too_long', off))
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
        off = self.d.log_size()
        c.send(smtp_data(b"Subject: many\n\nto many\n"))
        txid = queued_id(c.reply())
        self.assertIsNotNone(txid)
        # the tx line stays well inside a syslog line: the first ten
        # recipients by name, the rest counted, nrcpt= all of them
        m = self.d.wait_log(r"(?m)^.*%s smtp tx .*$" % txid, off)
        self.assertIsNotNone(m)
        line = m.group(0)
        self.assertLess(len(line.encode()), 2000, line)
        self.assertIn(" nrcpt=%d " % self.N, line)
        self.assertIn(" to=" + ",".join("<u%03d@example.test>" % i for i in range(10)) +
                      ",...(+%d more) " % (self.N - 10), line)
        for i in range(self.N):
            self.assertEqual(len(self.d.files("new", "u%03d" % i)), 1, "u%03d" % i)
        for i in (self.N, self.N + 1):
            self.assertEqual(self.d.files("new", "u%03d" % i), [], "u%03d" % i)


class SizeTenMiB(DaemonTestCase):
    """The issue's numbers: 10,488,019 octets sent against a 10,485,760
    limit. Stored with LF line ends the message would be 10,477,528
    octets, under the limit; what counts is what the client sent."""
    daemon_args = dict(limits={"message_size_max": 10485760})

    def test_sent_octets_over_the_limit_refused(self):
        c = self.ehlo_client()
        head = b"Subject: ten MiB\r\n\r\n"
        n, rest = divmod(10488019 - len(head), 1000)
        data = head + (b"x" * 998 + b"\r\n") * n + b"y" * (rest - 2) + b"\r\n"
        self.assertEqual(len(data), 10488019)
        self.assertLess(len(data.replace(b"\r\n", b"\n")), 10485760)
        off = self.d.log_size()
        self.assertEqual(c.cmd("MAIL FROM:<a@b.test>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<demo@example.test>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(data + b".\r\n")
        r = c.reply()
        self.assertEqual((r.code, r.enhanced), (552, "5.3.4"), r)
        self.assertEqual(self.d.all_files("new"), [])
        m = self.d.wait_log(r"(?m)^.* smtp tx .*$", off)
        self.assertIsNotNone(m)
        self.assertIn(" size=10488019 ", m.group(0))
        self.assertIn(" reason=size ", m.group(0))


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
        self.assertIsNotNone(self.d.wait_log(r'smtp reject .* reply="421 4\.7\.0 .*too many commands" '
                                             r'reason=too_many_commands'))

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

#!/usr/bin/env python3
"""The relay (proxy mode) against real upstreams: Postfix, Dovecot's LMTP and
Postfix's smtp-sink, all started here on loopback (tests/integration/
upstreams.py). Clients are Python's smtplib, as a sending MTA would be.

What is checked: mail arrives upstream byte for byte (plus our Received:);
the upstream's own RCPT answer reaches the client (unknown users refused
at RCPT); XCLIENT makes Postfix see the real client; LMTP takes one
recipient per transaction and a failure after DATA is the client's reply;
one transaction for a local and a relayed mailbox delivers both or
neither; 8-bit mail for a 7-bit upstream is refused, not changed; failing
upstreams (refusing, tempfailing, dropping, killed mid-DATA) give 4xx/5xx
and nothing half-delivered; fail-over to the next host; bare CR/LF never
reach the upstream as line ends it could misread; connections are reused.
"""

import os
import re
import smtplib
import socket
import time
import unittest

import mxtest
from mxtest import Daemon
import upstreams
from upstreams import Postfix, DovecotLMTP, SmtpSink


def route_conf(name, domains, hosts, protocol="smtp", **extra):
    lines = ["route %s {" % name,
             "\tdomains = {%s}" % ", ".join('"%s"' % d for d in domains),
             '\tprotocol = "%s"' % protocol,
             "\thosts = {%s}" % ", ".join('"%s"' % h for h in hosts)]
    extra.setdefault("starttls", "off")
    for k, v in extra.items():
        lines.append("\t%s = %s" % (k, mxtest.conf_value(v)))
    lines.append("}")
    return "\n".join(lines) + "\n"


def smtp(daemon, source=None):
    s = smtplib.SMTP(timeout=30, source_address=(source, 0) if source else None)
    s.connect("127.0.0.1", daemon.port)
    s.ehlo("client.example.org")
    return s


def message(subject, body=b"Hello.\r\n"):
    return (b"From: <sender@example.org>\r\nTo: <someone@relay.test>\r\n"
            b"Subject: " + subject.encode() + b"\r\n"
            b"Message-ID: <" + subject.encode() + b"@example.org>\r\n\r\n" + body)


def after_our_received(stored):
    """What follows our Received: header in a stored copy (LF endings)."""
    m = re.search(rb"Received: from \S+ \(unknown \[[^]]+\]\)\n\tby mx\.example\.test "
                  rb"\(mxguard\) with E?SMTPS? id [A-Z0-9]+(\n\tfor <[^>]+>)?; [^\n]+\n", stored)
    assert m is not None, stored[:600]
    return stored[m.end():]


def lf(data):
    return data.replace(b"\r\n", b"\n")


def wait_subject(server, user, domain, subject, timeout=20):
    """The copies in user's Maildir whose Subject is subject, once there is one."""
    deadline = time.monotonic() + timeout
    want = b"\nSubject: " + subject.encode() + b"\n"
    while True:
        got = [m for m in server.maildir_messages(user, domain) if want in m]
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


class PostfixUpstream(unittest.TestCase):
    """A real Postfix as the MX behind mxguard; example.test stays local."""

    @classmethod
    def setUpClass(cls):
        cls.pf = Postfix(domains={"relay.test": ["alice", "bob"]},
                         message_size_limit=200000).start()
        cls.d = Daemon(extra_conf=route_conf(
            "corp", ["relay.test"], ["127.0.0.1:%d" % cls.pf.port], reuse_time=30))

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()
        cls.pf.stop()

    def test_byte_exact_with_dots_and_8bit(self):
        body = (b"Line one\r\n.leading dot\r\n..two dots\r\n.\r\n"
                b"caf\xc3\xa9 8-bit \xff octets\r\n" + b"x" * 900 + b"\r\nend\r\n")
        msg = message("exact", body)
        s = smtp(self.d)
        s.mail("sender@example.org", ["BODY=8BITMIME"])
        code, text = s.rcpt("alice@relay.test")
        self.assertEqual(code, 250, text)
        code, text = s.data(msg)
        self.assertEqual(code, 250, text)
        # the upstream's own words: Postfix's "queued as"
        self.assertIn(b"queued as", text)
        s.quit()
        stored = wait_subject(self.pf, "alice", "relay.test", "exact")
        self.assertEqual(len(stored), 1)
        self.assertEqual(after_our_received(stored[0]), lf(msg))

    def test_unknown_user_refused_by_postfix_at_rcpt(self):
        s = smtp(self.d)
        s.mail("sender@example.org")
        code, text = s.rcpt("nobody@relay.test")
        self.assertEqual(code, 550)
        # Postfix's own reply text, passed through
        self.assertIn(b"5.1.1", text)
        self.assertIn(b"nobody@relay.test", text)
        self.assertRegex(text, rb"(?i)user unknown|not found|unknown")
        code, _ = s.rcpt("bob@relay.test")
        self.assertEqual(code, 250)
        code, text = s.data(message("after-unknown"))
        self.assertEqual(code, 250, text)
        s.quit()
        self.assertEqual(len(wait_subject(self.pf, "bob", "relay.test", "after-unknown")), 1)

    def test_xclient_gives_postfix_the_real_client(self):
        s = smtp(self.d, source="127.0.0.9")
        s.mail("xclient@example.org")
        self.assertEqual(s.rcpt("alice@relay.test")[0], 250)
        code, text = s.data(message("xclient"))
        self.assertEqual(code, 250, text)
        s.quit()
        qid = re.search(rb"queued as ([0-9A-Za-z]+)", text).group(1).decode()
        # smtpd logs the client it was told of, not mxguard's address
        self.pf.wait_for_log(r"%s: client=\S*\[127\.0\.0\.9\]" % qid)

    def test_local_and_relayed_in_one_transaction(self):
        s = smtp(self.d)
        s.mail("both@example.org")
        self.assertEqual(s.rcpt("demo@example.test")[0], 250)
        self.assertEqual(s.rcpt("alice@relay.test")[0], 250)
        code, text = s.data(message("both"))
        self.assertEqual(code, 250, text)
        s.quit()
        local = [m for m in self.d.messages() if b"Subject: both" in m]
        self.assertEqual(len(local), 1)
        self.assertEqual(len(wait_subject(self.pf, "alice", "relay.test", "both")), 1)

    def test_upstream_refusal_leaves_no_local_copy(self):
        # Postfix's message_size_limit is 200000, ours 25 MB: the upstream
        # refuses at the end of DATA, so the local copy must not appear
        before = len(self.d.messages())
        s = smtp(self.d)
        s.mail("big@example.org")
        self.assertEqual(s.rcpt("demo@example.test")[0], 250)
        self.assertEqual(s.rcpt("alice@relay.test")[0], 250)
        code, text = s.data(message("too-big", (b"y" * 998 + b"\r\n") * 300))
        self.assertEqual(code // 100, 5, text)
        self.assertIn(b"5.3.4", text)
        s.quit()
        self.assertEqual(len(self.d.messages()), before)
        self.assertEqual(os.listdir(os.path.join(self.d.maildir(), "tmp")), [])

    def test_second_upstream_route_in_one_transaction_is_deferred(self):
        # relay.test and a second route: the second recipient is 452 4.5.3
        s = smtp(self.d)
        s.mail("two@example.org")
        self.assertEqual(s.rcpt("alice@relay.test")[0], 250)
        code, text = s.rcpt("someone@other-route.test")
        # other-route.test is not configured here: relay denied
        self.assertEqual(code, 550, text)
        s.rset()
        s.quit()

    def test_connection_reused_across_transactions(self):
        offset = len(self.pf.log_text())
        for i in range(3):
            s = smtp(self.d)
            s.mail("reuse%d@example.org" % i)
            self.assertEqual(s.rcpt("bob@relay.test")[0], 250)
            code, text = s.data(message("reuse%d" % i))
            self.assertEqual(code, 250, text)
            s.quit()
        for i in range(3):
            self.assertEqual(len(wait_subject(self.pf, "bob", "relay.test", "reuse%d" % i)), 1)
        log = self.pf.log_text()[offset:]
        # mxguard has two loops: at most one new connection per loop
        self.assertLessEqual(len(re.findall(r"postfix/smtpd\[\d+\]: connect from", log)), 2, log)
        self.assertGreaterEqual(len(re.findall(r"client=\S*\[127\.0\.0\.1\]", log)), 3, log)


class Postfix7bit(unittest.TestCase):
    """An upstream that does not offer 8BITMIME (and a small SIZE)."""

    @classmethod
    def setUpClass(cls):
        cls.pf = Postfix(domains={"relay.test": ["alice"]}, eight_bit=False,
                         message_size_limit=100000).start()
        cls.d = Daemon(extra_conf=route_conf(
            "seven", ["relay.test"], ["127.0.0.1:%d" % cls.pf.port]))

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()
        cls.pf.stop()

    def test_ehlo_offers_what_the_upstream_takes(self):
        s = smtp(self.d)
        self.assertFalse(s.has_extn("8bitmime"))
        self.assertEqual(s.esmtp_features.get("size"), "100000")
        s.quit()

    def test_declared_8bit_refused_at_rcpt(self):
        s = smtp(self.d)
        s.mail("e@example.org", ["BODY=8BITMIME"])
        code, text = s.rcpt("alice@relay.test")
        self.assertEqual(code, 550, text)
        self.assertIn(b"5.6.3", text)
        s.quit()

    def test_8bit_content_refused_not_changed(self):
        s = smtp(self.d)
        s.mail("e@example.org")
        self.assertEqual(s.rcpt("alice@relay.test")[0], 250)
        code, text = s.data(message("eight", b"caf\xc3\xa9\r\n"))
        self.assertEqual(code, 554, text)
        self.assertIn(b"5.6.3", text)
        s.mail("e@example.org")
        self.assertEqual(s.rcpt("alice@relay.test")[0], 250)
        code, text = s.data(message("seven", b"plain ascii\r\n"))
        self.assertEqual(code, 250, text)
        s.quit()
        self.assertEqual(len(wait_subject(self.pf, "alice", "relay.test", "seven")), 1)
        self.assertEqual([m for m in self.pf.maildir_messages("alice", "relay.test")
                          if b"Subject: eight" in m], [])


class DovecotUpstream(unittest.TestCase):
    """Dovecot's LMTP server behind mxguard, over TCP and a unix socket."""

    @classmethod
    def setUpClass(cls):
        cls.lmtp = DovecotLMTP(domains={"lmtp.test": ["carol", "dave"],
                                        "unix.test": ["erin"]},
                               unix=True, user_quota_small=["dave"]).start()
        cls.d = Daemon(extra_conf=route_conf(
            "boxes", ["lmtp.test"], ["127.0.0.1:%d" % cls.lmtp.port], protocol="lmtp")
            + route_conf("sock", ["unix.test"], ["unix:%s" % cls.lmtp.socket_path],
                         protocol="lmtp"))

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()
        cls.lmtp.stop()

    def test_delivered_byte_exact(self):
        body = b".dot\r\nline two\r\n"
        s = smtp(self.d)
        s.mail("l@example.org")
        self.assertEqual(s.rcpt("carol@lmtp.test")[0], 250)
        code, text = s.data(message("lmtp", body))
        self.assertEqual(code, 250, text)
        s.quit()
        got = wait_subject(self.lmtp, "carol", "lmtp.test", "lmtp")
        self.assertEqual(len(got), 1)
        self.assertEqual(after_our_received(got[0]), lf(message("lmtp", body)))

    def test_unix_socket(self):
        s = smtp(self.d)
        s.mail("u@example.org")
        self.assertEqual(s.rcpt("erin@unix.test")[0], 250)
        code, text = s.data(message("unix"))
        self.assertEqual(code, 250, text)
        s.quit()
        self.assertEqual(len(wait_subject(self.lmtp, "erin", "unix.test", "unix")), 1)

    def test_unknown_user_refused_at_rcpt(self):
        s = smtp(self.d)
        s.mail("l@example.org")
        code, text = s.rcpt("nobody@lmtp.test")
        self.assertEqual(code, 550, text)
        self.assertIn(b"5.1.1", text)
        s.quit()

    def test_one_recipient_per_transaction(self):
        s = smtp(self.d)
        s.mail("l@example.org")
        self.assertEqual(s.rcpt("carol@lmtp.test")[0], 250)
        code, text = s.rcpt("dave@lmtp.test")
        self.assertEqual(code, 452, text)
        self.assertIn(b"4.5.3", text)
        code, text = s.data(message("one-of-two"))
        self.assertEqual(code, 250, text)
        s.quit()
        self.assertEqual(len(wait_subject(self.lmtp, "carol", "lmtp.test", "one-of-two")), 1)
        self.assertEqual([m for m in self.lmtp.maildir_messages("dave", "lmtp.test")
                          if b"Subject: one-of-two" in m], [])

    def test_failure_after_data_is_the_clients_reply(self):
        # dave's quota is one byte: RCPT is fine, the delivery is not
        s = smtp(self.d)
        s.mail("l@example.org")
        self.assertEqual(s.rcpt("dave@lmtp.test")[0], 250)
        code, text = s.data(message("over-quota"))
        self.assertEqual(code, 552, text)
        self.assertIn(b"5.2.2", text)
        s.quit()


class FailingUpstreams(unittest.TestCase):
    """smtp-sink told to fail: every failure gives the client the right
    class of reply, and nothing is stored or half-sent."""

    def relay_to(self, sinks, **extra):
        d = Daemon(extra_conf=route_conf(
            "sink", ["relay.test"], ["%d 127.0.0.1:%d" % (10 * (i + 1), sk.port)
                                     for i, sk in enumerate(sinks)], **extra))
        self.addCleanup(d.cleanup)
        return d

    def sink(self, *options):
        sk = SmtpSink(options=list(options)).start()
        self.addCleanup(sk.stop)
        return sk

    def send(self, d, rcpt="a@relay.test", body=b"text\r\n"):
        s = smtp(d)
        s.mail("s@example.org")
        code, text = s.rcpt(rcpt)
        if code != 250:
            s.close()
            return ("rcpt", code, text)
        try:
            code, text = s.data(message("sink", body))
        except smtplib.SMTPDataError as e:
            code, text = e.smtp_code, e.smtp_error
        s.close()
        return ("data", code, text)

    def test_rcpt_refused(self):
        d = self.relay_to([self.sink("-f", "RCPT")])
        self.assertEqual(self.send(d)[:2], ("rcpt", 500))

    def test_rcpt_tempfailed(self):
        d = self.relay_to([self.sink("-r", "RCPT")])
        self.assertEqual(self.send(d)[:2], ("rcpt", 450))

    def test_mail_refused_is_the_rcpt_answer(self):
        d = self.relay_to([self.sink("-f", "MAIL")])
        where, code, text = self.send(d)
        self.assertEqual((where, code), ("rcpt", 500), text)

    def test_data_end_tempfailed(self):
        sk = self.sink("-r", ".")
        d = self.relay_to([sk])
        self.assertEqual(self.send(d)[:2], ("data", 450))

    def test_dropped_at_data(self):
        sk = self.sink("-q", "DATA")
        d = self.relay_to([sk])
        where, code, text = self.send(d)
        self.assertEqual((where, code), ("data", 451), text)
        self.assertIn(b"4.4.2", text)

    def test_dropped_after_the_dot(self):
        sk = self.sink("-q", ".")
        d = self.relay_to([sk])
        where, code, text = self.send(d)
        self.assertEqual((where, code), ("data", 451), text)

    def test_greeting_refused_fails_over(self):
        bad = self.sink("-f", "CONNECT")
        good = self.sink()
        d = self.relay_to([bad, good])
        self.assertEqual(self.send(d)[:2], ("data", 250))
        self.assertEqual(len(good.wait_for_messages(1)), 1)

    def test_all_down_is_4xx(self):
        port = mxtest.free_port()
        d = Daemon(extra_conf=route_conf(
            "down", ["relay.test"], ["127.0.0.1:%d" % port], connect_timeout=2))
        self.addCleanup(d.cleanup)
        where, code, text = self.send(d)
        self.assertEqual((where, code), ("rcpt", 451), text)
        self.assertIn(b"4.4.1", text)

    def test_bare_cr_and_lf_sent_as_line_ends(self):
        sk = self.sink()
        d = Daemon(settings={"bare_lf": "accept"}, extra_conf=route_conf(
            "sink", ["relay.test"], ["127.0.0.1:%d" % sk.port]))
        self.addCleanup(d.cleanup)
        # smtplib stuffs the dot after the bare LF (mxguard, like Postfix,
        # un-stuffs only after CRLF, so that one stays "..") but not the
        # one between bare CRs
        body = b"one\r.\rtwo\n.\nthree\r\n"
        self.assertEqual(self.send(d, body=body)[:2], ("data", 250))
        env, got = SmtpSink.parse_dump(sk.wait_for_messages(1)[0])
        # every CR and LF became a line end and every dot line was stuffed
        # (smtp-sink undid it): the "\r.\r" did not end the data upstream
        text = after_our_received(got)
        self.assertTrue(text.endswith(b"one\n.\ntwo\n..\nthree\n"), text)
        self.assertNotIn(b"\r", text)

    def test_killed_mid_data_then_next_host(self):
        # the first waits 30 s before answering DATA, and logs what it reads
        first = SmtpSink(options=["-w", "30"], verbose=True).start()
        self.addCleanup(first.stop)
        second = self.sink()
        d = self.relay_to([first, second])
        s = smtp(d)
        s.mail("k@example.org")
        self.assertEqual(s.rcpt("a@relay.test")[0], 250)
        s.putcmd("data")
        self.assertEqual(s.getreply()[0], 354)
        s.send(message("killed") + b".\r\n")
        # mxguard's DATA sits at the first sink; it dies meanwhile
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not re.search(
                r"(?i)\bdata\b", first.log_text() or ""):
            time.sleep(0.05)
        self.assertRegex(first.log_text(), r"(?i)\bdata\b")
        first.stop()
        code, text = s.getreply()
        self.assertEqual(code, 451, text)
        self.assertIn(b"4.4.2", text)
        s.close()
        # the next transaction: the first host refuses, the second takes it
        self.assertEqual(self.send(d)[:2], ("data", 250))
        self.assertEqual(len(second.wait_for_messages(1)), 1)


class VerdictsUpstream(unittest.TestCase):
    """Filter verdicts in proxy mode, with the test stage (tests/stages/
    test_stage.c) deciding and smtp-sink as the upstream."""

    @classmethod
    def setUpClass(cls):
        cls.sink = SmtpSink(verbose=True).start()

    @classmethod
    def tearDownClass(cls):
        cls.sink.stop()

    def daemon(self, stage):
        d = Daemon(binary=mxtest.MXGUARD_TESTSTAGE, start=False)
        d.pipeline = {"stages": ["teststage"]}
        lines = ["teststage {"] + ["\t%s = %s" % (k, mxtest.conf_value(v))
                                   for k, v in stage.items()] + ["}"]
        d.extra_conf = route_conf("sink", ["relay.test"], ["127.0.0.1:%d" % self.sink.port]) \
            + "\n".join(lines) + "\n"
        d.write_config()
        d.start()
        self.addCleanup(d.cleanup)
        return d

    def dumps(self):
        return [SmtpSink.parse_dump(m) for m in self.sink.messages()]

    def send(self, d, subject, rcpts=("a@relay.test",)):
        s = smtp(d)
        s.mail("v@example.org")
        answers = [s.rcpt(r)[0] for r in rcpts]
        code, text = s.data(message(subject))
        s.quit()
        return answers, code, text

    def test_tag_headers_go_upstream(self):
        d = self.daemon(dict(phase="data", header="X-Spam-Flag: YES", score=3.5))
        self.assertEqual(self.send(d, "tagged")[1], 250)
        self.sink.wait_for_messages(1)
        got = [m for env, m in self.dumps() if b"Subject: tagged" in m]
        self.assertEqual(len(got), 1)
        self.assertIn(b"\nX-Spam-Flag: YES\n", got[0])
        self.assertIn(b"X-Spam-Score: 3.5", got[0])

    def test_forged_fields_not_relayed(self):
        # a sender's X-Spam-* and an Authentication-Results naming our
        # hostname (any case) never reach the upstream; another server's do
        d = self.daemon(dict(phase="data", score=0.5))
        s = smtp(d)
        s.mail("v@example.org")
        s.rcpt("a@relay.test")
        code, text = s.data(b"Authentication-Results: MX.example.test; dmarc=pass\r\n"
                            b"\theader.from=bank.example\r\n"
                            b"Authentication-Results: other.example; spf=fail\r\n"
                            b"X-Spam-Status: No, forged\r\n" + message("forged-fields"))
        s.quit()
        self.assertEqual(code, 250, text)
        self.sink.wait_for_messages(1)
        got = [m for env, m in self.dumps() if b"Subject: forged-fields" in m]
        self.assertEqual(len(got), 1)
        self.assertNotIn(b"bank.example", got[0])
        self.assertNotIn(b"forged", got[0].split(b"Subject:")[0])
        self.assertIn(b"Authentication-Results: other.example; spf=fail", got[0])

    def test_reject_sends_nothing(self):
        d = self.daemon(dict(phase="data", verdict="reject", code=554, enhanced="5.7.9",
                             text="No thanks"))
        n = len(self.sink.messages())
        answers, code, text = self.send(d, "rejected")
        self.assertEqual(code, 554, text)
        self.assertIn(b"No thanks", text)
        self.assertEqual(len(self.sink.messages()), n)

    def test_quarantine_kept_here_not_upstream(self):
        d = self.daemon(dict(phase="data", verdict="quarantine"))
        n = len(self.sink.messages())
        answers, code, text = self.send(d, "held")
        self.assertEqual(code, 250, text)
        self.assertEqual(len(self.sink.messages()), n)
        qdir = os.path.join(d.dir, "quarantine", "new")
        held = [open(os.path.join(qdir, f), "rb").read() for f in os.listdir(qdir)]
        self.assertEqual(len(held), 1)
        self.assertIn(b"X-MXGuard-Recipient: a@relay.test\n", held[0])
        self.assertIn(b"Subject: held", held[0])

    def test_discard_sends_nothing(self):
        d = self.daemon(dict(phase="data", verdict="discard"))
        n = len(self.sink.messages())
        answers, code, text = self.send(d, "dropped")
        self.assertEqual(code, 250, text)
        self.assertEqual(len(self.sink.messages()), n)

    def test_recipient_refused_after_upstream_said_yes(self):
        # the upstream accepted b before the stage refused it: the upstream
        # transaction is given again without b, so b never gets the message
        d = self.daemon(dict(phase="rcpt", verdict="reject", only_rcpt="b@relay.test",
                             code=550, enhanced="5.7.1", text="Not b"))
        answers, code, text = self.send(d, "trimmed", rcpts=("a@relay.test", "b@relay.test",
                                                             "c@relay.test"))
        self.assertEqual(answers, [250, 550, 250])
        self.assertEqual(code, 250, text)
        self.sink.wait_for_messages(1)
        got = [env for env, m in self.dumps() if b"Subject: trimmed" in m]
        self.assertEqual(len(got), 1)
        # smtp-sink's dump keeps the RCPTs of a reset transaction: its log
        # shows what the message was given to, after RSET
        log = self.sink.log_text()
        last = log[log.rindex("MAIL FROM:<v@example.org>"):]
        self.assertEqual(re.findall(r"RCPT TO:<(\w)@relay\.test>", last), ["a", "c"])


class PostfixTLS(unittest.TestCase):
    """STARTTLS to the upstream: opportunistic, required and verified,
    required with a name the certificate does not carry; XFORWARD when
    XCLIENT is not allowed."""

    @classmethod
    def setUpClass(cls):
        cls.pf = Postfix(domains={"relay.test": ["alice"]}, tls=True, xclient_hosts="",
                         extra_main_cf={"smtpd_tls_loglevel": "1"}).start()

    @classmethod
    def tearDownClass(cls):
        cls.pf.stop()

    def daemon(self, **route):
        d = Daemon(extra_conf=route_conf("tls", ["relay.test"],
                                         ["127.0.0.1:%d" % self.pf.port], **route))
        self.addCleanup(d.cleanup)
        return d

    def send(self, d, subject):
        s = smtp(d, source="127.0.0.7")
        s.mail("t@example.org")
        code, text = s.rcpt("alice@relay.test")
        if code == 250:
            code, text = s.data(message(subject))
        s.quit()
        return code, text

    def test_opportunistic(self):
        d = self.daemon(starttls="opportunistic")
        code, text = self.send(d, "tls-may")
        self.assertEqual(code, 250, text)
        qid = re.search(rb"queued as ([0-9A-Za-z]+)", text).group(1).decode()
        self.pf.wait_for_log(r"Anonymous TLS connection established from|"
                             r"TLS connection established from")
        # XCLIENT is not allowed here: XFORWARD names the client instead
        self.pf.wait_for_log(r"%s: .*orig_client=\S*\[127\.0\.0\.7\]" % qid)
        self.assertEqual(len(wait_subject(self.pf, "alice", "relay.test", "tls-may")), 1)

    def test_required_verified(self):
        d = self.daemon(starttls="required", tls_ca_file=self.pf.cert_path,
                        tls_verify_name="localhost")
        code, text = self.send(d, "tls-verified")
        self.assertEqual(code, 250, text)
        self.assertEqual(len(wait_subject(self.pf, "alice", "relay.test", "tls-verified")), 1)

    def test_required_wrong_name_refused(self):
        d = self.daemon(starttls="required", tls_ca_file=self.pf.cert_path,
                        tls_verify_name="mx.elsewhere.test")
        code, text = self.send(d, "tls-wrong")
        self.assertEqual(code, 451, text)
        self.assertIn(b"4.4.1", text)
        self.assertIsNotNone(d.wait_log(r"upstream 127\.0\.0\.1:\d+: TLS"))
        self.assertEqual(wait_subject(self.pf, "alice", "relay.test", "tls-wrong", timeout=0), [])


class LargeMessage(unittest.TestCase):
    """A message far above the spill threshold goes upstream from the spool
    file, byte for byte, without being held in memory again."""

    def test_streamed_from_the_spool(self):
        sk = SmtpSink().start()
        self.addCleanup(sk.stop)
        d = Daemon(extra_conf=route_conf("sink", ["relay.test"], ["127.0.0.1:%d" % sk.port]))
        self.addCleanup(d.cleanup)
        line = b"0123456789" * 9 + b".line\r\n"
        body = b"".join(b"%08d " % i + line for i in range(120000))  # about 12 MB
        msg = message("large", body)
        rss_before = d.rss_kb()
        s = smtp(d)
        s.mail("big@example.org", ["SIZE=%d" % len(msg)])
        self.assertEqual(s.rcpt("a@relay.test")[0], 250)
        code, text = s.data(msg)
        self.assertEqual(code, 250, text)
        rss_after = d.rss_kb()
        s.quit()
        env, got = SmtpSink.parse_dump(sk.wait_for_messages(1)[0])
        self.assertEqual(after_our_received(got), lf(msg))
        if not mxtest.sanitized():
            # the body was spilled and mapped: not a second copy in memory
            self.assertLess(rss_after - rss_before, len(msg) // 1024 // 2,
                            (rss_before, rss_after))


if __name__ == "__main__":
    mxtest.main(budget=400)

#!/usr/bin/env python3
"""The rules stage in the real daemon, driven over SMTP with smtplib.

GTUBE is rejected (or junked, as the thresholds say) with the rule's name in
the log line; an envelope rule with an action refuses at the end of DATA
with its own reply text; a sender's forged X-Spam-* headers never reach the
mailbox; a reload with a broken rule file is refused and the running rules
stay; a reload while 20 connections send loses nothing and switches to the
new rules; `mxguardctl rules lint|test` speak as documented.
"""

import os
import re
import signal
import smtplib
import subprocess
import threading
import time
import unittest

import mxtest
from mxtest import Daemon

STOCK = os.path.join(mxtest.MX_SRCDIR, "rules", "mxguard.cf")
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def rules_section(files):
    return "rules {\n\tfiles = {%s}\n}\n" % ", ".join('"%s"' % f for f in files)


def message(subject, body="Hello.\r\n", extra=""):
    return ("From: <sender@example.org>\r\nTo: <demo@example.test>\r\n"
            "Subject: %s\r\nMessage-ID: <%s@example.org>\r\n"
            "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n%s\r\n%s" % (subject, subject, extra, body)).encode()


def send(d, msg, sender="sender@example.org", rcpt="demo@example.test"):
    s = smtplib.SMTP("127.0.0.1", d.port, timeout=30)
    s.ehlo("client.example.org")
    s.mail(sender)
    code, text = s.rcpt(rcpt)
    if code != 250:
        s.quit()
        return code, text
    try:
        code, text = s.data(msg)
    except smtplib.SMTPDataError as e:
        code, text = e.smtp_code, e.smtp_error
    s.quit()
    return code, text


class RulesDaemon(unittest.TestCase):
    pipeline = {"stages": ["rules"]}
    extra_rules = ""

    @classmethod
    def setUpClass(cls):
        # 20 clients at once from one address (the reload test)
        cls.d = Daemon(start=False, limits={"connections_per_client": 100})
        cls.local = os.path.join(cls.d.dir, "local.cf")
        with open(cls.local, "w") as f:
            f.write(cls.extra_rules)
        cls.d.pipeline = dict(cls.pipeline)
        cls.d.extra_conf = rules_section([STOCK, cls.local])
        cls.d.write_config()
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()


class StageHits(RulesDaemon):
    """`stage` lines see what the stages before the rules found."""
    pipeline = {"stages": ["format", "rules"]}
    extra_rules = ('stage LOCAL_NO_DATE /^format:FORMAT_NO_DATE$/\n'
                   'action LOCAL_NO_DATE reject "550 5.7.1 Messages need a Date"\n')

    def test_rule_on_an_earlier_stage_hit(self):
        undated = message("undated").replace(b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n", b"")
        self.assertNotIn(b"Date:", undated)
        code, text = send(self.d, undated)
        self.assertEqual(code, 550, text)
        self.assertIn(b"5.7.1 Messages need a Date", text)
        self.assertRegex(self.d.log(), r"hits=\S*FORMAT_NO_DATE\S*LOCAL_NO_DATE")
        code, text = send(self.d, message("dated"))
        self.assertEqual(code, 250, text)


class Gtube(RulesDaemon):
    extra_rules = (
        'envfrom  LOCAL_BAD_SENDER  /\\@bad\\.example$/\n'
        'action   LOCAL_BAD_SENDER  reject "550 5.7.1 No mail from bad.example, thanks"\n'
        'body     LOCAL_WORD        /\\bsupercalifragilistic\\b/i\n'
        'score    LOCAL_WORD        2.0\n')

    def test_gtube_rejected_with_the_rule_in_the_log(self):
        off = self.d.log_size()
        code, text = send(self.d, message("gtube", GTUBE + "\r\n"))
        self.assertEqual(code, 550, text)
        self.d.wait_log(r"smtp tx .*result=rejected", off)
        log = self.d.log_since(off)
        self.assertRegex(log, r"hits=(\S*,)?GTUBE[ ,]")
        self.assertRegex(log, r"result=rejected")
        self.assertEqual([m for m in self.d.messages() if b"gtube" in m], [])

    def test_envelope_rule_refuses_with_its_text(self):
        code, text = send(self.d, message("bad-sender"), sender="x@bad.example")
        self.assertEqual(code, 550, text)
        self.assertIn(b"5.7.1 No mail from bad.example, thanks", text)

    def test_scored_message_delivered_with_headers(self):
        code, text = send(self.d, message("scored", "Supercalifragilistic!\r\n"))
        self.assertEqual(code, 250, text)
        got = [m for m in self.d.messages() if b"Subject: scored" in m]
        self.assertEqual(len(got), 1)
        self.assertIn(b"X-Spam-Score: 2.0", got[0])
        self.assertNotIn(b"X-Spam-Flag", got[0])

    def test_forged_spam_headers_removed(self):
        forged = ("X-Spam-Status: No, score=-100.0 tests=ALL_TRUSTED\r\n"
                  "X-Spam-Flag:\r\n NO\r\n"
                  "x-spam-score: -100\r\n")
        code, text = send(self.d, message("forged", "clean text\r\n", extra=forged))
        self.assertEqual(code, 250, text)
        got = [m for m in self.d.messages() if b"Subject: forged" in m]
        self.assertEqual(len(got), 1)
        self.assertNotIn(b"ALL_TRUSTED", got[0])
        self.assertNotIn(b"-100", got[0])
        self.assertNotIn(b" NO\n", got[0])
        # ours is there, and the rest of the header block is intact
        self.assertIn(b"X-Spam-Score: 0.0", got[0])
        self.assertIn(b"Message-ID: <forged@example.org>\n", got[0])
        self.assertIn(b"\n\nclean text\n", got[0])


class GtubeJunked(RulesDaemon):
    """With reject_score above GTUBE's 1000, the thresholds junk it."""
    pipeline = {"stages": ["rules"], "reject_score": 5000.0}

    def test_gtube_junked(self):
        code, text = send(self.d, message("junked", GTUBE + "\r\n"))
        self.assertEqual(code, 250, text)
        got = [m for m in self.d.messages(folder="Junk") if b"Subject: junked" in m]
        self.assertEqual(len(got), 1)
        self.assertIn(b"X-Spam-Flag: YES", got[0])
        self.assertRegex(got[0], rb"X-Spam-Status: Yes, score=1000\.\d tests=\S*GTUBE")
        self.assertEqual([m for m in self.d.messages() if b"Subject: junked" in m], [])


class GtubeQuarantined(RulesDaemon):
    """quarantine_score below GTUBE's 1000 and reject_score above it: held."""
    pipeline = {"stages": ["rules"], "quarantine_score": 500.0, "reject_score": 5000.0}

    def test_gtube_quarantined(self):
        code, text = send(self.d, message("held", GTUBE + "\r\n"))
        self.assertEqual(code, 250, text)
        qdir = os.path.join(self.d.dir, "quarantine", "new")
        held = [open(os.path.join(qdir, f), "rb").read() for f in os.listdir(qdir)]
        self.assertEqual(len(held), 1)
        self.assertIn(b"X-MXGuard-Recipient: demo@example.test\n", held[0])
        self.assertRegex(held[0], rb"X-Spam-Status: Yes, score=1000\.\d tests=\S*GTUBE")
        self.assertEqual([m for m in self.d.messages() if b"Subject: held" in m], [])


class Reload(RulesDaemon):
    extra_rules = "body LOCAL_MARK /markword/\nscore LOCAL_MARK 1.0\n"

    def write_local(self, text):
        tmp = self.local + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, self.local)

    def score_of(self, subject):
        got = [m for m in self.d.messages() if b"Subject: " + subject.encode() + b"\r" in m
               or b"Subject: " + subject.encode() + b"\n" in m]
        self.assertEqual(len(got), 1, subject)
        return float(re.search(rb"X-Spam-Score: (-?[\d.]+)", got[0]).group(1))

    def test_broken_rules_refused_then_good_ones_under_load(self):
        self.assertEqual(send(self.d, message("before", "markword\r\n"))[0], 250)
        self.assertEqual(self.score_of("before"), 1.0)
        # a rule file with an error: the reload is refused, the old rules stay
        off = self.d.log_size()
        self.write_local("body LOCAL_MARK /markword(/\n")
        self.d.signal(signal.SIGHUP)
        self.d.wait_log(r"reload failed.*local\.cf:1:\d+: regex does not compile", off)
        self.assertEqual(send(self.d, message("after-bad", "markword\r\n"))[0], 250)
        self.assertEqual(self.score_of("after-bad"), 1.0)

        # 20 connections send while a good reload happens
        stop = threading.Event()
        results = []
        lock = threading.Lock()

        def client(k):
            i = 0
            while not stop.is_set() and i < 200:
                subj = "load-%d-%d" % (k, i)
                try:
                    code, _ = send(self.d, message(subj, "markword\r\n"))
                except (OSError, smtplib.SMTPException) as e:
                    code = repr(e)
                with lock:
                    results.append((subj, code))
                i += 1

        threads = [threading.Thread(target=client, args=(k,)) for k in range(20)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(results) < 40:
            time.sleep(0.02)
        off = self.d.log_size()
        self.write_local("body LOCAL_MARK /markword/\nscore LOCAL_MARK 3.0\n")
        self.d.signal(signal.SIGHUP)
        self.d.wait_log(r"reloaded configuration from ", off)
        n_at_reload = len(results)
        while time.monotonic() < deadline and len(results) < n_at_reload + 40:
            time.sleep(0.02)
        stop.set()
        for t in threads:
            t.join(60)
        self.assertTrue(all(code == 250 for _, code in results),
                        [r for r in results if r[1] != 250][:5])
        self.assertTrue(self.d.running())
        # every message is there, scored by the old or the new rules
        scores = {self.score_of(subj) for subj, _ in results}
        self.assertTrue(scores <= {1.0, 3.0}, scores)
        self.assertEqual(send(self.d, message("after-good", "markword\r\n"))[0], 250)
        self.assertEqual(self.score_of("after-good"), 3.0)


class Ctl(unittest.TestCase):
    def test_lint(self):
        d = Daemon(start=False)
        self.addCleanup(d.cleanup)
        bad = os.path.join(d.dir, "bad.cf")
        with open(bad, "w") as f:
            f.write("body GOOD /x/\nbody BAD /x(/\nfrobnicate 1\nmeta M (GOOD && NOPE)\n")
        r = subprocess.run([mxtest.MXGUARDCTL, "rules", "lint", bad], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertRegex(r.stdout, r"(?m)^%s:2:\d+: error: regex does not compile" % re.escape(bad))
        self.assertRegex(r.stdout, r"(?m)^%s:3:1: warning: unknown keyword \"frobnicate\"" % re.escape(bad))
        self.assertRegex(r.stdout, r"(?m)^%s:4:1: warning: meta M names NOPE" % re.escape(bad))
        r = subprocess.run([mxtest.MXGUARDCTL, "rules", "lint", STOCK], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(r.stdout, "")

    def test_test_shows_hits_and_summary(self):
        d = Daemon(start=False)
        self.addCleanup(d.cleanup)
        msg = os.path.join(d.dir, "gtube.eml")
        with open(msg, "wb") as f:
            f.write(message("gtube", GTUBE + "\r\n"))
        r = subprocess.run([mxtest.MXGUARDCTL, "rules", "test", "-r", STOCK, msg],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"GTUBE\s+1000\.00\s+\"XJS\*C4JDBQADN1")
        self.assertRegex(r.stdout, r"total 1000\.00, action reject")
        r = subprocess.run([mxtest.MXGUARDCTL, "rules", "test", "-r", STOCK, "--summary",
                            "--helo", "localhost", msg], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertRegex(lines[0], r"^%s\t1002\.0\treject\tGTUBE,MXG_HELO_LOCALHOST\t\d+$"
                         % re.escape(msg))
        self.assertRegex(lines[-1], r"^rules: \d+ loaded, \d+ skipped; messages: 1; usec: \d+$")


if __name__ == "__main__":
    mxtest.main(budget=300)

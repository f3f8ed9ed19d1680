"""test_pipeline_session — the daemon's side of the filter pipeline, end to end.

No real stage exists yet, so these tests run tests/mxguard-teststage: the
daemon built with the configurable stage of tests/stages/test_stage.c. Each
class configures it (and sometimes its twin "teststage2") to act at one
SMTP phase — answer now or later from a timer, never, fail, add a score or
a header, or answer a hard verdict with its own reply — and then drives the
real daemon over real sockets (raw client and smtplib) and looks at the
replies, the Maildir store, the quarantine and the log.

Covered: replies stay in order when a pipelined group waits on an async
HELO stage; HELO results count once however often the client says EHLO;
the DATA score mapping (tag, junk into the Maildir++ folder, reject);
custom reject/tempfail replies at connect, MAIL and RCPT; quarantine and
discard; stage timeouts and failures under both on_error policies; a slow
DATA stage racing limits.timeout_data; accept at connect beating a score
reject; SIGTERM while a stage is pending.

Environment: MXGUARD_TESTSTAGE (default ./tests/mxguard-teststage),
MXGUARDCTL.
"""

import os
import re
import signal
import smtplib
import socket
import struct
import subprocess
import time
import uuid

import mxtest
from mxtest import DaemonTestCase, conf_value, smtp_data, queued_id, parse_headers

RCPT = "demo@example.test"
SENDER = "sender@remote.test"


def stage_section(name, opts):
    lines = [name + " {"]
    for k, v in opts.items():
        lines.append("\t%s = %s" % (k, conf_value(v)))
    lines.append("}")
    return "\n".join(lines) + "\n"


class StageTestCase(DaemonTestCase):
    """One test-stage daemon per class: `stage` is the teststage section,
    `stage2` (optional) the teststage2 section, listed after it."""

    stage = {}
    stage2 = None
    limits = None
    users = (RCPT,)

    @classmethod
    def make_daemon(cls):
        """The daemon, configured but not started. mxguardctl (which adds
        the users) knows no test stage, so the stages go into the config
        only after the users are in."""
        if not os.access(mxtest.MXGUARD_TESTSTAGE, os.X_OK):
            raise RuntimeError("%s is not built (make tests/mxguard-teststage)"
                               % mxtest.MXGUARD_TESTSTAGE)
        d = mxtest.Daemon(binary=mxtest.MXGUARD_TESTSTAGE, users=cls.users,
                          limits=cls.limits, start=False)
        d.pipeline = {"stages": ["teststage"]}
        d.extra_conf = stage_section("teststage", cls.stage)
        if cls.stage2 is not None:
            d.pipeline["stages"].append("teststage2")
            d.extra_conf += stage_section("teststage2", cls.stage2)
        d.write_config()
        return d

    @classmethod
    def setUpClass(cls):
        cls.d = cls.make_daemon()
        cls.d.start()

    # helpers ---------------------------------------------------------
    def message(self, tag="msg"):
        """A message with a unique subject; returns (subject, bytes)."""
        subject = "%s-%s" % (tag, uuid.uuid4().hex)
        return subject, ("From: <%s>\nTo: <%s>\nSubject: %s\n\nbody of %s\n"
                         % (SENDER, RCPT, subject, subject)).encode()

    def send(self, c, rcpts=(RCPT,), tag="msg"):
        """One transaction on client c; returns (subject, mail, [rcpt], data, final)."""
        subject, msg = self.message(tag)
        mr, rr, dr, fr = c.transaction(SENDER, list(rcpts), smtp_data(msg))
        return subject, mr, rr, dr, fr

    def quarantine_files(self):
        d = os.path.join(self.d.dir, "quarantine", "new")
        try:
            return sorted(os.path.join(d, n) for n in os.listdir(d))
        except FileNotFoundError:
            return []

    def read(self, path):
        with open(path, "rb") as f:
            return f.read()

    def files_with(self, files, subject):
        return [p for p in files if subject.encode() in self.read(p)]

    def tx_log(self, txid):
        """The transaction log line for txid (waited for, bounded)."""
        m = self.d.wait_log(r"(?m)^.*%s smtp tx .*$" % txid)
        self.assertIsNotNone(m, "no tx log line for %s; log:\n%s" % (txid, self.d.log_tail()))
        return m.group(0)

    def reject_line(self, offset, needle=""):
        """The first "smtp reject" log line after offset containing needle."""
        m = self.d.wait_log(r"(?m)^.* smtp reject .*%s.*$" % needle, offset)
        self.assertIsNotNone(m, "no smtp reject line; log:\n%s" % self.d.log_since(offset))
        return m.group(0)

    def next_tx_line(self, offset):
        m = self.d.wait_log(r"(?m)^.* smtp tx .*$", offset)
        self.assertIsNotNone(m, "no tx log line; log:\n%s" % self.d.log_since(offset))
        return m.group(0)

    def assertNothingStored(self):
        self.assertEqual(self.d.all_files("new"), [])
        self.assertEqual(self.d.all_files("tmp"), [])
        self.assertEqual(self.quarantine_files(), [])


# ------------------------------------------------------------ async HELO
class AsyncHeloPipelining(StageTestCase):
    stage = dict(phase="helo", delay_ms=300)

    def test_pipelined_group_answered_in_order(self):
        off = self.d.log_size()
        c = self.client()
        self.assertEqual(c.greeting.code, 220, c.greeting)
        # the whole group in one packet: EHLO waits on the stage, the rest
        # must wait behind it and be answered in order
        c.send(b"EHLO client.example.org\r\nMAIL FROM:<" + SENDER.encode() +
               b">\r\nRCPT TO:<" + RCPT.encode() + b">\r\nDATA\r\n")
        er = c.reply()
        self.assertEqual(er.code, 250, er)
        self.assertIn("PIPELINING", er.lines)
        mr = c.reply()
        self.assertEqual((mr.code, mr.enhanced), (250, "2.1.0"), mr)
        rr = c.reply()
        self.assertEqual((rr.code, rr.enhanced), (250, "2.1.5"), rr)
        dr = c.reply()
        self.assertEqual(dr.code, 354, dr)
        self.assertEqual(c.pending(), b"")
        subject, msg = self.message()
        c.send(smtp_data(msg))
        fr = c.reply()
        txid = queued_id(fr)
        self.assertIsNotNone(txid, fr)
        # the stage really pended at HELO (not answered inside check())
        self.assertIsNotNone(self.d.wait_log(r"teststage acting phase=helo delay_ms=300", off))
        self.assertEqual(len(self.files_with(self.d.files("new"), subject)), 1)
        self.assertIn(" result=delivered ", self.tx_log(txid))


# -------------------------------------------------- HELO results once only
class HeloScoreCountsOnce(StageTestCase):
    stage = dict(phase="helo", score=1.0, header="X-Test-Helo: seen")

    def test_three_ehlos_then_message(self):
        subject, msg = self.message("helo")
        with smtplib.SMTP("127.0.0.1", self.d.port, local_hostname="client.example.org",
                          timeout=mxtest.SOCK_TIMEOUT) as s:
            for i in range(3):
                code, _ = s.ehlo("client%d.example.org" % i)
                self.assertEqual(code, 250)
            self.assertEqual(s.mail(SENDER)[0], 250)
            self.assertEqual(s.rcpt(RCPT)[0], 250)
            code, resp = s.data(msg.replace(b"\n", b"\r\n"))
            self.assertEqual(code, 250, resp)
        txid = resp.decode().rsplit(" ", 1)[-1]
        files = self.files_with(self.d.files("new"), subject)
        self.assertEqual(len(files), 1)
        h = parse_headers(self.read(files[0]))
        self.assertEqual(h.get_all("X-Test-Helo"), ["seen"])
        self.assertEqual(h.get_all("X-Spam-Score"), ["1.0"])
        line = self.tx_log(txid)
        self.assertRegex(line, r" helo=client2\.example\.org ")
        self.assertRegex(line, r" score=1\.0 ")
        self.assertRegex(line, r" hits=TEST_RULE ")


# ------------------------------------------------- DATA score mapping
class DataScoreTag(StageTestCase):
    stage = dict(phase="data", score=6.0)

    def test_tagged_into_inbox(self):
        c = self.ehlo_client()
        subject, mr, rr, dr, fr = self.send(c)
        self.assertIsNotNone(queued_id(fr), fr)
        files = self.files_with(self.d.files("new"), subject)
        self.assertEqual(len(files), 1)
        self.assertEqual(self.d.files("new", folder="Junk"), [])
        h = parse_headers(self.read(files[0]))
        self.assertEqual(h.get_all("X-Spam-Flag"), ["YES"])
        self.assertEqual(h.get_all("X-Spam-Score"), ["6.0"])
        self.assertIn(" action=tag ", self.tx_log(queued_id(fr)))


class DataScoreJunk(StageTestCase):
    stage = dict(phase="data", score=9.0)

    def test_filed_into_junk_folder(self):
        c = self.ehlo_client()
        subject, mr, rr, dr, fr = self.send(c)
        self.assertIsNotNone(queued_id(fr), fr)
        self.assertEqual(self.d.files("new"), [])
        junk = self.d.files("new", folder="Junk")
        self.assertEqual(len(self.files_with(junk, subject)), 1)
        # Maildir++: <user>/.Junk/new/
        self.assertEqual(os.path.dirname(junk[0]),
                         os.path.join(self.d.mail_root, "example.test", "demo", ".Junk", "new"))
        h = parse_headers(self.read(junk[0]))
        self.assertEqual(h.get_all("X-Spam-Flag"), ["YES"])
        self.assertEqual(h.get_all("X-Spam-Score"), ["9.0"])


class DataScoreReject(StageTestCase):
    stage = dict(phase="data", score=20.0)

    def test_rejected_and_nothing_stored(self):
        c = self.ehlo_client()
        off = self.d.log_size()
        fr = c.transaction(SENDER, [RCPT], smtp_data(
            b"Message-ID: <score.1@remote.test>\nSubject: spam\n\nbuy\n"))[3]
        self.assertEqual((fr.code, fr.enhanced), (550, "5.7.1"), fr)
        self.assertNothingStored()
        # the tx line does not read as delivered, and says why
        line = self.next_tx_line(off)
        for want in (" action=reject ", " result=rejected ", " dsn=5.7.1 ", " reason=score ",
                     " msgid=<score.1@remote.test> ", " from=<%s> " % SENDER):
            self.assertIn(want, line)
        # the session goes on
        self.assertEqual(c.cmd("NOOP").code, 250)


class RejectAtData(StageTestCase):
    stage = dict(phase="data", verdict="reject", code=554, enhanced="5.7.9",
                 text="Content refused by test stage")

    def test_tx_line_names_the_stage(self):
        c = self.ehlo_client()
        off = self.d.log_size()
        fr = c.transaction(SENDER, [RCPT], smtp_data(b"Subject: no id\n\nbody\n"))[3]
        self.assertEqual(fr.raw, ["554 5.7.9 Content refused by test stage"])
        self.assertNothingStored()
        line = self.next_tx_line(off)
        for want in (" action=reject ", " result=rejected ", " dsn=5.7.9 ",
                     " reason=stage:teststage ", " msgid=- "):
            self.assertIn(want, line)
        self.assertNotIn("action=deliver", line)


# ---------------------------------------------- hard verdicts, own replies
class RejectAtRcpt(StageTestCase):
    stage = dict(phase="rcpt", verdict="reject", code=553, enhanced="5.7.9",
                 text="Recipient refused by test stage")

    def test_custom_reply(self):
        c = self.ehlo_client()
        self.assertEqual(c.cmd("MAIL FROM:<%s>" % SENDER).code, 250)
        off = self.d.log_size()
        r = c.cmd("RCPT TO:<%s>" % RCPT)
        self.assertEqual(r.raw, ["553 5.7.9 Recipient refused by test stage"])
        self.assertRegex(self.reject_line(off), r" smtp reject client=127\.0\.0\.1 "
                         r"helo=client\.example\.org from=<%s> rcpt=<%s> "
                         r'reply="553 5\.7\.9 Recipient refused by test stage" '
                         r"reason=stage:teststage$" % (SENDER, RCPT))
        # the backend had said yes: it gets the recipient back
        self.assertIsNotNone(self.d.wait_log(r"(?m)testbackend abort n=1 rcpts=<%s>$" % RCPT, off))
        # the recipient was not added
        self.assertEqual(c.cmd("DATA").code, 503)
        self.assertNothingStored()


class HeloRejectedOnSecondEhlo(StageTestCase):
    """A stage that refuses the second EHLO of a session leaves it as it was
    (RFC 5321 4.1.4): the first name, its transaction and its recipients
    stand, and the message is received under the first name — never under
    an empty or refused one. The first EHLO must pass, so the stage starts
    idle (acting at DATA) and a reload makes it refuse every HELO; the
    session's MAIL picks up the reloaded state."""
    stage = dict(phase="data")

    def test_refusal_keeps_the_previous_state(self):
        c = self.ehlo_client()
        off = self.d.log_size()
        self.d.extra_conf = stage_section("teststage", dict(
            phase="helo", verdict="reject", code=550, enhanced="5.7.9", text="Bad HELO"))
        self.d.write_config()
        self.d.signal(signal.SIGHUP)
        self.assertIsNotNone(self.d.wait_log(r"reloaded configuration", off))
        self.assertEqual(c.cmd("MAIL FROM:<%s>" % SENDER).code, 250)
        self.assertEqual(c.cmd("RCPT TO:<%s>" % RCPT).code, 250)
        off = self.d.log_size()
        r = c.cmd("EHLO second.example.org")
        self.assertEqual(r.raw, ["550 5.7.9 Bad HELO"])
        # logged with the transaction it did not end
        self.assertRegex(self.reject_line(off), r" helo=second\.example\.org from=<%s> "
                         r'reply="550 5\.7\.9 Bad HELO" reason=stage:teststage$' % SENDER)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.sock.sendall(smtp_data(b"Subject: kept\n\nbody\n"))
        fr = c.reply()
        self.assertIsNotNone(queued_id(fr), fr)
        files = self.d.files()
        self.assertEqual(len(files), 1)
        with open(files[0], "rb") as f:
            data = f.read()
        self.assertIn(b"Received: from client.example.org (", data)
        self.assertNotIn(b"second.example.org", data)


class PerLoopLifecycle(StageTestCase):
    """The daemon core gives every stage per-loop state on each loop thread
    (loop_init) and frees it there (loop_teardown) once that loop's last
    session let go of the pipeline: at a reload an idle loop switches at
    once; a loop with a session still on the old pipeline tears it down
    only after that session ended. (teststage logs both, with the
    instance's generation: gen=1 is the first config, one more per
    reload.)"""
    stage = dict(phase="data")

    def events(self, off=0):
        return re.findall(r"teststage (loop_init|loop_teardown) gen=(\d+) loop=(\d+)",
                          self.d.log_since(off))

    def reload(self):
        off = self.d.log_size()
        self.d.signal(signal.SIGHUP)
        self.assertIsNotNone(self.d.wait_log(r"reloaded configuration", off))
        return off

    def test_init_and_teardown_follow_the_sessions(self):
        # at start: each of the two loops set up generation 1 once
        start = sorted(self.events())
        self.assertEqual(start, [("loop_init", "1", "0"), ("loop_init", "1", "1")])
        gen = 1
        # a session holds the pipeline on its loop across a reload
        c = self.ehlo_client()
        m = re.search(r"connect client=127\.0\.0\.1 port=%d .*loop=(\d+)"
                      % c.sock.getsockname()[1], self.d.log())
        busy = m.group(1)
        idle = "1" if busy == "0" else "0"
        off = self.reload()
        gen += 1
        want = ("loop_init", str(gen), busy)
        self.assertTrue(mxtest_wait(lambda: want in self.events(off)), self.events(off))
        self.assertTrue(mxtest_wait(lambda: ("loop_teardown", "1", idle) in self.events(off)),
                        self.events(off))
        # the busy loop keeps generation 1 while its session lives
        self.assertNotIn(("loop_teardown", "1", busy), self.events(off))
        self.assertEqual(c.cmd("NOOP").code, 250)
        self.assertNotIn(("loop_teardown", "1", busy), self.events(off))
        c.cmd("QUIT")
        self.assertTrue(c.closed())
        self.assertTrue(mxtest_wait(lambda: ("loop_teardown", "1", busy) in self.events(off)),
                        self.events(off))
        # exactly once each, on both loops
        ev = self.events()
        for e in set(ev):
            self.assertEqual(ev.count(e), 1, e)


def mxtest_wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class RejectAtConnect(StageTestCase):
    stage = dict(phase="connect", verdict="reject", code=550, enhanced="5.7.9",
                 text="No service for you")

    @classmethod
    def setUpClass(cls):
        # the harness's start probe needs a 220: start by hand and wait
        # for the listening socket in the log instead
        cls.d = cls.make_daemon()
        log = open(cls.d.logpath, "ab")
        try:
            cls.d.proc = subprocess.Popen(
                [cls.d.binary, "-f", "-c", cls.d.conf], stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, cwd=cls.d.dir)
        finally:
            log.close()
        if cls.d.wait_log(r"listening", timeout=mxtest.START_TIMEOUT) is None:
            raise RuntimeError("no 'listening' in the log:\n" + cls.d.log_tail())

    def test_554_greeting_and_close(self):
        c = self.client()
        self.assertEqual(c.greeting.raw, ["554 5.7.9 No service for you"])
        self.assertTrue(c.closed())


class TempfailAtMail(StageTestCase):
    stage = dict(phase="mail", verdict="tempfail", code=451, enhanced="4.7.9",
                 text="Slow down please")

    def test_custom_reply(self):
        c = self.ehlo_client()
        off = self.d.log_size()
        r = c.cmd("MAIL FROM:<%s>" % SENDER)
        self.assertEqual(r.raw, ["451 4.7.9 Slow down please"])
        self.assertRegex(self.reject_line(off), r" from=<%s> reply=\"451 4\.7\.9 Slow down please\" "
                         r"reason=stage:teststage$" % SENDER)
        # no transaction was started
        self.assertEqual(c.cmd("RCPT TO:<%s>" % RCPT).code, 503)
        self.assertNothingStored()


# ------------------------------------------------ the backend's answers
class BackendAnswersLater(StageTestCase):
    """The backend table's contract seen from the client: a backend may
    answer RCPT later (the test daemon's backend wraps the store and waits
    rcpt_delay_ms, as a relay waits for its upstream); pipelined commands
    are still answered in order, refusals keep the backend's words, and a
    transaction that ends without DATA is handed back to the backend
    (abort) — never one that was delivered."""
    users = (RCPT, "alice@example.test")
    stage = dict(phase="data")

    @classmethod
    def make_daemon(cls):
        d = super().make_daemon()
        d.extra_conf += "testbackend {\n\trcpt_delay_ms = 150\n}\n"
        d.write_config()
        return d

    def test_pipelined_rcpts_answered_in_order(self):
        c = self.ehlo_client()
        off = self.d.log_size()
        c.send("MAIL FROM:<%s>\r\nRCPT TO:<nobody@example.test>\r\nRCPT TO:<%s>\r\n"
               "RCPT TO:<alice@example.test>\r\nDATA\r\n" % (SENDER, RCPT))
        replies = [c.reply() for _ in range(5)]
        self.assertEqual([r.code for r in replies], [250, 550, 250, 250, 354], replies)
        self.assertEqual(replies[1].enhanced, "5.1.1")
        self.assertIn("<nobody@example.test>: Recipient address rejected: User unknown",
                      replies[1].text)
        self.assertEqual(len(re.findall(r"testbackend rcpt pending", self.d.log_since(off))), 3)
        c.sock.sendall(smtp_data(b"Subject: later\n\nbody\n"))
        fr = c.reply()
        self.assertIsNotNone(queued_id(fr), fr)
        self.assertEqual(len(self.d.files("new", "demo")), 1)
        self.assertEqual(len(self.d.files("new", "alice")), 1)
        c.cmd("QUIT")
        self.assertTrue(c.closed())
        # delivered: nothing to hand back (checked once the session is gone)
        self.assertIsNotNone(self.d.wait_log(r"smtp disconnected .*reason=quit", off))
        self.assertNotIn("testbackend abort", self.d.log_since(off))

    def test_rset_and_quit_hand_the_transaction_back(self):
        c = self.ehlo_client()
        off = self.d.log_size()
        self.assertEqual(c.cmd("MAIL FROM:<%s>" % SENDER).code, 250)
        self.assertEqual(c.cmd("RCPT TO:<%s>" % RCPT).code, 250)
        self.assertEqual(c.cmd("RSET").code, 250)
        self.assertIsNotNone(self.d.wait_log(r"testbackend abort n=1 rcpts=<%s>" % RCPT, off))
        off = self.d.log_size()
        self.assertEqual(c.cmd("MAIL FROM:<%s>" % SENDER).code, 250)
        self.assertEqual(c.cmd("RCPT TO:<%s>" % RCPT).code, 250)
        self.assertEqual(c.cmd("RCPT TO:<alice@example.test>").code, 250)
        c.cmd("QUIT")
        self.assertTrue(c.closed())
        self.assertIsNotNone(self.d.wait_log(
            r"testbackend abort n=2 rcpts=<%s>,<alice@example\.test>" % RCPT, off))

    def test_client_gone_while_the_backend_thinks(self):
        c = self.ehlo_client()
        off = self.d.log_size()
        self.assertEqual(c.cmd("MAIL FROM:<%s>" % SENDER).code, 250)
        c.send("RCPT TO:<%s>\r\n" % RCPT)
        self.assertIsNotNone(self.d.wait_log(r"testbackend rcpt pending", off))
        # an abortive close (RST): the session is gone before the answer
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.sock.close()
        m = self.d.wait_log(r"(?s)smtp disconnected client=127\.0\.0\.1 transactions=0 "
                            r"reason=\w+.*testbackend rcpt answer code=250", off)
        # the late answer found no session: the backend was told to undo it
        self.assertIsNotNone(m, self.d.log_since(off))
        self.assertIsNotNone(self.d.wait_log(
            r"testbackend abort n=1 rcpts=<%s> \(the asker left\)" % RCPT, off))
        c2 = self.ehlo_client()
        self.assertEqual(c2.cmd("NOOP").code, 250)


# ------------------------------------------------- quarantine and discard
def quarantine_envelope(data):
    """(Return-Path line, [X-MXGuard-Recipient values]) of a quarantined
    file: the lines mxguard writes before its Received: header, where
    nothing else may appear."""
    head, sep, _ = data.partition(b"\nReceived: ")
    assert sep, data[:300]
    lines = head.split(b"\n")
    rcpts = []
    for l in lines[1:]:
        assert l.startswith(b"X-MXGuard-Recipient: "), l
        rcpts.append(l[len(b"X-MXGuard-Recipient: "):].decode())
    return lines[0].decode(), rcpts


class QuarantineAtData(StageTestCase):
    users = (RCPT, "alice@example.test", "bob@example.test", "carol@example.test")
    stage = dict(phase="data", verdict="quarantine")

    def test_quarantined_not_delivered(self):
        c = self.ehlo_client()
        subject, mr, rr, dr, fr = self.send(c)
        self.assertIsNotNone(queued_id(fr), fr)
        q = self.files_with(self.quarantine_files(), subject)
        self.assertEqual(len(q), 1)
        self.assertEqual(quarantine_envelope(self.read(q[0])),
                         ("Return-Path: <%s>" % SENDER, [RCPT]))
        self.assertEqual(self.d.all_files("new"), [])
        self.assertIn(" result=quarantined ", self.tx_log(queued_id(fr)))

    def test_every_recipient_kept(self):
        # a held message must be releasable to everyone it was sent to: the
        # complete list, in RCPT order, one header line per recipient
        rcpts = ["carol@example.test", RCPT, "alice@example.test", "bob@example.test"]
        c = self.ehlo_client()
        subject, mr, rr, dr, fr = self.send(c, rcpts=rcpts)
        self.assertEqual([r.code for r in rr], [250] * 4)
        self.assertIsNotNone(queued_id(fr), fr)
        q = self.files_with(self.quarantine_files(), subject)
        self.assertEqual(len(q), 1)
        data = self.read(q[0])
        self.assertEqual(quarantine_envelope(data), ("Return-Path: <%s>" % SENDER, rcpts))
        self.assertEqual(data.count(b"X-MXGuard-Recipient"), 4)
        self.assertEqual(self.d.all_files("new"), [])


class QuarantineAtRcpt(StageTestCase):
    users = (RCPT, "alice@example.test")
    stage = dict(phase="rcpt", verdict="quarantine", only_rcpt="alice@example.test")

    def test_whole_message_quarantined_then_next_one_not(self):
        c = self.ehlo_client()
        subject, mr, rr, dr, fr = self.send(c, rcpts=(RCPT, "alice@example.test"))
        self.assertEqual([r.code for r in rr], [250, 250])
        self.assertIsNotNone(queued_id(fr), fr)
        q = self.files_with(self.quarantine_files(), subject)
        self.assertEqual(len(q), 1)
        self.assertEqual(quarantine_envelope(self.read(q[0]))[1], [RCPT, "alice@example.test"])
        self.assertEqual(self.d.all_files("new"), [])
        # the verdict belonged to that transaction only
        subject2, mr, rr, dr, fr = self.send(c, rcpts=(RCPT,))
        self.assertIsNotNone(queued_id(fr), fr)
        self.assertEqual(len(self.files_with(self.d.files("new"), subject2)), 1)
        self.assertEqual(self.files_with(self.quarantine_files(), subject2), [])
        self.assertEqual(len(self.quarantine_files()), 1)


class DiscardAtData(StageTestCase):
    stage = dict(phase="data", verdict="discard")

    def test_250_and_nothing_stored(self):
        c = self.ehlo_client()
        subject, mr, rr, dr, fr = self.send(c)
        self.assertIsNotNone(queued_id(fr), fr)
        self.assertIn(" result=discarded ", self.tx_log(queued_id(fr)))
        self.assertNothingStored()


# ------------------------------------------------ timeouts and failures
class TimeoutTempfail(StageTestCase):
    stage = dict(phase="mail", never=True, timeout=300, on_error="tempfail")

    def test_451_at_mail(self):
        c = self.ehlo_client()
        off = self.d.log_size()
        r = c.cmd("MAIL FROM:<%s>" % SENDER)
        self.assertEqual((r.code, r.enhanced), (451, "4.7.1"), r)
        # a stage that timed out is named too
        self.assertIn(" reason=stage:teststage", self.reject_line(off, "from=<%s>" % SENDER))
        self.assertEqual(c.cmd("NOOP").code, 250)
        self.assertNothingStored()


class TimeoutAccept(StageTestCase):
    stage = dict(phase="data", never=True, timeout=300, on_error="accept")

    def test_delivered(self):
        c = self.ehlo_client()
        subject, mr, rr, dr, fr = self.send(c)
        self.assertIsNotNone(queued_id(fr), fr)
        self.assertEqual(len(self.files_with(self.d.files("new"), subject)), 1)
        self.assertRegex(self.tx_log(queued_id(fr)), r"teststage:timeout:\d+")


class FailAccept(StageTestCase):
    stage = dict(phase="rcpt", fail=True, on_error="accept")

    def test_delivered(self):
        c = self.ehlo_client()
        subject, mr, rr, dr, fr = self.send(c)
        self.assertEqual([r.code for r in rr], [250])
        self.assertIsNotNone(queued_id(fr), fr)
        self.assertEqual(len(self.files_with(self.d.files("new"), subject)), 1)
        self.assertRegex(self.tx_log(queued_id(fr)), r"teststage:error:\d+")


class FailTempfail(StageTestCase):
    stage = dict(phase="data", fail=True, on_error="tempfail")

    def test_451_at_end_of_data(self):
        c = self.ehlo_client()
        subject, mr, rr, dr, fr = self.send(c)
        self.assertEqual(dr.code, 354)
        self.assertEqual((fr.code, fr.enhanced), (451, "4.7.1"), fr)
        self.assertNothingStored()


# --------------------------------------- slow DATA stage vs timeout_data
class SlowDataStage(StageTestCase):
    stage = dict(phase="data", delay_ms=2500)
    limits = {"timeout_data": 1}

    def test_one_reply_one_file(self):
        off = self.d.log_size()
        c = self.ehlo_client()
        subject, mr, rr, dr, fr = self.send(c)
        # the first reply after the message is the stage's 250, not a 421
        # from the DATA timeout firing while the stage was pending
        self.assertIsNotNone(queued_id(fr), fr)
        self.assertEqual(c.pending(), b"")
        r = c.cmd("NOOP")
        self.assertEqual(r.raw, ["250 2.0.0 Ok"])
        self.assertEqual(c.cmd("QUIT").code, 221)
        self.assertTrue(c.closed())
        self.assertNotIn(b"421", c.pending())
        self.assertEqual(len(self.d.files("new")), 1)
        self.assertEqual(len(self.files_with(self.d.files("new"), subject)), 1)
        self.assertIsNotNone(self.d.wait_log(r"smtp disconnected .* reason=quit", off))
        self.assertNotRegex(self.d.log_since(off), r"reason=timeout")


# ------------------------------------ accept outright beats a score reject
class AcceptAtConnectBeatsScore(StageTestCase):
    stage = dict(phase="connect", verdict="accept")
    stage2 = dict(phase="data", score=20.0)

    def test_delivered(self):
        c = self.ehlo_client()
        subject, mr, rr, dr, fr = self.send(c)
        self.assertIsNotNone(queued_id(fr), fr)
        self.assertEqual(len(self.files_with(self.d.files("new"), subject)), 1)
        self.assertEqual(self.d.files("new", folder="Junk"), [])
        self.assertRegex(self.tx_log(queued_id(fr)), r" score=20\.0 ")


# ------------------------------------------- SIGTERM while a stage pends
class SigtermWhilePending(StageTestCase):
    stage = dict(phase="helo", delay_ms=1500)

    def test_ehlo_answered_then_421_and_exit_0(self):
        off = self.d.log_size()
        c = self.client()
        c.send("EHLO client.example.org\r\n")
        self.assertIsNotNone(self.d.wait_log(r"teststage acting phase=helo", off),
                             self.d.log_tail())
        self.d.signal(signal.SIGTERM)
        r = c.reply()
        self.assertEqual(r.code, 250, r)
        try:
            c.send("NOOP\r\n")
        except OSError:
            pass  # the 421 may already have closed the connection
        r = c.reply()
        self.assertEqual((r.code, r.enhanced), (421, "4.3.2"), r)
        self.assertTrue(c.closed())
        try:
            code = self.d.proc.wait(mxtest.STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = "still running after %ss" % mxtest.STOP_TIMEOUT
        self.assertEqual(code, 0, self.d.log_tail())
        self.assertNotRegex(self.d.log_since(off), r"forced|shutdown: timeout")


if __name__ == "__main__":
    mxtest.main(budget=240)

#!/usr/bin/env python3
"""The quarantine store and `mxguardctl quarantine`, with the real daemon.

One daemon runs the rules stage (the stock rules/mxguard.cf, and
pipeline.quarantine_score under GTUBE's 1000) and the clamav stage
(action = quarantine, a database of the EICAR string written here, as
test_clamav.py does), with local users and a route to a real smtp-sink
(tests/integration/upstreams.py). Messages go in over SMTP; then:

- each held message has new/<ID>,S=<size> and meta/<ID> with the envelope,
  the time, the verdict, the score, the hits and the reason, and the
  transaction's log line says quarantine=<ID>;
- list (with --since, --rcpt, --sender, --reason) and show;
- release to a Maildir user, to the upstream, and with --to; the filters do
  not run again (the released GTUBE lands in INBOX); the release is in the
  metadata;
- delete, expire (a metadata time made old), unknown and invalid ids;
- quarantine_to_junk sends local users' quarantine to their Junk folder;
- under strace: the metadata is written, fsynced and renamed into meta/,
  and meta/ fsynced, before the message is renamed into new/ — a crash in
  between never leaves a message without its metadata.
"""

import os
import re
import smtplib
import time
import unittest

import mxtest
from mxtest import Daemon
from upstreams import SmtpSink
import test_durability as dur

STOCK = os.path.join(mxtest.MX_SRCDIR, "rules", "mxguard.cf")
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_SIG = "MxGuard.Test.EICAR"
USERS = ("demo@example.test", "other@example.test")
PIPELINE = {"stages": ["rules", "clamav"], "quarantine_score": 500.0, "reject_score": 5000.0}


def write_db(path):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "mxguard-test.ndb"), "w") as f:
        f.write("%s:0:*:%s\n" % (EICAR_SIG, EICAR.hex()))


def route_conf(port):
    return ("route sink {\n\tdomains = {\"relay.test\"}\n\tprotocol = \"smtp\"\n"
            "\thosts = {\"127.0.0.1:%d\"}\n\tstarttls = \"off\"\n}\n" % port)


def message(subject, body, sender="sender@example.org"):
    if isinstance(body, str):
        body = body.encode()
    return (b"From: <" + sender.encode() + b">\r\nTo: <demo@example.test>\r\n"
            b"Subject: " + subject.encode() + b"\r\nMessage-ID: <" + subject.encode() +
            b"@example.org>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\n" + body + b"\r\n")


def send(d, msg, rcpts=("demo@example.test",), sender="sender@example.org"):
    s = smtplib.SMTP("127.0.0.1", d.port, timeout=60)
    try:
        s.ehlo("client.example.org")
        s.mail(sender)
        for r in rcpts:
            code, text = s.rcpt(r)
            if code != 250:
                return code, text
        try:
            return s.data(msg)
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error
    finally:
        try:
            s.quit()
        except (smtplib.SMTPException, OSError):
            pass


def read_meta(path):
    out = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition(": ")
            out.setdefault(k, []).append(v)
    return out


class QuarantineDaemon(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sink = SmtpSink().start()
        cls.d = Daemon(start=False, users=USERS, pipeline=PIPELINE)
        cls.db = os.path.join(cls.d.dir, "clamdb")
        write_db(cls.db)
        cls.d.extra_conf = ('rules {\n\tfiles = {"%s"}\n}\n' % STOCK +
                            'clamav {\n\tdatabase_dir = "%s"\n\taction = "quarantine"\n}\n'
                            % cls.db + route_conf(cls.sink.port))
        cls.d.write_config()
        cls.d.start()
        cls.qdir = os.path.join(cls.d.dir, "quarantine")

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()
        cls.sink.stop()

    # helpers ----------------------------------------------------------
    def hold(self, subject, body=GTUBE, rcpts=("demo@example.test",),
             sender="sender@example.org"):
        """Send a message that is quarantined; returns its id from the log."""
        off = self.d.log_size()
        code, text = send(self.d, message(subject, body, sender), rcpts, sender)
        self.assertEqual(code, 250, text)
        self.assertTrue(self.d.wait_log(r"smtp tx .*result=quarantined", off), self.d.log_tail())
        line = [l for l in self.d.log_since(off).splitlines()
                if "smtp tx " in l and "result=quarantined" in l][0]
        m = re.search(r" quarantine=([0-9A-Z]{16})\b", line)
        self.assertIsNotNone(m, line)
        qid = m.group(1)
        # the id is the transaction's: the line starts with it
        self.assertRegex(line, r"\b%s smtp tx " % qid)
        return qid, line

    def meta(self, qid):
        return read_meta(os.path.join(self.qdir, "meta", qid))

    def message_file(self, qid):
        names = [n for n in os.listdir(os.path.join(self.qdir, "new"))
                 if n.startswith(qid + ",")]
        return os.path.join(self.qdir, "new", names[0]) if names else None

    def ctl(self, *args):
        return self.d.ctl("quarantine", *args)

    def ctl_ok(self, *args):
        r = self.ctl(*args)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r.stdout

    def listed(self, *args):
        return {l.split("\t")[0]: l.split("\t") for l in self.ctl_ok("list", *args).splitlines()}

    def inbox(self, user, domain="example.test", subject=None, folder=None):
        got = self.d.messages(user, domain, folder=folder)
        if subject is not None:
            got = [m for m in got if ("Subject: " + subject).encode() in m]
        return got

    # tests ------------------------------------------------------------
    def test_gtube_held_with_metadata(self):
        qid, line = self.hold("gtube-meta", rcpts=USERS)
        path = self.message_file(qid)
        self.assertIsNotNone(path)
        self.assertRegex(path, r",S=%d$" % os.stat(path).st_size)
        with open(path, "rb") as f:
            data = f.read()
        self.assertIn(b"X-MXGuard-Recipient: demo@example.test\n", data)
        self.assertIn(b"X-MXGuard-Recipient: other@example.test\n", data)
        m = self.meta(qid)
        self.assertEqual(m["mxguard-quarantine"], ["1"])
        self.assertEqual(m["id"], [qid])
        self.assertEqual(m["client"], ["127.0.0.1"])
        self.assertEqual(m["helo"], ["client.example.org"])
        self.assertEqual(m["from"], ["sender@example.org"])
        self.assertEqual(m["rcpt"], list(USERS))
        self.assertEqual(m["action"], ["quarantine"])
        self.assertEqual(m["verdict"], ["continue"])  # the score decided
        self.assertEqual(m["reason"], ["score>=500.0"])
        self.assertGreaterEqual(float(m["score"][0]), 1000.0)
        self.assertRegex(m["hits"][0], r"(^|,)rules:GTUBE=1000\.0")
        self.assertLessEqual(abs(int(m["time"][0]) - time.time()), 600)
        self.assertNotIn("event", m)
        # the log line's score and hits are the metadata's
        self.assertIn("score=%s " % m["score"][0], line)
        self.assertRegex(line, r"hits=\S*GTUBE")
        # nobody got it
        self.assertEqual(self.inbox("demo", subject="gtube-meta"), [])
        # list and show
        row = self.listed()[qid]
        self.assertEqual(row[2], "<sender@example.org>")
        self.assertEqual(row[3], "demo@example.test,other@example.test")
        self.assertEqual(row[4], "score>=500.0")
        self.assertEqual(row[6], "held")
        out = self.ctl_ok("show", qid)
        self.assertIn("id: %s\n" % qid, out)
        self.assertIn("reason: score>=500.0\n", out)
        self.assertIn("Subject: gtube-meta\n", out)
        self.assertIn("X-Spam-Status: Yes", out)
        self.assertNotIn(GTUBE, out)  # headers only

    def test_eicar_held_by_clamav(self):
        qid, line = self.hold("eicar-held", body=EICAR)
        m = self.meta(qid)
        self.assertEqual(m["verdict"], ["quarantine"])
        # libclamav names a signature of a database of ours "....UNOFFICIAL"
        self.assertRegex(m["reason"][0], r"^clamav:CLAMAV_%s(\.UNOFFICIAL)?$"
                         % re.escape(EICAR_SIG))
        self.assertRegex(m["hits"][0], r"(^|,)clamav:CLAMAV_%s\S*=0\.0" % re.escape(EICAR_SIG))
        self.assertIsNotNone(self.message_file(qid))
        self.assertIn("stages=", line)
        self.assertIn("clamav:quarantine", line)

    def test_list_filters(self):
        a, _ = self.hold("list-a", sender="alpha@lists.example")
        b, _ = self.hold("list-b", body=EICAR, rcpts=("other@example.test",),
                         sender="beta@lists.example")
        both = self.listed()
        self.assertIn(a, both)
        self.assertIn(b, both)
        self.assertEqual(set(self.listed("--sender", "ALPHA@lists.example")) & {a, b}, {a})
        self.assertEqual(set(self.listed("--rcpt", "other@example.test")) & {a, b}, {b})
        self.assertEqual(set(self.listed("--reason", "clamav")) & {a, b}, {b})
        self.assertEqual(set(self.listed("--reason", "score")) & {a, b}, {a})
        self.assertEqual(set(self.listed("--since", "1h")) & {a, b}, {a, b})
        self.assertEqual(set(self.listed("--since", str(int(time.time()) + 3600))), set())
        self.assertEqual(set(self.listed("--since", "2000-01-01")) & {a, b}, {a, b})
        r = self.ctl("list", "--since", "yesterday-ish")
        self.assertEqual(r.returncode, 2, r.stderr)

    def test_release_to_maildir_user(self):
        qid, _ = self.hold("release-local")
        out = self.ctl_ok("release", qid)
        self.assertRegex(out, r"^released %s to demo@example.test as [0-9A-Z]{16}\n$" % qid)
        got = self.inbox("demo", subject="release-local")
        self.assertEqual(len(got), 1)
        # delivered to INBOX without running the filters again (not held, not junked)
        self.assertRegex(got[0], rb"(?m)^X-MXGuard-Released: %s by \S+ as [0-9A-Z]{16}; "
                         % qid.encode())
        self.assertIn(b"Delivered-To: demo@example.test\n", got[0])
        self.assertIn(b"Return-Path: <sender@example.org>\n", got[0])
        self.assertNotIn(b"X-MXGuard-Recipient", got[0])
        self.assertIn(GTUBE.encode(), got[0])
        m = self.meta(qid)
        self.assertEqual(len(m["event"]), 1)
        self.assertRegex(m["event"][0], r"^\d+ released by \S+ to demo@example.test as "
                         r"[0-9A-Z]{16}: 250 2\.0\.0 ")
        self.assertEqual(self.listed()[qid][6], "released")
        # still there until deleted or expired; show names the release
        self.assertIsNotNone(self.message_file(qid))
        self.assertIn("released by", self.ctl_ok("show", qid))

    def test_release_to_upstream(self):
        qid, _ = self.hold("release-up", rcpts=("someone@relay.test",))
        before = len(self.sink.messages())
        self.assertEqual(before, 0, "nothing went upstream while held")
        out = self.ctl_ok("release", qid)
        self.assertIn("released %s to someone@relay.test" % qid, out)
        self.sink.wait_for_messages(1)
        dumps = [SmtpSink.parse_dump(m) for m in self.sink.messages()]
        got = [(env, m) for env, m in dumps if b"Subject: release-up" in m]
        self.assertEqual(len(got), 1)
        self.assertIn(GTUBE.encode(), got[0][1])
        self.assertRegex(got[0][1], rb"(?m)^X-MXGuard-Released: %s " % qid.encode())
        self.assertRegex(self.meta(qid)["event"][0], r"released by \S+ to someone@relay\.test")

    def test_release_with_to(self):
        qid, _ = self.hold("release-to")
        self.ctl_ok("release", qid, "--to", "other@example.test")
        self.assertEqual(len(self.inbox("other", subject="release-to")), 1)
        self.assertEqual(self.inbox("demo", subject="release-to"), [])
        self.assertIn("to other@example.test", self.meta(qid)["event"][0])
        # a recipient nobody takes: refused, nothing recorded
        r = self.ctl("release", qid, "--to", "nobody@example.test")
        self.assertEqual(r.returncode, 1)
        self.assertIn("550", r.stderr)
        r = self.ctl("release", qid, "--to", "x@elsewhere.example")
        self.assertEqual(r.returncode, 1)
        self.assertIn("no destination", r.stderr)
        self.assertEqual(len(self.meta(qid)["event"]), 1)

    def test_delete(self):
        qid, _ = self.hold("delete-me", body=EICAR)
        out = self.ctl_ok("delete", qid)
        self.assertEqual(out, "deleted %s\n" % qid)
        self.assertIsNone(self.message_file(qid))
        m = self.meta(qid)
        self.assertRegex(m["event"][0], r"^\d+ deleted by \S+$")
        self.assertNotIn(qid, self.listed())
        self.assertEqual(self.listed("--all")[qid][6], "deleted")
        r = self.ctl("release", qid)
        self.assertEqual(r.returncode, 1)
        self.assertIn("deleted", r.stderr)
        r = self.ctl("delete", qid)
        self.assertEqual(r.returncode, 1)
        self.assertIn("deleted already", r.stderr)

    def test_unknown_and_invalid_ids(self):
        for sub in ("show", "release", "delete"):
            r = self.ctl(sub, "0000000000000000")
            self.assertEqual(r.returncode, 1, (sub, r.stdout, r.stderr))
            self.assertIn("no quarantined message 0000000000000000", r.stderr)
            for bad in ("../../passwd", "..", "0000000000000000/../x", "abc",
                        "0000000000000000,S=1", os.path.join(self.qdir, "meta")):
                r = self.ctl(sub, bad)
                self.assertEqual(r.returncode, 1, (sub, bad))
                self.assertIn("invalid id", r.stderr)
        self.assertEqual(self.ctl("show").returncode, 2)
        self.assertEqual(self.ctl("frobnicate").returncode, 2)

    def test_expire(self):
        old, _ = self.hold("expire-old")
        new, _ = self.hold("expire-new")
        # make one entry 31 days old (the retention is the default 30)
        p = os.path.join(self.qdir, "meta", old)
        with open(p) as f:
            text = f.read()
        text = re.sub(r"(?m)^time: \d+$", "time: %d" % (time.time() - 31 * 86400), text)
        with open(p, "w") as f:
            f.write(text)
        out = self.ctl_ok("expire")
        self.assertIn("expired %s\n" % old, out)
        self.assertNotIn(new, out)
        self.assertFalse(os.path.exists(p))
        self.assertIsNone(self.message_file(old))
        self.assertIsNotNone(self.message_file(new))
        self.assertIn(new, self.listed())
        r = self.ctl("show", old)
        self.assertEqual(r.returncode, 1)


class ToJunk(unittest.TestCase):
    """quarantine_to_junk: local users' quarantine goes to their Junk folder."""

    @classmethod
    def setUpClass(cls):
        cls.sink = SmtpSink().start()
        cls.d = Daemon(start=False, users=USERS, settings={"quarantine_to_junk": True},
                       pipeline={"stages": ["rules"], "quarantine_score": 500.0,
                                 "reject_score": 5000.0})
        cls.d.extra_conf = 'rules {\n\tfiles = {"%s"}\n}\n' % STOCK + route_conf(cls.sink.port)
        cls.d.write_config()
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()
        cls.sink.stop()

    def test_local_to_junk_relayed_held(self):
        off = self.d.log_size()
        code, text = send(self.d, message("to-junk", GTUBE), USERS)
        self.assertEqual(code, 250, text)
        self.assertTrue(self.d.wait_log(r"smtp tx .*quarantine=junk", off), self.d.log_tail())
        for u in ("demo", "other"):
            got = [m for m in self.d.messages(u, folder="Junk") if b"Subject: to-junk" in m]
            self.assertEqual(len(got), 1, u)
        self.assertEqual([m for m in self.d.messages("demo") if b"Subject: to-junk" in m], [])
        self.assertFalse(os.listdir(os.path.join(self.d.dir, "quarantine", "new"))
                         if os.path.isdir(os.path.join(self.d.dir, "quarantine", "new")) else [])
        # a relayed recipient: held in the quarantine as before
        off = self.d.log_size()
        code, text = send(self.d, message("to-junk-relay", GTUBE),
                          ("demo@example.test", "someone@relay.test"))
        self.assertEqual(code, 250, text)
        self.assertTrue(self.d.wait_log(r"smtp tx .*quarantine=[0-9A-Z]{16}", off),
                        self.d.log_tail())


class MetadataFirst(unittest.TestCase):
    """The metadata is durable in meta/ before the message appears in new/."""

    @classmethod
    def setUpClass(cls):
        why = dur.strace_usable()
        if why:
            raise unittest.SkipTest(why)

    def test_order(self):
        d = dur.TracedDaemon(users=("demo@example.test",),
                             pipeline={"stages": ["rules"], "quarantine_score": 500.0,
                                       "reject_score": 5000.0},
                             extra_conf='rules {\n\tfiles = {"%s"}\n}\n' % STOCK)
        self.addCleanup(d.cleanup)
        code, text = send(d, message("traced", GTUBE))
        self.assertEqual(code, 250, text)
        m = re.search(rb"queued as ([0-9A-Z]{16})", text)
        self.assertIsNotNone(m, text)
        qid = m.group(1).decode()
        self.assertEqual(d.stop(), 0, d.log_tail())
        qdir = os.path.join(d.dir, "quarantine")
        meta = os.path.join(qdir, "meta", qid)
        names = [n for n in os.listdir(os.path.join(qdir, "new")) if n.startswith(qid + ",")]
        self.assertEqual(len(names), 1)
        final = os.path.join(qdir, "new", names[0])
        self.assertTrue(os.path.exists(meta))
        calls = dur.parse_trace(d.read_trace())
        fds = dur.FdTracker(calls)
        renames = ("rename", "renameat", "renameat2", "link", "linkat")

        def moves_to(path):
            return [c for c in calls if c.ret == 0 and c.name in renames
                    and len(dur.path_args(c)) == 2 and dur.same_path(dur.path_args(c)[1], path)]

        meta_moves = moves_to(meta)
        msg_moves = moves_to(final)
        self.assertEqual(len(meta_moves), 1, meta_moves)
        self.assertEqual(len(msg_moves), 1, msg_moves)
        meta_move, msg_move = meta_moves[0], msg_moves[0]
        meta_tmp = dur.path_args(meta_move)[0]
        # the metadata file fsynced before its rename ...
        syncs = [c for c in calls if c.name in dur.FSYNCS and c.ret == 0 and
                 dur.same_path(fds.path_of(c), meta_tmp) and c.exit < meta_move.entry]
        self.assertTrue(syncs, "no fsync of %s before its rename" % meta_tmp)
        # ... and meta/ fsynced after it, all before the message's rename into new/
        dir_syncs = [c for c in calls if c.name in dur.FSYNCS and c.ret == 0 and
                     dur.same_path(fds.path_of(c), os.path.dirname(meta)) and
                     c.entry > meta_move.exit and c.exit < msg_move.entry]
        self.assertTrue(dir_syncs, "meta/ not fsynced between the metadata's rename "
                        "(line %d) and the message's (line %d)"
                        % (meta_move.exit + 1, msg_move.entry + 1))


if __name__ == "__main__":
    mxtest.main(budget=300)

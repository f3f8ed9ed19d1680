"""test_delivery — what reaches the disk, and what happens when the disk or
the process lets us down.

A full disk (a real tiny tmpfs as mail_root) gives 452 and leaves nothing
partial; an unusable Maildir gives 451; both leave the daemon serving.
Large bodies that spill to the spool arrive byte for byte. SIGHUP reloads
(and keeps the old config when the new one is broken); SIGTERM lets a
transaction in the middle of DATA finish and then exits 0.
"""

import os
import shutil
import signal
import socket
import time
import unittest

import mxtest
from mxtest import DaemonTestCase, smtp_data, queued_id, stored_re


def send_one(test, d, rcpts, message, helo="client.example.org"):
    c = d.client()
    test.addCleanup(c.close)
    test.assertEqual(c.ehlo(helo).code, 250)
    mr, rr, dr, fr = c.transaction("a@b.test", rcpts, smtp_data(message))
    return c, rr, fr


def run_mxguard(d, *args):
    import subprocess
    return subprocess.run([mxtest.MXGUARD] + list(args) + ["-c", d.conf], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=30, cwd=d.dir)


class PostmasterDefault(DaemonTestCase):
    """postmaster@ every local domain (RFC 5321 4.5.1), with no postmaster
    setting: the first passwd-file user of a local domain receives it."""
    daemon_args = dict(domains=("example.test", "second.test"),
                       users=("demo@example.test", "alice@second.test"))

    def test_postmaster_of_every_domain(self):
        before = {u: set(self.d.files("new", u, dom))
                  for u, dom in (("demo", "example.test"), ("alice", "second.test"))}
        c = self.client()
        self.assertEqual(c.ehlo().code, 250)
        off = self.d.log_size()
        rcpts = ["postmaster@example.test", "POSTMASTER@second.test", "PostMaster@example.test",
                 '"postmaster"@second.test']
        mr, rr, dr, fr = c.transaction("a@b.test", rcpts, smtp_data(b"Subject: pm\n\nhello\n"))
        for r in rr:
            self.assertEqual((r.code, r.enhanced), (250, "2.1.5"), r)
        txid = queued_id(fr)
        self.assertIsNotNone(txid, fr)
        # one mailbox, one copy, and the copy says which mailbox it is
        new = set(self.d.files("new", "demo", "example.test")) - before["demo"]
        self.assertEqual(len(new), 1)
        with open(new.pop(), "rb") as f:
            data = f.read()
        self.assertTrue(data.startswith(b"Return-Path: <a@b.test>\nDelivered-To: demo@example.test\n"),
                        data[:200])
        self.assertEqual(set(self.d.files("new", "alice", "second.test")), before["alice"])
        # no Maildir for a "postmaster" user was made anywhere
        for dom in ("example.test", "second.test"):
            self.assertFalse(os.path.exists(os.path.join(self.d.mail_root, dom, "postmaster")))
        # the log names what the client asked for
        m = self.d.wait_log(r"(?m)^.*%s smtp tx .*$" % txid, off)
        self.assertIsNotNone(m)
        self.assertIn(" to=<postmaster@example.test>,<postmaster@second.test> nrcpt=2 ", m.group(0))

    def test_postmaster_refused_elsewhere(self):
        c = self.client()
        self.assertEqual(c.ehlo().code, 250)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.test>").code, 250)
        r = c.cmd("RCPT TO:<postmaster@other.test>")
        self.assertEqual((r.code, r.enhanced), (550, "5.7.1"), r)
        r = c.cmd("RCPT TO:<postmaster.x@example.test>")
        self.assertEqual((r.code, r.enhanced), (550, "5.1.1"), r)


class PostmasterSetting(DaemonTestCase):
    daemon_args = dict(domains=("example.test", "second.test"),
                       users=("demo@example.test", "alice@second.test"),
                       settings={"postmaster": "Alice@Second.test"})

    def test_postmaster_goes_to_the_setting(self):
        before = set(self.d.files("new", "alice", "second.test"))
        c = self.client()
        self.assertEqual(c.ehlo().code, 250)
        mr, rr, dr, fr = c.transaction("a@b.test", ["postmaster@example.test"],
                                       smtp_data(b"Subject: pm\n\nto alice\n"))
        txid = queued_id(fr)
        self.assertIsNotNone(txid, fr)
        new = set(self.d.files("new", "alice", "second.test")) - before
        self.assertEqual(len(new), 1)
        with open(new.pop(), "rb") as f:
            data = f.read()
        # Delivered-To: the mailbox; Received: ... for <what the client said>
        self.assertTrue(data.startswith(b"Return-Path: <a@b.test>\nDelivered-To: alice@second.test\n"),
                        data[:200])
        self.assertRegex(data, mxtest.received_re("client.example.org", "ESMTP", txid,
                                                  "postmaster@example.test"))
        self.assertTrue(data.endswith(b"\nSubject: pm\n\nto alice\n"), data)
        self.assertEqual(self.d.files("new", "demo", "example.test"), [])


class PostmasterMissing(DaemonTestCase):
    """Neither a setting nor a user of a local domain: refused loudly."""

    @classmethod
    def setUpClass(cls):
        cls.d = mxtest.Daemon(users=(), settings={"postmaster": ""}, start=False)

    def setUp(self):
        pass

    def test_check_and_start_refuse(self):
        r = run_mxguard(self.d, "-t")
        self.assertNotEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("postmaster: no mailbox for postmaster@example.test", r.stderr)
        self.assertIn('set postmaster = "', r.stderr)
        r = run_mxguard(self.d, "-f")
        self.assertNotEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("postmaster: no mailbox for postmaster@example.test", r.stderr)

    def test_setting_must_be_local(self):
        for value in ("admin@elsewhere.test", "no-at-sign", "@example.test", '"a b"@example.test'):
            with self.subTest(value=value):
                self.d.settings["postmaster"] = value
                self.d.write_config()
                r = run_mxguard(self.d, "-t")
                self.assertNotEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertIn("postmaster", r.stderr)
        self.d.settings["postmaster"] = "admin@example.test"
        self.d.write_config()
        r = run_mxguard(self.d, "-t")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


class DiskFull(DaemonTestCase):
    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("mounting a tmpfs needs root")
        cls.d = mxtest.Daemon(users=("demo@example.test", "alice@example.test"),
                              pre_start=lambda d: d.mount_tmpfs(d.mail_root, "256k"))

    def assertNothingPartial(self):
        for user in ("demo", "alice"):
            self.assertEqual(self.d.files("tmp", user), [], user)

    def test_1_message_larger_than_free_space(self):
        line = b"z" * 99 + b"\n"
        big = b"Subject: too big for the disk\n\n" + line * 4000  # ~400 KB
        c, rr, fr = send_one(self, self.d, ["demo@example.test"], big)
        self.assertEqual(fr.code, 452, fr)
        self.assertEqual(fr.enhanced, "4.3.1", fr)
        self.assertEqual(self.d.files("new"), [])
        self.assertNothingPartial()
        # the same session and a new one both still deliver a small message
        fr = c.transaction("a@b.test", ["demo@example.test"], smtp_data(b"Subject: s\n\nsmall\n"))[3]
        self.assertIsNotNone(queued_id(fr), fr)
        c2, rr, fr = send_one(self, self.d, ["demo@example.test"], b"Subject: s2\n\nsmall 2\n")
        self.assertIsNotNone(queued_id(fr), fr)
        self.assertEqual(len(self.d.files("new")), 2)

    def test_2_all_or_nothing_across_recipients(self):
        # one copy fits into the free space, two do not: nobody gets one
        before = {u: self.d.files("new", u) for u in ("demo", "alice")}
        st = os.statvfs(self.d.mail_root)
        free = st.f_bavail * st.f_frsize
        line = b"q" * 99 + b"\n"
        n = int(free * 0.6) // len(line)
        msg = b"Subject: half the disk\n\n" + line * n
        c, rr, fr = send_one(self, self.d, ["demo@example.test", "alice@example.test"], msg)
        self.assertEqual([r.code for r in rr], [250, 250])
        self.assertEqual(fr.code, 452, fr)
        self.assertEqual(fr.enhanced, "4.3.1", fr)
        for u in ("demo", "alice"):
            self.assertEqual(self.d.files("new", u), before[u], u)
        self.assertNothingPartial()
        fr = c.transaction("a@b.test", ["alice@example.test"], smtp_data(b"Subject: s\n\nok\n"))[3]
        self.assertIsNotNone(queued_id(fr), fr)


class UnusableMaildir(DaemonTestCase):
    daemon_args = dict(users=("demo@example.test", "alice@example.test"))

    def test_maildir_is_a_file(self):
        dom = os.path.join(self.d.mail_root, "example.test")
        os.makedirs(dom, exist_ok=True)
        blocker = os.path.join(dom, "demo")
        with open(blocker, "w") as f:
            f.write("not a directory\n")
        c, rr, fr = send_one(self, self.d, ["demo@example.test"], b"Subject: x\n\nx\n")
        self.assertEqual(rr[0].code, 250, rr[0])
        self.assertEqual((fr.code, fr.enhanced), (451, "4.3.0"), fr)
        self.assertTrue(self.d.running())
        # the daemon keeps serving: other users on the same session, and demo
        # again once the admin fixes the problem
        fr = c.transaction("a@b.test", ["alice@example.test"], smtp_data(b"Subject: y\n\ny\n"))[3]
        self.assertIsNotNone(queued_id(fr), fr)
        self.assertEqual(len(self.d.files("new", "alice")), 1)
        os.unlink(blocker)
        fr = c.transaction("a@b.test", ["demo@example.test"], smtp_data(b"Subject: z\n\nz\n"))[3]
        self.assertIsNotNone(queued_id(fr), fr)
        self.assertEqual(len(self.d.files("new", "demo")), 1)


class Spill(DaemonTestCase):
    daemon_args = dict(limits={"spill_threshold": 65536})

    def test_large_body_spilled_byte_exact(self):
        lines = []
        for i in range(8000):
            lines.append(b"%06d " % i + bytes(range(33, 127)) + (b"." if i % 7 == 0 else b""))
            if i % 500 == 0:
                lines.append(b".leading dot %d" % i)
        message = b"Subject: spilled\nX-Big: yes\n\n" + b"\n".join(lines) + b"\n"
        self.assertGreater(len(message), 65536 * 8)
        c, rr, fr = send_one(self, self.d, ["demo@example.test"], message)
        txid = queued_id(fr)
        self.assertIsNotNone(txid, fr)
        files = self.d.files("new")
        self.assertEqual(len(files), 1)
        with open(files[0], "rb") as f:
            data = f.read()
        self.assertRegex(data, stored_re("a@b.test", "demo@example.test", "client.example.org",
                                         "ESMTP", txid, message))
        # nothing left behind in the spool once the transaction is over
        c.cmd("QUIT")
        c.closed()
        spool = os.path.join(self.d.dir, "spool")
        deadline = time.monotonic() + 5
        while os.listdir(spool) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(os.listdir(spool), [])


class ReloadGood(DaemonTestCase):
    daemon_args = dict()

    def test_sighup_adds_domain(self):
        d = self.d
        keep = d.client()
        self.addCleanup(keep.close)
        self.assertEqual(keep.ehlo().code, 250)
        c = d.client()
        c.ehlo()
        c.cmd("MAIL FROM:<a@b.test>")
        r = c.cmd("RCPT TO:<bob@other.test>")
        self.assertEqual((r.code, r.enhanced), (550, "5.7.1"), r)
        c.close()
        d.domains = ["example.test", "other.test"]
        d.write_config()
        d.ctl_ok("user", "add", "bob@other.test", stdin=mxtest.PASSWORD + "\n")
        d.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            c = d.client()
            c.ehlo()
            c.cmd("MAIL FROM:<a@b.test>")
            r = c.cmd("RCPT TO:<bob@other.test>")
            if r.code == 250 or time.monotonic() > deadline:
                break
            c.close()
            time.sleep(0.1)
        self.assertEqual((r.code, r.enhanced), (250, "2.1.5"), r)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(smtp_data(b"Subject: after reload\n\nhi bob\n"))
        self.assertIsNotNone(queued_id(c.reply()))
        c.close()
        self.assertEqual(len(d.files("new", "bob", "other.test")), 1)
        # the connection opened before the reload was not dropped
        self.assertEqual(keep.cmd("NOOP").code, 250)
        self.assertEqual(keep.cmd("MAIL FROM:<a@b.test>").code, 250)
        self.assertEqual(keep.cmd("RCPT TO:<demo@example.test>").code, 250)
        self.assertTrue(d.running())


class ReloadDropsCertificate(DaemonTestCase):
    """Listeners live until a restart; when a reload removes the certificate
    (and the implicit-TLS listener from the file), the still-open implicit
    port must not start speaking plaintext SMTP."""
    daemon_args = dict(tls=True, implicit_tls=True)

    def test_implicit_port_never_plaintext(self):
        d = self.d
        port = d.tls_port
        d.tls, d.tls_port = False, None
        d.write_config()
        d.tls_port = port
        d.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded configuration" not in d.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertIn("reloaded configuration", d.log())
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(s.close)
        try:
            data = s.recv(100)
        except ConnectionResetError:
            data = b""
        self.assertEqual(data, b"", "plaintext on the implicit-TLS port: %r" % data)
        # the plaintext listener works on without TLS
        c = self.ehlo_client()
        self.assertNotIn("STARTTLS", " ".join(c.cmd("EHLO again").lines).upper())


class ReloadBroken(DaemonTestCase):
    daemon_args = dict()

    def test_broken_config_keeps_old(self):
        d = self.d
        off = d.log_size()
        good = d.render_config(domains=["example.test", "other.test"])
        d.write_config(good + "no_such_setting = 1\n")
        d.signal(signal.SIGHUP)
        m = d.wait_log(r"mxguard\.conf", off)
        self.assertIsNotNone(m, "reload failure not logged:\n" + d.log_since(off))
        lines = [l for l in d.log_since(off).splitlines() if "mxguard.conf" in l]
        self.assertTrue(any("no_such_setting" in l or ":%d" % (good.count("\n") + 1) in l
                            for l in lines), lines)
        time.sleep(0.5)
        self.assertTrue(d.running(), "daemon died on a broken reload:\n" + d.log_tail())
        c = d.client()
        self.addCleanup(c.close)
        c.ehlo()
        self.assertEqual(c.cmd("MAIL FROM:<a@b.test>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<demo@example.test>").code, 250)
        # nothing of the broken file was applied (other.test stays foreign)
        r = c.cmd("RCPT TO:<bob@other.test>")
        self.assertEqual((r.code, r.enhanced), (550, "5.7.1"), r)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(smtp_data(b"Subject: still\n\nalive\n"))
        self.assertIsNotNone(queued_id(c.reply()))
        # and a later good reload still works
        d.write_config(d.render_config())
        off = d.log_size()
        d.signal(signal.SIGHUP)
        time.sleep(0.5)
        self.assertTrue(d.running())


class Shutdown(DaemonTestCase):
    daemon_args = dict()

    def test_sigterm_mid_data(self):
        d = self.d
        c = d.client()
        self.addCleanup(c.close)
        c.ehlo()
        self.assertEqual(c.cmd("MAIL FROM:<a@b.test>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<demo@example.test>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        message = b"Subject: in flight\n\n" + b"part one\n" * 100 + b"part two\n" * 100
        data = smtp_data(message)
        half = len(data) // 2
        c.send(data[:half])
        time.sleep(0.2)
        d.signal(signal.SIGTERM)
        time.sleep(0.5)
        c.send(data[half:])
        r = c.reply()
        txid = queued_id(r)
        self.assertIsNotNone(txid, r)
        files = d.files("new")
        self.assertEqual(len(files), 1)
        with open(files[0], "rb") as f:
            self.assertRegex(f.read(), stored_re("a@b.test", "demo@example.test",
                                                 "client.example.org", "ESMTP", txid, message))
        try:
            r = c.cmd("NOOP")
            self.assertEqual(r.code, 421, r)
            self.assertEqual(r.enhanced[:2], "4.", r)
        except (EOFError, ConnectionResetError):
            self.fail("connection closed without a 421")
        self.assertTrue(c.closed())
        try:
            code = d.proc.wait(20)
        except Exception:
            code = None
        self.assertEqual(code, 0, d.log_tail())


class Terminate(DaemonTestCase):
    daemon_args = dict()

    def test_sigterm_idle_exits_0(self):
        c = self.d.client()
        c.ehlo()
        c.cmd("QUIT")
        c.close()
        self.assertEqual(self.d.stop(), 0, self.d.log_tail())

    def test_zz_sigterm_with_idle_client(self):
        # runs after the daemon above is gone: start a fresh one
        d = mxtest.Daemon()
        self.addCleanup(d.cleanup)
        c = d.client()
        self.addCleanup(c.close)
        c.ehlo()
        d.signal(signal.SIGTERM)
        # the idle client is told and disconnected; the daemon exits 0
        try:
            r = c.reply()
            self.assertEqual(r.code, 421, r)
        except (EOFError, ConnectionResetError):
            pass
        self.assertTrue(c.closed(timeout=20))
        try:
            code = d.proc.wait(20)
        except Exception:
            code = None
        self.assertEqual(code, 0, d.log_tail())

    def test_zz_sigterm_in_transaction_then_rset(self):
        # an open transaction may finish, but no new one starts: RSET is
        # answered, then the session is told 421 and closed
        d = mxtest.Daemon()
        self.addCleanup(d.cleanup)
        c = d.client()
        self.addCleanup(c.close)
        c.ehlo()
        self.assertEqual(c.cmd("MAIL FROM:<a@b.test>").code, 250)
        d.signal(signal.SIGTERM)
        time.sleep(0.5)
        self.assertEqual(c.cmd("RSET").code, 250)
        try:
            r = c.reply()
            self.assertEqual((r.code, r.enhanced), (421, "4.3.2"), r)
        except (EOFError, ConnectionResetError):
            self.fail("closed without a 421")
        self.assertTrue(c.closed(timeout=20))
        try:
            code = d.proc.wait(20)
        except Exception:
            code = None
        self.assertEqual(code, 0, d.log_tail())
        self.assertEqual(d.files("new"), [])

    def setUp(self):
        pass


class HalfClose(DaemonTestCase):
    daemon_args = dict()

    def test_half_close_gets_every_reply(self):
        # a client that sends a whole pipelined transaction and shuts its
        # write side still gets the 250 (and the 221) before the close
        c = self.ehlo_client()
        c.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<demo@example.test>\r\nDATA\r\n" +
               smtp_data(b"Subject: half\n\nclosed\n") + b"QUIT\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        codes = [c.reply().code for _ in range(5)]
        self.assertEqual(codes, [250, 250, 354, 250, 221])
        self.assertTrue(c.closed())
        self.assertEqual(len(self.d.files("new")), 1)


if __name__ == "__main__":
    mxtest.main(budget=180)

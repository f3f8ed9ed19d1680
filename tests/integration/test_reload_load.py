"""test_reload_load — SIGHUP while clients are sending loses nothing.

20 client threads (smtplib) each send 25 messages, 5 per connection, while
the main thread sends SIGHUP to the daemon every 50 ms: most reloads with
the config unchanged, every third after rewriting it with a harmless change
(a different limits.timeout_command). The clients are paced by the
SIGHUPs (each message waits for one more), so sessions stay open across
many reloads on any machine. Every message that got 250 must be in
the Maildir exactly once (found by the unique token in its Message-ID and
body), no client may see a dropped connection or any 4xx/5xx reply, and the
daemon must still be running and have logged its reloads. Nothing here
depends on timing: the counts are fixed, only the interleaving varies.
"""

import re
import signal
import smtplib
import threading
import time
import uuid

import mxtest
from mxtest import DaemonTestCase

CLIENTS = 20
CONNECTIONS = 5        # per client
PER_CONNECTION = 5     # messages
HUP_INTERVAL = 0.05
HUP_MAX = 400          # bounded even if the clients were very slow
RCPT = "demo@example.test"
TXID_RE = re.compile(r"^2\.0\.0 Ok: queued as ([0-9A-Z]{16})$")


class Hups:
    """How many SIGHUPs the main thread has sent, for clients to wait on:
    the load is paced by the reloads, not by the clock, so that sessions
    really are open across reloads however fast the machine is."""

    def __init__(self):
        self.cond = threading.Condition()
        self.sent = 0
        self.done = False

    def bump(self):
        with self.cond:
            self.sent += 1
            self.cond.notify_all()

    def finish(self):
        with self.cond:
            self.done = True
            self.cond.notify_all()

    def wait_for(self, n):
        """Until n SIGHUPs were sent (or the sender gave up); bounded."""
        with self.cond:
            self.cond.wait_for(lambda: self.sent >= n or self.done, timeout=60)
            return self.sent


class Client(threading.Thread):
    def __init__(self, port, n, hups):
        super().__init__(name="client-%d" % n, daemon=True)
        self.port = port
        self.n = n
        self.hups = hups
        self.accepted = {}   # token -> txid, for every message that got 250
        self.errors = []

    def run(self):
        for conn in range(CONNECTIONS):
            try:
                self.connection(conn)
            except (smtplib.SMTPException, OSError) as e:
                self.errors.append("client %d connection %d: %r" % (self.n, conn, e))

    def connection(self, conn):
        # connection k opens after the k*PER_CONNECTION-th SIGHUP ...
        start = self.hups.wait_for(conn * PER_CONNECTION)
        s = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
        try:
            code, msg = s.ehlo("load%d.example.org" % self.n)
            self.expect(250, code, msg, "EHLO")
            for i in range(PER_CONNECTION):
                # ... and each of its messages after one more: a session
                # outlives several reloads
                self.hups.wait_for(start + i)
                token = "%02d-%d-%d-%s" % (self.n, conn, i, uuid.uuid4().hex)
                message = ("From: <sender@remote.test>\r\nTo: <%s>\r\n"
                           "Subject: load %s\r\nMessage-ID: <%s@remote.test>\r\n\r\n"
                           "token: %s\r\n" % (RCPT, token, token, token))
                self.expect(250, *s.mail("sender@remote.test"), "MAIL")
                self.expect(250, *s.rcpt(RCPT), "RCPT")
                code, msg = s.data(message.encode())
                self.expect(250, code, msg, "DATA " + token)
                m = TXID_RE.match(msg.decode(errors="replace"))
                if not m:
                    raise smtplib.SMTPException("DATA %s: unexpected 250 text %r" % (token, msg))
                self.accepted[token] = m.group(1)
            code, msg = s.docmd("QUIT")
            self.expect(221, code, msg, "QUIT")
        finally:
            s.close()

    def expect(self, want, code, msg, what):
        if code != want:
            raise smtplib.SMTPException("%s: %d %r (wanted %d)" % (what, code, msg, want))


class ReloadUnderLoad(DaemonTestCase):
    daemon_args = dict(limits={"connections_per_client": 100})

    def reloads_logged(self):
        return len(re.findall(r"(?m) reloaded configuration from ", self.d.log()))

    def test_reload_storm_loses_nothing(self):
        hups = Hups()
        clients = [Client(self.d.port, n, hups) for n in range(CLIENTS)]
        for c in clients:
            c.start()

        sent = rewrites = 0
        try:
            while any(c.is_alive() for c in clients) and sent < HUP_MAX:
                if sent % 3 == 2:
                    # a harmless change, written atomically (mxtest renames)
                    rewrites += 1
                    self.d.limits["timeout_command"] = 300 + rewrites % 2
                    self.d.write_config()
                self.d.signal(signal.SIGHUP)
                sent += 1
                hups.bump()
                time.sleep(HUP_INTERVAL)
        finally:
            hups.finish()
        for c in clients:
            c.join(120)
            self.assertFalse(c.is_alive(), "client %d still running" % c.n)

        errors = [e for c in clients for e in c.errors]
        self.assertEqual(errors, [])
        accepted = {}
        for c in clients:
            accepted.update(c.accepted)
        self.assertEqual(len(accepted), CLIENTS * CONNECTIONS * PER_CONNECTION)
        # the pacing above guarantees this many reloads during the load
        self.assertGreaterEqual(sent, CONNECTIONS * PER_CONNECTION - 1)

        # every acknowledged message stored exactly once, and nothing else
        files = self.d.files("new")
        seen = {}
        for p in files:
            with open(p, "rb") as f:
                data = f.read()
            m = re.search(rb"(?m)^token: (\S+)$", data)
            self.assertIsNotNone(m, p)
            tok = m.group(1).decode()
            self.assertIn(b"Message-ID: <" + m.group(1) + b"@remote.test>", data)
            seen[tok] = seen.get(tok, 0) + 1
        missing = sorted(set(accepted) - set(seen))
        self.assertEqual(missing, [], "acknowledged but not stored")
        self.assertEqual({t: n for t, n in seen.items() if n != 1}, {}, "stored twice")
        self.assertEqual(sorted(seen), sorted(accepted))
        self.assertEqual(self.d.files("tmp"), [])

        # still running, reloaded (signals may coalesce: at least one, at
        # most one per SIGHUP), never refused a config, and still reloads
        self.assertTrue(self.d.running(), self.d.log_tail())
        self.assertNotIn("reload failed", self.d.log())
        n = self.reloads_logged()
        self.assertGreaterEqual(n, 1, self.d.log_tail())
        self.assertLessEqual(n, sent)
        off = self.d.log_size()
        self.d.signal(signal.SIGHUP)
        self.assertIsNotNone(self.d.wait_log(r"reloaded configuration from ", off),
                             self.d.log_tail())
        c = self.client()
        self.assertEqual(c.ehlo().code, 250)


if __name__ == "__main__":
    mxtest.main(budget=300)

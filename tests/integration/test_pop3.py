"""test_pop3 — the POP3 service with a real mxguard and real clients.

Mail is delivered over SMTP (smtplib) to the daemon and read back over
POP3: Python's poplib for every command and state, raw sockets for the
exact bytes (pipelining, dot-stuffing, bad sequences, overlong lines),
STLS and implicit TLS with poplib and curl, and Debian's fetchmail and
getmail6 pulling everything into local stores (keep and delete modes),
compared message by message with what was delivered.

Nothing here measures time: a failed login's delay is only checked to be
there by the order of events (the answer comes after the log line).
"""

import base64
import os
import poplib
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time
import unittest
import uuid

import mxtest
from mxtest import DaemonTestCase, PASSWORD

USER = "demo@example.test"


def pop3_conf(pop_port, pops_port=None, **pop3):
    out = ["listen pop3 {", '\taddress = "127.0.0.1:%d"' % pop_port, '\tprotocol = "pop3"',
           '\ttls = "none"', "}"]
    if pops_port:
        out += ["listen pop3s {", '\taddress = "127.0.0.1:%d"' % pops_port, '\tprotocol = "pop3"',
                '\ttls = "implicit"', "}"]
    if pop3:
        out.append("pop3 {")
        for k, v in pop3.items():
            out.append("\t%s = %s" % (k, mxtest.conf_value(v)))
        out.append("}")
    return "\n".join(out) + "\n"


def send_mail(d, rcpt, subject, body="hello\r\n", extra=""):
    msg = ("From: a@b.test\r\nTo: %s\r\nSubject: %s\r\n%s\r\n%s" % (rcpt, subject, extra, body))
    with smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.example.org", timeout=10) as s:
        s.sendmail("a@b.test", [rcpt], msg.encode())


def crlf(data):
    """What POP3 sends of a stored file: every bare LF as CRLF."""
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


def no_tls_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class RawPop:
    """Exact bytes on the wire."""

    def __init__(self, port, tls_context=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=mxtest.SOCK_TIMEOUT)
        if tls_context:
            self.sock = tls_context.wrap_socket(self.sock)
        self.buf = b""
        self.greeting = self.line()

    def send(self, data):
        self.sock.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("closed; got %r" % self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def cmd(self, line):
        self.send(line.encode() + b"\r\n")
        return self.line()

    def multi(self):
        """The lines of a multi-line body up to the "." (still stuffed)."""
        out = []
        while True:
            l = self.line()
            if l == b".":
                return out
            out.append(l)

    def closed(self):
        """True when the server closes (bounded by the socket timeout)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (socket.timeout, ConnectionResetError):
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Pop3Case(DaemonTestCase):
    """A daemon with a POP3 listener (and an implicit-TLS one); plaintext
    logins allowed on loopback, as in the quickstart."""
    pop3 = dict(plaintext_auth="loopback", auth_failure_delay=200)
    tls = True
    users = (USER, "alice@example.test")
    settings = {}

    @classmethod
    def setUpClass(cls):
        cls.pop_port = mxtest.free_port()
        cls.pops_port = mxtest.free_port() if cls.tls else None
        cls.d = mxtest.Daemon(tls=cls.tls, users=cls.users, settings=cls.settings,
                              extra_conf=pop3_conf(cls.pop_port, cls.pops_port, **cls.pop3))

    def pop(self, user=USER, password=PASSWORD):
        p = poplib.POP3("127.0.0.1", self.pop_port, timeout=mxtest.SOCK_TIMEOUT)
        self.addCleanup(self._close, p)
        if user:
            p.user(user)
            p.pass_(password)
        return p

    def raw(self, tls_context=None, port=None):
        r = RawPop(port or self.pop_port, tls_context)
        self.addCleanup(r.close)
        return r

    @staticmethod
    def _close(p):
        try:
            p.sock.close()
        except Exception:
            pass

    def empty(self, user="demo"):
        """Delete every message of a mailbox through POP3 itself."""
        p = self.pop(user + "@example.test")
        n, _ = p.stat()
        for i in range(1, n + 1):
            p.dele(i)
        p.quit()

    def stored(self, user="demo"):
        """{base name: bytes} of every file in cur/ and new/."""
        out = {}
        for sub in ("new", "cur"):
            for path in self.d.files(sub, user):
                with open(path, "rb") as f:
                    out[os.path.basename(path).split(":")[0]] = f.read()
        return out


class Commands(Pop3Case):

    def test_greeting_and_capa(self):
        r = self.raw()
        self.assertTrue(r.greeting.startswith(b"+OK"), r.greeting)
        self.assertEqual(r.cmd("CAPA"), b"+OK Capability list follows")
        caps = [c.decode() for c in r.multi()]
        for want in ("TOP", "UIDL", "USER", "SASL PLAIN LOGIN", "RESP-CODES", "PIPELINING",
                     "AUTH-RESP-CODE", "STLS", "IMPLEMENTATION mxguard"):
            self.assertIn(want, caps)
        # in TRANSACTION: no login capabilities any more
        self.assertEqual(r.cmd("USER " + USER), b"+OK")
        self.assertTrue(r.cmd("PASS " + PASSWORD).startswith(b"+OK"))
        self.assertTrue(r.cmd("CAPA").startswith(b"+OK"))
        caps = [c.decode() for c in r.multi()]
        self.assertIn("UIDL", caps)
        self.assertNotIn("USER", caps)
        self.assertNotIn("STLS", caps)
        self.assertEqual(r.cmd("QUIT")[:3], b"+OK")
        self.assertTrue(r.closed())

    def test_poplib_every_command(self):
        self.empty()
        subjects = ["cmd-%d-%s" % (i, uuid.uuid4().hex) for i in range(3)]
        for i, s in enumerate(subjects):
            send_mail(self.d, USER, s, body="line one\r\nline two\r\n" + ("x" * 100 + "\r\n") * (i * 50))
        stored = self.stored()
        self.assertEqual(len(stored), 3)
        p = self.pop()
        n, octets = p.stat()
        self.assertEqual(n, 3)
        resp, listing, _ = p.list()
        sizes = {int(a): int(b) for a, b in (l.split() for l in listing)}
        self.assertEqual(sum(sizes.values()), octets)
        self.assertTrue(resp.startswith(b"+OK"))
        by_subject = {}
        for i in range(1, n + 1):
            resp, lines, got = p.retr(i)
            self.assertEqual(got, sizes[i], "LIST size == RETR octets")
            self.assertEqual(resp, b"+OK %d octets" % sizes[i])
            self.assertEqual(p.list(i), b"+OK %d %d" % (i, sizes[i]))
            data = b"\r\n".join(lines) + b"\r\n"
            self.assertEqual(len(data), sizes[i])
            subj = re.search(rb"Subject: (\S+)", data).group(1).decode()
            by_subject[subj] = data
        self.assertEqual(sorted(by_subject), sorted(subjects))
        # byte for byte what is on disk, with CRLF line ends
        self.assertEqual(sorted(by_subject.values()), sorted(crlf(v) for v in stored.values()))
        # TOP: the header, the blank line and n lines of the body
        resp, lines, _ = p.top(1, 1)
        blank = lines.index(b"")
        self.assertEqual(lines[blank + 1:], [b"line one"])
        resp, lines, _ = p.top(1, 0)
        self.assertEqual(lines[-1], b"")
        self.assertNotIn(b"line one", lines)
        # UIDL: one per message, distinct
        resp, uidls, _ = p.uidl()
        ids = [l.split()[1] for l in uidls]
        self.assertEqual(len(set(ids)), 3)
        self.assertEqual(p.uidl(2), b"+OK 2 " + ids[1])
        for u in ids:
            self.assertRegex(u.decode(), r"^[0-9A-F]{16}$")
        self.assertTrue(p.noop().startswith(b"+OK"))
        # DELE hides a message; RSET brings it back
        self.assertTrue(p.dele(2).startswith(b"+OK"))
        self.assertEqual(p.stat()[0], 2)
        with self.assertRaises(poplib.error_proto):
            p.retr(2)
        with self.assertRaises(poplib.error_proto):
            p.dele(2)
        with self.assertRaises(poplib.error_proto):
            p.list(2)
        self.assertTrue(p.rset().startswith(b"+OK"))
        self.assertEqual(p.stat(), (3, octets))
        self.assertTrue(p.quit().startswith(b"+OK"))
        self.assertEqual(len(self.stored()), 3)

    def test_dele_only_at_quit(self):
        self.empty()
        for i in range(3):
            send_mail(self.d, USER, "dele-%d" % i)
        p = self.pop()
        self.assertEqual(p.stat()[0], 3)
        p.dele(1)
        p.dele(3)
        # marked, not gone
        self.assertEqual(len(self.stored()), 3)
        off = self.d.log_size()
        self.assertTrue(p.quit().startswith(b"+OK"))
        left = self.stored()
        self.assertEqual(len(left), 1)
        self.assertIn(b"Subject: dele-1", list(left.values())[0])
        self.assertTrue(self.d.wait_log(r"pop3 logout client=127\.0\.0\.1 user=demo@example\.test "
                                        r"retrieved=0 deleted=2 reason=quit", off))

    def test_dropped_connection_deletes_nothing(self):
        self.empty()
        send_mail(self.d, USER, "dropped")
        r = self.raw()
        r.cmd("USER " + USER)
        self.assertTrue(r.cmd("PASS " + PASSWORD).startswith(b"+OK"))
        self.assertTrue(r.cmd("DELE 1").startswith(b"+OK"))
        off = self.d.log_size()
        r.close()
        self.assertTrue(self.d.wait_log(r"pop3 logout .* deleted=0 reason=", off))
        self.assertEqual(len(self.stored()), 1)
        p = self.pop()
        self.assertEqual(p.stat()[0], 1)
        p.quit()

    def test_in_use(self):
        p1 = self.pop()
        p2 = poplib.POP3("127.0.0.1", self.pop_port, timeout=mxtest.SOCK_TIMEOUT)
        self.addCleanup(self._close, p2)
        p2.user(USER)
        with self.assertRaises(poplib.error_proto) as cm:
            p2.pass_(PASSWORD)
        self.assertIn(b"[IN-USE]", cm.exception.args[0])
        # another user is not affected
        p3 = self.pop("alice@example.test")
        p3.quit()
        p1.quit()
        # and after the first session the mailbox is free again
        p2 = self.pop()
        p2.stat()
        p2.quit()

    def test_uidl_stable_and_snapshot(self):
        self.empty()
        for i in range(2):
            send_mail(self.d, USER, "uidl-%d" % i)
        p = self.pop()
        first = dict(l.split() for l in p.uidl()[1])
        p.quit()
        p = self.pop()
        self.assertEqual(dict(l.split() for l in p.uidl()[1]), first)
        # delivered during the session: not seen until the next one
        send_mail(self.d, USER, "uidl-late")
        self.assertEqual(p.stat()[0], 2)
        self.assertEqual(dict(l.split() for l in p.uidl()[1]), first)
        p.dele(1)
        p.quit()
        p = self.pop()
        now = [l.split()[1] for l in p.uidl()[1]]
        self.assertEqual(len(now), 2)
        self.assertEqual(now[0], first[b"2"])  # kept its UIDL, renumbered to 1
        self.assertNotIn(now[1], first.values())
        self.assertGreater(now[1][:8], now[0][:8])  # UIDs ascend
        self.assertEqual(now[1][8:], now[0][8:])  # one UIDVALIDITY
        p.quit()
        # the list file on disk
        with open(os.path.join(self.d.maildir(), "mxguard-uidlist"), "rb") as f:
            self.assertTrue(f.read().startswith(b"mxguard-uidlist 1 V"))

    def test_seen_flag_after_retr(self):
        self.empty()
        send_mail(self.d, USER, "seen-1")
        send_mail(self.d, USER, "seen-2")
        p = self.pop()
        p.top(1, 0)
        p.retr(2)
        p.quit()
        names = sorted(os.path.basename(f) for f in self.d.files("cur"))
        self.assertEqual(len(names), 2)
        flags = {}
        p = self.pop()
        for l in p.uidl()[1]:
            pass
        p.quit()
        for n in names:
            with open(os.path.join(self.d.maildir(), "cur", n), "rb") as f:
                subj = re.search(rb"Subject: (\S+)", f.read()).group(1)
            flags[subj] = n.split(":2,", 1)[1]
        self.assertEqual(flags[b"seen-1"], "")  # TOP does not mark seen
        self.assertEqual(flags[b"seen-2"], "S")
        self.assertEqual(self.d.files("new"), [])

    def test_dot_stuffing(self):
        self.empty()
        body = ".leading dot\r\n..two dots\r\n.\r\nlast\r\n"
        send_mail(self.d, USER, "dots", body=body)
        stored = list(self.stored().values())[0]
        self.assertIn(b"\n.leading dot\n..two dots\n.\nlast\n", stored)
        r = self.raw()
        r.cmd("USER " + USER)
        r.cmd("PASS " + PASSWORD)
        size = int(r.cmd("LIST 1").split()[2])
        resp = r.cmd("RETR 1")
        self.assertEqual(resp, b"+OK %d octets" % size)
        lines = r.multi()
        self.assertEqual(lines[-4:], [b"..leading dot", b"...two dots", b"..", b"last"])
        # octets on the wire minus the stuffing == LIST size
        wire = sum(len(l) + 2 for l in lines)
        self.assertEqual(wire - sum(1 for l in lines if l.startswith(b".")), size)
        # the maildrop is free as soon as QUIT is answered
        self.assertTrue(r.cmd("QUIT").startswith(b"+OK"))
        p = self.pop()
        _, lines, octets = p.retr(1)
        self.assertEqual(lines[-4:], [b".leading dot", b"..two dots", b".", b"last"])
        self.assertEqual(octets, size)
        p.quit()

    def test_large_message_in_chunks(self):
        # larger than the 256 KB the server reads at a time, with a stuffed
        # line right across where a chunk ends
        self.empty()
        line = "z" * 98 + "\r\n"
        body = line * 2700 + ".dot after the first chunk\r\n" + line * 9000
        send_mail(self.d, USER, "large", body=body)
        stored = list(self.stored().values())[0]
        self.assertGreater(len(stored), 1000000)
        p = self.pop()
        size = int(p.list(1).split()[2])
        self.assertEqual(size, len(crlf(stored)))
        resp, lines, octets = p.retr(1)
        self.assertEqual(octets, size)
        self.assertEqual(b"\r\n".join(lines) + b"\r\n", crlf(stored))
        # and TOP stops early in a message this big
        _, lines, _ = p.top(1, 3)
        self.assertEqual(lines[-3:], [line[:-2].encode()] * 3)
        p.quit()

    def test_other_readers_rename_and_expunge(self):
        # what an IMAP session (or a user's shell) may do meanwhile: the
        # snapshot follows a flag change and reports an expunge
        self.empty()
        send_mail(self.d, USER, "renamed")
        send_mail(self.d, USER, "expunged")
        p = self.pop()
        files = {}
        for path in self.d.files("cur"):
            with open(path, "rb") as f:
                files[re.search(rb"Subject: (\S+)", f.read()).group(1)] = path
        base = files[b"renamed"].split(":2,")[0]
        os.rename(files[b"renamed"], base + ":2,FR")
        os.unlink(files[b"expunged"])
        _, lines, _ = p.retr(1)
        self.assertIn(b"Subject: renamed", lines)
        with self.assertRaises(poplib.error_proto) as cm:
            p.retr(2)
        self.assertEqual(cm.exception.args[0], b"-ERR Message was removed by another session.")
        p.dele(2)
        self.assertTrue(p.quit().startswith(b"+OK"))  # deleting what is gone is fine
        self.assertEqual([os.path.basename(f).split(":2,")[1] for f in self.d.files("cur")], ["FRS"])

    def test_pipelining(self):
        self.empty()
        send_mail(self.d, USER, "pipe-1")
        send_mail(self.d, USER, "pipe-2")
        r = self.raw()
        r.send(("USER %s\r\nPASS %s\r\nSTAT\r\nLIST\r\nUIDL\r\nRETR 1\r\nTOP 2 0\r\nDELE 1\r\n"
                "NOOP\r\nRSET\r\nSTAT\r\nQUIT\r\n" % (USER, PASSWORD)).encode())
        self.assertEqual(r.line(), b"+OK")
        self.assertTrue(r.line().startswith(b"+OK Logged in"))
        self.assertTrue(r.line().startswith(b"+OK 2 "))
        self.assertTrue(r.line().startswith(b"+OK 2 messages"))
        self.assertEqual(len(r.multi()), 2)
        self.assertEqual(r.line(), b"+OK")
        self.assertEqual(len(r.multi()), 2)
        self.assertTrue(r.line().startswith(b"+OK") and True)
        self.assertIn(b"Subject: pipe-1", b"\n".join(r.multi()))
        self.assertEqual(r.line(), b"+OK")
        self.assertIn(b"Subject: pipe-2", b"\n".join(r.multi()))
        self.assertTrue(r.line().startswith(b"+OK Marked"))
        self.assertEqual(r.line(), b"+OK")
        self.assertTrue(r.line().startswith(b"+OK"))
        self.assertTrue(r.line().startswith(b"+OK 2 "))
        self.assertTrue(r.line().startswith(b"+OK Logging out"))
        self.assertTrue(r.closed())
        self.assertEqual(len(self.stored()), 2)

    def test_bad_sequences(self):
        r = self.raw()
        self.assertTrue(r.cmd("PASS x").startswith(b"-ERR"))      # no USER
        self.assertTrue(r.cmd("STAT").startswith(b"-ERR"))        # not logged in
        self.assertTrue(r.cmd("RETR 1").startswith(b"-ERR"))
        self.assertTrue(r.cmd("FOO").startswith(b"-ERR"))
        self.assertTrue(r.cmd("APOP demo 0123").startswith(b"-ERR"))
        r.cmd("USER " + USER)
        self.assertTrue(r.cmd("PASS " + PASSWORD).startswith(b"+OK"))
        self.assertTrue(r.cmd("USER x").startswith(b"-ERR"))      # logged in already
        self.assertTrue(r.cmd("STLS").startswith(b"-ERR"))
        self.assertTrue(r.cmd("RETR 0").startswith(b"-ERR"))
        self.assertEqual(r.cmd("RETR 999999"), b"-ERR No such message.")
        self.assertTrue(r.cmd("RETR -1").startswith(b"-ERR"))
        # the tenth bad command closes the session (bad_commands_max 10;
        # "no such message" is not a bad command)
        self.assertTrue(r.cmd("TOP 1").startswith(b"-ERR"))
        self.assertEqual(r.line(), b"-ERR Too many bad commands, closing connection.")
        self.assertTrue(r.closed())

    def test_overlong_lines(self):
        r = self.raw()
        self.assertEqual(r.cmd("NOOP " + "x" * 3000), b"-ERR Line too long.")
        self.assertTrue(r.cmd("CAPA").startswith(b"+OK"))
        r.multi()
        # a flood without a line end is cut off
        r.send(b"x" * 100000)
        self.assertTrue(r.line().startswith(b"-ERR Line too long"))
        self.assertTrue(r.closed())

    def test_sasl_plain_and_login(self):
        self.empty("alice")
        plain = base64.b64encode(b"\0alice@example.test\0" + PASSWORD.encode()).decode()
        r = self.raw()
        self.assertEqual(r.cmd("AUTH"), b"+OK")
        self.assertEqual(r.multi(), [b"PLAIN", b"LOGIN"])
        self.assertTrue(r.cmd("AUTH PLAIN " + plain).startswith(b"+OK Logged in"))
        r.cmd("QUIT")
        r = self.raw()
        self.assertEqual(r.cmd("AUTH PLAIN"), b"+ ")
        self.assertTrue(r.cmd(plain).startswith(b"+OK Logged in"))
        r.cmd("QUIT")
        r = self.raw()
        self.assertEqual(r.cmd("AUTH LOGIN"), b"+ " + base64.b64encode(b"Username:"))
        self.assertEqual(r.cmd(base64.b64encode(b"alice@example.test").decode()),
                         b"+ " + base64.b64encode(b"Password:"))
        self.assertTrue(r.cmd(base64.b64encode(PASSWORD.encode()).decode()).startswith(b"+OK"))
        r.cmd("QUIT")
        r = self.raw()
        self.assertEqual(r.cmd("AUTH LOGIN " + base64.b64encode(b"alice@example.test").decode()),
                         b"+ " + base64.b64encode(b"Password:"))
        self.assertTrue(r.cmd(base64.b64encode(PASSWORD.encode()).decode()).startswith(b"+OK"))
        r.cmd("QUIT")
        r = self.raw()
        self.assertEqual(r.cmd("AUTH PLAIN"), b"+ ")
        self.assertTrue(r.cmd("*").startswith(b"-ERR"))
        self.assertTrue(r.cmd("AUTH CRAM-MD5").startswith(b"-ERR"))
        self.assertTrue(r.cmd("AUTH PLAIN !!!!").startswith(b"-ERR"))
        self.assertTrue(r.cmd("AUTH PLAIN " + base64.b64encode(b"\0alice@example.test\0nope").decode())
                        .startswith(b"-ERR [AUTH]"))
        # poplib's own SASL-less path still works after all that
        self.assertEqual(r.cmd("USER alice@example.test"), b"+OK")
        self.assertTrue(r.cmd("PASS " + PASSWORD).startswith(b"+OK"))
        r.cmd("QUIT")

    def test_failures_identical(self):
        answers = []
        off = self.d.log_size()
        for user, pw in ((USER, "wrong"), ("nobody@example.test", "wrong"),
                         ("nobody@elsewhere.test", PASSWORD), ("not an address", "x")):
            r = self.raw()
            self.assertEqual(r.cmd("USER " + user), b"+OK")
            answers.append(r.cmd("PASS " + pw))
            r.cmd("QUIT")
        self.assertEqual(len(set(answers)), 1, answers)
        self.assertEqual(answers[0], b"-ERR [AUTH] Authentication failed.")
        log = self.d.log_since(off)
        self.assertEqual(len(re.findall(r"pop3 auth failed client=127\.0\.0\.1 user=\S+ mech=USER "
                                        r"reason=bad_credentials", log)), 4, log)
        self.assertNotIn("wrong", log)
        self.assertNotIn(PASSWORD, self.d.log())

    def test_stls_poplib(self):
        self.empty()
        send_mail(self.d, USER, "over-stls")
        p = poplib.POP3("127.0.0.1", self.pop_port, timeout=mxtest.SOCK_TIMEOUT)
        self.addCleanup(self._close, p)
        self.assertIn("STLS", p.capa())
        p.stls(no_tls_context())
        self.assertNotIn("STLS", p.capa())
        off = self.d.log_size()
        p.user(USER)
        p.pass_(PASSWORD)
        self.assertTrue(self.d.wait_log(r"pop3 login client=127\.0\.0\.1 user=demo@example\.test "
                                        r"mech=USER tls=yes messages=1", off))
        _, lines, _ = p.retr(1)
        self.assertIn(b"Subject: over-stls", lines)
        p.quit()

    def test_stls_discards_pipelined_plaintext(self):
        r = self.raw()
        r.send(b"STLS\r\nUSER injected\r\n")
        self.assertEqual(r.line(), b"+OK Begin TLS negotiation now.")
        r.sock = no_tls_context().wrap_socket(r.sock)
        # the USER sent before the handshake was thrown away
        self.assertTrue(r.cmd("PASS " + PASSWORD).startswith(b"-ERR"))
        r.cmd("QUIT")

    def test_implicit_tls_poplib(self):
        self.empty()
        send_mail(self.d, USER, "over-pop3s")
        ctx = mxtest.client_tls_context(check_hostname=False)
        p = poplib.POP3_SSL("127.0.0.1", self.pops_port, context=ctx, timeout=mxtest.SOCK_TIMEOUT)
        self.addCleanup(self._close, p)
        self.assertNotIn("STLS", p.capa())
        p.user(USER)
        p.pass_(PASSWORD)
        _, lines, _ = p.retr(1)
        self.assertIn(b"Subject: over-pop3s", lines)
        p.quit()

    def test_curl(self):
        self.empty()
        send_mail(self.d, USER, "via-curl", body="curl body\r\n")
        stored = crlf(list(self.stored().values())[0])
        for url in ("pop3s://127.0.0.1:%d/1" % self.pops_port,
                    "pop3://127.0.0.1:%d/1" % self.pop_port):
            r = subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", "--max-time", "20",
                                "-u", "%s:%s" % (USER, PASSWORD), url],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout, stored, url)
        # the listing
        r = subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", "--max-time", "20",
                            "-u", "%s:%s" % (USER, PASSWORD), "pop3://127.0.0.1:%d/" % self.pop_port],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, b"1 %d\r\n" % len(stored))
        # --ssl-reqd against a plain POP3 port that refuses STLS would fail;
        # a wrong password fails cleanly
        r = subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", "--max-time", "20",
                            "-u", "%s:nope" % USER, "pop3s://127.0.0.1:%d/1" % self.pops_port],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.assertNotEqual(r.returncode, 0)

    def test_timeouts_and_logs(self):
        r = self.raw()
        off = self.d.log_size()
        r.cmd("USER " + USER)
        r.cmd("PASS " + PASSWORD)
        r.cmd("QUIT")
        self.assertTrue(r.closed())
        self.assertTrue(self.d.wait_log(r"pop3 logout client=127\.0\.0\.1 user=demo@example\.test "
                                        r"retrieved=0 deleted=0 reason=quit", off))
        self.assertIn("pop3 login client=127.0.0.1 user=demo@example.test mech=USER tls=no",
                      self.d.log_since(off))


class TlsOnly(Pop3Case):
    """The default plaintext_auth: passwords only inside TLS."""
    pop3 = dict(auth_failure_delay=100)

    def test_plaintext_refused_before_stls(self):
        r = self.raw()
        r.cmd("CAPA")
        caps = r.multi()
        self.assertIn(b"STLS", caps)
        self.assertNotIn(b"USER", caps)
        self.assertFalse(any(c.startswith(b"SASL") for c in caps))
        self.assertTrue(r.cmd("USER " + USER).startswith(b"-ERR [AUTH]"))
        self.assertTrue(r.cmd("AUTH PLAIN").startswith(b"-ERR [AUTH]"))
        self.assertEqual(r.cmd("STLS"), b"+OK Begin TLS negotiation now.")
        r.sock = no_tls_context().wrap_socket(r.sock)
        r.cmd("CAPA")
        caps = r.multi()
        self.assertIn(b"USER", caps)
        self.assertNotIn(b"STLS", caps)
        self.assertEqual(r.cmd("USER " + USER), b"+OK")
        self.assertTrue(r.cmd("PASS " + PASSWORD).startswith(b"+OK"))
        r.cmd("QUIT")

    def test_implicit_tls_allows_login(self):
        p = poplib.POP3_SSL("127.0.0.1", self.pops_port, context=no_tls_context(),
                            timeout=mxtest.SOCK_TIMEOUT)
        self.addCleanup(self._close, p)
        p.user(USER)
        p.pass_(PASSWORD)
        p.quit()


class Throttle(Pop3Case):
    """Failures counted per client address and per user (loopback gives
    us many client addresses: 127.0.0.0/8)."""
    pop3 = dict(plaintext_auth="loopback", auth_failure_delay=100, auth_failures_max=3,
                auth_failure_window=3600)
    users = (USER, "victim@example.test", "other@example.test")

    def login_from(self, src, user, password):
        s = socket.socket()
        s.settimeout(mxtest.SOCK_TIMEOUT)
        s.bind((src, 0))
        s.connect(("127.0.0.1", self.pop_port))
        f = s.makefile("rb")
        try:
            f.readline()
            s.sendall(("USER %s\r\nPASS %s\r\n" % (user, password)).encode())
            f.readline()
            answer = f.readline().rstrip(b"\r\n")
            s.sendall(b"QUIT\r\n")
            f.readline()
            return answer
        finally:
            f.close()
            s.close()

    def test_per_address_and_per_user(self):
        for _ in range(3):
            self.assertEqual(self.login_from("127.0.0.2", "victim@example.test", "bad"),
                             b"-ERR [AUTH] Authentication failed.")
        # the address is blocked now, even with the right password
        self.assertTrue(self.login_from("127.0.0.2", USER, PASSWORD).startswith(b"-ERR [SYS/TEMP]"))
        # ... and so is the user, from another address
        self.assertTrue(self.login_from("127.0.0.3", "victim@example.test", PASSWORD)
                        .startswith(b"-ERR [SYS/TEMP]"))
        # other users from other addresses are not affected
        self.assertTrue(self.login_from("127.0.0.3", "other@example.test", PASSWORD)
                        .startswith(b"+OK Logged in"))
        self.assertIn("reason=throttled", self.d.log())


class Lifecycle(Pop3Case):
    """Reload and stop with POP3 sessions open. One loop thread, so that
    once a new session sees a reloaded state, every later one does."""
    pop3 = dict(plaintext_auth="loopback", auth_failure_delay=100)
    settings = {"threads": 1}

    def reload_with(self, **pop3):
        old = self.d.extra_conf
        self.d.extra_conf = pop3_conf(self.pop_port, self.pops_port, **pop3)
        self.d.write_config()
        self.addCleanup(self.restore, old)
        self.d.signal(mxtest.signal.SIGHUP)

    def restore(self, old):
        self.d.extra_conf = old
        self.d.write_config()
        if self.d.running():
            self.d.signal(mxtest.signal.SIGHUP)
            self.wait_user_answer(b"+OK")

    def wait_user_answer(self, prefix):
        """Every loop switches to a reloaded state on its own: retry a new
        session (bounded) until one answers USER with prefix."""
        deadline = time.monotonic() + 10
        while True:
            r = RawPop(self.pop_port)
            got = r.cmd("USER " + USER)
            r.cmd("QUIT")
            r.close()
            if got.startswith(prefix) or time.monotonic() > deadline:
                return got

    def test_reload_applies_to_new_sessions(self):
        r = self.raw()
        self.assertEqual(r.cmd("USER " + USER), b"+OK")
        self.reload_with(plaintext_auth="tls-only", auth_failure_delay=100)
        # a new session gets the new settings ...
        self.assertTrue(self.wait_user_answer(b"-ERR [AUTH]").startswith(b"-ERR [AUTH]"))
        # ... the open one keeps those it started with
        self.assertTrue(r.cmd("PASS " + PASSWORD).startswith(b"+OK"))
        r.cmd("QUIT")

    def test_sigterm_deletes_nothing(self):
        # (last in this class by name: it stops the daemon)
        self.empty()
        send_mail(self.d, USER, "shutdown")
        r = self.raw()
        r.cmd("USER " + USER)
        r.cmd("PASS " + PASSWORD)
        self.assertTrue(r.cmd("DELE 1").startswith(b"+OK"))
        self.assertEqual(self.d.stop(), 0)
        self.assertEqual(r.line(), b"-ERR [SYS/TEMP] Server shutting down.")
        self.assertTrue(r.closed())
        self.assertEqual(len(self.stored()), 1)
        self.assertIn("reason=shutdown", self.d.log())

    def setUp(self):
        if not self.d.running():
            self.d.start()


# ------------------------------------------------------------ real clients
def have(prog):
    return shutil.which(prog) is not None


# getmail 6.18 installs its SIGCHLD handler only after fork(): a delivery
# child that exits first is never reaped, and getmail waits for it until
# its timeout (seen here: all data received from us, the child defunct,
# getmail in a futex wait). That race is getmail's, not the server's; this
# runs the real /usr/bin/getmail with the handler installed before the fork
# (waitpid(0) in getmail's handler reaps the child either way).
GETMAIL_WRAPPER = r"""
import os, runpy, sys
import getmailcore.baseclasses as b

def forkchild(self, childfun, with_out=True):
    self.child = child = b.Namespace()
    child.stdout = b.TemporaryFile23()
    child.stderr = b.TemporaryFile23()
    child.childpid = 0
    self._prepare_child()
    pid = os.fork()
    if pid == 0:
        childfun(child.stdout, child.stderr)
        os._exit(127)
    child.childpid = pid
    child.exitcode = self._wait_for_child(pid)
    child.stderr.seek(0)
    child.err = child.stderr.read().strip().decode()
    child.stdout.seek(0)
    if with_out:
        child.out = child.stdout.read().strip()
    return child

b.ForkingBase.forkchild = forkchild
sys.argv = ["getmail"] + sys.argv[1:]
runpy.run_path("/usr/bin/getmail", run_name="__main__")
"""


class RealClients(Pop3Case):
    """fetchmail (over STLS, then implicit TLS) and getmail6 (plain, on
    loopback) pull everything that was delivered over SMTP."""
    N = 12

    def deliver_batch(self, tag):
        self.empty()
        sent = {}
        for i in range(self.N):
            subj = "%s-%d-%s" % (tag, i, uuid.uuid4().hex[:8])
            body = "".join("%s line %d\r\n" % (subj, k) for k in range(i * 40))
            if i % 3 == 0:
                body += ".dotted line\r\n"
            send_mail(self.d, USER, subj, body=body)
        for data in self.stored().values():
            subj = re.search(rb"Subject: (\S+)", data).group(1)
            sent[subj] = data
        self.assertEqual(len(sent), self.N)
        return sent

    def compare(self, sent, got):
        """got: list of retrieved messages (LF line ends); each must be the
        delivered message, possibly after headers the client prepends."""
        self.assertEqual(len(got), len(sent))
        total_sent = total_got = 0
        for data in got:
            data = data.replace(b"\r\n", b"\n")
            subj = re.search(rb"Subject: (\S+)", data).group(1)
            want = sent[subj]
            self.assertTrue(data.endswith(want), subj)
            total_sent += len(want)
            total_got += len(data[len(data) - len(want):])
        self.assertEqual(total_got, total_sent)

    def tmpdir(self):
        d = tempfile.mkdtemp(prefix="mxtest-client-")
        self.addCleanup(shutil.rmtree, d, True)
        return d

    @unittest.skipUnless(have("fetchmail"), "fetchmail not installed")
    def test_fetchmail_keep_and_delete(self):
        sent = self.deliver_batch("fm")
        # keep over STLS on the plain port (fetchmail upgrades when it can),
        # then delete over implicit TLS
        for mode, port, tls in (("keep", self.pop_port, ""),
                                ("nokeep", self.pops_port, "ssl")):
            d = self.tmpdir()
            out = os.path.join(d, "out")
            os.mkdir(out)
            rc = os.path.join(d, "fetchmailrc")
            with open(rc, "w") as f:
                f.write('set no syslog\nset invisible\n'
                        'poll 127.0.0.1 service %d protocol pop3 uidl auth password\n'
                        '  user "%s" password "%s" is root here\n'
                        '  %s fetchall no rewrite %s no sslcertck\n'
                        '  mda "/bin/sh -c \'cat > %s/msg.$$\'"\n'
                        % (port, USER, PASSWORD, mode, tls, out))
            os.chmod(rc, 0o600)
            env = dict(os.environ, HOME=d, FETCHMAILHOME=d)
            off = self.d.log_size()
            # as root fetchmail's lock is /var/run/fetchmail.pid unless told:
            # a run of its own must not meet another test run's fetchmail
            r = subprocess.run(["fetchmail", "-f", rc, "--nodetach", "--nosyslog", "-v",
                                "--pidfile", os.path.join(d, "fetchmail.pid")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120,
                               env=env, cwd=d)
            self.assertEqual(r.returncode, 0, r.stdout.decode(errors="replace"))
            got = []
            for n in os.listdir(out):
                with open(os.path.join(out, n), "rb") as f:
                    got.append(f.read())
            self.compare(sent, got)
            # the password went inside TLS both times
            self.assertTrue(self.d.wait_log(r"pop3 login client=127\.0\.0\.1 "
                                            r"user=demo@example\.test mech=\S+ tls=yes", off))
            left = len(self.stored())
            self.assertEqual(left, self.N if mode == "keep" else 0, mode)

    @unittest.skipUnless(have("getmail"), "getmail6 not installed")
    def test_getmail_keep_and_delete(self):
        sent = self.deliver_batch("gm")
        for delete in (False, True):
            d = self.tmpdir()
            md = os.path.join(d, "Maildir")
            for sub in ("tmp", "new", "cur"):
                os.makedirs(os.path.join(md, sub))
            rc = os.path.join(d, "getmailrc")
            with open(rc, "w") as f:
                f.write("[retriever]\ntype = SimplePOP3Retriever\nserver = 127.0.0.1\n"
                        "port = %d\nusername = %s\npassword = %s\n\n"
                        "[destination]\ntype = Maildir\npath = %s/\n\n"
                        "[options]\nread_all = true\ndelete = %s\ndelivered_to = false\n"
                        "received = false\nverbose = 1\n"
                        % (self.pop_port, USER, PASSWORD, md, "true" if delete else "false"))
            # getmail refuses to deliver as root: run the whole of it as
            # nobody (simpler than its Maildir destination's "user =")
            os.chmod(d, 0o755)
            for root, dirs, files in os.walk(d):
                for x in [root] + [os.path.join(root, f) for f in files]:
                    shutil.chown(x, "nobody", "nogroup")
            r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                "/usr/bin/python3", "-c", GETMAIL_WRAPPER,
                                "--getmaildir", d, "--rcfile", rc],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
            self.assertEqual(r.returncode, 0, r.stdout.decode(errors="replace"))
            got = []
            for n in os.listdir(os.path.join(md, "new")):
                with open(os.path.join(md, "new", n), "rb") as f:
                    got.append(f.read())
            self.compare(sent, got)
            self.assertEqual(len(self.stored()), 0 if delete else self.N)


if __name__ == "__main__":
    mxtest.main(budget=400)

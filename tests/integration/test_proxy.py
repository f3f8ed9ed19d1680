#!/usr/bin/env python3
"""The PROXY protocol on listeners and SMTP XCLIENT, in the real daemon.

- Behind a real HAProxy (Debian's package, started by the test with a config
  of its own in a temp dir on free loopback ports, stopped by PID): one
  frontend sends PROXY v1 (`send-proxy`), another v2 (`send-proxy-v2`). A
  client connecting to HAProxy from 127.0.0.2 is 127.0.0.2 to mxguard: in the
  connect line (with `via=127.0.0.1 proxy=vN`), in the Received header, and
  for limits.connections_per_client.
- Raw sockets straight to mxguard: a header from a peer not in proxy_trusted
  (greeting, then close, no reply), a truncated v2 header (closed after
  proxy_timeout), an overlong v1 line, a header one octet at a time, v2
  LOCAL and v1 UNKNOWN (the balancer's own address), TCP6 in v1 and v2, a
  header with the SMTP commands in the same packet, a header before an
  implicit-TLS handshake, a trusted peer that sends SMTP and no header.
- XCLIENT from xclient_trusted (offered in EHLO, the new identity in the tx
  log line and the Received header) and from anyone else (550 5.7.0, not
  offered), inside a transaction (503), bad attributes (501).

Every wait is bounded; ports are free ones; nothing depends on how fast the
machine is.
"""

import os
import re
import shutil
import smtplib
import socket
import ssl
import struct
import subprocess
import tempfile
import time
import unittest

import mxtest
from mxtest import Daemon

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
MSG = b"From: a@sender.test\r\nTo: demo@example.test\r\nSubject: proxied\r\n\r\nhello\r\n"


def v2_header(cmd=0x21, fam=0x11, body=b""):
    return V2_SIG + bytes([cmd, fam]) + struct.pack("!H", len(body)) + body


def v2_tcp4(src, dst, sport, dport, tlv=b""):
    return v2_header(0x21, 0x11, socket.inet_pton(socket.AF_INET, src) +
                     socket.inet_pton(socket.AF_INET, dst) + struct.pack("!HH", sport, dport) + tlv)


def v2_tcp6(src, dst, sport, dport):
    return v2_header(0x21, 0x21, socket.inet_pton(socket.AF_INET6, src) +
                     socket.inet_pton(socket.AF_INET6, dst) + struct.pack("!HH", sport, dport))


def listening(port, timeout=10):
    """Wait (bounded) until something listens on 127.0.0.1:port, read from
    /proc/net/tcp so that no probe connection goes through a proxy."""
    want = ":%04X" % port
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[1] == "0100007F" + want and parts[3] == "0A":
                    return True
        time.sleep(0.05)
    return False


class Haproxy:
    """A throwaway HAProxy in the foreground (-db): frontends on free loopback
    ports, each to the mxguard listener at target with send-proxy or
    send-proxy-v2. Stopped by PID."""

    def __init__(self, target, modes=("send-proxy", "send-proxy-v2")):
        self.dir = tempfile.mkdtemp(prefix="mxhaproxy-")
        self.ports = {}
        out = ["global", "\tmaxconn 200", "defaults", "\tmode tcp", "\ttimeout connect 5s",
               "\ttimeout client 60s", "\ttimeout server 60s"]
        for i, mode in enumerate(modes):
            port = mxtest.free_port()
            self.ports[mode] = port
            out += ["frontend f%d" % i, "\tbind 127.0.0.1:%d" % port, "\tdefault_backend b%d" % i,
                    "backend b%d" % i, "\tserver s1 127.0.0.1:%d %s" % (target, mode)]
        self.conf = os.path.join(self.dir, "haproxy.cfg")
        with open(self.conf, "w") as f:
            f.write("\n".join(out) + "\n")
        self.logfile = open(os.path.join(self.dir, "haproxy.log"), "wb")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=self.logfile, stderr=subprocess.STDOUT, cwd=self.dir)
        for port in self.ports.values():
            if not listening(port):
                self.cleanup()
                raise RuntimeError("haproxy did not listen on %d" % port)

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.logfile.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Raw(mxtest.Client):
    """A raw client from a chosen loopback source address that may send
    octets (a PROXY header) before it reads the greeting."""

    def __init__(self, port, source="127.0.0.1", preamble=b"", tls_context=None, greeting=True,
                 nodelay=False):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=mxtest.SOCK_TIMEOUT,
                                             source_address=(source, 0))
        if nodelay:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        if preamble:
            self.sock.sendall(preamble)
        if tls_context is not None:
            self.sock = tls_context.wrap_socket(self.sock, server_hostname=mxtest.HOSTNAME)
        self.greeting = self.reply() if greeting else None


def haproxy_usable():
    return os.access(HAPROXY, os.X_OK)


# ------------------------------------------------------------- HAProxy
@unittest.skipUnless(haproxy_usable(), "haproxy is not installed (scripts/install-deps)")
class ThroughHaproxy(unittest.TestCase):
    """mxguard behind a real HAProxy, v1 and v2."""

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon(listen_extra={"lb": {"proxy_protocol": "any",
                                            "proxy_trusted": ["127.0.0.1"]}})
        try:
            cls.h = Haproxy(cls.d.ports["lb"])
        except Exception:
            cls.d.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.h.cleanup()
        cls.d.cleanup()

    def send_through(self, mode, version):
        off = self.d.log_size()
        s = smtplib.SMTP("127.0.0.1", self.h.ports[mode], timeout=mxtest.SOCK_TIMEOUT,
                         source_address=("127.0.0.2", 0))
        try:
            code, _ = s.ehlo("client.example.org")
            self.assertEqual(code, 250)
            subject = "via %s" % mode
            s.sendmail("a@sender.test", ["demo@example.test"],
                       MSG.replace(b"Subject: proxied", b"Subject: " + subject.encode()))
            s.quit()
        finally:
            s.close()
        m = self.d.wait_log(r"connect client=127\.0\.0\.2 port=\d+ listener=lb tls=no loop=\d+ "
                            r"via=127\.0\.0\.1 proxy=v%d\n" % version, off)
        self.assertIsNotNone(m, self.d.log_since(off))
        self.assertIsNotNone(self.d.wait_log(r"smtp tx session=\S+ client=127\.0\.0\.2 ", off),
                             self.d.log_since(off))
        found = [m for m in self.d.messages() if subject.encode() in m]
        self.assertEqual(len(found), 1)
        self.assertRegex(found[0], rb"Received: from client\.example\.org \(unknown \[127\.0\.0\.2\]\)")
        self.assertNotIn(b"[127.0.0.1]", found[0])

    def test_v1(self):
        self.send_through("send-proxy", 1)

    def test_v2(self):
        self.send_through("send-proxy-v2", 2)


@unittest.skipUnless(haproxy_usable(), "haproxy is not installed (scripts/install-deps)")
class HaproxyPerClientLimit(unittest.TestCase):
    """limits.connections_per_client counts the client HAProxy names, not
    HAProxy: two held from 127.0.0.2, a third from it refused, one from
    127.0.0.3 greeted."""

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon(limits={"connections_per_client": 2},
                       listen_extra={"lb": {"proxy_protocol": "v2",
                                            "proxy_trusted": ["127.0.0.1"]}})
        try:
            cls.h = Haproxy(cls.d.ports["lb"], modes=("send-proxy-v2",))
        except Exception:
            cls.d.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.h.cleanup()
        cls.d.cleanup()

    def client(self, source):
        c = Raw(self.h.ports["send-proxy-v2"], source=source)
        self.addCleanup(c.close)
        return c

    def test_limit_by_named_client(self):
        a = self.client("127.0.0.2")
        b = self.client("127.0.0.2")
        self.assertEqual(a.greeting.code, 220, a.greeting)
        self.assertEqual(b.greeting.code, 220, b.greeting)
        third = self.client("127.0.0.2")
        self.assertEqual(third.greeting.code, 421, third.greeting)
        self.assertIn("Too many connections from your host", third.greeting.text)
        self.assertTrue(third.closed())
        other = self.client("127.0.0.3")
        self.assertEqual(other.greeting.code, 220, other.greeting)
        self.assertEqual(other.ehlo().code, 250)
        # the held ones still work
        self.assertEqual(a.cmd("NOOP").code, 250)
        self.assertEqual(b.cmd("NOOP").code, 250)
        # one of them gone (mxguard gives the slot back before it closes, and
        # HAProxy closes our side only after that): a new one fits
        self.assertEqual(a.cmd("QUIT").code, 221)
        self.assertTrue(a.closed())
        self.assertEqual(self.client("127.0.0.2").greeting.code, 220)


# ------------------------------------------------------------- raw sockets
class RawProxy(unittest.TestCase):
    """PROXY headers over raw sockets, straight to mxguard: listener px
    (any version, proxy_timeout 10), pxt (proxy_timeout 1), pxs (implicit
    TLS); each trusts 127.0.0.1 only."""

    @classmethod
    def setUpClass(cls):
        trusted = {"proxy_trusted": ["127.0.0.1"]}
        cls.d = Daemon(tls=True, listen_extra={
            "px": dict(proxy_protocol="any", **trusted),
            "pxt": dict(proxy_protocol="any", proxy_timeout=1, **trusted),
            "pxs": dict(tls="implicit", proxy_protocol="v1", **trusted),
        })

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def raw(self, listener="px", **kw):
        c = Raw(self.d.ports[listener], **kw)
        self.addCleanup(c.close)
        return c

    def assert_refused(self, c, reason, off, client="127.0.0.1", listener="px"):
        self.assertTrue(c.closed(), c.pending())
        self.assertEqual(c.pending(), b"", "nothing may be answered")
        m = self.d.wait_log(r"proxy refused client=%s listener=%s reason=\"%s\"" % (
            re.escape(client), listener, re.escape(reason)), off)
        self.assertIsNotNone(m, self.d.log_since(off))

    def assert_connect(self, off, client, via="127.0.0.1", version=1, listener="px", tls="no"):
        m = self.d.wait_log(r"connect client=%s port=(\d+) listener=%s tls=%s loop=\d+ "
                            r"via=%s proxy=v%d\n" % (re.escape(client), listener, tls,
                                                     re.escape(via), version), off)
        self.assertIsNotNone(m, self.d.log_since(off))
        return m

    def deliver(self, c, subject):
        self.assertEqual(c.ehlo().code, 250)
        r = c.transaction("a@sender.test", ["demo@example.test"],
                          mxtest.smtp_data(MSG.replace(b"proxied", subject.encode())))
        self.assertEqual(r[3].code, 250, r)
        self.assertEqual(c.cmd("QUIT").code, 221)
        found = [m for m in self.d.messages() if subject.encode() in m]
        self.assertEqual(len(found), 1)
        return found[0]

    def test_untrusted_peer_header_refused(self):
        off = self.d.log_size()
        c = self.raw(source="127.0.0.5")
        self.assertEqual(c.greeting.code, 220, c.greeting)
        c.send(b"PROXY TCP4 192.0.2.7 127.0.0.1 5000 25\r\n")
        self.assert_refused(c, "a PROXY header from a peer not in proxy_trusted", off,
                            client="127.0.0.5")
        self.assertNotRegex(self.d.log_since(off), r"client=192\.0\.2\.7")

    def test_untrusted_peer_v2_header_refused(self):
        off = self.d.log_size()
        c = self.raw(source="127.0.0.5")
        self.assertEqual(c.greeting.code, 220, c.greeting)
        c.send(v2_tcp4("192.0.2.7", "127.0.0.1", 5000, 25))
        self.assert_refused(c, "a PROXY header from a peer not in proxy_trusted", off,
                            client="127.0.0.5")

    def test_untrusted_peer_plain_smtp_served(self):
        c = self.raw(source="127.0.0.5")
        self.assertEqual(c.greeting.code, 220, c.greeting)
        self.assertEqual(c.ehlo().code, 250)
        self.assertEqual(c.cmd("QUIT").code, 221)

    def test_truncated_v2_times_out(self):
        off = self.d.log_size()
        hdr = v2_tcp4("192.0.2.7", "127.0.0.1", 5000, 25)
        c = self.raw("pxt", preamble=hdr[:20], greeting=False)
        self.assert_refused(c, "PROXY header not complete in time", off, listener="pxt")

    def test_trickle_does_not_extend_timeout(self):
        # proxy_timeout (1 s here) is for the whole header: a peer sending
        # one octet of it every 0.4 s is refused long before the 20th octet
        # (8 s), not kept as long as it trickles
        off = self.d.log_size()
        c = self.raw("pxt", greeting=False, nodelay=True)
        hdr = v2_tcp4("192.0.2.7", "127.0.0.1", 5000, 25)
        sent = 0
        try:
            for b in hdr[:20]:
                if "proxy refused" in self.d.log_since(off):
                    break
                c.send(bytes([b]))
                sent += 1
                time.sleep(0.4)
        except OSError:
            pass
        self.assertLess(sent, 20, "still reading the header after 20 octets over 8 s")
        self.assert_refused(c, "PROXY header not complete in time", off, listener="pxt")

    def test_nothing_times_out(self):
        off = self.d.log_size()
        c = self.raw("pxt", greeting=False)
        self.assert_refused(c, "no PROXY header in time", off, listener="pxt")

    def test_v1_without_crlf_refused(self):
        off = self.d.log_size()
        c = self.raw(preamble=b"PROXY TCP4 " + b"1" * 120, greeting=False)
        self.assert_refused(c, "v1 line longer than 107 octets", off)

    def test_v1_broken_refused(self):
        for line, why in ((b"PROXY TCP4 192.0.2.7  127.0.0.1 5000 25\r\n",
                           "v1 line with too many fields"),
                          (b"PROXY TCP4 192.0.2.7  127.0.0.1 5000\r\n",
                           "v1 line with an empty field (two spaces?)"),
                          (b"PROXY TCP4 192.0.2.7 127.0.0.1 5000\r\n",
                           "v1 line needs 5 fields after PROXY"),
                          (b"PROXY TCP4 192.0.2.7 127.0.0.1 05000 25\r\n",
                           "v1 port is not a number from 0 to 65535"),
                          (b"PROXY TCP4 192.0.2.7 127.0.0.1 5000 65536\r\n",
                           "v1 port is not a number from 0 to 65535"),
                          (b"PROXY TCP4 2001:db8::7 127.0.0.1 5000 25\r\n",
                           "v1 address is not a numeric address of its family"),
                          (b"PROXY TCP4 192.0.2.7 127.0.0.1 5000 25\n",
                           "v1 line ended by a bare LF")):
            with self.subTest(line=line):
                off = self.d.log_size()
                c = self.raw(preamble=line, greeting=False)
                self.assert_refused(c, why, off)

    def test_byte_at_a_time(self):
        off = self.d.log_size()
        c = self.raw(greeting=False, nodelay=True)
        for b in b"PROXY TCP4 192.0.2.7 127.0.0.1 5000 25\r\n":
            c.send(bytes([b]))
            time.sleep(0.005)
        self.assertEqual(c.reply().code, 220)
        m = self.assert_connect(off, "192.0.2.7")
        self.assertEqual(m.group(1), "5000")
        self.assertEqual(c.ehlo().code, 250)

    def test_v2_byte_at_a_time(self):
        off = self.d.log_size()
        c = self.raw(greeting=False, nodelay=True)
        for b in v2_tcp4("192.0.2.8", "127.0.0.1", 5001, 25, tlv=b"\x04\x00\x02ab"):
            c.send(bytes([b]))
            time.sleep(0.005)
        self.assertEqual(c.reply().code, 220)
        self.assert_connect(off, "192.0.2.8", version=2)
        self.assertEqual(c.ehlo().code, 250)

    def test_v2_local_keeps_balancer(self):
        off = self.d.log_size()
        c = self.raw(preamble=v2_header(0x20, 0x00))
        self.assertEqual(c.greeting.code, 220)
        self.assert_connect(off, "127.0.0.1", version=2)
        self.assertEqual(c.ehlo().code, 250)

    def test_v1_unknown_keeps_balancer(self):
        off = self.d.log_size()
        c = self.raw(preamble=b"PROXY UNKNOWN\r\n")
        self.assertEqual(c.greeting.code, 220)
        self.assert_connect(off, "127.0.0.1", version=1)
        self.assertEqual(c.ehlo().code, 250)

    def test_v1_tcp6(self):
        off = self.d.log_size()
        c = self.raw(preamble=b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 25\r\n")
        self.assertEqual(c.greeting.code, 220)
        m = self.assert_connect(off, "2001:db8::7")
        self.assertEqual(m.group(1), "51234")
        msg = self.deliver(c, "tcp6-v1")
        self.assertRegex(msg, rb"Received: from client\.example\.org \(unknown \[IPv6:2001:db8::7\]\)")

    def test_v2_tcp6(self):
        off = self.d.log_size()
        c = self.raw(preamble=v2_tcp6("2001:db8:0:0::7", "2001:db8::1", 51235, 25))
        self.assertEqual(c.greeting.code, 220)
        m = self.assert_connect(off, "2001:db8::7", version=2)
        self.assertEqual(m.group(1), "51235")
        self.assertEqual(c.ehlo().code, 250)

    def test_pipelined_after_header(self):
        off = self.d.log_size()
        data = mxtest.smtp_data(MSG.replace(b"proxied", b"pipelined"))
        c = self.raw(preamble=b"PROXY TCP4 192.0.2.9 127.0.0.1 5002 25\r\n"
                     b"EHLO client.example.org\r\nMAIL FROM:<a@sender.test>\r\n"
                     b"RCPT TO:<demo@example.test>\r\nDATA\r\n" + data + b"QUIT\r\n")
        self.assertEqual(c.greeting.code, 220)
        self.assertEqual(c.reply().code, 250)  # EHLO
        self.assertEqual(c.reply().code, 250)  # MAIL
        self.assertEqual(c.reply().code, 250)  # RCPT
        self.assertEqual(c.reply().code, 354)
        self.assertEqual(c.reply().code, 250)
        self.assertEqual(c.reply().code, 221)
        self.assert_connect(off, "192.0.2.9")
        found = [m for m in self.d.messages() if b"pipelined" in m]
        self.assertEqual(len(found), 1)
        self.assertRegex(found[0], rb"\(unknown \[192\.0\.2\.9\]\)")

    def test_implicit_tls_after_header(self):
        off = self.d.log_size()
        c = self.raw("pxs", preamble=b"PROXY TCP4 192.0.2.10 127.0.0.1 5003 465\r\n",
                     tls_context=mxtest.client_tls_context())
        self.assertEqual(c.greeting.code, 220)
        self.assert_connect(off, "192.0.2.10", listener="pxs", tls="implicit")
        msg = self.deliver(c, "implicit-tls")
        self.assertRegex(msg, rb"\(unknown \[192\.0\.2\.10\]\)")

    def test_trusted_without_header_refused(self):
        off = self.d.log_size()
        c = self.raw(preamble=b"EHLO x\r\n", greeting=False)
        self.assert_refused(c, "no PROXY header (v1 or v2)", off)

    def test_v1_only_listener_refuses_v2(self):
        off = self.d.log_size()
        c = self.raw("pxs", preamble=v2_tcp4("192.0.2.7", "127.0.0.1", 5000, 25), greeting=False)
        self.assert_refused(c, "no PROXY v1 header", off, listener="pxs")

    def test_plain_listener_unaffected(self):
        # the harness's own listener has no proxy_protocol: a PROXY line is
        # just a bad command there
        c = mxtest.Client(self.d.port)
        self.addCleanup(c.close)
        self.assertEqual(c.greeting.code, 220)
        self.assertEqual(c.cmd("PROXY TCP4 192.0.2.7 127.0.0.1 5000 25").code // 100, 5)


# ------------------------------------------------------------- XCLIENT
class Xclient(unittest.TestCase):
    """XCLIENT from xclient_trusted (127.0.0.1) and from 127.0.0.9."""

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon(settings={"xclient_trusted": ["127.0.0.1", "10.0.0.0/8"]})

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def raw(self, source="127.0.0.1"):
        c = Raw(self.d.port, source=source)
        self.addCleanup(c.close)
        self.assertEqual(c.greeting.code, 220)
        return c

    def test_trusted(self):
        c = self.raw()
        r = c.ehlo("mta.example.net")
        self.assertEqual(r.code, 250)
        self.assertIn("XCLIENT NAME ADDR PORT PROTO HELO LOGIN", r.lines)
        off = self.d.log_size()
        r = c.cmd("XCLIENT ADDR=192.0.2.7 NAME=client.example.net HELO=client.example.net")
        self.assertEqual(r.code, 220, r)
        self.assertIsNotNone(self.d.wait_log(
            r"smtp xclient peer=127\.0\.0\.1 client=192\.0\.2\.7 port=\d+ "
            r"name=client\.example\.net helo=client\.example\.net login=-", off),
            self.d.log_since(off))
        self.assertEqual(c.ehlo("client.example.net").code, 250)
        r = c.transaction("a@sender.test", ["demo@example.test"],
                          mxtest.smtp_data(MSG.replace(b"proxied", b"xclient")))
        self.assertEqual(r[3].code, 250, r)
        self.assertIsNotNone(self.d.wait_log(
            r"smtp tx session=\S+ client=192\.0\.2\.7 helo=client\.example\.net ", off),
            self.d.log_since(off))
        found = [m for m in self.d.messages() if b"Subject: xclient" in m]
        self.assertEqual(len(found), 1)
        self.assertRegex(found[0], rb"Received: from client\.example\.net "
                         rb"\(client\.example\.net \[192\.0\.2\.7\]\)")
        # still the trusted MTA: it may name the next client
        r = c.cmd("XCLIENT ADDR=IPV6:2001:db8::9 NAME=[UNAVAILABLE]")
        self.assertEqual(r.code, 220, r)
        self.assertEqual(c.cmd("QUIT").code, 221)

    def test_help_lists_only_for_trusted(self):
        self.assertIn("XCLIENT", self.raw().cmd("HELP").text)
        self.assertNotIn("XCLIENT", self.raw("127.0.0.9").cmd("HELP").text)

    def test_untrusted(self):
        c = self.raw("127.0.0.9")
        r = c.ehlo("mta.example.net")
        self.assertEqual(r.code, 250)
        self.assertFalse([l for l in r.lines if l.startswith("XCLIENT")], r)
        off = self.d.log_size()
        r = c.cmd("XCLIENT ADDR=192.0.2.7 NAME=client.example.net")
        self.assertEqual(r.code, 550, r)
        self.assertEqual(r.enhanced, "5.7.0")
        self.assertNotIn("smtp xclient peer", self.d.log_since(off))
        # the session goes on as itself
        self.assertEqual(c.cmd("NOOP").code, 250)

    def test_in_transaction(self):
        c = self.raw()
        self.assertEqual(c.ehlo().code, 250)
        self.assertEqual(c.cmd("MAIL FROM:<a@sender.test>").code, 250)
        self.assertEqual(c.cmd("XCLIENT ADDR=192.0.2.7").code, 503)
        self.assertEqual(c.cmd("RCPT TO:<demo@example.test>").code, 250)
        self.assertEqual(c.cmd("XCLIENT ADDR=192.0.2.7").code, 503)
        self.assertEqual(c.cmd("RSET").code, 250)
        self.assertEqual(c.cmd("XCLIENT ADDR=192.0.2.7").code, 220)

    def test_bad_attributes(self):
        # a fresh session for each: refusals count towards the error limit
        for args in ("", "ADDR", "=x", "FOO=bar", "ADDR=192.0.2.300", "ADDR=IPV6:192.0.2.7",
                     "PORT=65536", "PORT=x", "PROTO=HTTP", "NAME=a+2", "NAME=a+zz", "NAME=a+20b"):
            with self.subTest(args=args):
                c = self.raw()
                self.assertEqual(c.ehlo().code, 250)
                off = self.d.log_size()
                r = c.cmd(("XCLIENT " + args).rstrip())
                self.assertEqual(r.code, 501, r)
                self.assertEqual(r.enhanced, "5.5.4")
                # nothing was changed by the refused one: no new greeting,
                # no xclient line, the session goes on
                self.assertEqual(c.cmd("NOOP").code, 250)
                self.assertNotIn("smtp xclient peer", self.d.log_since(off))
                c.close()


class Pop3BehindProxy(unittest.TestCase):
    """The PROXY header is the connection layer's: POP3 gets it as SMTP does."""

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon(listen_extra={"pop": {"protocol": "pop3", "proxy_protocol": "v1",
                                             "proxy_trusted": ["127.0.0.1"]}})

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def test_pop3_sees_the_client(self):
        off = self.d.log_size()
        s = socket.create_connection(("127.0.0.1", self.d.ports["pop"]), timeout=10)
        try:
            s.sendall(b"PROXY TCP4 192.0.2.9 127.0.0.1 40000 110\r\n")
            f = s.makefile("rb")
            self.assertTrue(f.readline().startswith(b"+OK"))
            s.sendall(b"QUIT\r\n")
            self.assertTrue(f.readline().startswith(b"+OK"))
        finally:
            s.close()
        self.assertIsNotNone(self.d.wait_log(
            r"pop3 connect client=192\.0\.2\.9 port=40000 listener=pop tls=no loop=\d+ "
            r"via=127\.0\.0\.1 proxy=v1", off), self.d.log_since(off))


if __name__ == "__main__":
    mxtest.main(budget=300)

#!/usr/bin/env python3
"""The ratelimit stage in the real daemon, with a real redis-server.

Each Redis here is a redis-server started by the test on a loopback port (or
a unix socket) in a temp dir, with no persistence, stopped by PID. Mail goes
in over SMTP with smtplib; limits are counted over real transactions:

- exactly N per window pass and the next gets 451 4.7.1 with a retry time,
  in process and in Redis (TCP and unix socket); the window refills;
- two mxguard instances sharing one Redis enforce one limit together;
- a concurrency limit refuses the connection over it with 421 and gives the
  slot back when a session ends;
- per-recipient and per-byte limits, shadow mode;
- Redis killed mid-run and restarted: on_error = accept goes on with the
  in-process limiter (still limiting), tempfail answers 451; the outage and
  the recovery are logged once each, and every message that got 250 is in
  the mailbox; a Redis that accepts but never answers times out the same;
- greylisting: 451, 451 again before the delay, 250 after it, and at once
  later; auto_allow lets the client's other mail through.
"""

import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
import unittest

import mxtest
from mxtest import Daemon

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class Redis:
    """A throwaway redis-server: TCP on a free loopback port, or a unix socket."""

    def __init__(self, unix=False, port=None, password=None):
        self.password = password
        self.dir = tempfile.mkdtemp(prefix="mxredis-")
        self.unix = os.path.join(self.dir, "redis.sock") if unix else None
        self.port = 0 if unix else (port or mxtest.free_port())
        self.proc = None
        self.start()

    def start(self):
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self.dir,
                "--logfile", os.path.join(self.dir, "redis.log")]
        if self.unix:
            args += ["--unixsocket", self.unix, "--unixsocketperm", "700"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited")
            try:
                if self.command("PING") == "+PONG":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer")
            time.sleep(0.05)

    def address(self):
        return "unix:" + self.unix if self.unix else "127.0.0.1:%d" % self.port

    def command(self, *args):
        """One command in RESP; the first line of the answer."""
        return self.commands([args])[-1]

    def commands(self, cmds):
        """Several commands on one connection (AUTH first when the server
        has a password); the first line of each answer."""
        if self.unix:
            s = socket.socket(socket.AF_UNIX)
            s.connect(self.unix)
        else:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        try:
            s.settimeout(5)
            if self.password:
                cmds = [("AUTH", self.password)] + list(cmds)
            answers = []
            for args in cmds:
                out = "*%d\r\n" % len(args)
                for a in args:
                    a = str(a)
                    out += "$%d\r\n%s\r\n" % (len(a.encode()), a)
                s.sendall(out.encode())
                data = b""
                while not data.endswith(b"\r\n"):
                    chunk = s.recv(1)
                    if not chunk:
                        break
                    data += chunk
                answers.append(data.rstrip(b"\r\n").decode())
                if data.startswith(b"$") and not data.startswith(b"$-1"):
                    # a bulk string: read its body and CRLF
                    n = int(data[1:].strip()) + 2
                    body = b""
                    while len(body) < n:
                        body += s.recv(n - len(body))
            return answers
        finally:
            s.close()

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def cleanup(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def section(redis=None, limits=(), greylist=None, **kw):
    out = ["ratelimit {"]
    if redis:
        out.append('\tredis = "%s"' % redis)
        out.append("\tredis_timeout = 2000")
    for k, v in kw.items():
        out.append("\t%s = %s" % (k, mxtest.conf_value(v)))
    for name, opts in limits:
        out.append("\tlimit %s {" % name)
        for k, v in opts.items():
            out.append("\t\t%s = %s" % (k, mxtest.conf_value(v)))
        out.append("\t}")
    if greylist:
        out.append("\tgreylist {")
        for k, v in greylist.items():
            out.append("\t\t%s = %s" % (k, mxtest.conf_value(v)))
        out.append("\t}")
    out.append("}")
    return "\n".join(out) + "\n"


def message(subject, size=0):
    body = "x" * size
    return ("From: <sender@example.org>\r\nTo: <demo@example.test>\r\nSubject: %s\r\n"
            "Message-ID: <%s@example.org>\r\n\r\nhello %s\r\n" % (subject, subject, body)).encode()


def send(port, subject, sender="sender@example.org", rcpt="demo@example.test", size=0,
         source=None):
    """One transaction in its own session: (code, text) of the first refusal,
    or of the end of DATA."""
    s = smtplib.SMTP("127.0.0.1", port, timeout=60,
                     source_address=(source, 0) if source else None)
    try:
        s.ehlo("client.example.org")
        code, text = s.mail(sender)
        if code != 250:
            return code, text
        code, text = s.rcpt(rcpt)
        if code != 250:
            return code, text
        try:
            code, text = s.data(message(subject, size))
        except smtplib.SMTPDataError as e:
            code, text = e.smtp_code, e.smtp_error
        return code, text
    finally:
        try:
            s.quit()
        except (smtplib.SMTPException, OSError):
            pass


def daemon(conf, **kw):
    d = Daemon(pipeline={"stages": ["ratelimit"]}, extra_conf=conf,
               limits={"connections_per_client": 100}, **kw)
    return d


def delivered(d, subject):
    return [m for m in d.messages()
            if re.search(rb"^Subject: " + re.escape(subject.encode()) + rb"\r?$", m, re.M)]


PER_CLIENT = ("per_client", {"key": "client", "phase": "mail", "count": 3, "period": 3600})


class Exact:
    """N per window: shared by the in-process and the Redis flavours."""
    redis_kind = None

    @classmethod
    def setUpClass(cls):
        cls.redis = Redis(unix=cls.redis_kind == "unix") if cls.redis_kind else None
        cls.d = daemon(section(cls.redis.address() if cls.redis else None, [PER_CLIENT]))

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()
        if cls.redis:
            cls.redis.cleanup()

    def test_exactly_n_then_451(self):
        codes = [send(self.d.port, "exact-%d" % i)[0] for i in range(3)]
        self.assertEqual(codes, [250, 250, 250])
        code, text = send(self.d.port, "exact-over")
        self.assertEqual(code, 451, text)
        self.assertRegex(text, rb"4\.7\.1 Rate limit exceeded \(per_client\), try again in \d+ seconds?")
        # the hour's interval is 1200 s: that is when the next one fits
        secs = int(re.search(rb"in (\d+) seconds?", text).group(1))
        self.assertTrue(1100 <= secs <= 1200, secs)
        self.assertEqual(delivered(self.d, "exact-over"), [])
        self.assertRegex(self.d.log(), r"ratelimit: \S+: over per_client \(key mxguard:rl:per_client:127\.0\.0\.1")
        self.assertRegex(self.d.log(), r'smtp reject .*reply="451 4\.7\.1 Rate limit exceeded '
                         r'\(per_client\).*reason=stage:ratelimit')
        # the stage runs only in the phase its limit names
        self.assertRegex(self.d.log(), r"msgid=<exact-0@example\.org> .*stages=ratelimit:ok:\d+ hits=")
        # another client address is another key
        code, text = send(self.d.port, "other-client", source="127.0.0.2")
        self.assertEqual(code, 250, text)
        if self.redis:
            self.assertRegex(self.redis.command("GET", "mxguard:rl:per_client:127.0.0.1"),
                             r"^\$\d+$")


class ExactInProcess(Exact, unittest.TestCase):
    pass


class ExactRedisTCP(Exact, unittest.TestCase):
    redis_kind = "tcp"


class ExactRedisUnix(Exact, unittest.TestCase):
    redis_kind = "unix"


class AuthAndDatabase(unittest.TestCase):
    def test_password_and_db(self):
        r = Redis(password="s3cret")
        d = daemon(section(r.address(), [PER_CLIENT], redis_password="s3cret", redis_db=3))
        try:
            self.assertEqual([send(d.port, "a-%d" % i)[0] for i in range(4)],
                             [250, 250, 250, 451])
            # in database 3, not 0
            got = r.commands([("SELECT", "3"), ("EXISTS", "mxguard:rl:per_client:127.0.0.1"),
                              ("SELECT", "0"), ("EXISTS", "mxguard:rl:per_client:127.0.0.1")])
            self.assertEqual(got[1:], ["+OK", ":1", "+OK", ":0"])
            self.assertNotIn("unavailable", d.log())
        finally:
            d.cleanup()
            r.cleanup()

    def test_wrong_password_falls_back(self):
        r = Redis(password="s3cret")
        d = daemon(section(r.address(), [PER_CLIENT], redis_password="wrong"))
        try:
            # the in-process limiter holds the line
            self.assertEqual([send(d.port, "w-%d" % i)[0] for i in range(4)],
                             [250, 250, 250, 451])
            self.assertTrue(d.wait_log(r"ratelimit: redis at \S+ unavailable \(AUTH/SELECT refused", 0),
                            d.log_tail())
            # once, not per message
            self.assertEqual(len(re.findall(r"ratelimit: redis at", d.log())), 1, d.log())
        finally:
            d.cleanup()
            r.cleanup()


class Refill(unittest.TestCase):
    def test_window_refills(self):
        r = Redis()
        d = daemon(section(r.address(), [("slow", {"key": "sender", "count": 1, "period": 2})]))
        try:
            self.assertEqual(send(d.port, "refill-1")[0], 250)
            code, text = send(d.port, "refill-2")
            self.assertEqual(code, 451, text)
            secs = int(re.search(rb"in (\d+) seconds?", text).group(1))
            self.assertTrue(1 <= secs <= 2, secs)
            time.sleep(secs + 0.3)
            code, text = send(d.port, "refill-3")
            self.assertEqual(code, 250, text)
        finally:
            d.cleanup()
            r.cleanup()


class Shared(unittest.TestCase):
    def test_two_instances_one_limit(self):
        r = Redis()
        conf = section(r.address(), [("global", {"key": "sender_domain", "count": 10,
                                                 "period": 3600})])
        a, b = daemon(conf), daemon(conf)
        try:
            ok = {a: 0, b: 0}
            for i in range(30):
                d = a if i % 2 == 0 else b
                code, text = send(d.port, "shared-%d" % i)
                self.assertIn(code, (250, 451), text)
                if code == 250:
                    ok[d] += 1
            self.assertEqual(ok[a] + ok[b], 10)
            self.assertGreater(ok[a], 0)
            self.assertGreater(ok[b], 0)
            self.assertEqual(len(a.messages()) + len(b.messages()), 10)
        finally:
            a.cleanup()
            b.cleanup()
            r.cleanup()


class Concurrency:
    redis = False

    def test_slots(self):
        r = Redis() if self.redis else None
        d = daemon(section(r.address() if r else None,
                           [("conns", {"key": "client", "phase": "connect", "type": "concurrency",
                                       "count": 2})]))
        try:
            if r:
                # the harness's start-up probes have quit; their slots go
                # back over another connection to Redis: wait until they did
                deadline = time.monotonic() + 10
                while r.command("ZCARD", "mxguard:rl:conns:127.0.0.1") != ":0":
                    self.assertLess(time.monotonic(), deadline)
                    time.sleep(0.05)
            c1, c2 = d.client(), d.client()
            self.assertEqual(c1.greeting.code, 220)
            self.assertEqual(c2.greeting.code, 220)
            c3 = d.client()
            rep = c3.greeting
            self.assertEqual(rep.code, 421, rep)
            self.assertIn("4.7.1 Too many connections (conns)", str(rep))
            self.assertTrue(c3.closed())
            # the quitting session gives its slot back
            c1.cmd("QUIT")
            self.assertTrue(c1.closed())
            deadline = time.monotonic() + 10
            while True:
                c4 = d.client()
                rep = c4.greeting
                if rep.code == 220 or time.monotonic() > deadline:
                    break
                c4.close()
                time.sleep(0.05)
            self.assertEqual(rep.code, 220, rep)
            # ... and so does one that just vanishes
            c2.close()
            c4.close()
            deadline = time.monotonic() + 10
            got = []
            while time.monotonic() < deadline:
                cs = [d.client(), d.client()]
                got = [c.greeting.code for c in cs]
                for c in cs:
                    c.close()
                if got == [220, 220]:
                    break
                time.sleep(0.05)
            self.assertEqual(got, [220, 220])
            if r:
                self.assertIn(r.command("EXISTS", "mxguard:rl:conns:127.0.0.1"), (":0", ":1"))
        finally:
            d.cleanup()
            if r:
                r.cleanup()


class ConcurrencyInProcess(Concurrency, unittest.TestCase):
    pass


class ConcurrencyRedis(Concurrency, unittest.TestCase):
    redis = True


class KeysAndModes(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.r = Redis()
        cls.d = daemon(section(cls.r.address(), [
            ("per_rcpt", {"key": "rcpt", "phase": "rcpt", "count": 2, "period": 3600}),
            ("bytes", {"key": "sender", "phase": "data", "count": 3000, "period": 3600,
                       "bytes": True}),
            ("watch", {"key": "helo", "phase": "helo", "count": 1, "period": 3600,
                       "shadow": True}),
        ]), users=("demo@example.test", "rcpt@example.test", "big@example.test"))

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()
        cls.r.cleanup()

    def test_per_recipient(self):
        codes = [send(self.d.port, "r-%d" % i, sender="r%d@example.org" % i,
                      rcpt="rcpt@example.test")[0] for i in range(3)]
        self.assertEqual(codes, [250, 250, 451])

    def test_bytes(self):
        self.assertEqual(send(self.d.port, "b-1", sender="bytes@example.org", size=1600)[0], 250)
        code, text = send(self.d.port, "b-2", sender="bytes@example.org", size=1600)
        self.assertEqual(code, 451, text)
        self.assertIn(b"(bytes)", text)

    def test_shadow_only_logs(self):
        off = self.d.log_size()
        for i in range(2):
            self.assertEqual(send(self.d.port, "s-%d" % i, sender="s%d@example.org" % i,
                                  rcpt="big@example.test")[0], 250)
        self.assertTrue(self.d.wait_log(r"ratelimit: \S+: shadow: would refuse \(watch, key "
                                        r"mxguard:rl:watch:client\.example\.org\)", off))


class Outage(unittest.TestCase):
    def run_outage(self, on_error):
        r = Redis()
        d = daemon(section(r.address(), [("per_sender", {"key": "sender", "count": 5,
                                                          "period": 3600,
                                                          "on_error": on_error})]))
        try:
            results = []
            for i in range(6):
                results.append(send(d.port, "o-%d" % i, sender="o@example.org")[0])
            self.assertEqual(results, [250] * 5 + [451])
            r.kill()
            during = []
            for i in range(8):
                during.append(send(d.port, "od-%d" % i, sender="od@example.org")[0])
            self.assertTrue(d.wait_log(r"ratelimit: redis at \S+ unavailable", 0))
            r.start()
            deadline = time.monotonic() + 30
            while not re.search(r"ratelimit: redis at \S+ is back", d.log()):
                self.assertLess(time.monotonic(), deadline, d.log_tail())
                send(d.port, "probe", sender="probe-%f@example.org" % time.monotonic())
                time.sleep(0.2)
            log = d.log()
            self.assertEqual(len(re.findall(r"ratelimit: redis at \S+ unavailable", log)), 1, log)
            self.assertEqual(len(re.findall(r"ratelimit: redis at \S+ is back", log)), 1, log)
            self.assertTrue(d.running())
            # nothing that got 250 is missing
            ok = ["o-%d" % i for i in range(5)] + ["od-%d" % i for i, c in enumerate(during)
                                                     if c == 250]
            for subj in ok:
                self.assertEqual(len(delivered(d, subj)), 1, subj)
            return during
        finally:
            d.cleanup()
            r.cleanup()

    def test_accept_falls_back_to_in_process_limits(self):
        during = self.run_outage("accept")
        # the in-process limiter still holds the line: 5 pass, then 451
        self.assertEqual(during, [250] * 5 + [451] * 3)

    def test_tempfail(self):
        during = self.run_outage("tempfail")
        self.assertEqual(during, [451] * 8)

    def test_silent_redis_times_out(self):
        # accepts connections, never answers
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        held = []
        stop = threading.Event()

        def accept():
            srv.settimeout(0.2)
            while not stop.is_set():
                try:
                    held.append(srv.accept()[0])
                except OSError:
                    pass
        t = threading.Thread(target=accept, daemon=True)
        t.start()
        d = daemon(section("127.0.0.1:%d" % srv.getsockname()[1],
                           [("per_sender", {"key": "sender", "count": 2, "period": 3600})])
                   .replace("redis_timeout = 2000", "redis_timeout = 200"))
        try:
            codes = [send(d.port, "t-%d" % i, sender="t@example.org")[0] for i in range(3)]
            self.assertEqual(codes, [250, 250, 451])
            self.assertTrue(d.wait_log(r"ratelimit: redis at \S+ unavailable \(timeout\)", 0))
        finally:
            d.cleanup()
            stop.set()
            t.join()
            for c in held:
                c.close()
            srv.close()


class Greylist:
    redis = False

    def test_greylisting(self):
        r = Redis() if self.redis else None
        d = daemon(section(r.address() if r else None,
                           greylist={"domains": ["example.test"], "delay": 3, "auto_allow": 1}))
        try:
            code, text = send(d.port, "g-1")
            self.assertEqual(code, 451, text)
            self.assertRegex(text, rb"4\.7\.1 Greylisted: please try again in [1-3] seconds?")
            code, text = send(d.port, "g-2")
            self.assertEqual(code, 451, text)
            time.sleep(3.3)
            self.assertEqual(send(d.port, "g-3")[0], 250)
            # the triplet passed: at once from now on
            self.assertEqual(send(d.port, "g-4")[0], 250)
            # auto_allow = 1: the client's other senders too
            self.assertEqual(send(d.port, "g-5", sender="other@example.org")[0], 250)
            # a client on another /24 starts over
            self.assertEqual(send(d.port, "g-6", source="127.0.1.5")[0], 451)
            self.assertEqual(len(d.messages()), 3)
        finally:
            d.cleanup()
            if r:
                r.cleanup()


class GreylistInProcess(Greylist, unittest.TestCase):
    pass


class GreylistRedis(Greylist, unittest.TestCase):
    redis = True


class Config(unittest.TestCase):
    def check(self, conf):
        d = Daemon(start=False, pipeline={"stages": ["ratelimit"]}, extra_conf=conf)
        try:
            return subprocess.run([mxtest.MXGUARD, "-t", "-c", d.conf], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
        finally:
            d.cleanup()

    def test_errors(self):
        r = self.check(section(None, [("x", {"key": "rcpt", "phase": "mail"})]))
        self.assertEqual(r.returncode, 1)
        self.assertIn('key "rcpt" is not known at phase "mail"', r.stdout)
        r = self.check(section(None, [("x", {"type": "concurrency", "key": "sender"})]))
        self.assertIn("a concurrency limit counts connections", r.stdout)
        r = self.check(section("nowhere:99", [PER_CLIENT]))
        self.assertIn('redis = "nowhere:99"', r.stdout)
        r = self.check(section(None))
        self.assertIn("nothing to do", r.stdout)
        r = self.check(section(None, [PER_CLIENT]))
        self.assertEqual(r.returncode, 0, r.stdout)


if __name__ == "__main__":
    mxtest.main(budget=300)

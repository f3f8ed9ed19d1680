"""GET /metrics (the `metrics` service) during a real run, scraped with curl,
against what the test did.

One daemon with SMTP, POP3 and a metrics listener, the rules stage (the
stock rules plus one quarantining rule of the test's), a route to a real
smtp-sink. The test scrapes, then sends N clean messages (N connections),
one relayed message, one GTUBE message (rejected), one quarantined message,
logs in over POP3 once with the right password and once with a wrong one,
scrapes again and checks the differences: connections, transactions by
verdict, delivered/relayed/quarantined, octets received, rule hits (GTUBE
and the test's rule), the rules stage's latency histogram count (the rules
stage runs at DATA only, so one observation per transaction), POP3
sessions and logins, the upstream's health gauge. A second daemon with
connections_per_client = 1 counts a refused connection by its reason; one
with the ratelimit stage on a real redis-server, stopped and started again,
shows the Redis health gauge go down and up.
The exposition format itself (HELP/TYPE, histogram buckets cumulative and
+Inf == _count) is checked on the scraped text; unknown paths are 404 and
POST is refused. `mxguardctl status` (text and --json) shows the same
numbers, and fails clearly without a metrics listener or a daemon.
"""
import os
import imaplib
import poplib
import re
import smtplib
import socket
import subprocess
import time
import unittest

import mxtest
from mxtest import Daemon
from upstreams import SmtpSink

STOCK = os.path.join(mxtest.MX_SRCDIR, "rules", "mxguard.cf")
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
QMARK = "METRICS-TEST-QUARANTINE-ME"
LINE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (-?[0-9.e+Inf]+)$')


def curl(url, *args):
    r = subprocess.run(["curl", "-sS", "--max-time", "20"] + list(args) + [url],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, timeout=30)
    return r


def parse(text):
    """{(name, labels_text): float}; asserts every line is well-formed."""
    out = {}
    types = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            types[name] = typ
            continue
        m = LINE_RE.match(line)
        if not m:
            raise AssertionError("bad exposition line: %r" % line)
        out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out, types


def message(subject, body):
    return ("From: <sender@example.org>\r\nTo: <demo@example.test>\r\nSubject: %s\r\n"
            "Message-ID: <%s@example.org>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\n"
            "%s\r\n" % (subject, subject, body)).encode()


def send(d, msg, rcpt="demo@example.test"):
    s = smtplib.SMTP("127.0.0.1", d.port, timeout=60)
    try:
        s.ehlo("client.example.org")
        s.mail("sender@example.org")
        code, text = s.rcpt(rcpt)
        if code != 250:
            return code
        return s.data(msg)[0]
    finally:
        s.quit()
        s.close()


class Metrics(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sink = SmtpSink().start()
        cls.pop_port = mxtest.free_port()
        cls.imap_port = mxtest.free_port()
        cls.d = Daemon(start=False, users=("demo@example.test",),
                       pipeline={"stages": ["rules"], "quarantine_score": 500.0,
                                 "reject_score": 900.0},
                       listen_extra={"metrics": {"protocol": "metrics"}})
        rules = os.path.join(cls.d.dir, "test.cf")
        with open(rules, "w") as f:
            f.write("body QTEST /%s/\nscore QTEST 600\n" % QMARK)
        cls.d.extra_conf = (
            'rules {\n\tfiles = {"%s", "%s"}\n}\n' % (STOCK, rules) +
            'route sink {\n\tdomains = {"relay.test"}\n\tprotocol = "smtp"\n'
            '\thosts = {"127.0.0.1:%d"}\n\tstarttls = "off"\n}\n' % cls.sink.port +
            'listen pop3 {\n\taddress = "127.0.0.1:%d"\n\tprotocol = "pop3"\n}\n'
            'pop3 {\n\tplaintext_auth = "always"\n\tauth_failure_delay = 100\n}\n' % cls.pop_port +
            'listen imap {\n\taddress = "127.0.0.1:%d"\n\tprotocol = "imap"\n}\n'
            'imap {\n\tplaintext_auth = "always"\n\tauth_failure_delay = 100\n}\n' % cls.imap_port)
        cls.d.write_config()
        cls.d.start()
        cls.url = "http://127.0.0.1:%d/metrics" % cls.d.ports["metrics"]

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()
        cls.sink.stop()

    def scrape(self):
        r = curl(self.url, "-D", "-")
        self.assertEqual(r.returncode, 0, r.stderr)
        head, _, body = r.stdout.replace("\r\n", "\n").partition("\n\n")
        self.assertIn("200", head.splitlines()[0])
        self.assertRegex(head, r"(?i)content-type: text/plain; version=0\.0\.4")
        return parse(body)

    def wait_current(self, service, want):
        """connections_current{service} reaches `want` (a closed connection
        is counted down when the server frees it, after its lingering close)."""
        deadline = time.monotonic() + 20
        while True:
            v, _ = self.scrape()
            got = v.get(("mxguard_connections_current", '{service="%s"}' % service), 0)
            if got == want or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def test_counters_follow_the_run(self):
        before, _ = self.scrape()
        # the harness's start probes may still be closing
        smtp_open = before.get(("mxguard_connections_current", '{service="smtp"}'), 0)
        if smtp_open:
            self.assertEqual(self.wait_current("smtp", 0), 0)
            before, _ = self.scrape()
        n = 3
        msgs = [message("clean%d" % i, "hello number %d" % i) for i in range(n)]
        for m in msgs:
            self.assertEqual(send(self.d, m), 250)
        relayed = message("relayed", "to the sink")
        self.assertEqual(send(self.d, relayed, rcpt="someone@relay.test"), 250)
        gtube = message("gtube", GTUBE)
        self.assertEqual(send(self.d, gtube), 550)
        held = message("held", QMARK)
        self.assertEqual(send(self.d, held), 250)
        self.assertTrue(self.d.wait_log(r"smtp tx .*result=quarantined"), self.d.log_tail())
        # POP3: one good login, one bad
        p = poplib.POP3("127.0.0.1", self.pop_port, timeout=30)
        p.user("demo@example.test")
        p.pass_(mxtest.PASSWORD)
        p.quit()
        p = poplib.POP3("127.0.0.1", self.pop_port, timeout=30)
        p.user("demo@example.test")
        with self.assertRaises(poplib.error_proto):
            p.pass_("wrong password")
        p.quit()
        # IMAP: the same, one good login and one bad
        m = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=30)
        m.login("demo@example.test", mxtest.PASSWORD)
        m.logout()
        m = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=30)
        with self.assertRaises(imaplib.IMAP4.error):
            m.login("demo@example.test", "wrong password")
        m.logout()
        self.assertEqual(self.wait_current("smtp", 0), 0)
        self.assertEqual(self.wait_current("pop3", 0), 0)
        self.assertEqual(self.wait_current("imap", 0), 0)
        after, types = self.scrape()

        def delta(name, labels=""):
            return after.get((name, labels), 0) - before.get((name, labels), 0)

        conns = n + 3
        self.assertEqual(delta("mxguard_connections_total", '{service="smtp"}'), conns)
        self.assertEqual(delta("mxguard_connections_total", '{service="pop3"}'), 2)
        self.assertEqual(delta("mxguard_smtp_transactions_total", '{verdict="deliver"}'), n + 1)
        self.assertEqual(delta("mxguard_smtp_transactions_total", '{verdict="reject"}'), 1)
        self.assertEqual(delta("mxguard_smtp_transactions_total", '{verdict="quarantine"}'), 1)
        self.assertEqual(delta("mxguard_smtp_transactions_total", '{verdict="tempfail"}'), 0)
        self.assertEqual(delta("mxguard_messages_delivered_total"), n)
        self.assertEqual(delta("mxguard_messages_relayed_total"), 1)
        self.assertEqual(delta("mxguard_messages_quarantined_total"), 1)
        sizes = sum(len(m) for m in msgs + [relayed, gtube, held])
        self.assertEqual(delta("mxguard_smtp_received_bytes_total"), sizes)
        self.assertEqual(delta("mxguard_rule_hits_total", '{rule="GTUBE"}'), 1)
        self.assertEqual(delta("mxguard_rule_hits_total", '{rule="QTEST"}'), 1)
        self.assertEqual(delta("mxguard_stage_duration_seconds_count", '{stage="rules"}'),
                         n + 3)
        self.assertEqual(delta("mxguard_stage_errors_total", '{stage="rules"}'), 0)
        self.assertEqual(delta("mxguard_pop3_sessions_total"), 2)
        self.assertEqual(delta("mxguard_pop3_logins_total", '{result="ok"}'), 1)
        self.assertEqual(delta("mxguard_pop3_logins_total", '{result="failed"}'), 1)
        self.assertEqual(delta("mxguard_connections_total", '{service="imap"}'), 2)
        self.assertEqual(delta("mxguard_imap_sessions_total"), 2)
        self.assertEqual(delta("mxguard_imap_logins_total", '{result="ok"}'), 1)
        self.assertEqual(delta("mxguard_imap_logins_total", '{result="failed"}'), 1)
        self.assertEqual(after[("mxguard_dependency_up", '{dependency="upstream:sink"}')], 1)
        self.assertEqual(after[("mxguard_rules_count", "")], before[("mxguard_rules_count", "")])
        self.assertGreater(after[("mxguard_rules_count", "")], 1)
        self.assertEqual(types["mxguard_stage_duration_seconds"], "histogram")
        self.assertEqual(types["mxguard_connections_total"], "counter")
        self.assertEqual(types["mxguard_connections_current"], "gauge")

    def test_histogram_shape(self):
        send(self.d, message("shape", "shape"))
        v, _ = self.scrape()
        buckets = sorted(((float(re.search(r'le="([^"]+)"', k[1]).group(1)), val)
                          for k, val in v.items()
                          if k[0] == "mxguard_stage_duration_seconds_bucket" and
                          'stage="rules"' in k[1]))
        self.assertGreaterEqual(len(buckets), 2)
        self.assertEqual(buckets[-1][0], float("inf"))
        counts = [c for _, c in buckets]
        self.assertEqual(counts, sorted(counts))  # cumulative
        self.assertEqual(counts[-1],
                         v[("mxguard_stage_duration_seconds_count", '{stage="rules"}')])
        self.assertGreater(v[("mxguard_stage_duration_seconds_sum", '{stage="rules"}')], 0)

    def test_info_and_start(self):
        v, _ = self.scrape()
        self.assertEqual(v[("mxguard_config_info", '{path="%s"}' % self.d.conf)], 1)
        self.assertGreater(v[("mxguard_start_time_seconds", "")], 1.7e9)
        self.assertTrue(any(k[0] == "mxguard_build_info" for k in v))

    def test_other_paths_and_methods(self):
        r = curl("http://127.0.0.1:%d/nothing" % self.d.ports["metrics"],
                 "-o", "/dev/null", "-w", "%{http_code}")
        self.assertEqual(r.stdout, "404")
        r = curl(self.url, "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-d", "x")
        self.assertNotEqual(r.stdout, "200")
        r = curl(self.url, "-I", "-o", "/dev/null", "-w", "%{http_code}")
        self.assertEqual(r.stdout, "200")
        # HEAD then GET on one connection: the HEAD has a length and no body,
        # so the next answer is read right after its headers
        s = socket.create_connection(("127.0.0.1", self.d.ports["metrics"]), timeout=10)
        try:
            s.sendall(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            got = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        finally:
            s.close()
        head, _, rest = got.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head[:60])
        self.assertRegex(head, rb"(?i)\r\ncontent-length: [1-9][0-9]*")
        self.assertTrue(rest.startswith(b"HTTP/1.1 404 "), rest[:60])
        # a flood of header bytes is cut off, the service keeps serving
        s = socket.create_connection(("127.0.0.1", self.d.ports["metrics"]), timeout=10)
        try:
            s.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
            data = s.recv(4096)
            self.assertFalse(data.startswith(b"HTTP/1.1 200"), data[:100])
        except (ConnectionResetError, BrokenPipeError):
            pass
        finally:
            s.close()
        self.scrape()


    def test_status(self):
        """mxguardctl status: the same numbers, from the config's metrics listener."""
        import json
        send(self.d, message("status", "status"))
        r = self.d.ctl("status", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        j = json.loads(r.stdout)
        v, _ = self.scrape()
        self.assertEqual(j["config"], self.d.conf)
        self.assertEqual(j["rules"]["count"], v[("mxguard_rules_count", "")])
        self.assertEqual(j["transactions"]["deliver"],
                         v[("mxguard_smtp_transactions_total", '{verdict="deliver"}')])
        self.assertEqual(j["messages"]["delivered"], v[("mxguard_messages_delivered_total", "")])
        self.assertEqual(j["stages"]["rules"]["checks"],
                         v[("mxguard_stage_duration_seconds_count", '{stage="rules"}')])
        self.assertGreaterEqual(j["uptime_seconds"], 0)
        self.assertEqual(j["virus_db"]["signatures"], 0)
        r = self.d.ctl("status")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("config:        %s" % self.d.conf, r.stdout)
        self.assertRegex(r.stdout, r"rule set: +%d rules, built 20" % j["rules"]["count"])
        self.assertRegex(r.stdout, r"stages: +rules %d checks" % j["stages"]["rules"]["checks"])
        self.assertIn("virus db:      none loaded", r.stdout)
        r = self.d.ctl("status", "--bogus")
        self.assertEqual(r.returncode, 2)


class StatusErrors(unittest.TestCase):
    def test_no_metrics_listener_and_not_running(self):
        d = Daemon()
        try:
            r = d.ctl("status")
            self.assertEqual(r.returncode, 1)
            self.assertIn('no listen section with protocol = "metrics"', r.stderr)
        finally:
            d.cleanup()
        d = Daemon(start=False, listen_extra={"metrics": {"protocol": "metrics"}})
        try:
            r = d.ctl("status")
            self.assertEqual(r.returncode, 1)
            self.assertIn("cannot connect to the metrics listener", r.stderr)
        finally:
            d.cleanup()


class RedisHealth(unittest.TestCase):
    """mxguard_dependency_*{dependency="redis"} follow a real redis-server
    that the test stops and starts again."""

    def test_redis_down_and_back(self):
        import test_ratelimit as rl
        r = rl.Redis()
        self.addCleanup(r.cleanup)
        d = Daemon(pipeline={"stages": ["ratelimit"]},
                   listen_extra={"metrics": {"protocol": "metrics"}},
                   extra_conf=rl.section(r.address(), [("per_sender", {
                       "key": "sender", "count": 1000, "period": 3600, "on_error": "accept"})]))
        self.addCleanup(d.cleanup)
        url = "http://127.0.0.1:%d/metrics" % d.ports["metrics"]
        up = ("mxguard_dependency_up", '{dependency="redis"}')
        errors = ("mxguard_dependency_errors_total", '{dependency="redis"}')
        last = ("mxguard_dependency_last_error_time_seconds", '{dependency="redis"}')

        self.assertEqual(rl.send(d.port, "before")[0], 250)
        v, _ = parse(curl(url).stdout)
        self.assertEqual(v[up], 1)
        self.assertEqual(v.get(errors, 0), 0)
        r.kill()
        self.assertEqual(rl.send(d.port, "during")[0], 250)  # on_error = accept
        self.assertTrue(d.wait_log(r"ratelimit: redis at \S+ unavailable", 0), d.log_tail())
        v, _ = parse(curl(url).stdout)
        self.assertEqual(v[up], 0)
        self.assertGreaterEqual(v[errors], 1)
        self.assertGreater(v[last], 1.7e9)
        r.start()
        deadline = time.monotonic() + 30
        while True:
            rl.send(d.port, "probe", sender="probe-%f@example.org" % time.monotonic())
            v, _ = parse(curl(url).stdout)
            if v[up] == 1:
                break
            self.assertLess(time.monotonic(), deadline, d.log_tail())
            time.sleep(0.2)
        self.assertGreaterEqual(v[errors], 1)  # the history stays


class Refused(unittest.TestCase):
    def test_refused_by_reason(self):
        d = Daemon(limits={"connections_per_client": 1},
                   listen_extra={"metrics": {"protocol": "metrics"}})
        try:
            url = "http://127.0.0.1:%d/metrics" % d.ports["metrics"]
            key = ("mxguard_connections_refused_total", '{reason="connections_per_client"}')
            before, _ = parse(curl(url).stdout)
            with d.client() as c:
                c.ehlo()
                with d.client() as c2:
                    self.assertEqual(c2.greeting.code, 421, c2.greeting)
            after, _ = parse(curl(url).stdout)
            self.assertEqual(after[key] - before[key], 1)
            self.assertEqual(after[("mxguard_connections_refused_total",
                                    '{reason="connections_max"}')], 0)
        finally:
            d.cleanup()


if __name__ == "__main__":
    mxtest.main(budget=120)

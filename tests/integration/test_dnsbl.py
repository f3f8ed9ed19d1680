#!/usr/bin/env python3
"""The dnsbl stage in the real daemon, asking a real DNS server.

unbound (tests/integration/dnszones.py) serves the test zones on a free
loopback port; the daemon's dnsbl section names it as its only resolver.
Clients connect from different loopback addresses (127.0.0.x bound before
connect, and ::1 on a second listener), so every listed and unlisted case
is a real connection whose address the daemon reads from the socket:

- an IP list: listed and unlisted IPv4 addresses, IPv6 (reversed nibbles),
  several return codes (each answer filter counted once), a range, an
  allowlist with a negative score; a list with action = reject (554 at
  connect, or 550 at RCPT with reject_at = "rcpt"); the sum of scores over
  the threshold refuses at connect;
- a zone that lists everything (redirect): disabled with a loud log line,
  never scored; a zone that never answers and one that answers SERVFAIL:
  skipped at the deadline, mail goes on;
- domain lists for the HELO name, the envelope sender and the From: domain;
  a URI list with bitmask answers over the registered domains of the URIs
  in the body (co.uk names one level deeper); names that are not valid
  host names are never asked;
- reverse DNS: forward-confirmed (in Received: and the log), a PTR that does
  not resolve back, no PTR, each scored as configured; IPv6 too;
- the cache: a second connection from the same address asks nothing
  (unbound logs every query it gets);
- on_error = "tempfail", a reload while a lookup waits, the rules stage
  seeing the rDNS, many clients at once over both loops, config errors.
"""

import os
import re
import smtplib
import socket
import subprocess
import time
import unittest

import mxtest
from mxtest import Daemon
import dnszones

RCPT = "demo@example.test"
V6_NIBBLES = ".".join("1" + "0" * 31)  # ::1 reversed


def zones():
    ptr = "127.in-addr.arpa"
    return {
        "bl.test": ("static", [
            "2.0.0.127.bl.test. 300 IN A 127.0.0.2",
            "3.0.0.127.bl.test. 300 IN A 127.0.0.2",
            "3.0.0.127.bl.test. 300 IN A 127.0.0.4",
            "4.0.0.127.bl.test. 300 IN A 127.0.0.10",
            "7.0.0.127.bl.test. 300 IN A 127.0.0.2",
            "8.0.0.127.bl.test. 300 IN A 127.0.0.2",
            "%s.bl.test. 300 IN A 127.0.0.2" % V6_NIBBLES,
        ]),
        "wl.test": ("static", ["8.0.0.127.wl.test. 300 IN A 127.0.10.2"]),
        "heavy.test": ("static", ["7.0.0.127.heavy.test. 300 IN A 127.0.0.2"]),
        "drop.test": ("static", ["6.0.0.127.drop.test. 300 IN A 127.0.0.2"]),
        "all.test": ("redirect", ["all.test. 300 IN A 127.0.0.2"]),
        "dbl.test": ("static", [
            "evil-helo.test.dbl.test. 300 IN A 127.0.1.2",
            "spam-sender.test.dbl.test. 300 IN A 127.0.1.2",
            "bad-from.test.dbl.test. 300 IN A 127.0.1.2",
            # listed, but never asked: "_" is no host name character
            "under_score.test.dbl.test. 300 IN A 127.0.1.2",
        ]),
        "uribl.test": ("static", [
            "spamvertised.test.uribl.test. 300 IN A 127.0.0.4",
            "evil.co.uk.uribl.test. 300 IN A 127.0.0.4",
            "grey.test.uribl.test. 300 IN A 127.0.0.8",
        ]),
        ptr: ("static", [
            "5.0.0.127.in-addr.arpa. 300 IN PTR ok5.rdns.test.",
            "11.0.0.127.in-addr.arpa. 300 IN PTR liar.rdns.test.",
        ]),
        "%s.ip6.arpa" % V6_NIBBLES: ("static", [
            "%s.ip6.arpa. 300 IN PTR v6host.rdns.test." % V6_NIBBLES,
        ]),
        "rdns.test": ("static", [
            "ok5.rdns.test. 300 IN A 127.0.0.5",
            "liar.rdns.test. 300 IN A 127.0.0.99",
            "v6host.rdns.test. 300 IN AAAA ::1",
        ]),
    }


LISTS = """
	list "testbl" {
		zone = "bl.test"
		type = "ip"
		answers = {"127.0.0.2=3", "127.0.0.4=2", "127.0.0.10-127.0.0.11=1"}
	}
	list "testwl" {
		zone = "wl.test"
		type = "ip"
		score = -5
	}
	list "heavy" {
		zone = "heavy.test"
		score = 18
	}
	list "dropbl" {
		zone = "drop.test"
		action = "reject"
		reject_text = "Service unavailable; client [%a] blocked using %l"
	}
	list "everything" {
		zone = "all.test"
		score = 100
	}
	list "helobl" {
		zone = "dbl.test"
		type = "helo"
		score = 2
	}
	list "senderbl" {
		zone = "dbl.test"
		type = "sender"
		score = 2.5
	}
	list "frombl" {
		zone = "dbl.test"
		type = "from"
		score = 1.25
	}
	list "uribl" {
		zone = "uribl.test"
		type = "uri"
		answers = {"&0x04=4", "&0x08=0.5"}
	}
"""


def dnsbl_conf(port, extra="", lists=LISTS):
    return ("dnsbl {\n\tresolvers = {\"127.0.0.1:%d\"}\n\tdns_timeout = 3000\n"
            "\tthreshold = 20\n\trdns_none_score = 0.5\n\trdns_unconfirmed_score = 1.5\n"
            "%s%s}\n" % (port, extra, lists))


def message(subject, body="Hello.\r\n", sender="<someone@example.org>"):
    return ("From: %s\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s@example.org>\r\n"
            "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\n%s" % (
                sender, RCPT, subject, subject.replace(" ", "-"), body)).encode()


class DnsblCase(unittest.TestCase):
    dns = None
    d = None
    extra = ""
    settings = {}
    stages = ["dnsbl"]

    @classmethod
    def more_conf(cls):
        return ""

    @classmethod
    def setUpClass(cls):
        cls.dns = dnszones.Unbound(zones(), blackhole_zones=["slow.test"],
                                   servfail_zones=["broken.test"], log_queries=True)
        try:
            cls.port6 = mxtest.free_port()
            conf = dnsbl_conf(cls.dns.port, cls.extra, cls.lists())
            conf += 'listen smtp6 {\n\taddress = "[::1]:%d"\n\ttls = "none"\n}\n' % cls.port6
            conf += cls.more_conf()
            cls.d = Daemon(settings=dict(cls.settings),
                           pipeline={"stages": list(cls.stages), "tag_score": 5.0},
                           extra_conf=conf)
        except Exception:
            cls.dns.stop()
            raise

    @classmethod
    def lists(cls):
        return LISTS

    @classmethod
    def tearDownClass(cls):
        if cls.d:
            cls.d.cleanup()
        if cls.dns:
            cls.dns.stop()

    def send(self, src, subject, body="Hello.\r\n", helo="client.example.org",
             sender="someone@example.org", from_hdr=None):
        """One message from source address src; returns the queue reply."""
        if src == "::1":
            s = smtplib.SMTP("::1", self.port6, timeout=30)
        else:
            s = smtplib.SMTP("127.0.0.1", self.d.port, timeout=30, source_address=(src, 0))
        try:
            self.assertEqual(s.ehlo(helo)[0], 250)
            self.assertEqual(s.mail(sender)[0], 250)
            self.assertEqual(s.rcpt(RCPT)[0], 250)
            code, text = s.data(message(subject, body, from_hdr or "<%s>" % sender))
            self.assertEqual(code, 250, text)
            return text.decode()
        finally:
            try:
                s.quit()
            except smtplib.SMTPException:
                pass

    def stored(self, subject):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for data in self.d.messages():
                if (b"Subject: " + subject.encode() + b"\n") in data:
                    return data
            time.sleep(0.05)
        self.fail("no stored message with subject %r" % subject)

    def tx_line(self, subject):
        msgid = "<%s@example.org>" % subject.replace(" ", "-")
        line = self.d.wait_log(r"smtp tx .*msgid=%s .*" % re.escape(msgid))
        self.assertIsNotNone(line, self.d.log_tail())
        return line.group(0) if hasattr(line, "group") else line

    def hits(self, line):
        return set(re.search(r" hits=(\S+)", line).group(1).split(","))


class TestIpLists(DnsblCase):

    def test_unlisted_confirmed_rdns(self):
        self.send("127.0.0.5", "clean five")
        data = self.stored("clean five")
        self.assertRegex(data, rb"Received: from client\.example\.org "
                               rb"\(ok5\.rdns\.test \[127\.0\.0\.5\]\)\n")
        self.assertIn(b"X-Spam-Score: 0.0\n", data)
        self.assertNotIn(b"X-Spam-DNSBL", data)
        line = self.tx_line("clean five")
        self.assertIn(" hits=- ", line)
        self.assertIn(" rdns=ok5.rdns.test rdns_status=confirmed", line)

    def test_listed_v4(self):
        self.send("127.0.0.2", "listed two")
        data = self.stored("listed two")
        # no PTR: "unknown", and RDNS_NONE's 0.5
        self.assertRegex(data, rb"Received: from client\.example\.org \(unknown \[127\.0\.0\.2\]\)")
        self.assertIn(b"X-Spam-Score: 3.5\n", data)
        self.assertIn(b"X-Spam-DNSBL: testbl=127.0.0.2 [127.0.0.2], RDNS_NONE=no PTR record\n",
                      data)
        line = self.tx_line("listed two")
        self.assertEqual(self.hits(line), {"testbl", "RDNS_NONE"})
        self.assertIn(" rdns=- rdns_status=none", line)
        self.assertRegex(line, r"stages=dnsbl:hit:\d+")

    def test_several_return_codes(self):
        # 127.0.0.2 and 127.0.0.4: two filters, 3 + 2, and RDNS_NONE: tagged
        self.send("127.0.0.3", "listed three")
        data = self.stored("listed three")
        self.assertIn(b"X-Spam-Score: 5.5\n", data)
        self.assertIn(b"X-Spam-Flag: YES\n", data)
        self.assertRegex(data, rb"X-Spam-Status: Yes, score=5\.5 tests=testbl,RDNS_NONE")
        self.assertIn(b"testbl=127.0.0.2,127.0.0.4 [127.0.0.3]", data)

    def test_range(self):
        self.send("127.0.0.4", "listed four")
        self.assertIn(b"X-Spam-Score: 1.5\n", self.stored("listed four"))

    def test_allowlist(self):
        # testbl 3, testwl -5, RDNS_NONE 0.5
        self.send("127.0.0.8", "allowed eight")
        data = self.stored("allowed eight")
        self.assertIn(b"X-Spam-Score: -1.5\n", data)
        self.assertEqual(self.hits(self.tx_line("allowed eight")),
                         {"testbl", "testwl", "RDNS_NONE"})

    def test_ipv6(self):
        self.send("::1", "listed six")
        data = self.stored("listed six")
        self.assertRegex(data, rb"Received: from client\.example\.org "
                               rb"\(v6host\.rdns\.test \[IPv6:::1\]\)\n")
        self.assertIn(b"X-Spam-Score: 3.0\n", data)
        line = self.tx_line("listed six")
        self.assertEqual(self.hits(line), {"testbl"})
        self.assertIn(" rdns=v6host.rdns.test rdns_status=confirmed", line)

    def test_rdns_unconfirmed(self):
        self.send("127.0.0.11", "liar eleven")
        data = self.stored("liar eleven")
        self.assertRegex(data, rb"\(unknown \[127\.0\.0\.11\]\)")
        self.assertIn(b"X-Spam-Score: 1.5\n", data)
        line = self.tx_line("liar eleven")
        self.assertEqual(self.hits(line), {"RDNS_UNCONFIRMED"})
        self.assertIn(" rdns=liar.rdns.test rdns_status=unconfirmed", line)

    def test_reject_list_at_connect(self):
        off = self.d.log_size()
        s = socket.socket()
        s.bind(("127.0.0.6", 0))
        s.settimeout(30)
        s.connect(("127.0.0.1", self.d.port))
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(1024)
            if not chunk:
                break
            data += chunk
        self.assertEqual(data, b"554 5.7.1 Service unavailable; client [127.0.0.6] blocked "
                               b"using dropbl\r\n")
        self.assertEqual(s.recv(1024), b"")  # closed
        s.close()
        self.assertIsNotNone(self.d.wait_log(r"smtp reject client=127\.0\.0\.6 .*reason=stage:dnsbl",
                                             off))

    def test_threshold_at_connect(self):
        # heavy 18 + testbl 3 + RDNS_NONE 0.5 >= threshold 20
        with self.assertRaises(smtplib.SMTPConnectError) as cm:
            smtplib.SMTP("127.0.0.1", self.d.port, timeout=30, source_address=("127.0.0.7", 0))
        self.assertEqual(cm.exception.smtp_code, 554)
        self.assertIn(b"127.0.0.7 blocked using", cm.exception.smtp_error)
        for name in (b"heavy", b"testbl"):
            self.assertIn(name, cm.exception.smtp_error)

    def test_everything_zone_disabled(self):
        self.send("127.0.0.9", "nine")
        self.assertIsNotNone(self.d.wait_log(
            r"dnsbl: list everything \(zone all\.test\) answers \"listed\" for its test point "
            r"127\.0\.0\.1.*DISABLED"))
        self.assertEqual(self.hits(self.tx_line("nine")), {"RDNS_NONE"})

    def test_cache(self):
        # the first connection from .12 asks, the second finds the answer
        # (NXDOMAIN, kept negative_ttl) in its loop's cache: threads = 1
        self.send("127.0.0.12", "twelve one")
        self.send("127.0.0.12", "twelve two")
        self.stored("twelve two")
        # evdns asks in mixed case (the 0x20 hack)
        asked = re.findall(r"12\.0\.0\.127\.bl\.test\. A IN", self.dns.log(), re.I)
        self.assertEqual(len(asked), 1, self.dns.log())


TestIpLists.settings = {"threads": 1}


class TestParallel(DnsblCase):
    """Clients from many addresses at once, over both loops: every lookup
    finds its own connection (the answers differ per address), the lists'
    shared health and each loop's cache hold up."""

    def test_parallel(self):
        import threading
        want = {"127.0.0.2": b"3.5", "127.0.0.3": b"5.5", "127.0.0.4": b"1.5",
                "127.0.0.5": b"0.0", "127.0.0.8": b"-1.5", "127.0.0.11": b"1.5",
                "127.0.0.9": b"0.5", "127.0.0.12": b"0.5"}
        errors = []

        def client(src, n):
            try:
                self.send(src, "par %s %d" % (src, n))
            except Exception as e:  # reported below
                errors.append("%s: %r" % (src, e))

        threads = [threading.Thread(target=client, args=(src, n))
                   for n in range(3) for src in want]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        for src, score in want.items():
            for n in range(3):
                data = self.stored("par %s %d" % (src, n))
                self.assertIn(b"X-Spam-Score: " + score + b"\n", data, src)


class TestNameLists(DnsblCase):

    def test_helo(self):
        self.send("127.0.0.5", "helo listed", helo="Evil-Helo.test")
        line = self.tx_line("helo listed")
        self.assertEqual(self.hits(line), {"helobl"})
        data = self.stored("helo listed")
        self.assertRegex(data, rb"X-Spam-DNSBL: helobl=127\.0\.1\.2 \[evil-helo\.test\]")

    def test_invalid_names_not_asked(self):
        # the session takes the HELO name as it is; the From: header is the
        # sender's to write: neither may make a query
        self.send("127.0.0.5", "bad names", helo="under_score.test",
                  from_hdr="<x@under_score.test>")
        self.assertEqual(self.hits(self.tx_line("bad names")), {"-"})
        self.assertNotIn("under_score", self.dns.log().lower())

    def test_sender(self):
        self.send("127.0.0.5", "sender listed", sender="x@spam-sender.test",
                  from_hdr="<someone@example.org>")
        self.assertEqual(self.hits(self.tx_line("sender listed")), {"senderbl"})

    def test_from_and_uris(self):
        body = ("Buy now http://www.spamvertised.test/offer and\r\n"
                "http://shop.evil.co.uk/x or http://grey.test/ and http://clean.test/\r\n")
        self.send("127.0.0.5", "uris listed", body=body,
                  from_hdr="Bad Sender <someone@bad-from.test>")
        line = self.tx_line("uris listed")
        self.assertEqual(self.hits(line), {"frombl", "uribl"})
        data = self.stored("uris listed")
        # 4 for the worst URI domain (each list counts once), from 1.25
        self.assertIn(b"X-Spam-Score: 5.2\n", data)
        self.assertRegex(data, rb"uribl=127\.0\.0\.4 \[(spamvertised\.test|evil\.co\.uk)\]")
        self.assertRegex(data, rb"frombl=127\.0\.1\.2 \[bad-from\.test\]")


class TestFailures(DnsblCase):
    """A list that never answers and one that answers SERVFAIL: skipped at
    the deadline (dns_timeout 3000 ms here), the mail goes on."""

    @classmethod
    def lists(cls):
        return LISTS + """
	list "slow" {
		zone = "slow.test"
		score = 100
	}
	list "broken" {
		zone = "broken.test"
		score = 100
	}
"""

    def test_skipped(self):
        off = self.d.log_size()
        self.send("127.0.0.2", "failures two")
        data = self.stored("failures two")
        self.assertIn(b"X-Spam-Score: 3.5\n", data)
        line = self.tx_line("failures two")
        self.assertEqual(self.hits(line), {"testbl", "RDNS_NONE"})
        self.assertRegex(line, r"stages=dnsbl:hit:")
        skipped = self.d.wait_log(r"dnsbl skipped phase=connect lists=(\S+)", off)
        self.assertIsNotNone(skipped)
        lists = set(skipped.group(1).split(","))
        self.assertEqual(lists, {"slow:timeout", "broken:error"})


    def test_reload_while_asking(self):
        """SIGHUP while a connection waits on the list that never answers:
        the connection finishes on the old pipeline (its greeting after
        the deadline), the old loop state (resolver, queries in flight) is
        freed on its loop, the next connection uses the new one; with the
        sanitizer build, any leak or use after free fails the file."""
        import signal
        off = self.d.log_size()
        s = socket.socket()
        s.bind(("127.0.0.13", 0))
        s.settimeout(30)
        s.connect(("127.0.0.1", self.d.port))
        self.assertIsNotNone(self.d.wait_log(r"connect client=127\.0\.0\.13 ", off))
        self.d.signal(signal.SIGHUP)
        self.assertIsNotNone(self.d.wait_log(r"reloaded configuration from", off, timeout=30),
                             self.d.log_tail())
        greeting = b""
        while not greeting.endswith(b"\n"):
            chunk = s.recv(1024)
            if not chunk:
                break
            greeting += chunk
        self.assertTrue(greeting.startswith(b"220 "), greeting)
        s.sendall(b"QUIT\r\n")
        s.recv(1024)
        s.close()
        self.send("127.0.0.2", "after reload")
        self.assertIn(b"X-Spam-Score: 3.5\n", self.stored("after reload"))


class TestFailuresTempfail(DnsblCase):
    """on_error = "tempfail": a list that did not answer defers the client
    (a HELO list here, so that the harness's own probe at connect passes)."""
    extra = '\ton_error = "tempfail"\n'

    @classmethod
    def lists(cls):
        return """
	list "testbl" {
		zone = "bl.test"
	}
	list "slowhelo" {
		zone = "slow.test"
		type = "helo"
	}
"""

    def test_tempfail(self):
        s = smtplib.SMTP("127.0.0.1", self.d.port, timeout=30, source_address=("127.0.0.2", 0))
        try:
            code, text = s.ehlo("client.example.org")
            self.assertEqual(code, 451)
            self.assertIn(b"dnsbl temporarily unavailable", text)
        finally:
            s.close()


class TestRulesSeeRdns(DnsblCase):
    """The rdns the dnsbl stage found at connect reaches the rules stage at
    DATA (filter_msg.client_rdns): `rdns NAME /re/` matches the confirmed
    name, and "" when there is none."""
    stages = ["dnsbl", "rules"]

    @classmethod
    def more_conf(cls):
        path = os.path.join(cls.dns.dir, "rdns.cf")
        with open(path, "w") as f:
            f.write("rdns RDNS_OK5 /^ok5\\.rdns\\.test$/\nscore RDNS_OK5 0.25\n"
                    "rdns RDNS_EMPTY /^$/\nscore RDNS_EMPTY 0.75\n")
        return 'rules {\n\tfiles = {"%s"}\n}\n' % path

    def test_rules_see_rdns(self):
        self.send("127.0.0.5", "rules five")
        self.assertEqual(self.hits(self.tx_line("rules five")), {"RDNS_OK5"})
        # unconfirmed: no name for the rules
        self.send("127.0.0.11", "rules eleven")
        self.assertEqual(self.hits(self.tx_line("rules eleven")),
                         {"RDNS_UNCONFIRMED", "RDNS_EMPTY"})


class TestRejectAtRcpt(DnsblCase):
    extra = '\treject_at = "rcpt"\n'

    def test_reject_at_rcpt(self):
        s = smtplib.SMTP("127.0.0.1", self.d.port, timeout=30, source_address=("127.0.0.6", 0))
        try:
            s.ehlo("client.example.org")
            s.mail("someone@example.org")
            code, text = s.rcpt(RCPT)
            self.assertEqual(code, 550)
            self.assertEqual(text, b"5.7.1 Service unavailable; client [127.0.0.6] blocked "
                                   b"using dropbl")
        finally:
            s.quit()

    def test_threshold_at_rcpt(self):
        s = smtplib.SMTP("127.0.0.1", self.d.port, timeout=30, source_address=("127.0.0.7", 0))
        try:
            s.ehlo("client.example.org")
            s.mail("someone@example.org")
            code, text = s.rcpt(RCPT)
            self.assertEqual(code, 550)
            self.assertIn(b"heavy", text)
        finally:
            s.quit()


class TestConfigErrors(unittest.TestCase):
    """A dnsbl section that cannot work fails `mxguard -t` with the reason."""

    def check(self, section, want):
        d = Daemon(pipeline={"stages": ["dnsbl"]}, extra_conf=section, start=False)
        try:
            r = subprocess.run([mxtest.MXGUARD, "-t", "-c", d.conf], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, universal_newlines=True,
                               timeout=30, cwd=d.dir)
            self.assertNotEqual(r.returncode, 0, r.stdout)
            self.assertIn(want, r.stdout)
        finally:
            d.cleanup()

    def test_errors(self):
        self.check('dnsbl {\n\tlist "x" {\n\t\tzone = "bad_zone.test"\n\t}\n}\n',
                   'list "x": zone "bad_zone.test" is not a domain name')
        self.check('dnsbl {\n\tlist "x" {\n\t\tzone = "bl.test"\n\t\ttype = "asn"\n\t}\n}\n',
                   "type must be ip, helo, sender, from or uri")
        self.check('dnsbl {\n\tlist "x" {\n\t\tzone = "bl.test"\n'
                   '\t\tanswers = {"127.0.0.9-127.0.0.2"}\n\t}\n}\n',
                   'answer filter "127.0.0.9-127.0.0.2"')
        self.check('dnsbl {\n\tresolvers = {"dns.example"}\n}\n',
                   'resolver "dns.example" is not ADDRESS')
        self.check('dnsbl {\n\tdns_timeout = 5000\n\ttimeout = 4000\n}\n',
                   "dns_timeout (5000 ms) must be below the stage's timeout (4000 ms)")
        self.check('dnsbl {\n\treject_at = "data"\n}\n', "reject_at must be connect or rcpt")


if __name__ == "__main__":
    mxtest.main(budget=240)

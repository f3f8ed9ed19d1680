"""Milter mode: mxguard's pipeline behind a real Postfix.

A throwaway Postfix (upstreams.Postfix, Debian's package) listens on a free
loopback port with smtpd_milters pointing at mxguard's `milter` listener;
the same mxguard also has its SMTP listener (proxy mode), so each case sends
the same message both ways and checks the same outcome side by side:

- GTUBE (rules stage, the stock rule file) refused with our reply;
- EICAR (clamav stage, a database the test writes) refused with ours;
- a clean message delivered by Postfix with our headers (X-Spam-Score,
  X-Virus-Scanned), a sender's forged X-Spam-Flag removed;
- a rate-limited client (ratelimit stage, in-process) tempfailed at MAIL:
  the client is named with XCLIENT, to Postfix and to mxguard alike;
- a DNS-listed client (dnsbl stage, unbound from dnszones.py) refused;
- SIGHUP while a Postfix session holds its milter connection: the reload
  happens, the session goes on, later sessions use the new rules;
- mxguard stopped while Postfix runs: Postfix follows milter_default_action
  (tempfail: 451 4.7.1; accept: delivered without our headers).
"""

import os
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
import unittest

import mxtest
from mxtest import Daemon
import upstreams
import dnszones

STOCK = os.path.join(mxtest.MX_SRCDIR, "rules", "mxguard.cf")
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_SIG = "MxGuard.Test.EICAR"
RCPT = "demo@example.test"


def message(subject, body="Hello.", extra=b""):
    if isinstance(body, str):
        body = body.encode()
    return (b"From: <sender@example.org>\r\nTo: <" + RCPT.encode() + b">\r\n"
            b"Subject: " + subject.encode() + b"\r\nMessage-ID: <" + subject.encode() +
            b"@example.org>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n" + extra +
            b"\r\n" + body + b"\r\n")


def send(port, msg, xclient=None, helo="client.example.org"):
    """One transaction: (stage, code, text) of the first refusal, or of the
    end of DATA (stage "data")."""
    s = smtplib.SMTP("127.0.0.1", port, timeout=60)
    try:
        code, text = s.ehlo(helo)
        if code != 250:
            return "connect", code, text
        if xclient:
            code, text = s.docmd("XCLIENT", xclient)
            if code != 220:
                return "xclient", code, text
            code, text = s.ehlo(helo)
            if code != 250:
                return "connect", code, text
        code, text = s.mail("sender@example.org")
        if code != 250:
            return "mail", code, text
        code, text = s.rcpt(RCPT)
        if code != 250:
            return "rcpt", code, text
        code, text = s.data(msg)
        return "data", code, text
    finally:
        try:
            s.quit()
        except (smtplib.SMTPException, OSError):
            pass


def subject_of(subject):
    return lambda m: re.search(rb"^Subject: " + re.escape(subject.encode()) + rb"\r?$", m,
                               re.M) is not None


def mx_delivered(d, subject):
    return [m for m in d.messages() if subject_of(subject)(m)]


def milter_postfix(port, default_action="tempfail", extra=None):
    cf = {
        "smtpd_milters": "inet:127.0.0.1:%d" % port,
        "non_smtpd_milters": "",
        "milter_protocol": "6",
        "milter_default_action": default_action,
        "milter_connect_timeout": "10s",
        "milter_command_timeout": "30s",
        "milter_content_timeout": "60s",
    }
    cf.update(extra or {})
    return upstreams.Postfix(domains={"example.test": ["demo"]}, extra_main_cf=cf)


def write_db(path):
    os.makedirs(path, exist_ok=True)
    tmp = os.path.join(path, ".tmp")
    with open(tmp, "w") as f:
        f.write("%s:0:*:%s\n" % (EICAR_SIG, EICAR.hex()))
    os.rename(tmp, os.path.join(path, "mxguard-test.ndb"))


class SideBySide(unittest.TestCase):
    """One mxguard (smtp + milter listeners), one Postfix in front of it."""
    stages = ["rules", "clamav"]
    pipeline = {}
    extra_settings = {}
    extra_rules = ""  # a rule file of the class's own, beside the stock one

    @classmethod
    def more_conf(cls):
        return ""

    @classmethod
    def setUpClass(cls):
        cls.pf = None
        settings = {"xclient_trusted": ["127.0.0.0/8"]}
        settings.update(cls.extra_settings)
        pipeline = {"stages": cls.stages}
        pipeline.update(cls.pipeline)
        cls.d = Daemon(start=False, pipeline=pipeline, settings=settings,
                       listen_extra={"milter": {"protocol": "milter"}})
        try:
            cls.db = os.path.join(cls.d.dir, "clamdb")
            write_db(cls.db)
            files = ['"%s"' % STOCK]
            if cls.extra_rules:
                path = os.path.join(cls.d.dir, "extra.cf")
                with open(path, "w") as f:
                    f.write(cls.extra_rules)
                files.append('"%s"' % path)
            cls.d.extra_conf = ('rules {\n\tfiles = {%s}\n}\n' % ", ".join(files) +
                                'clamav {\n\tdatabase_dir = "%s"\n}\n' % cls.db +
                                cls.more_conf())
            cls.d.write_config()
            cls.d.start()
            # Postfix's own macro lists empty: what mxguard reads comes
            # from the list it asked for in the negotiation (smfi_setsymlist)
            cls.pf = milter_postfix(cls.d.ports["milter"], extra={
                "milter_connect_macros": "", "milter_helo_macros": "",
                "milter_mail_macros": "", "milter_end_of_data_macros": ""}).start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.pf:
            cls.pf.stop()
        cls.d.cleanup()

    def both(self, msg, xclient_proxy=None, xclient_milter=None):
        proxy = send(self.d.port, msg, xclient=xclient_proxy)
        milter = send(self.pf.port, msg, xclient=xclient_milter)
        return proxy, milter

    def assert_same_refusal(self, proxy, milter, stage, code, enhanced, text_re):
        for name, r in (("proxy", proxy), ("milter", milter)):
            self.assertEqual(r[0], stage, "%s: %r" % (name, r))
            self.assertEqual(r[1], code, "%s: %r" % (name, r))
            self.assertTrue(r[2].startswith(enhanced.encode() + b" "), "%s: %r" % (name, r))
            self.assertRegex(r[2], text_re, name)
        # our reply word for word: Postfix passes the milter's on
        self.assertEqual(proxy[2], milter[2])


class ContentVerdicts(SideBySide):
    # test_reload_while_serving writes a rule here before its SIGHUP
    extra_rules = "# no rule until the reload test\n"
    def test_gtube_rejected_with_our_text(self):
        proxy, milter = self.both(message("gtube", GTUBE))
        self.assert_same_refusal(proxy, milter, "data", 550, "5.7.1", rb"(?i)spam|reject")
        self.assertRegex(self.d.log(), r"milter tx .*verdict=\w+ action=reject .*hits=GTUBE")
        self.assertEqual([m for m in self.pf.maildir_messages("demo", "example.test")
                          if subject_of("gtube")(m)], [])
        self.assertEqual(mx_delivered(self.d, "gtube"), [])

    def test_eicar_rejected(self):
        proxy, milter = self.both(message("eicar", EICAR))
        self.assert_same_refusal(proxy, milter, "data", 554, "5.7.1",
                                 re.escape(EICAR_SIG.encode()))
        self.assertRegex(self.d.log(), r"milter tx .*stages=.*clamav:.*result=rejected")

    def test_clean_delivered_with_our_headers(self):
        forged = (b"X-Spam-Flag: YES\r\nX-Spam-Score: 99.0\r\n"
                  b"Authentication-Results: mx.example.test; spf=pass\r\n"
                  b"Authentication-Results: other.example; spf=fail\r\n")
        proxy, milter = self.both(message("clean-side", "Just a note.", extra=forged))
        self.assertEqual(proxy[:2], ("data", 250), proxy)
        self.assertEqual(milter[:2], ("data", 250), milter)
        got = self.pf.wait_for_messages("demo", "example.test", 1,
                                        match=subject_of("clean-side"))
        m = got[0]
        stored = mx_delivered(self.d, "clean-side")
        self.assertEqual(len(stored), 1)
        hdr = m.split(b"\n\n", 1)[0].replace(b"\r\n", b"\n")
        mine = stored[0].split(b"\n\n", 1)[0].replace(b"\r\n", b"\n")
        for h in (rb"^X-Spam-Score: 0\.0$", rb"^X-Virus-Scanned: "):
            self.assertRegex(hdr, re.compile(h, re.M))
            self.assertRegex(mine, re.compile(h, re.M))
        # the sender's own verdict is gone in both modes
        self.assertNotRegex(hdr, re.compile(rb"^X-Spam-Flag:", re.M))
        self.assertNotRegex(mine, re.compile(rb"^X-Spam-Flag:", re.M))
        self.assertEqual(len(re.findall(rb"^X-Spam-Score:", hdr, re.M)), 1)
        # an Authentication-Results claiming our name goes, another stays
        for h in (hdr, mine):
            self.assertNotIn(b"Authentication-Results: mx.example.test", h)
            self.assertIn(b"Authentication-Results: other.example; spf=fail", h)
        # Postfix's queue id ({i}, asked for with smfi_setsymlist) is in
        # the milter's log line
        self.assertRegex(self.d.log(), r"milter tx .*queue_id=[0-9A-F]+ client=127\.0\.0\.1 "
                         r"helo=client\.example\.org from=<sender@example\.org> nrcpt=1 "
                         r".*result=accepted")

    def test_reload_while_serving(self):
        """SIGHUP with a Postfix session (and its milter connection) open:
        the daemon reloads, the open session goes on with the rules it
        connected with, a new session (milter and proxy alike) gets the
        new ones, and the whole daemon serves on."""
        marker = "reload-marker-7"
        s = smtplib.SMTP("127.0.0.1", self.pf.port, timeout=60)
        try:
            self.assertEqual(s.ehlo("client.example.org")[0], 250)
            # Postfix greets only after the milter answered its connect
            with open(os.path.join(self.d.dir, "extra.cf"), "w") as f:
                f.write('body RELOADED /%s/\naction RELOADED reject '
                        '"550 5.7.1 The reloaded rule says no"\n' % marker)
            off = self.d.log_size()
            self.d.signal(signal.SIGHUP)
            self.d.wait_log(r"reloaded configuration", offset=off)
            self.assertEqual(s.mail("sender@example.org")[0], 250)
            self.assertEqual(s.rcpt(RCPT)[0], 250)
            code, text = s.data(message("during-reload", marker))
            self.assertEqual(code, 250, text)
            # and the old rules still work in it
            self.assertEqual(s.mail("sender@example.org")[0], 250)
            self.assertEqual(s.rcpt(RCPT)[0], 250)
            code, text = s.data(message("during-reload-gtube", GTUBE))
            self.assertEqual(code, 550, text)
        finally:
            s.quit()
        self.assertTrue(self.d.running())
        proxy, milter = self.both(message("after-reload", marker))
        self.assert_same_refusal(proxy, milter, "data", 550, "5.7.1",
                                 rb"The reloaded rule says no")
        proxy, milter = self.both(message("after-reload-clean", "fine"))
        self.assertEqual(proxy[:2], ("data", 250), proxy)
        self.assertEqual(milter[:2], ("data", 250), milter)
        self.pf.wait_for_messages("demo", "example.test", 1,
                                  match=subject_of("after-reload-clean"))


class Quarantined(SideBySide):
    """quarantine_score under GTUBE's 1000: the proxy keeps it in our
    quarantine store, the milter has Postfix hold it (smfi_quarantine)."""
    stages = ["rules"]
    pipeline = {"quarantine_score": 500.0, "reject_score": 5000.0}
    extra_rules = "body DROPME /drop-me-please/\naction DROPME discard\n"

    def test_discarded(self):
        proxy, milter = self.both(message("dropped", "drop-me-please"))
        self.assertEqual(proxy[:2], ("data", 250), proxy)
        self.assertEqual(milter[:2], ("data", 250), milter)
        self.assertRegex(self.d.log(), r"smtp tx .*action=discard .*result=discarded")
        self.assertRegex(self.d.log(), r"milter tx .*action=discard .*result=discarded")
        # Postfix drops it (SMFIS_DISCARD), mxguard's store never had it
        self.pf.wait_for_log(r"milter-discard: END-OF-MESSAGE from ")
        self.assertEqual(mx_delivered(self.d, "dropped"), [])
        self.assertEqual([m for m in self.pf.maildir_messages("demo", "example.test")
                          if subject_of("dropped")(m)], [])

    def test_gtube_held(self):
        proxy, milter = self.both(message("held", GTUBE))
        self.assertEqual(proxy[:2], ("data", 250), proxy)
        self.assertEqual(milter[:2], ("data", 250), milter)
        self.assertRegex(self.d.log(), r"smtp tx .*action=quarantine .*quarantine=[0-9A-Z]{16}")
        self.assertRegex(self.d.log(), r"milter tx .*action=quarantine .*result=quarantined")
        held = os.path.join(self.pf.queue_dir, "hold")
        deadline = time.monotonic() + 20
        while not os.listdir(held) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(len(os.listdir(held)), 1)
        self.pf.wait_for_log(r"milter-hold: END-OF-MESSAGE from .*milter triggers HOLD")
        # not delivered by Postfix
        self.assertEqual([m for m in self.pf.maildir_messages("demo", "example.test")
                          if subject_of("held")(m)], [])


PER_CLIENT = ("per_client", {"key": "client", "phase": "mail", "count": 2, "period": 3600})


class RateLimited(SideBySide):
    stages = ["ratelimit"]

    @classmethod
    def more_conf(cls):
        name, opts = PER_CLIENT
        body = "".join("\t\t%s = %s\n" % (k, mxtest.conf_value(v)) for k, v in opts.items())
        return "ratelimit {\n\tlimit %s {\n%s\t}\n}\n" % (name, body)

    def test_rate_limited_client_tempfailed(self):
        # one client address each way, told with XCLIENT (the in-process
        # counts are per client address, shared by both modes)
        px, mx = "ADDR=192.0.2.20", "ADDR=192.0.2.10"
        for i in range(2):
            proxy, milter = self.both(message("rl-%d" % i), px, mx)
            self.assertEqual(proxy[:2], ("data", 250), proxy)
            self.assertEqual(milter[:2], ("data", 250), milter)
        proxy, milter = self.both(message("rl-over"), px, mx)
        self.assert_same_refusal(proxy, milter, "mail", 451, "4.7.1",
                                 rb"Rate limit exceeded \(per_client\)")
        self.assertRegex(self.d.log(), r"milter reject client=192\.0\.2\.10 .*phase=mail "
                         r"reply=\"451 4\.7\.1 Rate limit exceeded")


class DnsListed(SideBySide):
    stages = ["dnsbl"]
    dns = None

    @classmethod
    def setUpClass(cls):
        cls.dns = dnszones.Unbound({
            "drop.test": ("static", ["6.0.0.127.drop.test. 300 IN A 127.0.0.2"]),
        })
        try:
            super().setUpClass()
        except BaseException:
            cls.dns.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        if cls.dns:
            cls.dns.stop()

    @classmethod
    def more_conf(cls):
        return ('dnsbl {\n\tresolvers = {"127.0.0.1:%d"}\n\tdns_timeout = 3000\n'
                '\tlist "dropbl" {\n\t\tzone = "drop.test"\n\t\taction = "reject"\n'
                '\t\treject_text = "Service unavailable; client [%%a] blocked using %%l"\n'
                '\t}\n}\n' % cls.dns.port)

    def test_listed_client_refused(self):
        listed = "ADDR=127.0.0.6"
        ours = b"5.7.1 Service unavailable; client [127.0.0.6] blocked using dropbl"
        # proxy: XCLIENT runs the connect phase again, for the named client
        proxy = send(self.d.port, message("listed"), xclient=listed)
        self.assertEqual(proxy, ("xclient", 554, ours))
        # milter: Postfix opens a new milter connection for the named
        # client; its refusal makes Postfix's new greeting a 554 in its own
        # words, and every command after it gets our reply
        s = smtplib.SMTP("127.0.0.1", self.pf.port, timeout=60)
        try:
            self.assertEqual(s.ehlo("client.example.org")[0], 250)
            code, text = s.docmd("XCLIENT", listed)
            self.assertEqual(code, 554, text)
            self.assertEqual(s.docmd("MAIL", "FROM:<sender@example.org>"), (554, ours))
        finally:
            s.quit()
        self.assertRegex(self.d.log(), r"milter reject client=127\.0\.0\.6 .*phase=connect "
                         r"reply=\"554 5\.7\.1 Service unavailable")
        # an unlisted client goes through both ways
        proxy, milter = self.both(message("unlisted"), "ADDR=127.0.0.7", "ADDR=127.0.0.7")
        self.assertEqual(proxy[:2], ("data", 250), proxy)
        self.assertEqual(milter[:2], ("data", 250), milter)


class DefaultAction(unittest.TestCase):
    """mxguard gone while Postfix runs: milter_default_action decides."""

    def run_case(self, action):
        d = Daemon(pipeline={"stages": ["rules"]},
                   extra_conf='rules {\n\tfiles = {"%s"}\n}\n' % STOCK,
                   listen_extra={"milter": {"protocol": "milter"}})
        pf = None
        try:
            pf = milter_postfix(d.ports["milter"], default_action=action).start()
            # served while it runs
            r = send(pf.port, message("%s-up" % action, "fine"))
            self.assertEqual(r[:2], ("data", 250), r)
            got = pf.wait_for_messages("demo", "example.test", 1,
                                       match=subject_of("%s-up" % action))
            self.assertRegex(got[0], re.compile(rb"^X-Spam-Score: ", re.M))
            off = d.log_size()
            # SIGTERM stops the whole daemon, milter included, cleanly
            self.assertEqual(d.stop(), 0)
            self.assertRegex(d.log_since(off), r"stopping on signal 15")
            self.assertRegex(d.log_since(off), r"info: stopped\n")
            return pf, send(pf.port, message("%s-down" % action, "fine"))
        except BaseException:
            if pf:
                pf.stop()
            raise
        finally:
            d.cleanup()

    def test_tempfail(self):
        pf, r = self.run_case("tempfail")
        try:
            self.assertEqual(r[1], 451, r)
            self.assertIn(b"4.7.1", r[2])
        finally:
            pf.stop()

    def test_accept(self):
        pf, r = self.run_case("accept")
        try:
            self.assertEqual(r[:2], ("data", 250), r)
            got = pf.wait_for_messages("demo", "example.test", 1,
                                       match=subject_of("accept-down"))
            # delivered unfiltered: none of our headers
            self.assertNotRegex(got[0], re.compile(rb"^X-Spam-Score: ", re.M))
        finally:
            pf.stop()


class Restart(unittest.TestCase):
    def test_restart_serves_again(self):
        """mxguard stopped and started again on the same port: the next
        Postfix session is filtered again (a new milter connection)."""
        d = Daemon(pipeline={"stages": ["rules"]},
                   extra_conf='rules {\n\tfiles = {"%s"}\n}\n' % STOCK,
                   listen_extra={"milter": {"protocol": "milter"}})
        pf = None
        try:
            pf = milter_postfix(d.ports["milter"]).start()
            self.assertEqual(d.stop(), 0)
            r = send(pf.port, message("while-down", "fine"))
            self.assertEqual(r[1], 451, r)
            d.start()
            r = send(pf.port, message("restarted", GTUBE))
            self.assertEqual(r[:2], ("data", 550), r)
            r = send(pf.port, message("restarted-clean", "fine"))
            self.assertEqual(r[:2], ("data", 250), r)
            got = pf.wait_for_messages("demo", "example.test", 1,
                                       match=subject_of("restarted-clean"))
            self.assertRegex(got[0], re.compile(rb"^X-Spam-Score: ", re.M))
        finally:
            if pf:
                pf.stop()
            d.cleanup()


class UnixSocket(unittest.TestCase):
    def test_postfix_over_a_unix_socket(self):
        """listen milter { address = "unix:/path" }: Postfix's smtpd_milters =
        unix:/path reaches the same pipeline; a socket file left by an
        earlier run does not stop a restart; a unix address is refused for
        a service the core binds (smtp)."""
        d = Daemon(start=False, pipeline={"stages": ["rules"]})
        pf = None
        try:
            # Postfix's smtpd runs as postfix: a directory it may enter
            sockdir = tempfile.mkdtemp(prefix="mxmilter-")
            self.addCleanup(shutil.rmtree, sockdir, True)
            os.chmod(sockdir, 0o755)
            sock = os.path.join(sockdir, "milter.sock")
            d.extra_conf = ('rules {\n\tfiles = {"%s"}\n}\n' % STOCK +
                            'listen milter {\n\taddress = "unix:%s"\n\tprotocol = "milter"\n}\n'
                            % sock)
            d.write_config()
            d.start()
            self.assertTrue(os.path.exists(sock))
            os.chmod(sock, 0o666)  # Postfix's smtpd runs as postfix
            pf = milter_postfix(0, extra={"smtpd_milters": "unix:%s" % sock}).start()
            r = send(pf.port, message("unix-gtube", GTUBE))
            self.assertEqual(r[:2], ("data", 550), r)
            r = send(pf.port, message("unix-clean", "fine"))
            self.assertEqual(r[:2], ("data", 250), r)
            got = pf.wait_for_messages("demo", "example.test", 1, match=subject_of("unix-clean"))
            self.assertRegex(got[0], re.compile(rb"^X-Spam-Score: ", re.M))
            # kill -9 leaves the socket file behind: a new start removes it
            d.kill9()
            self.assertTrue(os.path.exists(sock))
            d.start()
            os.chmod(sock, 0o666)
            r = send(pf.port, message("unix-again", GTUBE))
            self.assertEqual(r[:2], ("data", 550), r)
        finally:
            if pf:
                pf.stop()
            d.cleanup()

    def test_unix_address_only_for_the_milter(self):
        d = Daemon(start=False, extra_conf='listen local {\n\taddress = "unix:/tmp/x.sock"\n'
                                         '\tprotocol = "smtp"\n}\n')
        try:
            r = subprocess.run([mxtest.MXGUARD, "-t", "-c", d.conf], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
            self.assertEqual(r.returncode, 1)
            self.assertIn('listen local: address = "unix:/tmp/x.sock": protocol = "smtp" '
                          'listens on host:port only', r.stderr)
            d.extra_conf = ('listen m {\n\taddress = "unix:relative"\n'
                            '\tprotocol = "milter"\n}\n')
            d.write_config()
            r = subprocess.run([mxtest.MXGUARD, "-t", "-c", d.conf], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
            self.assertEqual(r.returncode, 1)
            self.assertIn("a unix socket is unix:/absolute/path", r.stderr)
        finally:
            d.cleanup()


class StopWithSessionOpen(unittest.TestCase):
    def test_sigterm_waits_then_exits(self):
        """SIGTERM while Postfix holds a milter connection open (an SMTP
        session after EHLO): the daemon waits for it up to
        limits.timeout_shutdown, then exits; Postfix's session goes on and
        follows milter_default_action for what comes after."""
        d = Daemon(limits={"timeout_shutdown": 2}, listen_extra={"milter": {"protocol": "milter"}})
        pf = None
        try:
            pf = milter_postfix(d.ports["milter"]).start()
            s = smtplib.SMTP("127.0.0.1", pf.port, timeout=60)
            try:
                self.assertEqual(s.ehlo("client.example.org")[0], 250)
                d.wait_log(r"milter connect client=127\.0\.0\.1")
                off = d.log_size()
                self.assertEqual(d.stop(), 0)
                log = d.log_since(off)
                self.assertRegex(log, r"shutdown: timeout with 1 sessions")
                self.assertRegex(log, r"info: stopped")
                code, text = s.mail("sender@example.org")
                self.assertEqual(code, 451, text)
            finally:
                try:
                    s.quit()
                except (smtplib.SMTPException, OSError):
                    pass
        finally:
            if pf:
                pf.stop()
            d.cleanup()


class Config(unittest.TestCase):
    def test_two_milter_listeners_refused(self):
        d = Daemon(start=False, listen_extra={"milter": {"protocol": "milter"},
                                             "milter2": {"protocol": "milter"}})
        try:
            r = subprocess.run([mxtest.MXGUARD, "-t", "-c", d.conf], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
            self.assertEqual(r.returncode, 1)
            with open(d.conf) as f:
                line = f.read().splitlines().index("listen milter2 {") + 2
            self.assertIn("%s:%d: listen milter2: only one milter listener per process "
                          "(libmilter has one socket; listen milter has it)" % (d.conf, line),
                          r.stderr)
            with self.assertRaises(RuntimeError) as e:
                d.start()
            self.assertIn("only one milter listener", str(e.exception))
        finally:
            d.cleanup()


if __name__ == "__main__":
    mxtest.main(budget=300)

#!/usr/bin/env python3
"""The clamav stage in the real daemon, with the real libclamav and a real clamd.

No signatures can be downloaded here, so every test writes its own database
at run time: the EICAR test string as an .ndb body signature and the MD5 of
a file the test generates as an .hdb signature, loaded by libclamav as any
database is. Messages go in over SMTP (smtplib):

- EICAR as the whole body, as a base64 attachment, inside a zip the test
  makes, inside a zip inside a zip; the generated file as an attachment:
  554 5.7.1 naming the signature, nothing delivered, the hit in the log;
- a clean message with a look-alike attachment passes, with X-Virus-Scanned;
- action = quarantine and discard; on_limit = tempfail, accept and reject;
- a body spilled to disk is scanned the same;
- SIGHUP with a corrupt database keeps the old engine; a good new database
  is swapped in by SIGHUP and by the db_check_interval watcher;
- a missing database fails the start (and `mxguard -t`), unless
  on_error = accept, which starts with a loud warning;
- clamd mode through a clamd started here, and clamd stopped mid-run gives
  451 for what could not be scanned and loses nothing that got 250.
"""

import base64
import hashlib
import io
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
import unittest
import zipfile

import mxtest
from mxtest import Daemon

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_SIG = "MxGuard.Test.EICAR"
GEN_SIG = "MxGuard.Test.Generated"
# a file no real database knows: its MD5 is the .hdb signature
GENERATED = b"".join(b"mxguard generated test file, block %06d\n" % i for i in range(200))


def put_file(path, text):
    """Write a database file whole (a temp file beside the directory, then
    rename), as freshclam does: the daemon's watcher never sees half a file."""
    tmp = os.path.dirname(path) + ".tmp-" + os.path.basename(path)
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def write_db(path, extra_ndb=""):
    os.makedirs(path, exist_ok=True)
    put_file(os.path.join(path, "mxguard-test.hdb"),
             "%s:%d:%s\n" % (hashlib.md5(GENERATED).hexdigest(), len(GENERATED), GEN_SIG))
    put_file(os.path.join(path, "mxguard-test.ndb"),
             "%s:0:*:%s\n%s" % (EICAR_SIG, EICAR.hex(), extra_ndb))


def count_sigs(path):
    """Signatures in a database directory of .ndb/.hdb files, one per line."""
    n = 0
    for name in os.listdir(path):
        if name.endswith((".ndb", ".hdb")):
            with open(os.path.join(path, name)) as f:
                n += sum(1 for line in f if line.strip())
    return n


def plain(subject, body):
    return (b"From: <sender@example.org>\r\nTo: <demo@example.test>\r\n"
            b"Subject: " + subject.encode() + b"\r\nMessage-ID: <" + subject.encode() +
            b"@example.org>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\n" + body + b"\r\n")


def with_attachment(subject, name, data, ctype="application/octet-stream"):
    b64 = base64.encodebytes(data).replace(b"\n", b"\r\n")
    return (b"From: <sender@example.org>\r\nTo: <demo@example.test>\r\n"
            b"Subject: " + subject.encode() + b"\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
            b"--b1\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n"
            b"--b1\r\nContent-Type: " + ctype.encode() + b"; name=\"" + name.encode() + b"\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=\"" + name.encode() + b"\"\r\n\r\n" +
            b64 + b"--b1--\r\n")


def zipped(name, data):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, data)
    return buf.getvalue()


def send(d, msg, rcpt="demo@example.test"):
    s = smtplib.SMTP("127.0.0.1", d.port, timeout=60)
    try:
        s.ehlo("client.example.org")
        s.mail("sender@example.org")
        code, text = s.rcpt(rcpt)
        if code != 250:
            return code, text
        try:
            code, text = s.data(msg)
        except smtplib.SMTPDataError as e:
            code, text = e.smtp_code, e.smtp_error
        return code, text
    finally:
        try:
            s.quit()
        except (smtplib.SMTPException, OSError):
            pass


def unfold(m):
    return re.sub(rb"\r?\n[ \t]+", b" ", m)


def clamav_section(**kw):
    out = ["clamav {"]
    for k, v in kw.items():
        out.append("\t%s = %s" % (k, mxtest.conf_value(v)))
    out.append("}")
    return "\n".join(out) + "\n"


class ClamavDaemon(unittest.TestCase):
    section = {}
    daemon_kw = {}

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon(start=False, pipeline={"stages": ["clamav"]}, **cls.daemon_kw)
        cls.db = os.path.join(cls.d.dir, "clamdb")
        write_db(cls.db)
        kw = {"database_dir": cls.db}
        kw.update(cls.section)
        cls.d.extra_conf = clamav_section(**kw)
        cls.d.write_config()
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def delivered(self, subject):
        return [m for m in self.d.messages()
                if re.search(rb"^Subject: " + re.escape(subject.encode()) + rb"\r?$", m, re.M)]

    def assert_rejected(self, msg, subject, sig=EICAR_SIG):
        off = self.d.log_size()
        code, text = send(self.d, msg)
        self.assertEqual(code, 554, text)
        self.assertIn(b"5.7.1", text)
        self.assertIn(sig.encode(), text)
        self.assertTrue(self.d.wait_log(r"smtp tx .*result=rejected", off), self.d.log_tail())
        self.assertRegex(self.d.log_since(off), r"hits=(\S*,)?CLAMAV_%s" % sig.replace(".", r"\."))
        self.assertEqual(self.delivered(subject), [])


class Reject(ClamavDaemon):
    daemon_kw = {"limits": {"spill_threshold": 4096}}

    def test_eicar_body(self):
        self.assert_rejected(plain("eicar-body", EICAR), "eicar-body")

    def test_eicar_base64_attachment(self):
        self.assert_rejected(with_attachment("eicar-b64", "eicar.com", EICAR), "eicar-b64")

    def test_eicar_in_zip(self):
        self.assert_rejected(with_attachment("eicar-zip", "eicar.zip", zipped("eicar.com", EICAR),
                                             "application/zip"), "eicar-zip")

    def test_eicar_in_zip_in_zip(self):
        inner = zipped("eicar.zip", zipped("eicar.com", EICAR))
        self.assert_rejected(with_attachment("eicar-zip2", "outer.zip", inner,
                                             "application/zip"), "eicar-zip2")

    def test_hash_signature(self):
        self.assert_rejected(with_attachment("generated", "report.bin", GENERATED),
                             "generated", GEN_SIG)

    def test_spilled_body_scanned(self):
        # far over spill_threshold: the scan reads the spill file's mapping
        big = b"filler line of a large message\r\n" * 4000
        msg = with_attachment("eicar-spilled", "eicar.com", big + EICAR + b"\r\n" + big)
        self.assertGreater(len(msg), 4096 * 10)
        self.assert_rejected(msg, "eicar-spilled")

    def test_clean_lookalike_passes_with_header(self):
        almost = EICAR.replace(b"ANTIVIRUS", b"ANTIVIRAL")
        off = self.d.log_size()
        code, text = send(self.d, with_attachment("lookalike", "eicar.zip",
                                                  zipped("eicar.com", almost), "application/zip"))
        self.assertEqual(code, 250, text)
        got = self.delivered("lookalike")
        self.assertEqual(len(got), 1)
        self.assertRegex(unfold(got[0]), rb"(?m)^X-Virus-Scanned: ClamAV [0-9.]+/\d+ \(mxguard\); clean\r?$")
        self.assertRegex(self.d.log_since(off), r"stages=clamav:ok:")
        # a generated file one byte off its signed hash is clean too
        code, text = send(self.d, with_attachment("gen-changed", "report.bin", GENERATED + b"x"))
        self.assertEqual(code, 250, text)
        self.assertEqual(len(self.delivered("gen-changed")), 1)


class Quarantine(ClamavDaemon):
    section = {"action": "quarantine"}

    def test_virus_quarantined(self):
        code, text = send(self.d, with_attachment("q-eicar", "eicar.com", EICAR))
        self.assertEqual(code, 250, text)
        self.assertEqual(self.delivered("q-eicar"), [])
        held = []
        for root, _, names in os.walk(os.path.join(self.d.dir, "quarantine")):
            for n in names:
                with open(os.path.join(root, n), "rb") as f:
                    data = f.read()
                if b"Subject: q-eicar" in data:
                    held.append(data)
        self.assertEqual(len(held), 1)
        self.assertIn(b"X-Virus-Scanned: ", held[0])
        self.assertIn(("infected (%s" % EICAR_SIG).encode(), unfold(held[0]))


class Discard(ClamavDaemon):
    section = {"action": "discard"}

    def test_virus_discarded(self):
        off = self.d.log_size()
        code, text = send(self.d, plain("d-eicar", EICAR))
        self.assertEqual(code, 250, text)
        self.assertTrue(self.d.wait_log(r"smtp tx .*result=discarded", off), self.d.log_tail())
        self.assertEqual(self.delivered("d-eicar"), [])


class Limits(ClamavDaemon):
    # a 4 KB file limit: the attachment below is over it
    section = {"max_file_size": 4096}
    big = with_attachment("limit", "big.bin", os.urandom(20000))

    def set_on_limit(self, value):
        off = self.d.log_size()
        self.d.extra_conf = clamav_section(database_dir=self.db, max_file_size=4096, on_limit=value)
        self.d.write_config()
        self.d.signal(signal.SIGHUP)
        self.assertTrue(self.d.wait_log(r"reloaded configuration from", off, timeout=30),
                        self.d.log_tail())

    def test_on_limit(self):
        # default: tempfail
        code, text = send(self.d, self.big)
        self.assertEqual(code, 452, self.d.log_tail())
        self.assertIn(b"4.3.4", text)
        self.set_on_limit("reject")
        code, text = send(self.d, self.big)
        self.assertEqual(code, 552, text)
        self.set_on_limit("accept")
        code, text = send(self.d, self.big)
        self.assertEqual(code, 250, text)
        got = self.delivered("limit")
        self.assertEqual(len(got), 1)
        self.assertIn(b"not scanned completely (Heuristics.Limits.Exceeded", unfold(got[0]))
        # small messages are scanned as before
        self.assertEqual(send(self.d, plain("small-eicar", EICAR))[0], 554)


class Reload(ClamavDaemon):
    section = {"db_check_interval": 1}

    def test_corrupt_database_keeps_old_engine_and_good_one_swaps_in(self):
        extra = "MxGuard.Test.New:0:*:%s\n" % b"mxguard-new-signature-0123456789".hex()
        new_body = plain("newsig", b"here: mxguard-new-signature-0123456789")
        self.assertEqual(send(self.d, new_body)[0], 250)
        # corrupt: the signature file replaced by garbage
        off = self.d.log_size()
        put_file(os.path.join(self.db, "mxguard-test.ndb"), "this is not:a valid\x01signature line\n")
        self.d.signal(signal.SIGHUP)
        self.assertTrue(self.d.wait_log(r"keeping the engine loaded before", off, timeout=30),
                        self.d.log_tail())
        self.assertEqual(send(self.d, plain("still-eicar", EICAR))[0], 554)
        # a good database with a new signature: SIGHUP swaps it in
        off = self.d.log_size()
        write_db(self.db, extra)
        self.d.signal(signal.SIGHUP)
        # (the watcher may see the two files change one by one: wait for
        # the load that has them both)
        self.assertTrue(self.d.wait_log(r"clamav: reloaded the database in \S+: %d signatures"
                                        % count_sigs(self.db), off, timeout=30),
                        self.d.log_tail())
        code, text = send(self.d, plain("newsig2", b"here: mxguard-new-signature-0123456789"))
        self.assertEqual(code, 554, text)
        self.assertIn(b"MxGuard.Test.New", text)

    def test_watcher_picks_up_a_new_file(self):
        marker = b"mxguard-watched-signature-987654"
        self.assertEqual(send(self.d, plain("watched", b"x " + marker))[0], 250)
        off = self.d.log_size()
        put_file(os.path.join(self.db, "watched.ndb"),
                 "MxGuard.Test.Watched:0:*:%s\n" % marker.hex())
        # no signal: the watcher checks every second
        self.assertTrue(self.d.wait_log(r"clamav: reloaded the database in \S+: %d signatures"
                                        % count_sigs(self.db), off, timeout=30),
                        self.d.log_tail())
        code, text = send(self.d, plain("watched2", b"x " + marker))
        self.assertEqual(code, 554, text)
        self.assertIn(b"MxGuard.Test.Watched", text)


class MissingDatabase(unittest.TestCase):
    def test_start_fails_clearly(self):
        d = Daemon(start=False, pipeline={"stages": ["clamav"]},
                   extra_conf=clamav_section(database_dir="/nonexistent/clamdb"))
        try:
            r = subprocess.run([mxtest.MXGUARD, "-t", "-c", d.conf], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
            self.assertEqual(r.returncode, 1, r.stdout)
            self.assertIn("clamav: cannot load the database in /nonexistent/clamdb", r.stdout)
            with self.assertRaises(RuntimeError) as cm:
                d.start()
            self.assertIn("cannot load the database", str(cm.exception))
        finally:
            d.cleanup()

    def test_empty_directory_fails(self):
        d = Daemon(start=False, pipeline={"stages": ["clamav"]})
        try:
            empty = os.path.join(d.dir, "emptydb")
            os.mkdir(empty)
            d.extra_conf = clamav_section(database_dir=empty)
            d.write_config()
            r = subprocess.run([mxtest.MXGUARD, "-t", "-c", d.conf], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
            self.assertEqual(r.returncode, 1, r.stdout)
            self.assertIn("clamav:", r.stdout)
        finally:
            d.cleanup()

    def test_on_error_accept_starts_with_warning(self):
        d = Daemon(start=False, pipeline={"stages": ["clamav"]})
        try:
            db = os.path.join(d.dir, "later-db")
            d.extra_conf = clamav_section(database_dir=db, on_error="accept",
                                          db_check_interval=1)
            d.write_config()
            d.start()
            self.assertIn("starting WITHOUT virus scanning", d.log())
            code, text = send(d, plain("unscanned", EICAR))
            self.assertEqual(code, 250, text)
            got = [m for m in d.messages() if b"Subject: unscanned" in m]
            self.assertEqual(len(got), 1)
            self.assertIn(b"NOT scanned (no database loaded", unfold(got[0]))
            # freshclam's first download arrives: the watcher loads it
            off = d.log_size()
            tmp = d.dir + "-db.tmp"
            write_db(tmp)
            os.rename(tmp, db)
            self.assertTrue(d.wait_log(r"clamav: loaded the database in \S+: %d signatures"
                                       % count_sigs(db), off, timeout=30), d.log_tail())
            code, text = send(d, plain("scanned-later", EICAR))
            self.assertEqual(code, 554, text)
        finally:
            d.cleanup()


DEMO_CLAMDB = os.path.join(mxtest.MX_SRCDIR, "scripts", "demo-clamdb")


class Quickstart(unittest.TestCase):
    """The quickstart's configuration (etc/mxguard.conf, listeners moved to
    free ports) with the database scripts/demo-clamdb writes: EICAR sent
    with swaks, as the quickstart's banner says, is refused by name."""

    def test_demo_database_refuses_eicar_over_smtp(self):
        top = tempfile.mkdtemp(prefix="mxtest-quick-")
        proc = None
        try:
            os.makedirs(os.path.join(top, "var", "tls"))
            for src, name in zip(mxtest.test_cert(), ("cert.pem", "key.pem")):
                shutil.copy(src, os.path.join(top, "var", "tls", name))
            os.symlink(os.path.join(mxtest.MX_SRCDIR, "rules"), os.path.join(top, "rules"))
            r = subprocess.run(["sh", DEMO_CLAMDB, "--own", "var/clamav"], cwd=top,
                               stdout=subprocess.PIPE, universal_newlines=True, timeout=60)
            self.assertEqual(r.returncode, 0)
            self.assertIn("demo database", r.stdout)
            port, tls_port = mxtest.free_port(), mxtest.free_port()
            with open(os.path.join(mxtest.MX_SRCDIR, "etc", "mxguard.conf")) as f:
                text = f.read()
            self.assertIn('"clamav"', text)
            text = text.replace("127.0.0.1:2525", "127.0.0.1:%d" % port)
            text = text.replace("127.0.0.1:4465", "127.0.0.1:%d" % tls_port)
            # every other listener too (POP3, IMAP, metrics): no fixed port
            # in a test
            for fixed in sorted(set(re.findall(r'(?m)^\s+address = "127\.0\.0\.1:(\d+)"', text))):
                if int(fixed) not in (port, tls_port):
                    text = text.replace("127.0.0.1:%s\"" % fixed,
                                        "127.0.0.1:%d\"" % mxtest.free_port())
            self.assertNotRegex(text, r'address = "127\.0\.0\.1:(2525|4465|1110|1995|1143|1993|9025)"')
            text = text.replace("threads = 0", "threads = 2")
            conf = os.path.join(top, "mxguard.conf")
            with open(conf, "w") as f:
                f.write(text)
            r = subprocess.run([mxtest.MXGUARDCTL, "-c", conf, "user", "add", "demo@example.test"],
                               input="demo\n", cwd=top, universal_newlines=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
            self.assertEqual(r.returncode, 0, r.stdout)
            log = open(os.path.join(top, "log"), "wb")
            proc = subprocess.Popen([mxtest.MXGUARD, "-f", "-c", conf], cwd=top,
                                    stdout=log, stderr=log, stdin=subprocess.DEVNULL)
            log.close()
            deadline = time.monotonic() + 60
            while True:
                self.assertIsNone(proc.poll(), "mxguard exited")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=2).close()
                    break
                except OSError:
                    self.assertLess(time.monotonic(), deadline)
                    time.sleep(0.05)
            # the banner's command
            r = subprocess.run(["swaks", "--server", "127.0.0.1:%d" % port,
                                "--from", "you@sender.test", "--to", "demo@example.test",
                                "--attach-type", "application/octet-stream",
                                "--attach-name", "eicar.com", "--attach", "-"],
                               input=EICAR.decode() + "\n", cwd=top, universal_newlines=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
            self.assertRegex(r.stdout, r"<\*\* +554 5\.7\.1 Virus found: MxGuard\.Demo\.EICAR")
            # and a clean one goes through
            r = subprocess.run(["swaks", "--server", "127.0.0.1:%d" % port,
                                "--from", "you@sender.test", "--to", "demo@example.test",
                                "--h-Subject", "hello", "--body", "first message"],
                               cwd=top, universal_newlines=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
            self.assertRegex(r.stdout, r"<- +250 2\.0\.0")
        finally:
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            shutil.rmtree(top, ignore_errors=True)

    def test_demo_clamdb_links_the_system_database(self):
        top = tempfile.mkdtemp(prefix="mxtest-clamdb-")
        try:
            system = os.path.join(top, "system")
            os.mkdir(system)
            env = dict(os.environ, MXGUARD_SYSTEM_CLAMDB=system)
            target = os.path.join(top, "var", "clamav")

            def run():
                r = subprocess.run(["sh", DEMO_CLAMDB, target], env=env, timeout=60,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   universal_newlines=True)
                self.assertEqual(r.returncode, 0, r.stdout)
                return r.stdout
            # no system database: the demo's own
            self.assertIn("demo database", run())
            self.assertFalse(os.path.islink(target))
            self.assertEqual(sorted(os.listdir(target)), ["mxguard-demo.hdb", "mxguard-demo.ndb"])
            # freshclam fetched one: the next run links it
            with open(os.path.join(system, "daily.cvd"), "wb") as f:
                f.write(b"ClamAV-VDB:" + b"x" * 100)
            self.assertIn("system's ClamAV database", run())
            self.assertEqual(os.readlink(target), system)
            self.assertIn("system's ClamAV database", run())
            # and gone again: back to the demo's own
            os.unlink(os.path.join(system, "daily.cvd"))
            self.assertIn("demo database", run())
            self.assertFalse(os.path.islink(target))
        finally:
            shutil.rmtree(top, ignore_errors=True)


class Clamd:
    """A clamd of our own on a unix socket in a temp dir, stopped by PID."""

    def __init__(self, db):
        self.dir = tempfile.mkdtemp(prefix="mxclamd-")
        self.sock = os.path.join(self.dir, "clamd.sock")
        self.conf = os.path.join(self.dir, "clamd.conf")
        with open(self.conf, "w") as f:
            f.write("Foreground yes\nLocalSocket %s\nDatabaseDirectory %s\n"
                    "LogFile %s\nPidFile %s\nStreamMaxLength 10M\n"
                    "AlertExceedsMax yes\nMaxThreads 4\n" % (
                        self.sock, db, os.path.join(self.dir, "clamd.log"),
                        os.path.join(self.dir, "clamd.pid")))
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["clamd", "-c", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("clamd exited: %s" % self.log())
            try:
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(5)
                s.connect(self.sock)
                s.sendall(b"zPING\0")
                if s.recv(16).startswith(b"PONG"):
                    s.close()
                    return
                s.close()
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("clamd did not answer PING: %s" % self.log())

    def log(self):
        try:
            with open(os.path.join(self.dir, "clamd.log")) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class ClamdMode(unittest.TestCase):
    # clamd comes from clamav-daemon, which scripts/install-deps installs:
    # without it this class fails (Clamd.start) rather than skip
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="mxclamdb-")
        write_db(cls.tmp)
        cls.clamd = Clamd(cls.tmp)
        cls.clamd.start()
        cls.d = Daemon(start=False, pipeline={"stages": ["clamav"]},
                       extra_conf=clamav_section(mode="clamd", clamd_socket="unix:" + cls.clamd.sock,
                                                 clamd_timeout=10))
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()
        cls.clamd.cleanup()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def delivered(self, subject):
        return [m for m in self.d.messages()
                if re.search(rb"^Subject: " + re.escape(subject.encode()) + rb"\r?$", m, re.M)]

    def test_1_verdicts(self):
        code, text = send(self.d, with_attachment("cd-zip", "e.zip", zipped("eicar.com", EICAR)))
        self.assertEqual(code, 554, text)
        self.assertIn(EICAR_SIG.encode(), text)
        code, text = send(self.d, with_attachment("cd-gen", "report.bin", GENERATED))
        self.assertEqual(code, 554, text)
        self.assertIn(GEN_SIG.encode(), text)
        code, text = send(self.d, plain("cd-clean", b"nothing to see"))
        self.assertEqual(code, 250, text)
        got = self.delivered("cd-clean")
        self.assertEqual(len(got), 1)
        self.assertIn(b"X-Virus-Scanned: ClamAV (clamd) (mxguard); clean", unfold(got[0]))

    def test_2_clamd_stopped_mid_run(self):
        accepted, tempfailed = [], []
        for i in range(30):
            if i == 10:
                self.clamd.stop()
            if i == 20:
                self.clamd.start()
            subj = "cd-run-%02d" % i
            code, text = send(self.d, plain(subj, b"message %d" % i))
            if code == 250:
                accepted.append(subj)
            else:
                self.assertEqual(code, 451, text)
                self.assertIn(b"4.3.0", text)
                tempfailed.append(subj)
        self.assertEqual(len(tempfailed), 10, tempfailed)
        self.assertEqual(tempfailed, ["cd-run-%02d" % i for i in range(10, 20)])
        for subj in accepted:
            self.assertEqual(len(self.delivered(subj)), 1, subj)
        for subj in tempfailed:
            self.assertEqual(self.delivered(subj), [], subj)
        self.assertIn("clamav:", self.d.log())


if __name__ == "__main__":
    mxtest.main(budget=300)

"""test_admin — the admin's front door: config checking and user management.

`mxguard -t` accepts good files and names file and line for bad ones;
`mxguard --settings` lists every setting the shipped config uses; mxguardctl
adds, changes, deletes, lists and checks users with passwords read from
stdin, refuses duplicates and foreign domains, and a running daemon sees a
new user without a restart.
"""

import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest

import mxtest
from mxtest import DaemonTestCase, PASSWORD


def run(args, cwd=None, stdin=""):
    return subprocess.run(args, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60, cwd=cwd)


def demo_clamdb(top):
    """./var/clamav under top as scripts/quickstart makes it, with the demo's
    own EICAR database (--own: never the system's, which may be large)."""
    r = run(["sh", os.path.join(mxtest.MX_SRCDIR, "scripts", "demo-clamdb"), "--own",
             os.path.join(top, "var", "clamav")])
    assert r.returncode == 0, r.stderr
    return r.stdout


def line_of(text, needle, start=0):
    """1-based number of the first line (from line `start` on) containing needle."""
    for i, l in enumerate(text.splitlines()[start:], start + 1):
        if needle in l:
            return i
    raise AssertionError("%r not in config" % needle)


class ConfigCheck(DaemonTestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = mxtest.Daemon(users=(), start=False,
                              limits={"line_max": 1000, "errors_max": 10})
        cls.good = cls.d.render_config()

    def setUp(self):
        pass

    def check(self, text):
        self.d.write_config(text)
        return run([mxtest.MXGUARD, "-t", "-c", self.d.conf], cwd=self.d.dir)

    def assertBad(self, text, line=None, lines=None, mention=None):
        r = self.check(text)
        out = r.stdout + r.stderr
        self.assertNotEqual(r.returncode, 0, "accepted:\n%s\n%s" % (text, out))
        self.assertIn(self.d.conf, r.stderr, out)
        if line is not None or lines is not None:
            want = [line] if line is not None else lines
            rx = re.escape(self.d.conf) + r":(%s):" % "|".join(str(n) for n in want)
            self.assertRegex(r.stderr, rx, "expected %s:%s: in\n%s" % (self.d.conf, want, out))
        if mention is not None:
            self.assertIn(mention, out)
        return r

    def test_good_config(self):
        r = self.check(self.good)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn(self.d.conf, r.stdout + r.stderr)
        self.assertIn("ok", (r.stdout + r.stderr).lower())

    def test_shipped_config(self):
        # the demo config reads its certificate from ./var/tls (made by
        # scripts/quickstart): give it one, in a directory of its own
        top = tempfile.mkdtemp(prefix="mxtest-shipped-", dir=self.d.dir)
        os.makedirs(os.path.join(top, "var", "tls"))
        # ... and its rules from ./rules, as in the source tree
        os.symlink(os.path.join(mxtest.MX_SRCDIR, "rules"), os.path.join(top, "rules"))
        # ... and its ClamAV database from ./var/clamav (scripts/demo-clamdb)
        demo_clamdb(top)
        for src, name in zip(mxtest.test_cert(), ("cert.pem", "key.pem")):
            shutil.copy(src, os.path.join(top, "var", "tls", name))
        conf = os.path.join(mxtest.MX_SRCDIR, "etc", "mxguard.conf")
        r = run([mxtest.MXGUARD, "-t", "-c", conf], cwd=top)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # smtp, smtps, pop3, pop3s, imap, imaps, metrics, web, webs
        self.assertIn("9 listener(s)", r.stdout)
        # without the certificate, the error names the setting's line
        os.unlink(os.path.join(top, "var", "tls", "cert.pem"))
        r = run([mxtest.MXGUARD, "-t", "-c", conf], cwd=top)
        self.assertNotEqual(r.returncode, 0)
        with open(conf) as f:
            text = f.read()
        self.assertIn('%s:%d: tls_cert = "%s/var/tls/cert.pem": No such file or directory'
                      % (conf, line_of(text, "tls_cert ="), os.path.realpath(top)), r.stderr)

    def test_shipped_config_offers_tls(self):
        # the quickstart demo: STARTTLS on 127.0.0.1:2525, implicit TLS on
        # 127.0.0.1:4465, with the certificate under ./var/tls
        conf = os.path.join(mxtest.MX_SRCDIR, "etc", "mxguard.conf")
        with open(conf) as f:
            text = f.read()
        listeners = re.findall(r'^listen (\w+) \{\n\taddress = "([^"]+)"\n'
                               r'(?:\tprotocol = "smtp"\n)?\ttls = "(\w+)"\n(?:\t[^\n]*\n)*?\}',
                               text, re.M)
        self.assertEqual(sorted(l[1:] for l in listeners),
                         [("127.0.0.1:2525", "none"), ("127.0.0.1:4465", "implicit")])
        self.assertRegex(text, r'(?m)^tls_cert = "\./var/tls/cert\.pem"$')
        self.assertRegex(text, r'(?m)^tls_key = "\./var/tls/key\.pem"$')

    def test_demo_cert(self):
        # scripts/demo-cert, as scripts/quickstart runs it: a self-signed
        # localhost certificate, key 0600, made once
        script = os.path.join(mxtest.MX_SRCDIR, "scripts", "demo-cert")
        top = tempfile.mkdtemp(prefix="mxtest-democert-", dir=self.d.dir)
        r = run(["sh", script], cwd=top)
        self.assertEqual(r.returncode, 0, r.stderr)
        cert = os.path.join(top, "var", "tls", "cert.pem")
        key = os.path.join(top, "var", "tls", "key.pem")
        self.assertEqual(os.stat(key).st_mode & 0o777, 0o600)
        r = run(["openssl", "x509", "-in", cert, "-noout", "-subject", "-ext", "subjectAltName"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"CN\s*=\s*localhost")
        self.assertIn("DNS:localhost", r.stdout)
        self.assertIn("IP Address:127.0.0.1", r.stdout)
        with open(cert) as f:
            before = f.read()
        r = run(["sh", script], cwd=top)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(cert) as f:
            self.assertEqual(f.read(), before, "a second run replaced the certificate")
        # and the daemon accepts the pair with the shipped config (which
        # reads its rules from ./rules, as in the source tree)
        os.symlink(os.path.join(mxtest.MX_SRCDIR, "rules"), os.path.join(top, "rules"))
        demo_clamdb(top)
        conf = os.path.join(mxtest.MX_SRCDIR, "etc", "mxguard.conf")
        r = run([mxtest.MXGUARD, "-t", "-c", conf], cwd=top)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_unknown_option(self):
        text = self.good + "frobnicate = 1\n"
        self.assertBad(text, line=line_of(text, "frobnicate"), mention="frobnicate")

    def test_unknown_option_in_section(self):
        text = self.good.replace("\tline_max = 1000\n", "\tline_max = 1000\n\tfrobnicate = 2\n")
        self.assertBad(text, line=line_of(text, "frobnicate"), mention="frobnicate")

    def test_value_below_floor(self):
        text = self.good.replace("line_max = 1000", "line_max = 10")
        self.assertBad(text, line=line_of(text, "line_max = 10"), mention="line_max")

    def test_recipients_max_below_floor(self):
        text = self.good.replace("\tline_max = 1000\n", "\tline_max = 1000\n\trecipients_max = 5\n")
        self.assertBad(text, line=line_of(text, "recipients_max"), mention="recipients_max")

    def test_bad_listen_address(self):
        text = re.sub(r'address = "127\.0\.0\.1:\d+"', 'address = "not an address"', self.good)
        self.assertBad(text, lines=[line_of(text, "not an address"), line_of(text, "listen smtp")])

    def test_bad_listen_tls(self):
        text = self.good.replace('tls = "none"', 'tls = "sometimes"')
        self.assertBad(text, lines=[line_of(text, "sometimes"), line_of(text, "listen smtp")])

    def test_bad_bare_lf(self):
        text = self.good + 'bare_lf = "maybe"\n'
        self.assertBad(text, line=line_of(text, "maybe"))

    def test_empty_local_domains(self):
        text = re.sub(r"local_domains = \{[^}]*\}", "local_domains = {}", self.good)
        self.assertBad(text, mention="local_domains")

    def test_invalid_local_domain(self):
        text = re.sub(r"local_domains = \{[^}]*\}", 'local_domains = {"bad domain/.."}', self.good)
        self.assertBad(text, mention="bad domain/..")

    def test_wrong_type(self):
        text = self.good.replace("threads = 2", 'threads = "many"')
        self.assertBad(text, line=line_of(text, "threads ="))

    def test_unknown_stage(self):
        text = self.good + 'pipeline {\n\tstages = {"nosuchstage"}\n}\n'
        self.assertBad(text, mention="nosuchstage")

    def test_syntax_errors(self):
        text = self.good + "}\n"
        self.assertBad(text, line=len(text.splitlines()))
        text = self.good + 'junk_folder = "Junk\nthreads = 2\n'
        self.assertBad(text)
        text = self.good.replace('local_domains = {"example.test"}', 'local_domains = {"example.test"')
        self.assertBad(text)

    def test_line_numbers_count_comments_once(self):
        # the shipped config is mostly comments: an error below them must
        # still point at its own line
        text = ("# a comment\n#\n\n" + self.good.replace("threads = 2\n", "# threads\nthreads = x2 # trailing\n"))
        self.assertBad(text, line=line_of(text, "threads = x2"))

    def test_unclosed_section_named_at_its_brace(self):
        # comments before and inside the section must not shift the line
        # named: it is the line of the section's "{"
        head = "# a comment\n#\n" + self.good + "# before\n// also before\n\n"
        text = head + "pipeline {\n\t# inside\n\ttag_score = 5.0 # trailing\n\t# more\n"
        self.assertBad(text, line=len(head.splitlines()) + 1, mention="never closed")

    def test_listeners_on_one_address(self):
        # the same address twice, and a wildcard over a specific address:
        # refused at the second listener's address line, before any bind
        port = self.d.port
        for first, second in (("127.0.0.1:%d" % port, "127.0.0.1:%d" % port),
                              ("127.0.0.1:%d" % port, "*:%d" % port),
                              ("*:%d" % port, "127.0.0.1:%d" % port)):
            with self.subTest(first=first, second=second):
                text = re.sub(r'address = "127\.0\.0\.1:\d+"', 'address = "%s"' % first, self.good)
                text += '# a second one\nlisten other {\n\ttls = "none"\n\taddress = "%s"\n}\n' % second
                self.assertBad(text, line=line_of(text, 'address = "%s"' % second, start=line_of(text, "listen other")),
                               mention="overlaps")
        # another port is fine
        text = self.good + 'listen other {\n\taddress = "127.0.0.1:%d"\n}\n' % mxtest.free_port()
        r = self.check(text)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def tls_config(self, cert, key):
        text = self.good + "# TLS\ntls_cert = %s\n\ntls_key = %s\n" % (mxtest.conf_value(cert),
                                                                       mxtest.conf_value(key))
        return text, line_of(text, "tls_cert ="), line_of(text, "tls_key =")

    def test_tls_file_errors(self):
        cert, key = mxtest.test_cert()
        other_key = os.path.join(self.d.dir, "other-key.pem")
        r = subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-out", other_key],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout)
        junk = os.path.join(self.d.dir, "junk.pem")
        with open(junk, "w") as f:
            f.write("this is not PEM\n")
        missing = os.path.join(self.d.dir, "missing.pem")
        cases = [
            (missing, key, "tls_cert", missing, "No such file or directory"),
            (self.d.dir, key, "tls_cert", self.d.dir, "is a directory"),
            (junk, key, "tls_cert", junk, "no PEM certificate"),
            (cert, missing, "tls_key", missing, "No such file or directory"),
            (cert, junk, "tls_key", junk, "no PEM private key"),
            (cert, cert, "tls_key", cert, "no PEM private key"),
            (cert, other_key, "tls_key", other_key, "does not match the certificate"),
        ]
        for c, k, setting, path, reason in cases:
            with self.subTest(cert=c, key=k):
                text, cert_line, key_line = self.tls_config(c, k)
                line = cert_line if setting == "tls_cert" else key_line
                r = self.assertBad(text, line=line, mention=reason)
                self.assertIn('%s:%d: %s = "%s": %s' % (self.d.conf, line, setting, path, reason),
                              r.stderr)
        # the good pair passes
        text, _, _ = self.tls_config(cert, key)
        r = self.check(text)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_missing_file(self):
        missing = os.path.join(self.d.dir, "nope.conf")
        r = run([mxtest.MXGUARD, "-t", "-c", missing], cwd=self.d.dir)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(missing, r.stderr)

    def test_daemon_refuses_bad_config(self):
        self.d.write_config(self.good + "frobnicate = 1\n")
        r = subprocess.run([mxtest.MXGUARD, "-f", "-c", self.d.conf], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, timeout=20,
                           cwd=self.d.dir)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(self.d.conf, r.stderr)

    def test_settings_table(self):
        r = run([mxtest.MXGUARD, "--settings"])
        self.assertEqual(r.returncode, 0, r.stderr)
        names = set()
        for l in r.stdout.splitlines():
            if not l.strip() or l.startswith("#"):
                continue
            names.add(l.split()[0])
        # every setting the shipped config uses is in the table
        shipped = os.path.join(mxtest.MX_SRCDIR, "etc", "mxguard.conf")
        # sections nest (dnsbl { list "zen" { } }): a stack of their names,
        # titles left out, "dnsbl.list.zone" for an option two deep
        sections = []
        missing = []
        with open(shipped) as f:
            for l in f:
                l = l.split("#", 1)[0].strip()
                m = re.match(r'(\w+)(\s+(\w+|"[^"]*"))?\s*\{$', l)
                if m:
                    sections.append(m.group(1))
                    continue
                if l == "}":
                    sections.pop()
                    continue
                m = re.match(r"(\w+)\s*=", l)
                if not m or sections[:1] == ["listen"]:
                    continue
                name = m.group(1)
                full = ".".join(sections + [name])
                if full not in names and (sections or name not in names):
                    missing.append(full)
        self.assertEqual(missing, [], "settings missing from --settings:\n" + r.stdout)
        self.assertGreaterEqual(len(names), 20)


class Users(DaemonTestCase):
    daemon_args = dict(users=("demo@example.test",))

    def ctl(self, *args, stdin=""):
        return self.d.ctl(*args, stdin=stdin)

    def listed(self):
        r = self.ctl("user", "list")
        self.assertEqual(r.returncode, 0, r.stderr)
        return [l.strip() for l in r.stdout.splitlines() if l.strip()]

    def check_pw(self, user, pw):
        return self.ctl("user", "check", user, stdin=pw + "\n").returncode

    def test_add_list_check(self):
        r = self.ctl("user", "add", "bob@example.test", stdin="bobs-pass\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        users = self.listed()
        self.assertIn("bob@example.test", users)
        self.assertIn("demo@example.test", users)
        self.assertEqual(self.check_pw("bob@example.test", "bobs-pass"), 0)
        self.assertNotEqual(self.check_pw("bob@example.test", "wrong"), 0)
        self.assertNotEqual(self.check_pw("bob@example.test", ""), 0)
        self.assertNotEqual(self.check_pw("nobody@example.test", "bobs-pass"), 0)
        self.assertEqual(self.check_pw("demo@example.test", PASSWORD), 0)

    def test_passwd(self):
        self.assertEqual(self.ctl("user", "add", "carl@example.test", stdin="old-pass\n").returncode, 0)
        r = self.ctl("user", "passwd", "carl@example.test", stdin="new-pass\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotEqual(self.check_pw("carl@example.test", "old-pass"), 0)
        self.assertEqual(self.check_pw("carl@example.test", "new-pass"), 0)
        r = self.ctl("user", "passwd", "nobody@example.test", stdin="x-pass\n")
        self.assertNotEqual(r.returncode, 0)
        self.assertNotIn("nobody@example.test", self.listed())

    def test_del(self):
        self.assertEqual(self.ctl("user", "add", "dora@example.test", stdin="dora-pass\n").returncode, 0)
        r = self.ctl("user", "del", "dora@example.test")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("dora@example.test", self.listed())
        self.assertNotEqual(self.check_pw("dora@example.test", "dora-pass"), 0)
        self.assertNotEqual(self.ctl("user", "del", "dora@example.test").returncode, 0)
        self.assertIn("demo@example.test", self.listed())

    def test_add_existing_fails(self):
        r = self.ctl("user", "add", "demo@example.test", stdin="other-pass\n")
        self.assertNotEqual(r.returncode, 0)
        self.assertEqual(self.check_pw("demo@example.test", PASSWORD), 0)
        self.assertNotEqual(self.check_pw("demo@example.test", "other-pass"), 0)
        self.assertEqual(self.listed().count("demo@example.test"), 1)

    def test_add_nonlocal_fails(self):
        r = self.ctl("user", "add", "eve@other.test", stdin="eve-pass\n")
        self.assertNotEqual(r.returncode, 0)
        self.assertNotIn("eve@other.test", self.listed())

    def test_add_invalid_fails(self):
        for user in ("no-at-sign", "a%b@example.test", "a!b@example.test", "../x@example.test",
                     "a b@example.test", "@example.test"):
            with self.subTest(user=user):
                self.assertNotEqual(self.ctl("user", "add", user, stdin="pw-pass\n").returncode, 0)
        self.assertEqual(sorted(self.listed()), sorted(set(self.listed())))

    def test_password_stored_hashed(self):
        self.assertEqual(self.ctl("user", "add", "fay@example.test",
                                  stdin="Plain-Text-77\n").returncode, 0)
        with open(os.path.join(self.d.dir, "passwd")) as f:
            text = f.read()
        self.assertNotIn("Plain-Text-77", text)
        self.assertNotIn(PASSWORD, text)
        for l in text.splitlines():
            if l.strip() and not l.startswith("#"):
                self.assertRegex(l, r"^[^:\s]+@[^:\s]+:\{[A-Z0-9.-]+\}\$")

    def rcpt(self, addr):
        c = self.d.client()
        self.addCleanup(c.close)
        c.ehlo()
        self.assertEqual(c.cmd("MAIL FROM:<a@b.test>").code, 250)
        return c.cmd("RCPT TO:<%s>" % addr)

    def test_running_daemon_sees_user_changes(self):
        r = self.rcpt("gus@example.test")
        self.assertEqual((r.code, r.enhanced), (550, "5.1.1"), r)
        self.assertEqual(self.ctl("user", "add", "gus@example.test", stdin="gus-pass\n").returncode, 0)
        deadline = time.monotonic() + 5
        while True:
            r = self.rcpt("gus@example.test")
            if r.code == 250 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual((r.code, r.enhanced), (250, "2.1.5"), r)
        self.assertEqual(self.ctl("user", "del", "gus@example.test").returncode, 0)
        deadline = time.monotonic() + 5
        while True:
            r = self.rcpt("gus@example.test")
            if r.code == 550 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual((r.code, r.enhanced), (550, "5.1.1"), r)


class RunUser(unittest.TestCase):
    """`user = "nobody"`: the daemon binds, creates its directories for that
    user, drops privileges, and refuses to start when what it must read later
    (the passwd-file for lookups and reloads) is unreadable as that user."""

    def test_unreadable_passwd_refused_then_readable_works(self):
        import pwd
        nobody = pwd.getpwnam("nobody")
        d = mxtest.Daemon(settings={"user": "nobody"}, start=False)
        self.addCleanup(d.cleanup)
        os.chmod(d.dir, 0o755)        # nobody must reach its files
        os.chmod(d.conf, 0o644)
        passwd = os.path.join(d.dir, "passwd")
        self.assertEqual(os.stat(passwd).st_mode & 0o777, 0o600)
        r = subprocess.run([mxtest.MXGUARD, "-f", "-c", d.conf], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=30, cwd=d.dir)
        self.assertNotEqual(r.returncode, 0, r.stderr)
        self.assertIn("not readable as user \"nobody\"", r.stderr)
        self.assertIn(passwd, r.stderr)

        os.chown(passwd, nobody.pw_uid, nobody.pw_gid)
        d.start()
        c = d.client()
        self.addCleanup(c.close)
        c.ehlo()
        mr, rr, dr, fr = c.transaction("a@b.test", ["demo@example.test"],
                                       mxtest.smtp_data(b"Subject: as nobody\n\nhi\n"))
        self.assertEqual(fr.code, 250, fr)
        files = d.files("new")
        self.assertEqual(len(files), 1)
        self.assertEqual(os.stat(files[0]).st_uid, nobody.pw_uid)
        self.assertEqual(os.stat(d.mail_root).st_uid, nobody.pw_uid)


if __name__ == "__main__":
    mxtest.main(budget=150)

"""test_deb — the Debian package, built, checked, installed and run.

A copy of the source tree (its git files, as a clean clone has them) is
turned into a .deb by `dpkg-buildpackage -us -uc -b` (DEB_BUILD_OPTIONS=
nocheck: the suites run from scripts/check), lintian must report no error,
and `dpkg -i` installs it on this machine: the system user mxguard, the
conffile /etc/mxguard/mxguard.conf, /var/lib/mxguard owned by mxguard, the
systemd unit (enabled), the man pages. Then the service runs — through
systemctl when systemd is PID 1, else the installed daemon as root with
(a copy of) the installed config, which drops to mxguard — on free loopback
ports, and a message sent with smtplib to a user added with the installed
mxguardctl lands in its Maildir under /var/lib/mxguard. An upgrade (the
package repacked with a higher version) keeps the admin's edited conffile,
the users and the mail. `dpkg -r` keeps the
config and the mail, `dpkg -P` removes the config, the spool, the unit's
enablement and (once it holds no mail) /var/lib/mxguard, and keeps the
system user (debian/mxguard.postrm says why).

This test changes the machine (it needs root and dpkg): it purges an
installed mxguard package first and leaves none behind, nor a daemon. It
builds the whole project again, so scripts/check runs it in the plain
flavour only (ONCE_TESTS in Makefile.am).
"""

import glob
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
import unittest
import uuid

import mxtest

PKG = "mxguard"
CONF = "/etc/mxguard/mxguard.conf"
LIB = "/var/lib/mxguard"
SPOOL = "/var/spool/mxguard"
UNIT = "/lib/systemd/system/mxguard.service"
WANTS = "/etc/systemd/system/multi-user.target.wants/mxguard.service"
MANS = ("/usr/share/man/man8/mxguard.8.gz", "/usr/share/man/man8/mxguardctl.8.gz",
        "/usr/share/man/man5/mxguard.conf.5.gz")
USER = "debtest@example.test"
MAILDIR = os.path.join(LIB, "mail", "example.test", "debtest")
# dpkg-query's answer for a package that is not there (purged)
GONE = ("", "unknown ok not-installed")


def run(args, timeout=120, **kw):
    return subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=timeout, **kw)


def systemd_running():
    try:
        with open("/proc/1/comm") as f:
            return f.read().strip() == "systemd"
    except OSError:
        return False


def pkg_status():
    """dpkg's status of the package ("" when dpkg has never heard of it)."""
    r = run(["dpkg-query", "-W", "-f=${Status}", PKG])
    return r.stdout.strip() if r.returncode == 0 else ""


def dpkg(*args):
    """dpkg, retried (bounded) while something else holds its lock: other
    work on the machine may be running apt."""
    deadline = time.monotonic() + 300
    while True:
        r = run(["dpkg"] + list(args), timeout=300,
                env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        if r.returncode == 0 or not re.search(r"frontend lock|database is locked", r.stdout) \
                or time.monotonic() > deadline:
            return r
        time.sleep(2)


def purge():
    if pkg_status() not in GONE:
        r = dpkg("-P", PKG)
        assert r.returncode == 0, r.stdout


def copy_source(dst):
    """The source tree's git files (what a clean clone has), else the tree
    without build output."""
    src = mxtest.MX_SRCDIR
    r = subprocess.run(["git", "-C", src, "ls-files", "-z"], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, timeout=60)
    names = [n for n in r.stdout.decode().split("\0") if n] if r.returncode == 0 else []
    if names:
        for n in names:
            s = os.path.join(src, n)
            if not os.path.lexists(s):
                continue  # deleted in the work tree
            d = os.path.join(dst, n)
            os.makedirs(os.path.dirname(d), exist_ok=True)
            shutil.copy2(s, d, follow_symlinks=False)
    else:
        shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".git", "build-*", "autom4te.cache",
                                                      "*.o", "*.a", "config.status", "config.log"))


def port_answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class _Stopper:
    """Put among mxtest's live daemons, so that its watchdog (and an early
    exit) stops the installed daemon this file started."""

    def cleanup(self):
        DebPackage.stop_daemon()


class DebPackage(unittest.TestCase):
    """The tests run in order (the names say it) on one build and install."""

    proc = None
    top = None

    @classmethod
    def setUpClass(cls):
        try:
            cls.build()
        except BaseException:
            if cls.top:
                shutil.rmtree(cls.top, ignore_errors=True)
            raise

    @classmethod
    def build(cls):
        if os.geteuid() != 0:
            raise RuntimeError("test_deb installs a package: it must run as root")
        for tool in ("dpkg-buildpackage", "dh", "lintian", "fakeroot"):
            if shutil.which(tool) is None:
                raise RuntimeError("%s is missing: run scripts/install-deps" % tool)
        with mxtest._lock:
            mxtest._live_daemons.add(_Stopper())
        cls.top = tempfile.mkdtemp(prefix="mxtest-deb-")
        purge()
        src = os.path.join(cls.top, "mxguard")
        copy_source(src)
        env = {k: v for k, v in os.environ.items()
               if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")
               and not k.startswith(("ASAN_", "UBSAN_", "DEB_"))}
        env["DEB_BUILD_OPTIONS"] = "nocheck parallel=2"
        env["LC_ALL"] = "C.UTF-8"
        r = run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, env=env, timeout=600)
        with open(os.path.join(cls.top, "build.log"), "w") as f:
            f.write(r.stdout)
        if r.returncode != 0:
            raise AssertionError("dpkg-buildpackage failed:\n" + r.stdout[-4000:])
        debs = [d for d in glob.glob(os.path.join(cls.top, "mxguard_*.deb"))]
        assert len(debs) == 1, debs
        cls.deb = debs[0]
        cls.changes = glob.glob(os.path.join(cls.top, "mxguard_*.changes"))[0]

    @classmethod
    def tearDownClass(cls):
        cls.stop_daemon()
        try:
            purge()
        finally:
            shutil.rmtree(MAILDIR, ignore_errors=True)
            shutil.rmtree(cls.top, ignore_errors=True)

    @classmethod
    def stop_daemon(cls):
        if systemd_running() and os.path.exists(UNIT):
            run(["systemctl", "stop", "mxguard"], timeout=60)
        p, cls.proc = cls.proc, None
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=mxtest.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)

    # ------------------------------------------------------------ build
    def test_01_lintian(self):
        r = run(["lintian", "--pedantic", "--info", "--display-info", self.changes], timeout=300)
        print(r.stdout)
        errors = [l for l in r.stdout.splitlines() if l.startswith("E:")]
        self.assertEqual(errors, [])

    def test_02_contents(self):
        r = run(["dpkg-deb", "-c", self.deb])
        self.assertEqual(r.returncode, 0, r.stdout)
        for want in ("./usr/sbin/mxguard", "./usr/sbin/mxguardctl", "." + CONF,
                     "." + UNIT, "./usr/share/mxguard/rules/mxguard.cf",
                     "./usr/share/doc/mxguard/admin-guide.md.gz") + tuple("." + m for m in MANS):
            self.assertRegex(r.stdout, r"\s%s\n" % re.escape(want))
        r = run(["dpkg-deb", "-f", self.deb, "Depends"])
        self.assertIn("adduser", r.stdout)
        self.assertIn("libevent", r.stdout, "shlibs:Depends is filled in")
        # the unit: every placeholder filled in, and Type=notify only from a
        # daemon that can notify (systemd would wait for READY=1 in vain)
        with open(os.path.join(self.top, "mxguard", "debian", "mxguard", UNIT.lstrip("/"))) as f:
            unit = f.read()
        self.assertNotRegex(unit, r"@[A-Za-z_]+@")
        self.assertIn("ExecStart=/usr/sbin/mxguard -f -c %s\n" % CONF, unit)
        if re.search(r"^Type=notify$", unit, re.M):
            self.assertIn("libsystemd0", r.stdout, "Type=notify, but mxguard is built without sd_notify")

    def test_03_build_depends_cover_the_libraries(self):
        """Every library package the .deb depends on (dpkg-shlibdeps found
        it linked) has its -dev package in Build-Depends (or pulled in by
        one named there): a library that configure.ac gains must be added
        to debian/control, or a clean build (a chroot, a buildd) fails."""
        word = r"([a-z0-9][a-z0-9.+-]+)"

        def names(field):
            return set(re.findall(word, re.sub(r"\([^)]*\)|<[^>]*>|\[[^\]]*\]", "", field)))
        with open(os.path.join(self.top, "mxguard", "debian", "control")) as f:
            m = re.search(r"^Build-Depends:(.*?)^\S", f.read(), re.M | re.S)
        covered = names(m.group(1))
        for p in list(covered):
            covered |= names(run(["dpkg-query", "-W", "-f=${Depends}", p]).stdout)
        # the -dev packages installed here, and what each depends on
        devs = {}
        for line in run(["dpkg-query", "-W", "-f=${Package}\t${Depends}\n"]).stdout.splitlines():
            pkg, _, deps = line.partition("\t")
            if pkg.endswith("-dev"):
                devs[pkg] = names(deps)
        runtime = names(run(["dpkg-deb", "-f", self.deb, "Depends"]).stdout) - {"adduser", "libc6"}
        self.assertIn("libssl3", runtime)
        missing = []
        for lib in sorted(runtime):
            providers = {d for d, deps in devs.items() if lib in deps}
            if not providers & covered:
                missing.append("%s (from %s)" % (lib, ", ".join(sorted(providers)) or "?"))
        self.assertEqual(missing, [], "libraries linked but not in debian/control's Build-Depends")

    # ---------------------------------------------------------- install
    def test_04_install(self):
        r = dpkg("-i", self.deb)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertEqual(pkg_status(), "install ok installed")
        pw = pwd.getpwnam("mxguard")
        self.assertLess(pw.pw_uid, 1000, "a system user")
        self.assertEqual(os.path.basename(pw.pw_shell), "nologin")
        r = run(["getent", "group", "mxguard"])
        self.assertEqual(r.returncode, 0, "group mxguard")
        r = run(["dpkg-query", "-W", "-f=${Conffiles}", PKG])
        self.assertRegex(r.stdout, r"^\s*%s [0-9a-f]{32}\s*$" % re.escape(CONF))
        for d in (LIB, SPOOL):
            st = os.stat(d)
            self.assertEqual((st.st_uid, st.st_gid, st.st_mode & 0o777),
                             (pw.pw_uid, pw.pw_gid, 0o750), d)
        st = os.stat("/etc/mxguard/passwd")
        self.assertEqual((st.st_uid, st.st_mode & 0o777), (pw.pw_uid, 0o600))
        self.assertTrue(os.path.isfile(UNIT))
        if systemd_running():
            r = run(["systemctl", "is-enabled", "mxguard"])
            self.assertEqual(r.stdout.strip(), "enabled", r.stdout)
        else:
            # deb-systemd-helper enables it without systemd running, and
            # nothing was started
            self.assertEqual(os.readlink(WANTS), UNIT)
        for m in MANS:
            self.assertTrue(os.path.isfile(m), m)
            if shutil.which("man"):
                name, sect = os.path.basename(m)[:-3].rsplit(".", 1)
                r = run(["man", "-w", sect, name])
                self.assertEqual(r.stdout.strip(), m)

    def test_05_config(self):
        with open(CONF) as f:
            text = f.read()
        self.assertIn('\nuser = "mxguard"\n', text)
        self.assertIn('\nmail_root = "%s/mail"\n' % LIB, text)
        self.assertNotIn("./var", text)
        r = run(["/usr/sbin/mxguard", "-t", "-c", CONF])
        self.assertEqual(r.returncode, 0, r.stdout)

    # ---------------------------------------------------------- run it
    def test_06_service_delivers(self):
        with open(CONF) as f:
            text = f.read()
        ports = []

        def new_port(m):
            ports.append(mxtest.free_port())
            return '%s"127.0.0.1:%d"' % (m.group(1), ports[-1])
        # every listener (the first is SMTP) on a free loopback port
        text = re.sub(r'(?m)^(\s+address = )"[^"]*:\d+"', new_port, text)
        self.assertGreaterEqual(len(ports), 1)
        self.assertIn('listen smtp {\n\taddress = "127.0.0.1:%d"' % ports[0], text)
        if systemd_running():
            conf = CONF  # the unit names it: edit the conffile itself
        else:
            d = os.path.join(self.top, "etc")
            os.mkdir(d)
            os.chmod(self.top, 0o755)  # the daemon rereads it as mxguard
            os.chmod(d, 0o755)
            conf = os.path.join(d, "mxguard.conf")
        with open(conf, "w") as f:
            f.write(text)
        os.chmod(conf, 0o644)

        r = run(["/usr/sbin/mxguardctl", "-c", conf, "user", "add", USER], input=mxtest.PASSWORD + "\n")
        self.assertEqual(r.returncode, 0, r.stdout)
        r = run(["/usr/sbin/mxguardctl", "-c", conf, "user", "list"])
        self.assertIn(USER, r.stdout)
        self.assertEqual(os.stat("/etc/mxguard/passwd").st_uid, pwd.getpwnam("mxguard").pw_uid,
                         "mxguardctl kept the daemon's user as the owner")

        log_path = os.path.join(self.top, "mxguard.log")
        if systemd_running():
            r = run(["systemctl", "restart", "mxguard"], timeout=60)
            self.assertEqual(r.returncode, 0, r.stdout)
            pid = int(run(["systemctl", "show", "-p", "MainPID", "--value", "mxguard"]).stdout)
        else:
            log = open(log_path, "w")
            type(self).proc = subprocess.Popen(["/usr/sbin/mxguard", "-f", "-c", conf], cwd="/",
                                               stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            log.close()
            pid = self.proc.pid
        deadline = time.monotonic() + mxtest.START_TIMEOUT
        while not port_answers(ports[0]):
            if self.proc is not None and self.proc.poll() is not None:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not port_answers(ports[0]):
            if os.path.exists(log_path):
                with open(log_path) as f:
                    out = f.read()
            else:
                out = run(["journalctl", "-u", "mxguard", "-n", "50"]).stdout
            self.fail("mxguard did not answer on port %d:\n%s" % (ports[0], out))

        # it drops to the package's system user (after binding: the port
        # answers before that, so wait for it, bounded)
        want = pwd.getpwnam("mxguard").pw_uid
        said = "running as user=mxguard uid=%d" % want
        deadline = time.monotonic() + mxtest.START_TIMEOUT
        while True:
            with open("/proc/%d/status" % pid) as f:
                euid = int(re.search(r"^Uid:\s+\d+\s+(\d+)", f.read(), re.M).group(1))
            if self.proc is None:
                logged = True  # systemd: the journal has it
            else:
                with open(log_path) as f:
                    logged = said in f.read()
            if (euid == want and logged) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(euid, want, "mxguard runs as the user mxguard")
        self.assertTrue(logged, "the log says: " + said)

        subject = "deb-%s" % uuid.uuid4().hex
        msg = ("From: Sender <sender@example.org>\r\nTo: <%s>\r\nSubject: %s\r\n"
               "Date: %s\r\nMessage-ID: <%s@example.org>\r\n\r\n"
               "Sent through the installed package.\r\n" %
               (USER, subject, time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime()),
                subject))
        with smtplib.SMTP("127.0.0.1", ports[0], timeout=mxtest.SOCK_TIMEOUT) as s:
            s.ehlo("client.example.org")
            s.mail("sender@example.org")
            code, reply = s.rcpt(USER)
            self.assertEqual(code, 250, reply)
            code, reply = s.data(msg.encode())
            self.assertEqual(code, 250, reply)

        found = []
        for p in glob.glob(os.path.join(MAILDIR, "new", "*")):
            with open(p, "rb") as f:
                if subject.encode() in f.read():
                    found.append(p)
        self.assertEqual(len(found), 1, "the message in %s/new" % MAILDIR)
        self.assertEqual(os.stat(found[0]).st_uid, pwd.getpwnam("mxguard").pw_uid)

        self.stop_daemon()
        if not systemd_running():
            self.assertFalse(port_answers(ports[0]), "stopped")

    # ----------------------------------------------------------- upgrade
    def test_07_upgrade_keeps_the_admins_files(self):
        """A newer package (this one repacked with a higher version and a
        changed shipped config) over an admin-edited conffile: dpkg keeps
        the admin's file (--force-confold) and puts the new one beside it;
        users, mail and the system user stay."""
        tree = os.path.join(self.top, "repack")
        r = run(["dpkg-deb", "-R", self.deb, tree])
        self.assertEqual(r.returncode, 0, r.stdout)
        control = os.path.join(tree, "DEBIAN", "control")
        with open(control) as f:
            text = f.read()
        version = re.search(r"^Version: (\S+)$", text, re.M).group(1) + "+upgrade1"
        with open(control, "w") as f:
            f.write(re.sub(r"^Version: .*$", "Version: " + version, text, flags=re.M))
        with open(os.path.join(tree, CONF.lstrip("/")), "a") as f:
            f.write("# a setting the newer release added\n")
        newer = os.path.join(self.top, "mxguard_upgrade.deb")
        r = run(["dpkg-deb", "--root-owner-group", "-b", tree, newer])
        self.assertEqual(r.returncode, 0, r.stdout)

        with open(CONF, "a") as f:
            f.write("# the admin's change\n")
        uid = pwd.getpwnam("mxguard").pw_uid
        mail = glob.glob(os.path.join(MAILDIR, "new", "*"))
        self.assertTrue(mail)
        r = dpkg("--force-confold", "-i", newer)
        self.assertEqual(r.returncode, 0, r.stdout)
        r = run(["dpkg-query", "-W", "-f=${Status} ${Version}", PKG])
        self.assertEqual(r.stdout, "install ok installed " + version)
        with open(CONF) as f:
            self.assertIn("# the admin's change\n", f.read())
        with open(CONF + ".dpkg-dist") as f:
            self.assertIn("# a setting the newer release added\n", f.read())
        r = run(["/usr/sbin/mxguardctl", "-c", CONF, "user", "list"])
        self.assertIn(USER, r.stdout)
        self.assertEqual(glob.glob(os.path.join(MAILDIR, "new", "*")), mail)
        self.assertEqual(pwd.getpwnam("mxguard").pw_uid, uid)
        self.assertEqual(os.stat(LIB).st_uid, uid)

    # ------------------------------------------------- remove and purge
    def test_08_remove_keeps_config_and_mail(self):
        r = dpkg("-r", PKG)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertEqual(pkg_status(), "deinstall ok config-files")
        self.assertFalse(os.path.exists("/usr/sbin/mxguard"))
        self.assertFalse(os.path.exists(UNIT))
        self.assertTrue(os.path.isfile(CONF))
        self.assertTrue(os.path.isfile("/etc/mxguard/passwd"))
        self.assertTrue(glob.glob(os.path.join(MAILDIR, "new", "*")))

    def test_09_purge(self):
        r = dpkg("-P", PKG)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn(pkg_status(), GONE)
        for gone in ("/etc/mxguard", SPOOL, "/run/mxguard", WANTS, UNIT):
            self.assertFalse(os.path.lexists(gone), gone)
        # the mail is kept (and said so), the system user too
        self.assertIn("keeping /var/lib/mxguard", r.stdout)
        self.assertTrue(glob.glob(os.path.join(MAILDIR, "new", "*")))
        pwd.getpwnam("mxguard")

        # without mail, purge removes /var/lib/mxguard too (and a second
        # install keeps the existing user)
        shutil.rmtree(MAILDIR)
        uid = pwd.getpwnam("mxguard").pw_uid
        r = dpkg("-i", self.deb)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertEqual(pwd.getpwnam("mxguard").pw_uid, uid)
        r = dpkg("-P", PKG)
        self.assertEqual(r.returncode, 0, r.stdout)
        for gone in ("/etc/mxguard", LIB, SPOOL, "/usr/sbin/mxguard", UNIT, WANTS):
            self.assertFalse(os.path.lexists(gone), gone)
        self.assertIn(pkg_status(), GONE)


if __name__ == "__main__":
    mxtest.main(budget=900)

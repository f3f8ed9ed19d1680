"""test_service — mxguard run the way a service manager runs it.

- Started as root on a privileged port (a free one below 1024, picked at run
  time) with `user` set to a system user the test creates (useradd, removed
  at the end): the process's real, effective and saved uid and gid are that
  user's once it serves (/proc/PID/status), its supplementary groups are the
  user's, the directories it creates and the messages it delivers are owned
  by that user.
- Started as root with no user: refused, at start and by -t, with a line
  that says why; run_as_root = true lets it run.
- SIGHUP with a broken config keeps serving with the old config (the log
  says why, mxguard_config_reloads_total{result="failed"} counts it), and
  the fixed config reloads.
- sd_notify (when built with libsystemd): READY=1 after start, RELOADING=1
  then READY=1 around a SIGHUP (a failed one says why in STATUS=),
  STOPPING=1 at SIGTERM, on a NOTIFY_SOCKET of the test's own (a real
  datagram socket, as systemd makes).
- syslog_facility takes the syslog names and refuses others with file:line.
The tests that need root skip without it (CI runs them as root).
"""
import grp
import os
import pwd
import random
import re
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import mxtest
from mxtest import Daemon

ROOT = os.geteuid() == 0


def low_port():
    """A free TCP port below 1024 on 127.0.0.1, picked at random."""
    ports = list(range(600, 1024))
    random.shuffle(ports)
    for p in ports:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
            return p
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free port below 1024")


def proc_ids(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Uid", "Gid", "Groups"):
                out[k] = [int(x) for x in v.split()]
    return out


def send_one(d, subject):
    c = d.client()
    try:
        c.ehlo()
        mr, rr, dr, fr = c.transaction("a@b.test", ["demo@example.test"],
                                       mxtest.smtp_data(b"Subject: " + subject + b"\n\nhi\n"))
        return fr
    finally:
        c.close()


def have_systemd():
    builddir = os.environ.get("MX_BUILDDIR") or os.path.dirname(mxtest.MXGUARD)
    try:
        with open(os.path.join(builddir, "config.h")) as f:
            return "#define HAVE_SYSTEMD 1" in f.read()
    except OSError:
        return False


@unittest.skipUnless(ROOT, "needs root (useradd, a port below 1024)")
class RootToUser(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.user = "mxgt%06x" % random.getrandbits(24)
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", "--user-group", cls.user], check=True,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        cls.pw = pwd.getpwnam(cls.user)

    @classmethod
    def tearDownClass(cls):
        subprocess.run(["userdel", cls.user], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)

    def test_privileged_port_then_user(self):
        d = Daemon(settings={"user": self.user}, start=False)
        self.addCleanup(d.cleanup)
        d.port = low_port()
        d.write_config()
        os.chmod(d.dir, 0o755)     # the user must reach its files
        os.chmod(d.conf, 0o644)
        os.chown(os.path.join(d.dir, "passwd"), self.pw.pw_uid, self.pw.pw_gid)
        d.start()
        self.assertLess(d.port, 1024)
        ids = proc_ids(d.pid)
        self.assertEqual(ids["Uid"], [self.pw.pw_uid] * 4, ids)  # real, effective, saved, fs
        self.assertEqual(ids["Gid"], [self.pw.pw_gid] * 4, ids)
        want_groups = {g.gr_gid for g in grp.getgrall() if self.user in g.gr_mem}
        want_groups.add(self.pw.pw_gid)
        self.assertEqual(set(ids["Groups"]), want_groups, ids)
        # threads too (setuid applies to every thread: glibc's setxid)
        for tid in os.listdir("/proc/%d/task" % d.pid):
            with open("/proc/%d/task/%s/status" % (d.pid, tid)) as f:
                uid = re.search(r"^Uid:\s+(\d+)", f.read(), re.M).group(1)
            self.assertEqual(int(uid), self.pw.pw_uid, tid)
        # what it creates is the user's
        fr = send_one(d, b"as the run user")
        self.assertEqual(fr.code, 250, fr)
        files = d.files("new")
        self.assertEqual(len(files), 1)
        for path in files + [d.mail_root, os.path.join(d.dir, "spool"),
                             os.path.join(d.dir, "state"), os.path.join(d.dir, "quarantine")]:
            st = os.stat(path)
            self.assertEqual((st.st_uid, st.st_gid), (self.pw.pw_uid, self.pw.pw_gid), path)
        self.assertEqual(d.stop(), 0)


@unittest.skipUnless(ROOT, "needs root")
class RootWithoutUser(unittest.TestCase):
    def test_refused_unless_run_as_root(self):
        d = Daemon(settings={"run_as_root": False}, start=False)
        self.addCleanup(d.cleanup)
        r = subprocess.run([mxtest.MXGUARD, "-f", "-c", d.conf], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=30, cwd=d.dir)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn('%s: started as root with user = "": refusing to serve as root' % d.conf,
                      r.stderr)
        # nothing was bound or written
        self.assertFalse(os.path.exists(os.path.join(d.dir, "state", "mxguard.pid")))
        r = subprocess.run([mxtest.MXGUARD, "-t", "-c", d.conf], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, timeout=30,
                           cwd=d.dir)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("refusing to serve as root", r.stderr)
        d.settings["run_as_root"] = True
        d.write_config()
        d.start()
        self.assertEqual(proc_ids(d.pid)["Uid"][1], 0)
        self.assertEqual(send_one(d, b"as root, knowingly").code, 250)


class BrokenReload(unittest.TestCase):
    def test_sighup_with_a_broken_config_keeps_serving(self):
        d = Daemon(listen_extra={"metrics": {"protocol": "metrics"}})
        self.addCleanup(d.cleanup)
        keep = d.client()
        self.addCleanup(keep.close)
        keep.ehlo()
        good = d.render_config()
        off = d.log_size()
        d.write_config(good + "limits {\n\tconnections_max = \"many\"\n}\n")
        d.signal(signal.SIGHUP)
        line = d.wait_log(r"reload failed, keeping the running configuration: .*", off)
        self.assertIsNotNone(line, d.log_tail())
        self.assertRegex(d.log_since(off), r"reload failed, keeping the running configuration: "
                         r"%s:\d+: .*connections_max" % re.escape(d.conf))
        # the old config still serves: the session that was open, and new ones
        self.assertEqual(keep.cmd("NOOP").code, 250)
        self.assertEqual(send_one(d, b"after a failed reload").code, 250)
        self.assertTrue(d.running())
        m = subprocess.run(["curl", "-sS", "--max-time", "20",
                            "http://127.0.0.1:%d/metrics" % d.ports["metrics"]],
                           stdout=subprocess.PIPE, universal_newlines=True, timeout=30).stdout
        self.assertIn('mxguard_config_reloads_total{result="failed"} 1\n', m)
        self.assertIn('mxguard_config_reloads_total{result="ok"} 0\n', m)
        # fixed: it reloads
        off = d.log_size()
        d.write_config(good)
        d.signal(signal.SIGHUP)
        self.assertIsNotNone(d.wait_log(r"reloaded configuration", off), d.log_tail())
        self.assertEqual(send_one(d, b"after a good reload").code, 250)


@unittest.skipUnless(have_systemd(), "built without libsystemd")
class Notify(unittest.TestCase):
    def recv(self, sock, want, deadline):
        """Datagrams until one contains `want`; returns them all."""
        got = []
        while time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = sock.recv(4096).decode()
            except socket.timeout:
                break
            got.append(data)
            if want in data.split("\n"):
                return got
        self.fail("no %s from sd_notify; got %r" % (want, got))

    def test_ready_reloading_stopping(self):
        tmp = tempfile.mkdtemp(prefix="mxnotify-")
        path = os.path.join(tmp, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        self.addCleanup(sock.close)
        self.addCleanup(lambda: (os.unlink(path), os.rmdir(tmp)))
        d = Daemon(start=False)
        self.addCleanup(d.cleanup)
        env = dict(os.environ, NOTIFY_SOCKET=path)
        d.start_with(mxtest.START_TIMEOUT, env=env)
        deadline = time.monotonic() + 20
        got = self.recv(sock, "READY=1", deadline)
        ready = [g for g in got if "READY=1" in g.split("\n")][0]
        self.assertIn("MAINPID=%d" % d.pid, ready)
        self.assertRegex(ready, r"STATUS=serving: 1 listener\(s\), 2 loop\(s\)")
        d.signal(signal.SIGHUP)
        got = self.recv(sock, "RELOADING=1", deadline)
        got = self.recv(sock, "READY=1", deadline)
        self.assertRegex(got[-1], r"STATUS=serving \(reloaded ")
        # a broken config: still READY, and the STATUS says why
        good = d.render_config()
        d.write_config(good + "threads = many\n")
        d.signal(signal.SIGHUP)
        got = self.recv(sock, "RELOADING=1", deadline)
        got = self.recv(sock, "READY=1", deadline)
        self.assertRegex(got[-1], r"STATUS=serving; the last reload failed: %s:\d+: "
                         % re.escape(d.conf))
        d.write_config(good)
        d.proc.send_signal(signal.SIGTERM)
        got = self.recv(sock, "STOPPING=1", deadline)
        self.assertEqual(d.proc.wait(30), 0)


class Facility(unittest.TestCase):
    def test_syslog_facility_names(self):
        d = Daemon(settings={"syslog_facility": "local3"}, start=False)
        self.addCleanup(d.cleanup)
        r = subprocess.run([mxtest.MXGUARD, "-t", "-c", d.conf], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, timeout=30,
                           cwd=d.dir)
        self.assertEqual(r.returncode, 0, r.stderr)
        d.settings["syslog_facility"] = "kern"
        d.write_config()
        r = subprocess.run([mxtest.MXGUARD, "-t", "-c", d.conf], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, timeout=30,
                           cwd=d.dir)
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr, r"%s:\d+: syslog_facility = \"kern\"" % re.escape(d.conf))


if __name__ == "__main__":
    mxtest.main(budget=120)

#!/usr/bin/env python3
"""The daemon core as an admin meets it: start-up checks and their order,
data directories, the pid file, detaching, listeners per loop thread,
reloads that cannot apply everything, the shutdown deadline, the service a
listener names, and how command lines end."""

import os
import pwd
import re
import signal
import socket
import subprocess
import time
import unittest

import mxtest
from mxtest import DaemonTestCase, smtp_data, queued_id


def run(args, cwd=None, timeout=30):
    return subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout,
                          cwd=cwd)


def wait_for(pred, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Directories(unittest.TestCase):
    """Only directories the daemon creates are handed to the run user; an
    existing one with another owner is refused, by `-t` and at start."""

    def daemon(self):
        d = mxtest.Daemon(settings={"user": "nobody"}, start=False)
        self.addCleanup(d.cleanup)
        os.chmod(d.dir, 0o755)
        os.chmod(d.conf, 0o644)
        nobody = pwd.getpwnam("nobody")
        os.chown(os.path.join(d.dir, "passwd"), nobody.pw_uid, nobody.pw_gid)
        return d, nobody

    def test_existing_directory_of_another_user_is_refused(self):
        d, nobody = self.daemon()
        spool = os.path.join(d.dir, "spool")
        os.makedirs(spool, mode=0o750)          # root's, like /var/tmp would be
        for args in ([mxtest.MXGUARD, "-t", "-c", d.conf], [mxtest.MXGUARD, "-f", "-c", d.conf]):
            with self.subTest(args=args[1]):
                r = run(args, cwd=d.dir)
                self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
                self.assertIn("spool_dir %s belongs to uid 0, not to nobody" % spool, r.stderr)
        self.assertEqual(os.stat(spool).st_uid, 0, "the daemon changed an existing directory")

    def test_created_directories_belong_to_the_run_user(self):
        d, nobody = self.daemon()
        d.start()
        for sub in ("mail", "spool", "state", "quarantine"):
            st = os.stat(os.path.join(d.dir, sub))
            self.assertEqual((st.st_uid, st.st_mode & 0o777), (nobody.pw_uid, 0o750), sub)

    def test_world_writable_directory_is_refused(self):
        d = mxtest.Daemon(start=False)
        self.addCleanup(d.cleanup)
        os.chmod(os.path.join(d.dir, "spool"), 0o1777)
        r = run([mxtest.MXGUARD, "-t", "-c", d.conf], cwd=d.dir)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("is writable by everyone (mode 1777)", r.stderr)

    def test_check_reads_files_as_the_run_user(self):
        d, nobody = self.daemon()
        os.chown(os.path.join(d.dir, "passwd"), 0, 0)     # 0600 root: nobody cannot read
        r = run([mxtest.MXGUARD, "-t", "-c", d.conf], cwd=d.dir)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn('not readable as user "nobody"', r.stderr)


class PidFileAndDetach(unittest.TestCase):
    def test_pid_file_locked_and_removed(self):
        d = mxtest.Daemon()
        self.addCleanup(d.cleanup)
        pidfile = os.path.join(d.dir, "state", "mxguard.pid")
        with open(pidfile) as f:
            self.assertEqual(int(f.read()), d.pid)
        # a second daemon on the same state_dir would share the ports
        r = run([mxtest.MXGUARD, "-f", "-c", d.conf], cwd=d.dir)
        self.assertEqual(r.returncode, 1)
        self.assertIn("another mxguard is running", r.stderr)
        self.assertIn("(pid %d)" % d.pid, r.stderr)
        self.assertEqual(d.stop(), 0)
        self.assertFalse(os.path.exists(pidfile), "pid file left behind after a clean stop")

    def test_bad_config_fails_before_detaching(self):
        d = mxtest.Daemon(start=False)
        self.addCleanup(d.cleanup)
        with open(d.conf, "a") as f:
            f.write("no_such_setting = 1\n")
        r = run([mxtest.MXGUARD, "-c", d.conf], cwd=d.dir)     # no -f
        self.assertEqual(r.returncode, 1, "a broken config must not exit 0 in the background")
        self.assertIn("no_such_setting", r.stderr)

    def test_detached_daemon_writes_its_own_pid(self):
        d = mxtest.Daemon(start=False)
        self.addCleanup(d.cleanup)
        pidfile = os.path.join(d.dir, "state", "mxguard.pid")
        r = run([mxtest.MXGUARD, "-c", d.conf], cwd=d.dir)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(wait_for(lambda: os.path.exists(pidfile) and os.path.getsize(pidfile) > 0))
        with open(pidfile) as f:
            pid = int(f.read())
        self.addCleanup(lambda: os.path.exists("/proc/%d" % pid) and os.kill(pid, signal.SIGKILL))
        c = d.client()
        self.addCleanup(c.close)
        self.assertEqual(c.greeting.code, 220)
        c.cmd("QUIT")
        os.kill(pid, signal.SIGTERM)
        self.assertTrue(wait_for(lambda: not os.path.exists(pidfile)), "pid file not removed")


class Listeners(unittest.TestCase):
    def test_one_socket_per_loop_thread(self):
        d = mxtest.Daemon(settings={"threads": 3})
        self.addCleanup(d.cleanup)
        out = run(["ss", "-Hltn", "sport = :%d" % d.port]).stdout
        self.assertEqual(len(out.strip().splitlines()), 3, out)
        # and every one of them serves
        for _ in range(6):
            c = d.client()
            self.assertEqual(c.greeting.code, 220)
            c.cmd("QUIT")
            c.close()

    def test_unknown_protocol_is_refused(self):
        d = mxtest.Daemon(start=False, extra_conf='listen news {\n\taddress = "127.0.0.1:%d"\n'
                          '\tprotocol = "nntp"\n}\n' % mxtest.free_port())
        self.addCleanup(d.cleanup)
        r = run([mxtest.MXGUARD, "-t", "-c", d.conf], cwd=d.dir)
        self.assertEqual(r.returncode, 1)
        with open(d.conf) as f:
            lines = f.read().splitlines()
        line = lines.index("listen news {") + 2          # its address line
        self.assertIn('%s:%d: listen news: protocol = "nntp": no such service (this build '
                      'has: smtp, pop3' % (d.conf, line), r.stderr)
        # every row of the service table is named
        self.assertRegex(r.stderr, r"this build has: smtp, pop3(, \w+)*\)")
        self.assertRegex(r.stderr, r"this build has: [^)]*\bimap\b")
        self.assertRegex(r.stderr, r"this build has: [^)]*\bmetrics\b")
        self.assertRegex(r.stderr, r"this build has: [^)]*\bmilter\b")


class Reload(DaemonTestCase):
    def test_listen_and_threads_changes_are_refused_loudly(self):
        d = self.d
        old_port = d.port
        new_port = mxtest.free_port()
        text = d.render_config().replace("127.0.0.1:%d" % old_port, "127.0.0.1:%d" % new_port)
        text = text.replace("threads = 2", "threads = 3")
        off = d.log_size()
        d.write_config(text)
        d.signal(signal.SIGHUP)
        self.assertIsNotNone(d.wait_log(r"reloaded configuration", off))
        log = d.log_since(off)
        self.assertRegex(log, r"warn: reload: the listen sections changed; NOT applied")
        self.assertRegex(log, r"warn: reload: threads = 2 -> 3 NOT applied")
        # still listening where it started
        c = d.client()
        self.addCleanup(c.close)
        self.assertEqual(c.greeting.code, 220)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", new_port), timeout=2).close()
        d.write_config()

    def test_reload_creates_new_directories(self):
        d = self.d
        newq = os.path.join(d.dir, "quarantine2")
        off = d.log_size()
        d.write_config(d.render_config().replace(os.path.join(d.dir, "quarantine"), newq))
        d.signal(signal.SIGHUP)
        self.assertIsNotNone(d.wait_log(r"reloaded configuration", off))
        self.assertTrue(os.path.isdir(newq))
        off = d.log_size()
        d.write_config()
        d.signal(signal.SIGHUP)
        self.assertIsNotNone(d.wait_log(r"reloaded configuration", off))


class ShutdownDeadline(unittest.TestCase):
    def test_cut_session_still_logs_its_end(self):
        d = mxtest.Daemon(limits={"timeout_shutdown": 1})
        self.addCleanup(d.cleanup)
        c = d.client()
        self.addCleanup(c.close)
        c.ehlo()
        self.assertEqual(c.cmd("MAIL FROM:<a@b.test>").code, 250)   # a transaction in flight
        sid = re.search(r"(\w+) smtp connect client=127\.0\.0\.1 port=%d" % c.sock.getsockname()[1],
                        d.log()).group(1)
        self.assertEqual(d.stop(), 0)
        self.assertRegex(d.log(), r"%s smtp disconnected client=127\.0\.0\.1 transactions=0 "
                                  r"reason=shutdown_timeout" % sid)


class LingeringClose(DaemonTestCase):
    def test_a_trickling_peer_cannot_keep_it_open(self):
        # after QUIT the server shuts its write side and drains for up to
        # 2 s; a peer that sends a byte now and then must not stretch that
        # (each read would restart an idle timer) — bounded loop, 12 s
        c = self.client()
        self.assertEqual(c.cmd("QUIT").code, 221)
        closed = False
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline and not closed:
            try:
                c.sock.send(b"x")
            except OSError:
                closed = True
            time.sleep(0.3)
        self.assertTrue(closed, "the lingering close never ended")


class CommandLines(DaemonTestCase):
    """Decided: a bare LF ends a command line (as in Postfix and most MTAs;
    only DATA is strict, where a bare LF never ends the message)."""

    def test_bare_lf_ends_a_command_line(self):
        c = self.client()
        c.sock.sendall(b"EHLO lf.example\nNOOP\n")
        self.assertEqual(c.reply().code, 250)
        self.assertEqual(c.reply().code, 250)

    def test_overlong_line_refused_before_its_end(self):
        c = self.ehlo_client()
        c.sock.sendall(b"NOOP " + b"x" * 2000)          # no line end at all
        r = c.reply()
        self.assertEqual((r.code, r.enhanced), (500, "5.5.6"), r)
        self.assertTrue(c.closed())

    def test_complete_overlong_line_is_an_error_not_a_close(self):
        c = self.ehlo_client()
        c.sock.sendall(b"NOOP " + b"x" * 1200 + b"\r\nNOOP\r\n")
        r = c.reply()
        self.assertEqual((r.code, r.enhanced), (500, "5.5.6"), r)
        self.assertEqual(c.reply().code, 250)


if __name__ == "__main__":
    mxtest.main(budget=240)

"""test_durability — the 250 to the end of DATA comes only after the message
is on stable storage, proven from the system calls the daemon makes.

test_crash kills the daemon with SIGKILL, which keeps the page cache: it
proves the order of the steps, not that they reach the disk. Here the real
daemon runs under strace (-f for its threads, -yy so that every descriptor
is shown with the file or socket it refers to), and for one and for three
recipients the trace must show, for every copy stored in new/:

    openat tmp/NAME = F  ->  write(F)...  (all of the file's octets)
    ->  fsync(F)  ->  rename/renameat2/link of tmp/NAME to new/NAME,S=SIZE
    ->  fsync of the new/ directory  ->  "250 ... queued as TXID" written
        to this client's socket

where "->" means the earlier call had returned before the later one was
entered (strace prints a call that blocks as "<unfinished ...>" and its end
as "<... resumed>"; both lines are used). A missing fsync of a file or of a
directory fails the test.

Needs strace (scripts/install-deps installs it) and permission to ptrace.
"""

import os
import re
import shutil
import signal
import subprocess
import time
import unittest

import mxtest
from mxtest import smtp_data, queued_id

SYSCALLS = ("openat,open,creat,write,writev,pwrite64,pwritev,sendto,sendmsg,"
            "fsync,fdatasync,sync_file_range,rename,renameat,renameat2,link,linkat,"
            "unlink,unlinkat,close")
WRITES = ("write", "writev", "pwrite64", "pwritev")
SENDS = ("write", "writev", "sendto", "sendmsg")
FSYNCS = ("fsync", "fdatasync")
USERS = ("demo@example.test", "alice@example.test", "bob@example.test")


# ------------------------------------------------------------------ trace
class Call:
    """One system call: thread id, name, argument text, result, and the
    trace line numbers where it was entered and where it returned."""

    def __init__(self, tid, name, args, entry):
        self.tid = tid
        self.name = name
        self.args = args
        self.entry = entry
        self.exit = entry
        self.ret = None        # int, or None when unknown ("?")
        self.ret_path = None   # -yy decoding of a returned descriptor

    def __repr__(self):
        return "<line %d-%d tid %d %s(%s) = %s>" % (self.entry, self.exit, self.tid,
                                                    self.name, self.args[:160], self.ret)


LINE_RE = re.compile(r"^(\d+) +\d\d:\d\d:\d\d\.\d+ (.*)$")
START_RE = re.compile(r"^([a-z0-9_]+)\((.*)$")
RESUMED_RE = re.compile(r"^<\.\.\. ([a-z0-9_]+) resumed>(.*)$")
# "...) = 17</path>" or ") = -1 EEXIST (File exists)" or ") = ?"
RESULT_RE = re.compile(r"^(.*)\) += (-?\d+|\?)(?:<(.*)>)?(?: [A-Z]+ \(.*\))?$", re.S)
# a descriptor argument as -yy prints it: 17</a/path> or 16<TCP:[a:1->b:2]>
FD_RE = re.compile(r"^(\d+|AT_FDCWD)(?:<((?:TCP|TCPv6|UDP|UDPv6|UNIX|UNIX-STREAM)"
                   r":\[[^\]]*\]|[^>]*)>)?")
STRING_RE = re.compile(r'"((?:[^"\\]|\\.)*)"(\.\.\.)?')


def unescape(s):
    """strace's C-style escapes (\\n, \\", \\ooo, \\xhh) back to text."""
    out = []
    i = 0
    simple = {"n": "\n", "r": "\r", "t": "\t", "v": "\v", "f": "\f", '"': '"', "\\": "\\"}
    while i < len(s):
        c = s[i]
        if c != "\\" or i + 1 == len(s):
            out.append(c)
            i += 1
            continue
        n = s[i + 1]
        if n in simple:
            out.append(simple[n])
            i += 2
        elif n == "x":
            out.append(chr(int(s[i + 2:i + 4], 16)))
            i += 4
        elif n.isdigit():
            m = re.match(r"[0-7]{1,3}", s[i + 1:])
            out.append(chr(int(m.group(0), 8)))
            i += 1 + len(m.group(0))
        else:
            out.append(n)
            i += 2
    return "".join(out)


def parse_trace(text):
    """Every finished system call of the trace, in entry order."""
    calls = []
    pending = {}
    for no, raw in enumerate(text.splitlines()):
        m = LINE_RE.match(raw)
        if not m:
            continue
        tid, rest = int(m.group(1)), m.group(2)
        if rest.startswith("---") or rest.startswith("+++"):
            continue
        m = RESUMED_RE.match(rest)
        if m:
            call = pending.pop(tid, None)
            if call is None or call.name != m.group(1):
                continue
            call.args += m.group(2)
            tail = call.args
        else:
            m = START_RE.match(rest)
            if not m:
                continue
            call = Call(tid, m.group(1), m.group(2), no)
            calls.append(call)
            tail = call.args
            if tail.endswith(" <unfinished ...>"):
                call.args = tail[:-len(" <unfinished ...>")]
                pending[tid] = call
                continue
        call.exit = no
        r = RESULT_RE.match(tail)
        if r:
            call.args = r.group(1)
            call.ret = None if r.group(2) == "?" else int(r.group(2))
            call.ret_path = r.group(3)
    # a call still pending when the trace ended never returned: unusable
    return [c for c in calls if c.ret is not None]


def first_fd(call):
    """(descriptor number, -yy path or None) of the first argument."""
    m = FD_RE.match(call.args)
    if not m or m.group(1) == "AT_FDCWD":
        return None, None
    return int(m.group(1)), m.group(2)


def strings(call):
    return [unescape(s) for s, _ in STRING_RE.findall(call.args)]


def at_path(dirfd_token, path):
    """A path argument made absolute with its directory descriptor's -yy path."""
    if path.startswith("/"):
        return os.path.normpath(path)
    m = FD_RE.match(dirfd_token.strip())
    base = m.group(2) if m and m.group(2) else ""
    return os.path.normpath(os.path.join(base, path))


def path_args(call):
    """The path arguments of an open/rename/link/unlink call, made absolute
    with the directory descriptor before each (AT_FDCWD</cwd> with -yy)."""
    out = []
    prev = 0
    for m in STRING_RE.finditer(call.args):
        dirfd = call.args[prev:m.start()].strip(", ")
        out.append(at_path(dirfd, unescape(m.group(1))))
        prev = m.end()
    return out


def same_path(a, b):
    """Argument paths are as the daemon spelled them, -yy paths are the
    kernel's: compare them resolved."""
    return a is not None and b is not None and os.path.realpath(a) == os.path.realpath(b)


class FdTracker:
    """What each descriptor refers to, per thread id, from openat results:
    the fallback when -yy printed no path for a descriptor (with -f strace
    shows thread ids, and a descriptor is only ever used here by the thread
    that opened it)."""

    def __init__(self, calls):
        self.calls = calls

    def path_of(self, call):
        fd, path = first_fd(call)
        if path is not None:
            return path
        if fd is None:
            return None
        best = None
        for c in self.calls:
            if c.entry >= call.entry:
                break
            if c.tid != call.tid:
                continue
            if c.name in ("openat", "open", "creat") and c.ret == fd:
                best = c.ret_path or (path_args(c) or [None])[0]
            elif c.name == "close" and first_fd(c)[0] == fd:
                best = None
        return best


# ---------------------------------------------------------------- daemon
def strace_usable():
    if shutil.which("strace") is None:
        return "strace is not installed (scripts/install-deps installs it)"
    r = subprocess.run(["strace", "-f", "-o", os.devnull, "true"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
    if r.returncode != 0:
        return "strace cannot trace here: " + r.stdout.strip()
    return None


class TracedDaemon(mxtest.Daemon):
    """mxguard started as `strace ... mxguard -f -c CONF`. self.proc is
    strace; signals go to the daemon itself (strace's only child), and
    strace exits, with the trace flushed, when the daemon has exited."""

    def start(self, timeout=mxtest.START_TIMEOUT * 3):
        self.trace = os.path.join(self.dir, "strace.out")
        self.daemon_pid = None
        # LeakSanitizer cannot run under ptrace (it exits 1 at the end); the
        # sanitizer build's other checks stay on, and the suite's other files
        # run the same daemon with leak checking
        env = dict(os.environ)
        env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS", ""),
                                                    "detect_leaks=0"]))

        def found_daemon():
            # strace forks short-lived children of its own while it starts:
            # the daemon is the child running our config
            self.daemon_pid = self._child()
            return self.daemon_pid is not None

        self.start_with(timeout, prefix=["strace", "-f", "-tt", "-yy", "-s", "1024", "-e",
                                         "trace=" + SYSCALLS, "-o", self.trace],
                        env=env, ready=found_daemon)

    def _child(self):
        try:
            with open("/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)) as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            return None
        for k in kids:
            try:
                with open("/proc/%d/cmdline" % k, "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv[:1] == [self.binary.encode()] and self.conf.encode() in argv:
                return k
        return None

    def signal(self, sig):
        os.kill(self.daemon_pid, sig)

    def stop(self, timeout=mxtest.STOP_TIMEOUT):
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            return self.proc.returncode
        if self.daemon_pid is not None:
            try:
                os.kill(self.daemon_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            return None

    def kill9(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.daemon_pid is None:
            self.daemon_pid = self._child()
        # the daemon first: strace killed alone would leave it running
        for pid in (self.daemon_pid, self.proc.pid):
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def read_trace(self):
        with open(self.trace, encoding="utf-8", errors="replace") as f:
            return f.read()


# ------------------------------------------------------------------ tests
class TraceParsing(unittest.TestCase):
    """The parser on lines as strace -f -tt -yy prints them, split calls too."""

    TRACE = (
        '7 10:00:00.000001 openat(AT_FDCWD</w>, "m/tmp/a", O_WRONLY|O_CREAT|O_EXCL, 0600) = 5</w/m/tmp/a>\n'
        '7 10:00:00.000002 writev(5</w/m/tmp/a>, [{iov_base="x\\n", iov_len=2}], 1 <unfinished ...>\n'
        '8 10:00:00.000003 write(9<TCP:[127.0.0.1:25->127.0.0.1:4000]>, "220 hi\\r\\n", 8) = 8\n'
        '7 10:00:00.000004 <... writev resumed>) = 2\n'
        '7 10:00:00.000005 fsync(5) = 0\n'
        '7 10:00:00.000006 renameat2(AT_FDCWD</w>, "m/tmp/a", AT_FDCWD</w>, "m/new/a,S=2", RENAME_NOREPLACE) = 0\n'
        '7 10:00:00.000007 renameat2(AT_FDCWD</w>, "m/tmp/b", AT_FDCWD</w>, "m/new/b", RENAME_NOREPLACE) = -1 EEXIST (File exists)\n'
        '7 10:00:00.000008 --- SIGHUP {si_signo=SIGHUP} ---\n'
        '7 10:00:00.000009 fsync(6 <unfinished ...>\n'
        '7 10:00:00.000010 +++ exited with 0 +++\n')

    def test_parse(self):
        calls = parse_trace(self.TRACE)
        self.assertEqual([c.name for c in calls],
                         ["openat", "writev", "write", "fsync", "renameat2", "renameat2"])
        op, wv, wr, fs, mv, taken = calls
        self.assertEqual((op.ret, op.ret_path, path_args(op)), (5, "/w/m/tmp/a", ["/w/m/tmp/a"]))
        self.assertEqual((wv.entry, wv.exit, wv.ret), (1, 3, 2))
        self.assertEqual(first_fd(wv), (5, "/w/m/tmp/a"))
        self.assertEqual(first_fd(wr), (9, "TCP:[127.0.0.1:25->127.0.0.1:4000]"))
        self.assertEqual(strings(wr), ["220 hi\r\n"])
        # no -yy path on the fsync: found from the open by descriptor and thread
        self.assertEqual(first_fd(fs), (5, None))
        self.assertEqual(FdTracker(calls).path_of(fs), "/w/m/tmp/a")
        self.assertEqual(path_args(mv), ["/w/m/tmp/a", "/w/m/new/a,S=2"])
        self.assertEqual(taken.ret, -1)


class Durability(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        why = strace_usable()
        if why:
            raise unittest.SkipTest(why)

    def setUp(self):
        self.d = TracedDaemon(users=USERS, limits={"spill_threshold": 65536})
        self.addCleanup(self.d.cleanup)

    def deliver_traced(self, rcpts, message):
        """One transaction through the traced daemon; returns (txid, the
        client's local port, [final paths in new/], parsed calls)."""
        c = self.d.client()
        port = c.sock.getsockname()[1]
        try:
            self.assertEqual(c.ehlo().code, 250)
            mr, rr, dr, fr = c.transaction("sender@remote.test", rcpts, smtp_data(message))
            self.assertEqual([r.code for r in rr], [250] * len(rcpts))
            txid = queued_id(fr)
            self.assertIsNotNone(txid, fr)
            c.cmd("QUIT")
        finally:
            c.close()
        # strace's output is complete once the daemon (and so strace) exits
        self.assertEqual(self.d.stop(), 0, self.d.log_tail())
        files = []
        for r in rcpts:
            local, domain = r.split("@")
            got = self.d.files("new", local, domain)
            self.assertEqual(len(got), 1, (r, got))
            files.append(os.path.normpath(got[0]))
        calls = parse_trace(self.d.read_trace())
        self.assertTrue(calls, "empty trace")
        return txid, port, files, calls

    def assertDurableBefore250(self, txid, port, files, calls):
        fds = FdTracker(calls)
        replies = [c for c in calls if c.name in SENDS and c.ret is not None and c.ret > 0
                   and ("queued as " + txid) in c.args
                   and (first_fd(c)[1] or "").endswith("->127.0.0.1:%d]" % port)]
        self.assertEqual(len(replies), 1, "the 250 for %s on the client socket (port %d): %r"
                         % (txid, port, replies))
        reply = replies[0]
        self.assertIn("250 2.0.0 Ok: queued as " + txid, reply.args)

        for final in files:
            with self.subTest(file=final):
                self.assertDurableCopy(final, reply, calls, fds)

    def assertDurableCopy(self, final, reply, calls, fds):
        new_dir = os.path.dirname(final)
        maildir = os.path.dirname(new_dir)
        size = os.stat(final).st_size
        self.assertTrue(final.endswith(",S=%d" % size), final)

        # rename (or link) of a file in this Maildir's tmp/ to the final name
        moves = [c for c in calls if c.ret == 0 and c.name in
                 ("rename", "renameat", "renameat2", "link", "linkat")
                 and len(path_args(c)) == 2 and same_path(path_args(c)[1], final)]
        self.assertEqual(len(moves), 1, "one rename/link to %s: %r" % (final, moves))
        move = moves[0]
        tmp = path_args(move)[0]
        self.assertTrue(same_path(os.path.dirname(tmp), os.path.join(maildir, "tmp")), move)
        if move.name in ("link", "linkat"):
            unlinks = [c for c in calls if c.ret == 0 and c.name in ("unlink", "unlinkat")
                       and len(path_args(c)) == 1 and same_path(path_args(c)[0], tmp)
                       and c.entry > move.exit]
            self.assertTrue(unlinks, "link without unlink of %s" % tmp)

        # the tmp file: created, every octet written, fsynced, all before the move
        opens = [c for c in calls if c.name in ("openat", "open", "creat") and c.ret is not None
                 and c.ret >= 0 and path_args(c) and same_path(path_args(c)[0], tmp)]
        self.assertEqual(len(opens), 1, "one open of %s: %r" % (tmp, opens))
        opened = opens[0]
        self.assertIn("O_CREAT", opened.args)
        self.assertIn("O_EXCL", opened.args)
        fd = opened.ret

        def on_tmp(c):
            return (c.entry > opened.exit and c.entry < move.entry and
                    first_fd(c)[0] == fd and same_path(fds.path_of(c), tmp))

        writes = [c for c in calls if c.name in WRITES and on_tmp(c)]
        self.assertTrue(writes, "no write to %s" % tmp)
        self.assertTrue(all(w.ret is not None and w.ret >= 0 for w in writes), writes)
        self.assertEqual(sum(w.ret for w in writes), size,
                         "octets written to %s vs its size" % tmp)
        last_write = max(w.exit for w in writes)
        syncs = [c for c in calls if c.name in FSYNCS and on_tmp(c) and c.ret == 0
                 and c.entry > last_write and c.exit < move.entry]
        self.assertTrue(syncs, "no fsync of %s (fd %d) between its last write (line %d) and "
                        "the rename (line %d)" % (tmp, fd, last_write + 1, move.entry + 1))

        # the new/ directory: fsynced after the move and before the 250
        dir_syncs = [c for c in calls if c.name in FSYNCS and c.ret == 0 and
                     same_path(fds.path_of(c), new_dir) and c.entry > move.exit and
                     c.exit < reply.entry]
        self.assertTrue(dir_syncs, "no fsync of %s between the rename (line %d) and the 250 "
                        "(line %d)" % (new_dir, move.exit + 1, reply.entry + 1))

    def test_one_recipient(self):
        msg = b"Subject: durable one\nMessage-ID: <one@remote.test>\n\none copy\n"
        self.assertDurableBefore250(*self.deliver_traced([USERS[0]], msg))

    def test_three_recipients(self):
        # spilled to the spool (read back through mmap): the same promise
        body = b"".join(b"line %05d of a body that spills\n" % i for i in range(4000))
        msg = b"Subject: durable three\nMessage-ID: <three@remote.test>\n\n" + body
        txid, port, files, calls = self.deliver_traced(list(USERS), msg)
        self.assertEqual(len(set(files)), 3)
        self.assertDurableBefore250(txid, port, files, calls)


if __name__ == "__main__":
    mxtest.main(budget=240)

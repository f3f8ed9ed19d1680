#!/usr/bin/env python3
"""bench/imap — the same IMAP workload against two servers, side by side.

Each server is given as HOST:PORT/USER/PASSWORD=MAILDIR: where it listens,
who logs in, and the Maildir (INBOX) it serves, into which the IDLE step
delivers. The two Maildirs must be copies of one another; the script never
reads anything else of the servers. With --dovecot-pair it makes the
Maildir itself (a sample of the SpamAssassin corpus that bench/corpus
fetches, or generated messages), copies it, and starts two throwaway
Dovecot IMAP servers on loopback, one per copy: Dovecot against itself,
which shows the noise of the measurement (the ratio should be near 1).

Workload, one step after the other, every step timed on both servers in
alternation (A, B, A, B, ...) for --rounds rounds; the median round counts:

  login     connect, LOGIN, LOGOUT                      (sessions/s)
  select    SELECT INBOX                                (selects/s)
  flags     FETCH 1:* (FLAGS)                           (messages/s)
  headers   FETCH 1:* (BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)])
                                                        (messages/s)
  bodies    FETCH n (BODY.PEEK[]) for every n           (messages/s)
  search    SEARCH TEXT/BODY/SUBJECT/FROM/SENTSINCE/HEADER, 8 keys
                                                        (searches/s)
  store     STORE n +FLAGS (\\Flagged) then -FLAGS, every n
                                                        (stores/s)
  idle      IDLE, one message written into MAILDIR/new, until the
            untagged EXISTS; DONE                       (wake-ups/s =
                                                         1 / latency)

It prints ops/s for each side and the ratio A/B. This is a benchmark, not
a test: it fails only when a server cannot be used or answers wrongly (a
FETCH that does not return every message, an IDLE that never wakes up).

Python 3 standard library only (plus tests/integration/imapdiff.py for
--dovecot-pair, which needs root and Debian's dovecot-imapd).
"""

import argparse
import imaplib
import os
import random
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

imaplib._MAXLINE = 64 * 1024 * 1024

SEARCHES = [
    ("TEXT", "money"), ("BODY", "click here"), ("SUBJECT", "re:"), ("FROM", "com"),
    ("SENTSINCE", "1-Aug-2002"), ("HEADER", "X-Mailer", "outlook"), ("TO", "net"),
    ("BODY", "unsubscribe"),
]


def log(msg):
    print("bench/imap: " + msg, flush=True)


class Server:
    def __init__(self, spec, name):
        m = re.match(r"^(.+):(\d+)/([^/]+)/([^=]*)=(.+)$", spec)
        if not m:
            raise SystemExit("bench/imap: bad server %r (HOST:PORT/USER/PASSWORD=MAILDIR)" % spec)
        self.host, self.port = m.group(1), int(m.group(2))
        self.user, self.password, self.maildir = m.group(3), m.group(4), m.group(5)
        self.name = name

    def session(self):
        c = imaplib.IMAP4(self.host, self.port, timeout=120)
        c.login(self.user, self.password)
        return c

    def __str__(self):
        return "%s (%s:%d %s)" % (self.name, self.host, self.port, self.maildir)


def ok(typ, data, what):
    if typ != "OK":
        raise RuntimeError("%s: %s %r" % (what, typ, data))
    return data


def count_fetched(data):
    return sum(1 for d in data if isinstance(d, tuple) or
               (isinstance(d, bytes) and re.match(rb"\d+ \(", d)))


def step_login(s, n):
    t0 = time.perf_counter()
    for _ in range(n):
        c = imaplib.IMAP4(s.host, s.port, timeout=60)
        c.login(s.user, s.password)
        c.logout()
    return n, time.perf_counter() - t0


def step_select(c, n):
    t0 = time.perf_counter()
    for _ in range(n):
        ok(*c.select("INBOX"), what="SELECT")
    return n, time.perf_counter() - t0


def step_fetch_all(c, items, total):
    t0 = time.perf_counter()
    data = ok(*c.fetch("1:*", items), what="FETCH " + items)
    dt = time.perf_counter() - t0
    got = count_fetched(data)
    if got < total:
        raise RuntimeError("FETCH %s returned %d of %d messages" % (items, got, total))
    return total, dt


def step_bodies(c, total):
    t0 = time.perf_counter()
    octets = 0
    for n in range(1, total + 1):
        data = ok(*c.fetch(str(n), "(BODY.PEEK[])"), what="FETCH BODY[]")
        if not isinstance(data[0], tuple):
            raise RuntimeError("FETCH %d BODY[] returned no literal" % n)
        octets += len(data[0][1])
    return total, time.perf_counter() - t0


def step_search(c):
    t0 = time.perf_counter()
    for key in SEARCHES:
        args = [a if re.match(r"^[\w:.-]+$", a) else '"%s"' % a for a in key]
        ok(*c.search(None, *args), what="SEARCH")
    return len(SEARCHES), time.perf_counter() - t0


def step_store(c, total):
    t0 = time.perf_counter()
    for n in range(1, total + 1):
        ok(*c.store(str(n), "+FLAGS.SILENT", "(\\Flagged)"), what="STORE")
    for n in range(1, total + 1):
        ok(*c.store(str(n), "-FLAGS.SILENT", "(\\Flagged)"), what="STORE")
    return 2 * total, time.perf_counter() - t0


_seq = [0]


def deliver(maildir, body):
    """a message into MAILDIR/new the way an MDA does (tmp/, then rename)"""
    _seq[0] += 1
    name = "%d.bench%d_%d.%s" % (time.time(), os.getpid(), _seq[0], socket.gethostname())
    tmp = os.path.join(maildir, "tmp", name)
    with open(tmp, "wb") as f:
        f.write(body)
    st = os.stat(maildir)
    os.chown(tmp, st.st_uid, st.st_gid)
    os.rename(tmp, os.path.join(maildir, "new", name))


def step_idle(s, wakeups, timeout):
    """IDLE; deliver; time to the untagged EXISTS; DONE. Raw socket, as
    imaplib has no IDLE."""
    sock = socket.create_connection((s.host, s.port), timeout=timeout)
    f = sock.makefile("rb")

    def cmd(tag, line):
        sock.sendall(("%s %s\r\n" % (tag, line)).encode())
        while True:
            ln = f.readline()
            if not ln:
                raise RuntimeError("IDLE: connection closed")
            if ln.startswith(tag.encode() + b" "):
                if not ln.startswith(tag.encode() + b" OK"):
                    raise RuntimeError("IDLE: %r" % ln)
                return

    f.readline()
    cmd("l1", "LOGIN %s %s" % (s.user, s.password))
    cmd("s1", "SELECT INBOX")
    lat = []
    for i in range(wakeups):
        sock.sendall(b"i%d IDLE\r\n" % i)
        ln = f.readline()
        if not ln.startswith(b"+"):
            raise RuntimeError("IDLE: %r" % ln)
        body = ("From: idle@bench.test\r\nSubject: wake-up %d\r\n\r\nhello\r\n" % i).encode()
        t0 = time.perf_counter()
        deliver(s.maildir, body)
        while True:
            ln = f.readline()
            if not ln:
                raise RuntimeError("IDLE: closed while waiting")
            if re.match(rb"\* \d+ EXISTS", ln):
                lat.append(time.perf_counter() - t0)
                break
        sock.sendall(b"DONE\r\n")
        while True:
            ln = f.readline()
            if ln.startswith(b"i%d " % i):
                break
    sock.sendall(b"z LOGOUT\r\n")
    sock.close()
    return len(lat), sum(lat)


def run_step(name, s, args, total):
    if name == "login":
        return step_login(s, args.logins)
    if name == "idle":
        return step_idle(s, args.wakeups, args.timeout)
    c = s.session()
    try:
        ok(*c.select("INBOX"), what="SELECT")
        if name == "select":
            return step_select(c, args.selects)
        if name == "flags":
            return step_fetch_all(c, "(FLAGS)", total)
        if name == "headers":
            return step_fetch_all(c, "(BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)])", total)
        if name == "bodies":
            return step_bodies(c, total)
        if name == "search":
            return step_search(c)
        if name == "store":
            return step_store(c, total)
        raise ValueError(name)
    finally:
        try:
            c.logout()
        except Exception:
            pass


STEPS = ["login", "select", "flags", "headers", "bodies", "search", "store", "idle"]


def message_count(s):
    c = s.session()
    typ, data = c.select("INBOX", readonly=True)
    c.logout()
    return int(data[0])


def make_maildir(root, n, corpus):
    """n messages into root/{cur,new,tmp}: corpus sample or generated"""
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    msgs = []
    index = os.path.join(corpus, "eml", "index.tsv") if corpus else None
    if index and os.path.exists(index):
        with open(index) as f:
            next(f)
            rows = sorted(line.rstrip("\n").split("\t") for line in f)
        for row in rows[:n]:
            with open(os.path.join(corpus, "eml", row[4]), "rb") as f:
                msgs.append(f.read())
        log("%d messages from the corpus in %s" % (len(msgs), corpus))
    else:
        rnd = random.Random(1)
        words = "money click here free offer the meeting report unsubscribe hello".split()
        for i in range(n):
            body = "\n".join(" ".join(rnd.choice(words) for _ in range(12))
                             for _ in range(int(10 ** rnd.uniform(0.5, 3))))
            msgs.append(("From: sender%d@example.com\nTo: user@example.net\n"
                         "Subject: %s %d\nDate: Thu, %d Aug 2002 10:00:00 +0000\n\n%s\n"
                         % (i, rnd.choice(words), i, 1 + i % 28, body)).encode())
        log("%d generated messages (no corpus at %s)" % (n, corpus))
    for i, m in enumerate(msgs):
        with open(os.path.join(root, "cur", "%06d.bench:2," % i), "wb") as f:
            f.write(m)
    return len(msgs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", help="server A: HOST:PORT/USER/PASSWORD=MAILDIR")
    ap.add_argument("--b", help="server B: HOST:PORT/USER/PASSWORD=MAILDIR")
    ap.add_argument("--dovecot-pair", action="store_true",
                    help="start two Dovecot IMAP servers on copies of one Maildir (root)")
    ap.add_argument("--messages", type=int, default=500, help="messages (--dovecot-pair)")
    ap.add_argument("--corpus", default=os.environ.get("MXGUARD_CORPUS", "/var/tmp/mxguard-corpus"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--logins", type=int, default=50)
    ap.add_argument("--selects", type=int, default=50)
    ap.add_argument("--wakeups", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    steps = [s for s in args.steps.split(",") if s]
    for s in steps:
        if s not in STEPS:
            raise SystemExit("bench/imap: unknown step %s (%s)" % (s, ", ".join(STEPS)))

    started = []
    tmp = None
    try:
        if args.dovecot_pair:
            from imapdiff import DovecotIMAP, PASSWORD
            tmp = tempfile.mkdtemp(prefix="bench-imap-")
            os.chmod(tmp, 0o755)
            a_dir, b_dir = os.path.join(tmp, "a"), os.path.join(tmp, "b")
            make_maildir(a_dir, args.messages, args.corpus)
            shutil.copytree(a_dir, b_dir)
            for d in (a_dir, b_dir):
                srv = DovecotIMAP(d, user="bench@example.test").start()
                started.append(srv)
            a = Server("127.0.0.1:%d/bench@example.test/%s=%s" % (started[0].port, PASSWORD, a_dir), "A")
            b = Server("127.0.0.1:%d/bench@example.test/%s=%s" % (started[1].port, PASSWORD, b_dir), "B")
        else:
            if not args.a or not args.b:
                raise SystemExit("bench/imap: give --a and --b, or --dovecot-pair")
            a, b = Server(args.a, "A"), Server(args.b, "B")
        log("A = %s" % a)
        log("B = %s" % b)
        na, nb = message_count(a), message_count(b)
        if na != nb:
            raise SystemExit("bench/imap: the INBOXes differ (%d and %d messages): use copies" % (na, nb))
        log("%d messages in INBOX, %d round(s), median round counts" % (na, args.rounds))
        # one untimed pass each: indexes, UID lists, page cache
        for s in (a, b):
            run_step("flags", s, args, na)
            run_step("bodies", s, args, na)
        results = {}
        total = na
        for step in steps:
            rates = {"A": [], "B": []}
            for _ in range(args.rounds):
                for s in (a, b):
                    n, dt = run_step(step, s, args, total)
                    rates[s.name].append(n / dt if dt > 0 else float("inf"))
            results[step] = (statistics.median(rates["A"]), statistics.median(rates["B"]))
            if step == "idle":
                # the deliveries added messages to both INBOXes alike
                total = message_count(a)
        print()
        print("%-8s %14s %14s %8s" % ("step", "A ops/s", "B ops/s", "A/B"))
        for step in steps:
            ra, rb = results[step]
            print("%-8s %14.1f %14.1f %8.2f" % (step, ra, rb, ra / rb if rb else float("nan")))
        return 0
    finally:
        for srv in started:
            srv.stop()
        if tmp and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp:
            log("kept %s" % tmp)


if __name__ == "__main__":
    sys.exit(main())

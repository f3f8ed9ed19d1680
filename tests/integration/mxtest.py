"""mxtest — the harness the integration tests drive the real daemon with.

Every test class starts its own mxguard in a fresh temporary directory: the
harness writes a complete config (hostname mx.example.test, loopback listener
on a free port, every path inside the temp dir), adds users with the real
mxguardctl (password on stdin), starts `mxguard -f -c FILE` with its log going
to a file, and waits — bounded — until the port answers.  Tests then talk to it
with a raw-socket client (exact bytes on the wire, pipelining, injection) or
with smtplib/swaks, and look at the Maildir store and the log.

Nothing here may hang: sockets time out after 10 s, every wait has a deadline,
and a watchdog ends the whole file (killing the daemons it started) if it runs
far past its budget.  Only the Python standard library is used.

Environment: MXGUARD, MXGUARDCTL (paths of the built binaries, default
./mxguard and ./mxguardctl), MXGUARD_TESTSTAGE (the daemon built with the
test stage of tests/stages/, default ./tests/mxguard-teststage) and
MX_SRCDIR (default .).
"""

import atexit
import email.parser
import email.policy
import faulthandler
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

MXGUARD = os.path.abspath(os.environ.get("MXGUARD", "./mxguard"))
MXGUARDCTL = os.path.abspath(os.environ.get("MXGUARDCTL", "./mxguardctl"))
MXGUARD_TESTSTAGE = os.path.abspath(os.environ.get("MXGUARD_TESTSTAGE",
                                                   "./tests/mxguard-teststage"))
MX_SRCDIR = os.path.abspath(os.environ.get("MX_SRCDIR", "."))

HOSTNAME = "mx.example.test"
DOMAIN = "example.test"
PASSWORD = "s3cret-Pass"
SOCK_TIMEOUT = 10.0
START_TIMEOUT = 10.0
STOP_TIMEOUT = 20.0

# Every daemon and mount still alive, so a watchdog or an early exit can
# clean up after itself instead of leaving orphans holding ports.
_live_daemons = set()
_cleanup_mounts = []
# sanitizer reports (ASan, LeakSanitizer, UBSan) found in daemon logs at
# cleanup: each one fails the file, so the sanitizer build of the suite
# really checks the daemon, including leaks at a clean exit
_sanitizer_reports = []
_SANITIZER_RE = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:")
_lock = threading.Lock()


def _cleanup_all():
    with _lock:
        daemons = list(_live_daemons)
    for d in daemons:
        try:
            d.cleanup()
        except Exception:
            pass
    for m in list(_cleanup_mounts):
        subprocess.run(["umount", "-l", m], stderr=subprocess.DEVNULL)


atexit.register(_cleanup_all)


def sanitized(binary=None):
    """True when the daemon binary was built with AddressSanitizer. Its
    shadow memory and free-quarantine make VmRSS measure the sanitizer, not
    our buffers, so memory bounds are asserted on the plain build only
    (scripts/check runs both flavours)."""
    with open(binary or MXGUARD, "rb") as f:
        return b"__asan_init" in f.read()


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ------------------------------------------------------------------ certs
_cert_dir = None


def test_cert():
    """A self-signed cert/key for mx.example.test, made once per process."""
    global _cert_dir
    with _lock:
        if _cert_dir is None:
            d = tempfile.mkdtemp(prefix="mxtest-cert-")
            atexit.register(shutil.rmtree, d, True)
            r = subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                 "-subj", "/CN=" + HOSTNAME, "-days", "2",
                 "-addext", "subjectAltName=DNS:" + HOSTNAME,
                 "-keyout", os.path.join(d, "key.pem"),
                 "-out", os.path.join(d, "cert.pem")],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
            if r.returncode != 0:
                raise RuntimeError("openssl req failed: " + r.stdout.decode(errors="replace"))
            _cert_dir = d
    return os.path.join(_cert_dir, "cert.pem"), os.path.join(_cert_dir, "key.pem")


def client_tls_context(check_hostname=True):
    """Client context that trusts only our test cert (chain verified)."""
    cert, _ = test_cert()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cert)
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


# ----------------------------------------------------------------- config
def conf_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "{" + ", ".join(conf_value(x) for x in v) + "}"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Daemon:
    """One mxguard process in its own temp dir.

    settings: top-level overrides (name -> value); limits: limits { } overrides;
    tls: configure tls_cert/tls_key; implicit_tls: add a listener
    `listen smtps { tls = "implicit" }` on a second port; users: addresses
    added with mxguardctl before the start (without any, `postmaster` is set
    to postmaster-box@<first domain>, because with no user of a local domain
    mxguard has nowhere to deliver postmaster@ and refuses to start, unless
    settings name one); pre_start: callable(daemon) run
    after the config is written and before users are added (e.g. to mount a
    tmpfs on mail_root); binary: the daemon to run (default MXGUARD);
    listen_extra: more listeners, {name: {setting: value}} (each gets a free
    loopback port, in self.ports[name]; e.g. {"lb": {"proxy_protocol": "v2",
    "proxy_trusted": ["127.0.0.1"]}}) — the harness probes only the first
    listener, so these may want a PROXY header from the probe's address."""

    def __init__(self, settings=None, limits=None, tls=False, implicit_tls=False,
                 users=("demo@example.test",), domains=(DOMAIN,), pipeline=None,
                 extra_conf="", pre_start=None, start=True, binary=None, listen_extra=None):
        self.binary = os.path.abspath(binary) if binary else MXGUARD
        self.dir = tempfile.mkdtemp(prefix="mxtest-")
        self.port = free_port()
        self.tls_port = free_port() if implicit_tls else None
        self.listen_extra = dict(listen_extra or {})
        self.ports = {name: free_port() for name in self.listen_extra}
        self.settings = dict(settings or {})
        if not users and "postmaster" not in self.settings:
            self.settings["postmaster"] = "postmaster-box@" + list(domains)[0]
        self.limits = dict(limits or {})
        self.pipeline = dict(pipeline or {})
        self.tls = tls or implicit_tls
        self.domains = list(domains)
        self.extra_conf = extra_conf
        self.conf = os.path.join(self.dir, "mxguard.conf")
        self.logpath = os.path.join(self.dir, "mxguard.log")
        self.mail_root = os.path.join(self.dir, "mail")
        self.proc = None
        self.mounts = []
        # with a run user the daemon creates (and hands over) its own
        # directories; an existing one not owned by that user is refused
        if "user" not in self.settings:
            for sub in ("mail", "spool", "state", "quarantine"):
                os.makedirs(os.path.join(self.dir, sub), mode=0o750, exist_ok=True)
        with _lock:
            _live_daemons.add(self)
        self.write_config()
        if pre_start:
            pre_start(self)
        for u in users:
            self.ctl_ok("user", "add", u, stdin=PASSWORD + "\n")
        if start:
            self.start()

    # config ---------------------------------------------------------
    def render_config(self, domains=None, extra=""):
        s = {
            "hostname": HOSTNAME,
            "threads": 2,
            "workers": 2,
            "log_level": "info",
            "mail_root": self.mail_root,
            "spool_dir": os.path.join(self.dir, "spool"),
            "state_dir": os.path.join(self.dir, "state"),
            "quarantine_dir": os.path.join(self.dir, "quarantine"),
            "passwd_file": os.path.join(self.dir, "passwd"),
            "local_domains": list(domains if domains is not None else self.domains),
        }
        if self.tls:
            cert, key = test_cert()
            s["tls_cert"] = cert
            s["tls_key"] = key
        # started as root with no user to drop to, mxguard refuses to serve
        # unless the config says so (test_service checks the refusal)
        if os.geteuid() == 0 and not self.settings.get("user"):
            s["run_as_root"] = True
        s.update(self.settings)
        # no comment lines: libconfuse 3.3 miscounts lines after a comment,
        # and tests that check "file:line" errors want exact numbers here
        # (test_admin checks the comment case on its own)
        out = []
        for k, v in s.items():
            out.append("%s = %s" % (k, conf_value(v)))
        out.append("listen smtp {")
        out.append('\taddress = "127.0.0.1:%d"' % self.port)
        out.append('\ttls = "none"')
        out.append("}")
        if self.tls_port:
            out.append("listen smtps {")
            out.append('\taddress = "127.0.0.1:%d"' % self.tls_port)
            out.append('\ttls = "implicit"')
            out.append("}")
        for name, opts in self.listen_extra.items():
            out.append("listen %s {" % name)
            out.append('\taddress = "127.0.0.1:%d"' % self.ports[name])
            for k, v in opts.items():
                out.append("\t%s = %s" % (k, conf_value(v)))
            out.append("}")
        if self.limits:
            out.append("limits {")
            for k, v in self.limits.items():
                out.append("\t%s = %s" % (k, conf_value(v)))
            out.append("}")
        if self.pipeline:
            out.append("pipeline {")
            for k, v in self.pipeline.items():
                out.append("\t%s = %s" % (k, conf_value(v)))
            out.append("}")
        if self.extra_conf or extra:
            out.append(self.extra_conf + extra)
        return "\n".join(out) + "\n"

    def write_config(self, text=None):
        if text is None:
            text = self.render_config()
        tmp = self.conf + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, self.conf)

    # mxguardctl -----------------------------------------------------
    def ctl(self, *args, stdin=""):
        """Run `mxguardctl -c CONF ARGS...`; returns CompletedProcess (text)."""
        return subprocess.run([MXGUARDCTL, "-c", self.conf] + list(args),
                              input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=60, cwd=self.dir)

    def ctl_ok(self, *args, stdin=""):
        r = self.ctl(*args, stdin=stdin)
        if r.returncode != 0:
            raise RuntimeError("mxguardctl %s failed (%d): %s%s" % (
                " ".join(args), r.returncode, r.stdout, r.stderr))
        return r

    # process --------------------------------------------------------
    def start(self, timeout=START_TIMEOUT):
        self.start_with(timeout)

    def start_with(self, timeout, prefix=(), env=None, ready=lambda: True):
        """Start `prefix + mxguard -f -c CONF` (env: its environment) and
        wait until the SMTP port greets and ready() is true."""
        assert self.proc is None or self.proc.poll() is not None
        log = open(self.logpath, "ab")
        try:
            self.proc = subprocess.Popen(list(prefix) + [self.binary, "-f", "-c", self.conf],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         cwd=self.dir, env=env)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("mxguard exited with %d during start; log:\n%s" % (
                    self.proc.returncode, self.log_tail()))
            if self._probe() and ready():
                return
            if time.monotonic() > deadline:
                self.kill9()
                raise RuntimeError("mxguard did not accept connections within %ss; log:\n%s"
                                   % (timeout, self.log_tail()))
            time.sleep(0.05)

    def _probe(self):
        """True once the SMTP port greets. The probe quits politely and waits
        for the server's close; the server gives the connection slot back
        before it closes (ahead of its lingering close), so once the probe
        has seen the close its slot is free again."""
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        except OSError:
            return False
        try:
            s.settimeout(5)
            data = b""
            while b"\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    return False
                data += chunk
            if not data.startswith(b"220"):
                return False
            s.sendall(b"QUIT\r\n")
            while s.recv(4096):
                pass
            return True
        except OSError:
            return False
        finally:
            s.close()

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM and wait (bounded). Returns the exit code, or None when the
        process had to be killed because it did not exit in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            return None

    def kill9(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def restart(self):
        code = self.stop()
        self.start()
        return code

    def cleanup(self):
        # a clean SIGTERM exit lets LeakSanitizer report; then read the log
        self.stop(timeout=15)
        self.kill9()
        text = self.log()
        m = _SANITIZER_RE.search(text)
        if m:
            _sanitizer_reports.append("%s: %s" % (self.logpath, text[max(0, m.start() - 200):m.start() + 3000]))
        for m in reversed(self.mounts):
            subprocess.run(["umount", m], stderr=subprocess.DEVNULL)
            if m in _cleanup_mounts:
                _cleanup_mounts.remove(m)
        self.mounts = []
        with _lock:
            _live_daemons.discard(self)
        if os.environ.get("MXTEST_KEEP"):
            sys.stderr.write("mxtest: keeping %s\n" % self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def mount_tmpfs(self, path, size="256k"):
        os.makedirs(path, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0750" % size, "tmpfs", path],
                       check=True, timeout=30)
        self.mounts.append(path)
        _cleanup_mounts.append(path)

    def rss_kb(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    # log ------------------------------------------------------------
    def log(self):
        try:
            with open(self.logpath, "rb") as f:
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self):
        try:
            return os.path.getsize(self.logpath)
        except OSError:
            return 0

    def log_since(self, offset):
        return self.log().encode()[offset:].decode("utf-8", errors="replace")

    def log_tail(self, n=40):
        return "\n".join(self.log().splitlines()[-n:])

    def wait_log(self, pattern, offset=0, timeout=10.0):
        """Wait until the log after byte offset matches regex; returns the
        match or None."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.log_since(offset))
            if m or time.monotonic() > deadline:
                return m
            time.sleep(0.05)

    # maildir --------------------------------------------------------
    def maildir(self, user="demo", domain=DOMAIN, folder=None):
        p = os.path.join(self.mail_root, domain, user)
        if folder:
            p = os.path.join(p, "." + folder)
        return p

    def files(self, sub="new", user="demo", domain=DOMAIN, folder=None):
        d = os.path.join(self.maildir(user, domain, folder), sub)
        try:
            names = sorted(os.listdir(d))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [os.path.join(d, n) for n in names if not n.startswith(".")]

    def messages(self, user="demo", domain=DOMAIN, folder=None, subs=("new",)):
        out = []
        for sub in subs:
            for p in self.files(sub, user, domain, folder):
                with open(p, "rb") as f:
                    out.append(f.read())
        return out

    def all_files(self, sub):
        """Every file in any <mail_root>/*/*/<sub>/ (and folders)."""
        out = []
        for root, dirs, names in os.walk(self.mail_root):
            if os.path.basename(root) == sub:
                out.extend(os.path.join(root, n) for n in names)
        return sorted(out)

    # clients --------------------------------------------------------
    def client(self, **kw):
        return Client(self.port, **kw)


# ----------------------------------------------------------------- client
class Reply:
    """One SMTP reply: code, the text of every line, raw lines."""

    def __init__(self, lines):
        self.raw = lines
        self.code = int(lines[-1][:3])
        self.lines = [l[4:] for l in lines]
        self.text = self.lines[-1]

    @property
    def enhanced(self):
        m = re.match(r"([245]\.\d{1,3}\.\d{1,3})( |$)", self.text)
        return m.group(1) if m else None

    def all_enhanced(self):
        return all(re.match(r"[245]\.\d{1,3}\.\d{1,3}( |$)", l) for l in self.lines)

    def __repr__(self):
        return "Reply(%r)" % ("\n".join(self.raw),)

    def __str__(self):
        return "\n".join(self.raw)


class ProtocolError(Exception):
    pass


class Client:
    """A raw SMTP client: exact bytes out, replies parsed line by line."""

    def __init__(self, port, host="127.0.0.1", tls_context=None, timeout=SOCK_TIMEOUT,
                 greeting=True):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        if tls_context is not None:
            self.sock = tls_context.wrap_socket(self.sock, server_hostname=HOSTNAME)
        self.buf = b""
        self.greeting = self.reply() if greeting else None

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed by server (buffer %r)" % self.buf[:200])
        self.buf += chunk

    def line(self):
        while b"\n" not in self.buf:
            if len(self.buf) > 1 << 20:
                raise ProtocolError("reply line longer than 1 MB")
            self._fill()
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r").decode("utf-8", errors="replace")

    def reply(self):
        lines = []
        while True:
            l = self.line()
            if not re.match(r"[2-5]\d\d([ -]|$)", l):
                raise ProtocolError("malformed reply line %r (after %r)" % (l, lines))
            lines.append(l)
            if len(l) == 3 or l[3] == " ":
                return Reply(lines)

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.reply()

    def ehlo(self, name="client.example.org"):
        return self.cmd("EHLO " + name)

    def pending(self):
        """Bytes already received but not consumed."""
        return self.buf

    def starttls(self, context=None):
        """STARTTLS, expect 220, then handshake. Returns (reply, plaintext left
        over in the buffer after the 220 — must be empty)."""
        r = self.cmd("STARTTLS")
        if r.code != 220:
            return r, b""
        leftover = self.buf
        self.buf = b""
        self.sock = (context or client_tls_context()).wrap_socket(
            self.sock, server_hostname=HOSTNAME)
        return r, leftover

    def closed(self, timeout=SOCK_TIMEOUT):
        """True when the server closes the connection within timeout (any data
        still arriving before the close is appended to the buffer)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.sock.settimeout(max(0.05, deadline - time.monotonic()))
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            return True
        finally:
            try:
                self.sock.settimeout(SOCK_TIMEOUT)
            except OSError:
                pass
        return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    # whole transactions ---------------------------------------------
    def transaction(self, sender, rcpts, data):
        """MAIL, RCPT..., DATA, data (raw bytes incl. the final ".\\r\\n").
        Returns (mail_reply, [rcpt_replies], data_reply, final_reply) with
        None for steps not reached."""
        mr = self.cmd("MAIL FROM:<%s>" % sender)
        if mr.code != 250:
            return mr, [], None, None
        rr = [self.cmd("RCPT TO:<%s>" % r) for r in rcpts]
        dr = self.cmd("DATA")
        if dr.code != 354:
            return mr, rr, dr, None
        self.send(data)
        return mr, rr, dr, self.reply()


def smtp_data(message):
    """Turn a message (bytes/str with LF or CRLF) into DATA bytes: CRLF line
    ends, dot-stuffed, terminated by CRLF.CRLF."""
    if isinstance(message, str):
        message = message.encode()
    lines = message.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for l in lines:
        out.append(b"." + l if l.startswith(b".") else l)
    return b"\r\n".join(out) + b"\r\n.\r\n"


TXID_RE = re.compile(r"^Ok: queued as ([0-9A-Z]{16})$")


def queued_id(reply):
    """The TXID of "250 2.0.0 Ok: queued as TXID", or None."""
    if reply is None or reply.code != 250 or reply.enhanced != "2.0.0":
        return None
    m = TXID_RE.match(reply.text[6:])
    return m.group(1) if m else None


DATE_RE = (rb"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?\d{1,2} "
           rb"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
           rb"\d\d:\d\d:\d\d [+-]\d{4}(?: \([A-Za-z0-9+-]+\))?")


def received_re(helo, proto, txid=None, rcpt=None):
    """Regex (bytes) for our Received: header, per the spec: the HELO name,
    then where the client's reverse DNS name goes "unknown" (no lookup is
    made yet; never the HELO name again) and the address."""
    rx = (rb"Received: from " + re.escape(helo.encode()) +
          rb" \((unknown) \[127\.0\.0\.1\]\)\n"
          rb"\tby mx\.example\.test \(mxguard\) with " + proto.encode() +
          rb" id " + (re.escape(txid.encode()) if txid else rb"[0-9A-Z]{16}"))
    if rcpt:
        rx += rb"\n\tfor <" + re.escape(rcpt.encode()) + rb">"
    rx += rb"; (" + DATE_RE + rb")\n"
    return rx


def stored_re(sender, rcpt, helo, proto, txid, body_lf, for_rcpt=True):
    """Full regex for a stored file: our three headers, then the message."""
    return re.compile(
        re.escape(b"Return-Path: <" + sender.encode() + b">\n") +
        re.escape(b"Delivered-To: " + rcpt.encode() + b"\n") +
        received_re(helo, proto, txid, rcpt if for_rcpt else None) +
        re.escape(body_lf), re.S)


def parse_headers(data):
    """Header block of a stored message as an email.message.Message."""
    return email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
        data, headersonly=True)


# ------------------------------------------------------------------ swaks
def swaks(port, *args, timeout=60):
    return subprocess.run(["swaks", "--server", "127.0.0.1:%d" % port,
                           "--timeout", "10"] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=timeout)


def swaks_has_tls():
    try:
        r = subprocess.run(["swaks", "--support"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, universal_newlines=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "TLS supported" in r.stdout


# ----------------------------------------------------------------- runner
def _all_ids(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from _all_ids(t)
        else:
            yield t.id()


class _Result(unittest.TextTestResult):
    all_ids = []

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.passed = []
        self.skipped_ids = set()

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed.append(test.id())

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        if isinstance(test, unittest.TestCase):
            self.skipped_ids.add(test.id())
        else:
            # a whole class skipped in setUpClass: "setUpClass (mod.Class)"
            m = re.search(r"\((\S+)\)", str(test))
            if m:
                self.skipped_ids.update(i for i in self.all_ids
                                        if i.startswith(m.group(1) + "."))


def main(budget=200):
    """Run the calling file's tests, print "<file>: N passed, N failed" as
    the last line and exit 0 only when nothing failed. Errors (including a
    class whose setUpClass failed: all its tests) count as failed. A watchdog
    ends the run after `budget` seconds so that nothing can hang make check."""
    prog = os.path.basename(sys.argv[0])
    suite = unittest.TestLoader().loadTestsFromModule(sys.modules["__main__"])
    total = suite.countTestCases()
    _Result.all_ids = list(_all_ids(suite))
    state = {"result": None}

    def watchdog():
        sys.stderr.write("\n%s: watchdog: still running after %ds, giving up\n" % (prog, budget))
        faulthandler.dump_traceback(all_threads=True)
        _cleanup_all()
        r = state["result"]
        passed = len(r.passed) if r else 0
        skipped = len(r.skipped_ids) if r else 0
        sys.stdout.write("%s: %d passed, %d failed\n" % (prog, passed, total - passed - skipped))
        sys.stdout.flush()
        os._exit(1)

    timer = threading.Timer(budget, watchdog)
    timer.daemon = True
    timer.start()

    def on_term(signum, frame):
        _cleanup_all()
        os._exit(1)

    signal.signal(signal.SIGTERM, on_term)

    class Runner(unittest.TextTestRunner):
        def _makeResult(self):
            r = _Result(self.stream, self.descriptions, self.verbosity)
            state["result"] = r
            return r

    result = Runner(verbosity=2, stream=sys.stdout).run(suite)
    timer.cancel()
    _cleanup_all()
    if _cert_dir:
        shutil.rmtree(_cert_dir, ignore_errors=True)
    passed = len(result.passed)
    skipped = len(result.skipped_ids)
    failed = total - passed - skipped
    for report in _sanitizer_reports:
        print("%s: sanitizer report in a daemon log:\n%s" % (prog, report))
        failed += 1
    if skipped:
        print("%s: %d skipped" % (prog, skipped))
    sys.stdout.flush()
    print("%s: %d passed, %d failed" % (prog, passed, failed))
    sys.stdout.flush()
    os._exit(0 if failed == 0 else 1)


class DaemonTestCase(unittest.TestCase):
    """A test class with one daemon for the whole class (daemon_args gives
    the Daemon() keyword arguments)."""

    daemon_args = {}
    d = None

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon(**cls.daemon_args)

    @classmethod
    def tearDownClass(cls):
        if cls.d is not None:
            cls.d.cleanup()
            cls.d = None

    def setUp(self):
        if not self.d.running():
            self.fail("daemon is not running (exit %s); log:\n%s" % (
                self.d.proc.returncode, self.d.log_tail()))

    def client(self, **kw):
        c = self.d.client(**kw)
        self.addCleanup(c.close)
        return c

    def ehlo_client(self, **kw):
        c = self.client(**kw)
        r = c.ehlo()
        self.assertEqual(r.code, 250, r)
        return c

    def clear_mail(self):
        shutil.rmtree(self.d.mail_root, ignore_errors=True)
        os.makedirs(self.d.mail_root, exist_ok=True)

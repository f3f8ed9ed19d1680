"""imapdiff — what the Dovecot differential test and bench/imap share.

- DovecotIMAP: a throwaway Dovecot 2.3 IMAP server (`dovecot -F -c CONF`,
  started as root; mail is read as `nobody`) on 127.0.0.1:<free port>
  with one passwd-file user over a Maildir of the caller's choosing.
- parse_items(): an IMAP FETCH response (with literals inline) split into
  {item name: raw value bytes}.
- raw_fetch(): imaplib's FETCH answer put back together as the bytes the
  server sent (imaplib splits it at the literals).

Python 3 standard library only, so that bench/imap can use it outside the
test harness.
"""

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

DOVECOT = "/usr/sbin/dovecot"
PASSWORD = "secret"

_CONF = """\
# throwaway Dovecot IMAP of tests/integration/imapdiff.py
base_dir = {dir}/run
state_dir = {dir}/state
instance_name = {instance}
protocols = imap
listen = 127.0.0.1
log_path = {dir}/dovecot.log
info_log_path = {dir}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = {uid}
last_valid_uid = {uid}
mail_location = maildir:{maildir}
mail_fsync = never
shutdown_clients = yes
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {users}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={dir}/home
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = 0
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0600
  }}
}}
service anvil {{
  chroot =
}}
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _children(pid):
    out = []
    try:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % entry) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(entry))
                    out += _children(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    except OSError:
        pass
    return out


class DovecotIMAP:
    """Dovecot's IMAP server over `maildir` (a Maildir++ root whose files
    the caller put there). user/PASSWORD logs in. Attributes: host, port,
    dir (the instance's temp dir), logpath."""

    host = "127.0.0.1"

    def __init__(self, maildir, user="demo@example.test", start_timeout=30):
        self.maildir = os.path.abspath(maildir)
        self.user = user
        self.start_timeout = start_timeout
        self.proc = None
        self.dir = None
        self.port = None
        self.logpath = None

    def start(self):
        if os.geteuid() != 0:
            raise RuntimeError("DovecotIMAP: must be started as root")
        if not os.access(DOVECOT, os.X_OK):
            raise RuntimeError("%s not found (scripts/install-deps)" % DOVECOT)
        if not os.path.exists("/usr/lib/dovecot/imap"):
            raise RuntimeError("Dovecot's imap is missing (dovecot-imapd)")
        nobody = pwd.getpwnam("nobody")
        self.dir = tempfile.mkdtemp(prefix="dovecot-imap-")
        # under the test harness, its watchdog and exit hook stop us too
        harness = sys.modules.get("mxtest")
        if harness is not None:
            with harness._lock:
                harness._live_daemons.add(self)
        os.chmod(self.dir, 0o755)
        os.makedirs(os.path.join(self.dir, "home"))
        os.chown(os.path.join(self.dir, "home"), nobody.pw_uid, nobody.pw_gid)
        for root, dirs, files in os.walk(self.maildir):
            os.chown(root, nobody.pw_uid, nobody.pw_gid)
            for n in files:
                os.chown(os.path.join(root, n), nobody.pw_uid, nobody.pw_gid)
        users = os.path.join(self.dir, "users")
        with open(users, "w") as f:
            f.write("%s:%s\n" % (self.user, PASSWORD))
        os.chmod(users, 0o644)
        self.port = free_port()
        self.logpath = os.path.join(self.dir, "dovecot.log")
        conf = os.path.join(self.dir, "dovecot.conf")
        with open(conf, "w") as f:
            f.write(_CONF.format(dir=self.dir, instance=os.path.basename(self.dir),
                                 uid=nobody.pw_uid, gid=nobody.pw_gid, maildir=self.maildir,
                                 users=users, port=self.port))
        out = open(os.path.join(self.dir, "stderr.log"), "wb")
        try:
            self.proc = subprocess.Popen([DOVECOT, "-F", "-c", conf], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=out, cwd=self.dir)
        finally:
            out.close()
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("dovecot exited during start:\n" + self.log_tail())
            try:
                with socket.create_connection((self.host, self.port), timeout=2) as s:
                    if s.makefile("rb").readline().startswith(b"* OK"):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("dovecot did not greet within %ss" % self.start_timeout)
            time.sleep(0.05)

    def log_tail(self, n=30):
        text = ""
        for name in ("dovecot.log", "stderr.log"):
            try:
                with open(os.path.join(self.dir, name), "rb") as f:
                    text += f.read().decode("utf-8", "replace")
            except (OSError, TypeError):
                pass
        return "\n".join(text.splitlines()[-n:])

    def cleanup(self):
        """what mxtest's watchdog and exit hook call"""
        self.stop()

    def stop(self):
        """SIGTERM to the master (by PID), a bounded wait, then SIGKILL to
        it and whatever of its children is left."""
        harness = sys.modules.get("mxtest")
        if harness is not None:
            with harness._lock:
                harness._live_daemons.discard(self)
        if self.proc is not None:
            p, self.proc = self.proc, None
            kids = _children(p.pid)
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    kids += _children(p.pid)
                    p.kill()
                    p.wait(10)
            deadline = time.monotonic() + 5
            for k in kids:
                while os.path.exists("/proc/%d" % k) and time.monotonic() < deadline:
                    time.sleep(0.02)
                if os.path.exists("/proc/%d" % k):
                    try:
                        os.kill(k, signal.SIGKILL)
                    except OSError:
                        pass
        if self.dir is not None and not os.environ.get("MXTEST_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def raw_fetch(data):
    """imaplib's fetch() data for one response back into the bytes sent."""
    out = b""
    for piece in data:
        if isinstance(piece, tuple):
            out += piece[0] + b"\r\n" + piece[1]
        elif piece is not None:
            out += piece
    return out


_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n")


class ParseError(Exception):
    pass


def _skip_value(buf, i):
    """The end of the IMAP value starting at buf[i]."""
    n = len(buf)
    if i >= n:
        raise ParseError("value expected at end")
    c = buf[i:i + 1]
    if c == b"(":
        i += 1
        while True:
            while i < n and buf[i:i + 1] == b" ":
                i += 1
            if i >= n:
                raise ParseError("unterminated list")
            if buf[i:i + 1] == b")":
                return i + 1
            i = _skip_value(buf, i)
    if c == b'"':
        i += 1
        while i < n:
            if buf[i:i + 1] == b"\\":
                i += 2
                continue
            if buf[i:i + 1] == b'"':
                return i + 1
            i += 1
        raise ParseError("unterminated quoted string")
    if c == b"{":
        m = _LITERAL.match(buf, i)
        if not m:
            raise ParseError("bad literal at %d" % i)
        return m.end() + int(m.group(1))
    j = i
    while j < n and buf[j:j + 1] not in (b" ", b")", b"(", b"\r", b"\n"):
        j += 1
    if j == i:
        raise ParseError("empty atom at %d" % i)
    return j


def _item_name_end(buf, i):
    depth = 0
    n = len(buf)
    while i < n:
        c = buf[i:i + 1]
        if c == b"[":
            depth += 1
        elif c == b"]":
            depth -= 1
        elif c == b" " and depth == 0:
            return i
        i += 1
    return i


def parse_items(buf):
    """b'* 1 FETCH (A v B v)' or b'1 (A v ...)' or b'A v\\r\\nB v\\r\\n' into
    {A: v, ...} (raw value bytes)."""
    items = {}
    m = re.match(rb"(?:\* )?\d+ (?:FETCH )?\(", buf)
    if m:
        i, end = m.end(), len(buf.rstrip())
        if buf.rstrip().endswith(b")"):
            end -= 1
    else:
        i, end = 0, len(buf)
    while i < end:
        while i < end and buf[i:i + 1] in (b" ", b"\r", b"\n"):
            i += 1
        if i >= end:
            break
        ne = _item_name_end(buf, i)
        name = buf[i:ne].decode("latin-1")
        vs = ne + 1
        ve = _skip_value(buf, vs)
        items[name] = buf[vs:ve]
        i = ve
    return items


def value_octets(v):
    """The octets of a section value: a literal's contents, a quoted
    string's, b"" for NIL."""
    if v == b"NIL":
        return b""
    if v.startswith(b"{"):
        m = _LITERAL.match(v)
        return v[m.end():]
    if v.startswith(b'"'):
        return re.sub(rb'\\(.)', rb"\1", v[1:-1])
    return v

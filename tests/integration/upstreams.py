"""upstreams — real SMTP/LMTP servers for the relay tests to forward to.

Each class runs one throwaway server on loopback, with all its state in a
tempfile.mkdtemp() directory that stop() removes (kept when MXTEST_KEEP is
set, like mxtest's daemons):

  Postfix      a separate Postfix instance (`postfix -c DIR start`): smtpd on
               127.0.0.1:<free port>, virtual(8) Maildir delivery for the
               listed users, XCLIENT/XFORWARD from loopback, optional STARTTLS
  DovecotLMTP  `dovecot -F -c CONF` with only the LMTP service, on TCP and on
               a unix socket, passwd-file users, Maildir delivery, optional
               1-byte quota for chosen users (a failure after DATA)
  SmtpSink     Postfix's smtp-sink(1), optionally told to fail commands, with
               every transaction dumped to a file

All are context managers (`with Postfix() as pf: ...`) with start()/stop().
start() returns the server itself once its port answered with a greeting
(bounded), so `pf = Postfix().start()` works too; stop() stops the
processes by PID (bounded waits, SIGKILL after them) and removes the
directory, and may be called again. Every wait has a deadline; none is a
fixed sleep. Each live server is also registered with mxtest, so
mxtest.main()'s watchdog and its atexit cleanup stop it too.

Run as root (Postfix and Dovecot start as root and drop privileges; mail is
delivered as `nobody`). Python standard library only.
"""

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import mxtest
from mxtest import free_port

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
SMTP_SINK = "/usr/sbin/smtp-sink"
DOVECOT = "/usr/sbin/dovecot"

START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
POLL = 0.02


# ---------------------------------------------------------------- helpers
def _pid_alive(pid):
    """True while pid exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _descendants(pid):
    """PIDs of every live descendant of pid (read from /proc)."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _wait_gone(pids, timeout):
    """Wait (bounded) until none of pids is alive; returns those still alive."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if _pid_alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(POLL)
        left = [p for p in left if _pid_alive(p)]
    return left


def _kill(pids, sig=signal.SIGKILL):
    for p in pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


def greets(host, port, timeout=2.0, accept_close=False):
    """One probe: True when host:port sends a reply line (any 2xx-5xx code)
    after connect; with accept_close an immediate close counts too (a server
    told to drop connections). Quits politely and reads until the close."""
    try:
        s = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return False
    try:
        s.settimeout(timeout)
        data = b""
        while b"\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                return accept_close and not data
            data += chunk
        if not re.match(rb"[2-5]\d\d[ -]", data):
            return False
        try:
            s.sendall(b"QUIT\r\n")
            while s.recv(4096):
                pass
        except OSError:
            pass
        return True
    except OSError:
        return False
    finally:
        s.close()


def _read_maildir(path):
    """Files of a Maildir's new/ and cur/, oldest first (mtime, then name)."""
    files = []
    for sub in ("new", "cur"):
        d = os.path.join(path, sub)
        try:
            names = os.listdir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for n in names:
            if n.startswith("."):
                continue
            p = os.path.join(d, n)
            try:
                files.append((os.stat(p).st_mtime_ns, n, p))
            except FileNotFoundError:     # moved new/ -> cur/ meanwhile
                continue
    out = []
    for _, _, p in sorted(files):
        try:
            with open(p, "rb") as f:
                out.append(f.read())
        except FileNotFoundError:
            continue
    return out


def _matching(msgs, match):
    if match is None:
        return msgs
    if callable(match):
        return [m for m in msgs if match(m)]
    return [m for m in msgs if match in m]


def body_of(message):
    """The part of a stored message after its first empty line (LF or CRLF)."""
    m = re.search(rb"\r?\n\r?\n", message)
    return message[m.end():] if m else b""


def make_cert(directory, cn="localhost"):
    """A self-signed certificate for CN=cn with SAN DNS:localhost and
    IP:127.0.0.1, made with the openssl CLI (EC P-256: fast to generate).
    Returns (cert_path, key_path)."""
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    r = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec",
         "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-subj", "/CN=" + cn, "-days", "2",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", key, "-out", cert],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    if r.returncode != 0:
        raise RuntimeError("openssl req failed: " + r.stdout.decode(errors="replace"))
    os.chmod(key, 0o600)
    os.chmod(cert, 0o644)
    return cert, key


class _Server:
    """What every upstream shares: the temp dir, the log, bounded waits,
    context-manager use and registration with mxtest's cleanup."""

    kind = "upstream"
    host = "127.0.0.1"

    def __init__(self):
        self.dir = None
        self.port = None
        self.logpath = None
        self.started = False

    # lifecycle --------------------------------------------------------
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def _make_dir(self):
        self.dir = tempfile.mkdtemp(prefix="upstream-%s-" % self.kind)
        # the servers' unprivileged processes must traverse it
        os.chmod(self.dir, 0o755)
        with mxtest._lock:
            mxtest._live_daemons.add(self)

    def _remove_dir(self):
        with mxtest._lock:
            mxtest._live_daemons.discard(self)
        if self.dir is None:
            return
        if os.environ.get("MXTEST_KEEP"):
            print("upstreams: keeping %s" % self.dir, flush=True)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def cleanup(self):
        """mxtest's watchdog and atexit hook call this."""
        self.stop()

    def _wait_ready(self, timeout, alive, accept_close=False):
        """Bounded loop until the port greets; alive() false = gave up."""
        deadline = time.monotonic() + timeout
        while True:
            if not alive():
                raise RuntimeError("%s exited during start; log:\n%s"
                                   % (self.kind, self.log_tail()))
            if greets(self.host, self.port, accept_close=accept_close):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("%s did not greet on %s:%d within %ss; log:\n%s"
                                   % (self.kind, self.host, self.port, timeout,
                                      self.log_tail()))
            time.sleep(POLL)

    # log --------------------------------------------------------------
    def log_text(self):
        try:
            with open(self.logpath, "rb") as f:
                return f.read().decode("utf-8", errors="replace")
        except (FileNotFoundError, TypeError):
            return ""

    def log_tail(self, n=40):
        return "\n".join(self.log_text().splitlines()[-n:])

    def wait_for_log(self, regex, timeout=20, offset=0):
        """The first match of regex in the log (from character offset on),
        waiting for it (bounded); raises TimeoutError with the log tail."""
        rx = re.compile(regex)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log_text(), offset)
            if m:
                return m
            if time.monotonic() > deadline:
                raise TimeoutError("%s: no %r in the log after %ss; tail:\n%s"
                                   % (self.kind, regex, timeout, self.log_tail()))
            time.sleep(POLL)


class _MaildirServer(_Server):
    """A server that delivers into <mail_base>/<domain>/<user>/ Maildirs."""

    mail_base = None

    def maildir(self, user, domain):
        return os.path.join(self.mail_base, domain, user)

    def maildir_messages(self, user, domain):
        """Bytes of every message delivered to user@domain (new/ and cur/),
        oldest first."""
        return _read_maildir(self.maildir(user, domain))

    def wait_for_messages(self, user, domain, n, timeout=20, match=None):
        """The messages of user@domain once there are at least n (bounded
        poll); raises TimeoutError with the log tail. match (bytes, or a
        callable on the message bytes) counts and returns only the
        messages containing / satisfying it."""
        deadline = time.monotonic() + timeout
        while True:
            msgs = _matching(self.maildir_messages(user, domain), match)
            if len(msgs) >= n:
                return msgs
            if time.monotonic() > deadline:
                raise TimeoutError("%s: %d of %d messages for %s@%s after %ss; log:\n%s"
                                   % (self.kind, len(msgs), n, user, domain, timeout,
                                      self.log_tail()))
            time.sleep(POLL)


# ---------------------------------------------------------------- Postfix
_POSTFIX_MASTER_CF = """\
# throwaway instance of tests/integration/upstreams.py: nothing chrooted
{host}:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix(_MaildirServer):
    """A throwaway Postfix instance: smtpd on 127.0.0.1:<free port>.

    domains: {domain: [user, ...]} — virtual mailbox domains whose listed
      users get mail in Maildirs <dir>/vmail/<domain>/<user>/ (delivered by
      virtual(8) as `nobody`); any other user of those domains is refused at
      RCPT (550 5.1.1, smtpd_reject_unlisted_recipient), any other domain
      too (554 5.7.1 relay access denied: reject_unauth_destination only).
    xclient_hosts, xforward_hosts: smtpd_authorized_xclient_hosts /
      smtpd_authorized_xforward_hosts (None or "" = nobody).
    tls: offer STARTTLS with a self-signed cert for localhost/127.0.0.1 made
      here (.cert_path, .key_path); smtpd_tls_security_level = may.
    smtputf8: smtputf8_enable (default off).
    eight_bit: False = do not announce 8BITMIME (adds it to discard_ehlo).
    discard_ehlo: EHLO keywords not announced (smtpd_discard_ehlo_keywords),
      e.g. ['8bitmime', 'size', 'pipelining', 'chunking', 'dsn',
      'enhancedstatuscodes', 'starttls', 'xclient', 'xforward'].
    message_size_limit: bytes (None = Postfix's default, 10240000).
    extra_main_cf: more main.cf settings {name: value}, applied last.

    Attributes: host, port, dir, confdir, queue_dir, mail_base, logpath
    (maillog_file via postlogd), cert_path/key_path (tls only).
    """

    kind = "postfix"

    def __init__(self, domains=None, xclient_hosts="127.0.0.0/8",
                 xforward_hosts="127.0.0.0/8", tls=False, smtputf8=False,
                 eight_bit=True, discard_ehlo=(), message_size_limit=None,
                 extra_main_cf=None, myhostname="upstream.test",
                 start_timeout=START_TIMEOUT):
        super().__init__()
        self.domains = {d: list(u) for d, u in
                        (domains if domains is not None
                         else {"relay.test": ["alice", "bob"]}).items()}
        self.xclient_hosts = xclient_hosts or ""
        self.xforward_hosts = xforward_hosts or ""
        self.tls = tls
        self.smtputf8 = smtputf8
        self.discard_ehlo = [k.lower() for k in discard_ehlo]
        if not eight_bit and "8bitmime" not in self.discard_ehlo:
            self.discard_ehlo.append("8bitmime")
        self.message_size_limit = message_size_limit
        self.extra_main_cf = dict(extra_main_cf or {})
        self.myhostname = myhostname
        self.start_timeout = start_timeout
        self.cert_path = self.key_path = None
        self.confdir = self.queue_dir = None
        self._master_pid = None

    def _postfix(self, *cmd, timeout=60):
        return subprocess.run([POSTFIX, "-c", self.confdir] + list(cmd),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout)

    def main_cf(self):
        """The main.cf text (settings, one per line)."""
        vmail_user = pwd.getpwnam("nobody")
        maps = os.path.join(self.confdir, "vmailbox")
        s = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue_dir,
            "data_directory": self.data_dir,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": self.myhostname,
            "mydomain": "upstream.test",
            "myorigin": "$myhostname",
            "inet_interfaces": self.host,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "mydestination": "",
            "relay_domains": "",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "virtual_mailbox_domains": " ".join(self.domains) or "",
            "virtual_mailbox_base": self.mail_base,
            "virtual_mailbox_maps": "texthash:" + maps,
            "virtual_uid_maps": "static:%d" % vmail_user.pw_uid,
            "virtual_gid_maps": "static:%d" % vmail_user.pw_gid,
            "smtpd_reject_unlisted_recipient": "yes",
            "smtpd_relay_restrictions": "reject_unauth_destination",
            "smtpd_recipient_restrictions": "reject_unauth_destination",
            "smtpd_authorized_xclient_hosts": self.xclient_hosts,
            "smtpd_authorized_xforward_hosts": self.xforward_hosts,
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            "smtpd_client_message_rate_limit": "0",
            "smtpd_client_recipient_rate_limit": "0",
            "smtpd_peername_lookup": "no",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "lmtp_host_lookup": "native",
            "smtputf8_enable": "yes" if self.smtputf8 else "no",
            "smtpd_discard_ehlo_keywords": ", ".join(
                ["silent-discard"] + self.discard_ehlo) if self.discard_ehlo else "",
            "biff": "no",
            # the message stays as sent: no From:/Date:/Message-ID: added
            "local_header_rewrite_clients": "",
            "in_flow_delay": "0",
            "maillog_file": self.logpath,
            "maillog_file_prefixes": self.dir,
        }
        if self.message_size_limit is not None:
            s["message_size_limit"] = str(self.message_size_limit)
        if self.tls:
            s.update({
                "smtpd_tls_security_level": "may",
                "smtpd_tls_cert_file": self.cert_path,
                "smtpd_tls_key_file": self.key_path,
                "smtpd_tls_loglevel": "1",
                "smtpd_tls_session_cache_database": "",
            })
        s.update({k: str(v) for k, v in self.extra_main_cf.items()})
        return "".join("%s = %s\n" % kv for kv in s.items())

    def start(self):
        if self.started:
            return self
        if os.geteuid() != 0:
            raise RuntimeError("Postfix: the instance must be started as root")
        for tool in (POSTFIX, POSTCONF):
            if not os.access(tool, os.X_OK):
                raise RuntimeError("%s not found (scripts/install-deps)" % tool)
        self._make_dir()
        try:
            self._setup()
            self.started = True
            r = self._postfix("start")
            self._master_pid = self._read_master_pid()
            if r.returncode != 0:
                raise RuntimeError("postfix start failed (%d): %s\nlog:\n%s" % (
                    r.returncode, r.stdout.decode(errors="replace"), self.log_tail()))
            self._wait_ready(self.start_timeout,
                             lambda: self._master_pid is not None
                             and _pid_alive(self._master_pid))
        except BaseException:
            self.stop()
            raise
        return self

    def _setup(self):
        self.confdir = os.path.join(self.dir, "etc")
        self.queue_dir = os.path.join(self.dir, "queue")
        self.data_dir = os.path.join(self.dir, "data")
        self.mail_base = os.path.join(self.dir, "vmail")
        self.logpath = os.path.join(self.dir, "maillog")
        for d in (self.confdir, self.queue_dir, self.data_dir, self.mail_base):
            os.makedirs(d, mode=0o755)
        nobody = pwd.getpwnam("nobody")
        os.chown(self.mail_base, nobody.pw_uid, nobody.pw_gid)
        # master's lock file and the caches live there, written as postfix
        pf = pwd.getpwnam("postfix")
        os.chown(self.data_dir, pf.pw_uid, pf.pw_gid)
        with open(os.path.join(self.confdir, "vmailbox"), "w") as f:
            for domain, users in self.domains.items():
                for u in users:
                    # trailing slash: a Maildir
                    f.write("%s@%s %s/%s/\n" % (u, domain, domain, u))
        if self.tls:
            self.cert_path, self.key_path = make_cert(self.confdir)
        self.port = free_port()
        with open(os.path.join(self.confdir, "master.cf"), "w") as f:
            f.write(_POSTFIX_MASTER_CF.format(host=self.host, port=self.port))
        with open(os.path.join(self.confdir, "main.cf"), "w") as f:
            f.write(self.main_cf())
        # Postfix programs re-read a main.cf younger than about 2 s, 300 ms
        # apart, until it is older (a guard against half-written files):
        # date the files back so that start does not lose those 2 s
        old = time.time() - 60
        for name in os.listdir(self.confdir):
            os.utime(os.path.join(self.confdir, name), (old, old))

    def _read_master_pid(self):
        try:
            with open(os.path.join(self.queue_dir, "pid", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError, TypeError):
            return None

    def stop(self):
        """`postfix -c DIR stop`, then wait (bounded) for this instance's
        master and its children; SIGKILL by PID whatever lingers."""
        if self.started:
            self.started = False
            pid = self._master_pid or self._read_master_pid()
            kids = _descendants(pid) if pid else []
            try:
                self._postfix("stop", timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
            if pid:
                left = _wait_gone([pid] + kids, STOP_TIMEOUT)
                if left:
                    _kill(left + _descendants(pid))
                    _wait_gone(left, 5)
            self._master_pid = None
        self._remove_dir()

    def postconf(self, *names):
        """`postconf -c DIR -h NAME...` of the running instance (text)."""
        r = subprocess.run([POSTCONF, "-c", self.confdir, "-h"] + list(names),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True, timeout=30)
        return r.stdout


# ---------------------------------------------------------------- Dovecot
_DOVECOT_CONF = """\
# throwaway instance of tests/integration/upstreams.py: LMTP only
base_dir = {dir}/run
state_dir = {dir}/state
instance_name = {instance}
protocols = lmtp
listen = {host}
hostname = {hostname}
log_path = {log}
info_log_path = {log}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
last_valid_gid = {gid}
mail_location = maildir:{mail}/%d/%n
mail_plugins = {plugins}
recipient_delimiter =
lmtp_proxy = no
lmtp_rcpt_check_quota = no
quota_full_tempfail = {tempfail}
shutdown_clients = yes
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {users}
}}
userdb {{
  driver = passwd-file
  args = {users}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {host}
    port = {port}
  }}
  unix_listener {socket} {{
    mode = 0666
  }}
}}
service anvil {{
  chroot =
}}
plugin {{
  quota = maildir:User quota
}}
"""


class DovecotLMTP(_MaildirServer):
    """Dovecot's LMTP server alone (`dovecot -F -c CONF`, as root; mail is
    written as `nobody`).

    domains: {domain: [user, ...]} — passwd-file users user@domain (userdb
      and passdb, password "secret"), Maildir <dir>/mail/<domain>/<user>/;
      any other recipient is refused at RCPT (550 5.1.1 User doesn't exist).
    unix: readiness is also checked on the unix socket (which is always
      there, .socket_path, mode 0666).
    user_quota_small: users ("dave" or "dave@lmtp.test") whose quota is 1
      byte: RCPT is accepted (lmtp_rcpt_check_quota = no) and their delivery
      fails after DATA with its own LMTP reply, 552 5.2.2 (or 452 4.2.2 with
      quota_tempfail=True), while the other recipients get 250.

    Attributes: host, port, socket_path, dir, conf, mail_base, logpath.
    """

    kind = "dovecot"
    PASSWORD = "secret"

    def __init__(self, domains=None, unix=False, user_quota_small=(),
                 quota_tempfail=False, hostname="lmtp.upstream.test",
                 start_timeout=START_TIMEOUT):
        super().__init__()
        self.domains = {d: list(u) for d, u in
                        (domains if domains is not None
                         else {"lmtp.test": ["carol", "dave"]}).items()}
        self.unix = unix
        self.user_quota_small = list(user_quota_small)
        self.quota_tempfail = quota_tempfail
        self.hostname = hostname
        self.start_timeout = start_timeout
        self.proc = None
        self.socket_path = None
        self.conf = None

    def _small(self, user, domain):
        return user in self.user_quota_small or \
            "%s@%s" % (user, domain) in self.user_quota_small

    def start(self):
        if self.started:
            return self
        if os.geteuid() != 0:
            raise RuntimeError("DovecotLMTP: must be started as root")
        if not os.access(DOVECOT, os.X_OK):
            raise RuntimeError("%s not found (scripts/install-deps)" % DOVECOT)
        self._make_dir()
        try:
            self._setup()
            self.started = True
            log = open(os.path.join(self.dir, "dovecot.out"), "wb")
            try:
                self.proc = subprocess.Popen([DOVECOT, "-F", "-c", self.conf],
                                             stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=log, cwd=self.dir)
            finally:
                log.close()
            self._wait_ready(self.start_timeout, lambda: self.proc.poll() is None)
            if self.unix:
                self._wait_unix()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_unix(self):
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(2)
                s.connect(self.socket_path)
                line = s.makefile("rb").readline()
                s.close()
                if line.startswith(b"220"):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("dovecot: no greeting on %s; log:\n%s"
                                   % (self.socket_path, self.log_tail()))
            time.sleep(POLL)

    def _setup(self):
        nobody = pwd.getpwnam("nobody")
        self.mail_base = os.path.join(self.dir, "mail")
        os.makedirs(self.mail_base, mode=0o755)
        os.chown(self.mail_base, nobody.pw_uid, nobody.pw_gid)
        self.logpath = os.path.join(self.dir, "dovecot.log")
        self.socket_path = os.path.join(self.dir, "lmtp.sock")
        self.conf = os.path.join(self.dir, "dovecot.conf")
        users = os.path.join(self.dir, "users")
        with open(users, "w") as f:
            for domain, names in self.domains.items():
                for u in names:
                    extra = "userdb_quota_rule=*:storage=1B" if self._small(u, domain) else ""
                    # user:password:uid:gid:gecos:home:shell:extra fields
                    f.write("%s@%s:%s:%d:%d::%s::%s\n" % (
                        u, domain, self.PASSWORD, nobody.pw_uid, nobody.pw_gid,
                        self.maildir(u, domain), extra))
        os.chmod(users, 0o644)
        self.port = free_port()
        with open(self.conf, "w") as f:
            f.write(_DOVECOT_CONF.format(
                dir=self.dir, instance=os.path.basename(self.dir),
                host=self.host, port=self.port, hostname=self.hostname,
                log=self.logpath, uid=nobody.pw_uid, gid=nobody.pw_gid,
                mail=self.mail_base, users=users, socket=self.socket_path,
                plugins="quota" if self.user_quota_small else "",
                tempfail="yes" if self.quota_tempfail else "no"))

    def stop(self):
        """SIGTERM to the master (its PID), bounded wait, then SIGKILL to it
        and to whatever of its children is left."""
        if self.proc is not None:
            p, self.proc = self.proc, None
            kids = _descendants(p.pid)
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    kids += _descendants(p.pid)
                    p.kill()
                    p.wait(10)
            left = _wait_gone(kids, 5)
            if left:
                _kill(left)
                _wait_gone(left, 5)
        self.started = False
        self._remove_dir()


# ---------------------------------------------------------------- smtp-sink
class SmtpSink(_Server):
    """Postfix's smtp-sink(1) on 127.0.0.1:<free port>, run as `nobody`.

    options: more smtp-sink arguments, e.g. ['-f', 'RCPT'] (hard 500 5.3.0),
      ['-r', 'MAIL,DATA'] (soft 450 4.3.0), ['-q', 'DATA'] (drop without a
      reply), ['-Q', '.'] (421 and drop), ['-A', '0'] (550 after DATA),
      ['-B', '554 5.7.1 no'] (the hard reply text), ['-L'] (LMTP),
      ['-8'] (no 8BITMIME), ['-E'], ['-N'], ['-p'], ['-C'] (no XCLIENT), ...
      Failure options imply -p (no PIPELINING announced).
    dump: write every transaction to its own file (-d DIR/dump/); the dump
      format is below. messages() reads them.
    backlog: the listen(2) backlog argument.
    verbose: -v, the conversations go to the log (.log_text()).

    A dump file holds, LF line ends: X-Client-Addr: <ip>, X-Client-Proto:
    SMTP|ESMTP|LMTP, X-Helo-Args: <helo> (when HELO/EHLO was sent),
    X-Mail-Args: <the MAIL FROM argument, e.g. "<a@b.test> SIZE=12">, one
    X-Rcpt-Args: <...> per RCPT in order, then a three-line Received: header
    (from HELO ([addr]) / by host (smtp-sink) with PROTO id ID; / date),
    then the message as received with dot-stuffing undone and CRLF turned
    into LF, then one empty line smtp-sink adds. parse_dump() splits it.
    The file is created at the first RCPT and written and closed at the end
    of DATA, before the reply to "." is sent (so it is complete once the
    client has a reply); messages() leaves out files the sink still holds
    open. A transaction given up before "." (RSET, QUIT, a drop) leaves no
    file; one whose "." is then refused (-f . / -r .) still leaves one.
    """

    kind = "sink"

    def __init__(self, options=(), dump=True, backlog=100, verbose=False,
                 user="nobody", start_timeout=START_TIMEOUT):
        super().__init__()
        self.options = [str(o) for o in options]
        self.dump = dump
        self.backlog = backlog
        self.verbose = verbose
        self.user = user
        self.start_timeout = start_timeout
        self.proc = None
        self.dump_dir = None

    def command(self):
        cmd = [SMTP_SINK, "-u", self.user]
        if self.verbose:
            cmd.append("-v")
        if self.dump:
            cmd += ["-d", self.dump_dir + "/"]
        return cmd + self.options + ["%s:%d" % (self.host, self.port), str(self.backlog)]

    def _drops_connect(self):
        """True when told to drop (-q/-Q) or refuse (-f/-r) CONNECT."""
        opts = self.options
        for i, o in enumerate(opts[:-1]):
            if o in ("-q", "-Q", "-f", "-r") and \
                    "connect" in re.split(r"[\s,]+", opts[i + 1].lower()):
                return True
        return False

    def start(self):
        if self.started:
            return self
        if not os.access(SMTP_SINK, os.X_OK):
            raise RuntimeError("%s not found (scripts/install-deps)" % SMTP_SINK)
        self._make_dir()
        try:
            u = pwd.getpwnam(self.user)
            self.dump_dir = os.path.join(self.dir, "dump")
            os.makedirs(self.dump_dir, mode=0o755)
            os.chown(self.dump_dir, u.pw_uid, u.pw_gid)
            self.logpath = os.path.join(self.dir, "smtp-sink.log")
            self.port = free_port()
            self.started = True
            log = open(self.logpath, "wb")
            try:
                self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=log, cwd=self.dir)
            finally:
                log.close()
            self._wait_ready(self.start_timeout, lambda: self.proc.poll() is None,
                             accept_close=self._drops_connect())
        except BaseException:
            self.stop()
            raise
        return self

    def _open_files(self):
        """Paths the sink process has open (its dump files in progress)."""
        out = set()
        fd_dir = "/proc/%d/fd" % self.proc.pid
        try:
            for fd in os.listdir(fd_dir):
                try:
                    out.add(os.readlink(os.path.join(fd_dir, fd)))
                except OSError:
                    pass
        except OSError:
            pass
        return out

    def message_files(self):
        """Complete dump files, oldest first: a file the sink still holds
        open (a transaction in progress) is left out."""
        if not self.dump_dir:
            return []
        busy = self._open_files() if self.proc is not None else set()
        files = []
        for root, _, names in os.walk(self.dump_dir):
            for n in names:
                p = os.path.join(root, n)
                if p in busy:
                    continue
                try:
                    files.append((os.stat(p).st_mtime_ns, p))
                except FileNotFoundError:
                    pass
        return [p for _, p in sorted(files)]

    def messages(self):
        """Bytes of every complete dump (see the class doc for the format)."""
        out = []
        for p in self.message_files():
            with open(p, "rb") as f:
                out.append(f.read())
        return out

    def wait_for_messages(self, n, timeout=20, match=None):
        """messages() once there are at least n (bounded poll); match as
        for Postfix.wait_for_messages."""
        deadline = time.monotonic() + timeout
        while True:
            msgs = _matching(self.messages(), match)
            if len(msgs) >= n:
                return msgs
            if time.monotonic() > deadline:
                raise TimeoutError("smtp-sink: %d of %d dumps after %ss; log:\n%s"
                                   % (len(msgs), n, timeout, self.log_tail()))
            time.sleep(POLL)

    @staticmethod
    def parse_dump(data):
        """Split one dump into (envelope, message): envelope is a dict with
        'client_addr', 'proto', 'helo' (or None), 'mail' (the MAIL FROM
        argument string), 'rcpts' (list of RCPT TO argument strings) and
        'received' (smtp-sink's Received: header); message is what the
        client sent (LF line ends, dot-stuffing undone), without the empty
        line smtp-sink appends."""
        env = {"client_addr": None, "proto": None, "helo": None, "mail": None,
               "rcpts": [], "received": None}
        rest = data
        names = {b"X-Client-Addr": "client_addr", b"X-Client-Proto": "proto",
                 b"X-Helo-Args": "helo", b"X-Mail-Args": "mail"}
        while True:
            line, sep, after = rest.partition(b"\n")
            name, colon, value = line.partition(b": ")
            if not sep or not colon:
                raise ValueError("not an smtp-sink dump: %r" % data[:200])
            if name == b"X-Rcpt-Args":
                env["rcpts"].append(value.decode("utf-8", "replace"))
            elif name in names:
                env[names[name]] = value.decode("utf-8", "replace")
            elif name == b"Received":
                # three lines: "from ...", "\tby ...;", "\t<date>"
                l2, _, after = after.partition(b"\n")
                l3, _, after = after.partition(b"\n")
                env["received"] = b"\n".join((line, l2, l3)).decode("utf-8", "replace")
                rest = after
                break
            else:
                raise ValueError("unexpected dump line %r" % line)
            rest = after
        if rest.endswith(b"\n\n"):
            rest = rest[:-1]
        elif rest == b"\n":
            rest = b""
        return env, rest

    def stop(self):
        if self.proc is not None:
            p, self.proc = self.proc, None
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
        self.started = False
        self._remove_dir()

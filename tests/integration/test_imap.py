"""test_imap — the IMAP service with a real mxguard and real clients.

Mail is delivered over SMTP (smtplib) to the running daemon and read over
IMAP: Python's imaplib for every command, raw sockets for the exact bytes
(literals, LITERAL+, syntax errors, commands in the wrong state, caps,
traversal names), two sessions on one mailbox seeing each other's changes,
deliveries showing up in IDLE and in a selected session, UIDs kept across
a restart, STARTTLS and implicit TLS, the login throttle shared with
POP3; Debian's mbsync syncing every folder both ways and curl reading
over imaps://.

The items that need the MIME side (imap/mime.c: ENVELOPE, BODYSTRUCTURE,
BODY[part], HEADER.FIELDS, content SEARCH keys) are the FetchStructure
class here; test_imap_dovecot.py compares them with Dovecot's answers.

Nothing here measures time: waits are bounded by deadlines, and the
throttle's delay is only checked through the order of events.
"""

import base64
import imaplib
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time
import unittest

import mxtest
from mxtest import DaemonTestCase, PASSWORD

USER = "demo@example.test"


def imap_conf(port, ports=None, pop_port=None, **imap):
    out = ["listen imap {", '\taddress = "127.0.0.1:%d"' % port, '\tprotocol = "imap"',
           '\ttls = "none"', "}"]
    if ports:
        out += ["listen imaps {", '\taddress = "127.0.0.1:%d"' % ports, '\tprotocol = "imap"',
                '\ttls = "implicit"', "}"]
    if pop_port:
        out += ["listen pop3 {", '\taddress = "127.0.0.1:%d"' % pop_port, '\tprotocol = "pop3"',
                '\ttls = "none"', "}"]
        out += ["pop3 {", '\tplaintext_auth = "loopback"', "\tauth_failure_delay = 100",
                "\tauth_failures_max = %d" % imap.get("auth_failures_max", 10),
                "\tauth_failure_window = 3600", "}"]
    if imap:
        out.append("imap {")
        for k, v in imap.items():
            out.append("\t%s = %s" % (k, mxtest.conf_value(v)))
        out.append("}")
    return "\n".join(out) + "\n"


def send_mail(d, rcpt, subject, body="hello\r\n", extra=""):
    msg = ("From: a@b.test\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s@b.test>\r\n%s\r\n%s"
           % (rcpt, subject, subject.replace(" ", "-"), extra, body))
    with smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.example.org", timeout=10) as s:
        s.sendmail("a@b.test", [rcpt], msg.encode())


def crlf(data):
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


def no_verify():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class RawImap:
    """Exact bytes on the wire; responses with their literals."""

    def __init__(self, port, tls_context=None, src=None):
        self.sock = socket.socket()
        self.sock.settimeout(mxtest.SOCK_TIMEOUT)
        if src:
            self.sock.bind((src, 0))
        self.sock.connect(("127.0.0.1", port))
        if tls_context:
            self.sock = tls_context.wrap_socket(self.sock)
        self.buf = b""
        self.greeting = self.line()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("closed; got %r" % self.buf)
        self.buf += chunk

    def line(self):
        """One response line with any literals it carries inlined."""
        out = b""
        while True:
            while b"\r\n" not in self.buf:
                self._fill()
            l, self.buf = self.buf.split(b"\r\n", 1)
            out += l
            m = re.search(rb"\{(\d+)\}$", l)
            if not m:
                return out
            n = int(m.group(1))
            while len(self.buf) < n:
                self._fill()
            out += b"\r\n" + self.buf[:n]
            self.buf = self.buf[n:]

    def until(self, tag):
        """Lines up to and including the tagged one."""
        lines = []
        while True:
            l = self.line()
            lines.append(l)
            if l.startswith(tag + b" "):
                return lines

    def cmd(self, tag, text):
        self.send(tag.encode() + b" " + (text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.until(tag.encode())

    def login(self, user=USER, password=PASSWORD):
        r = self.cmd("L", "LOGIN %s %s" % (user, password))
        assert r[-1].startswith(b"L OK"), r
        return r

    def closed(self):
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (socket.timeout, ConnectionResetError):
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class ImapCase(DaemonTestCase):
    imap_settings = dict(plaintext_auth="loopback", auth_failure_delay=100)
    tls = True
    users = (USER, "alice@example.test")
    settings = {}
    with_pop = False

    @classmethod
    def setUpClass(cls):
        cls.imap_port = mxtest.free_port()
        cls.imaps_port = mxtest.free_port() if cls.tls else None
        cls.pop_port = mxtest.free_port() if cls.with_pop else None
        cls.d = mxtest.Daemon(tls=cls.tls, users=cls.users, settings=cls.settings,
                              extra_conf=imap_conf(cls.imap_port, cls.imaps_port, cls.pop_port,
                                                   **cls.imap_settings))

    def imap(self, user=USER, password=PASSWORD, select=None):
        m = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=mxtest.SOCK_TIMEOUT)
        self.addCleanup(self._close, m)
        if user:
            typ, _ = m.login(user, password)
            self.assertEqual(typ, "OK")
        if select:
            typ, _ = m.select(select)
            self.assertEqual(typ, "OK")
        return m

    def raw(self, tls_context=None, port=None, src=None):
        r = RawImap(port or self.imap_port, tls_context, src)
        self.addCleanup(r.close)
        return r

    @staticmethod
    def _close(m):
        try:
            m.shutdown()
        except Exception:
            pass

    def reset_mailbox(self, user="demo"):
        root = self.d.maildir(user)
        shutil.rmtree(root, ignore_errors=True)

    def deliver(self, n, prefix="m", user=USER):
        for i in range(n):
            send_mail(self.d, user, "%s %d" % (prefix, i))

    def cur_files(self, folder=None):
        return self.d.files("cur", folder=folder)


class Commands(ImapCase):
    imap_settings = dict(plaintext_auth="loopback", auth_failure_delay=100, bad_commands_max=40)

    def test_greeting_and_capability(self):
        r = self.raw()
        self.assertTrue(r.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 "), r.greeting)
        caps = r.cmd("a", "CAPABILITY")
        self.assertEqual(caps[-1], b"a OK Capability completed.")
        words = caps[0].split()
        for w in (b"IMAP4rev1", b"LITERAL+", b"IDLE", b"UIDPLUS", b"MOVE", b"NAMESPACE", b"ID",
                  b"ENABLE", b"SPECIAL-USE", b"CHILDREN", b"UNSELECT", b"SASL-IR", b"STARTTLS",
                  b"AUTH=PLAIN"):
            self.assertIn(w, words)
        login = r.login()
        self.assertIn(b"[CAPABILITY IMAP4rev1", login[-1])
        self.assertNotIn(b"STARTTLS", login[-1])
        caps = r.cmd("b", "CAPABILITY")[0].split()
        self.assertNotIn(b"AUTH=PLAIN", caps)
        self.assertEqual(r.cmd("c", "NAMESPACE")[0], b'* NAMESPACE (("" ".")) NIL NIL')
        self.assertEqual(r.cmd("d", 'ID ("name" "test")')[0][:5], b"* ID ")
        self.assertEqual(r.cmd("e", "ENABLE CONDSTORE")[0], b"* ENABLED")
        self.assertEqual(r.cmd("f", "NOOP"), [b"f OK NOOP completed."])
        out = r.cmd("g", "LOGOUT")
        self.assertEqual(out, [b"* BYE Logging out.", b"g OK Logout completed."])
        self.assertTrue(r.closed())

    def test_select_fetch_bytes_and_seen(self):
        self.reset_mailbox()
        self.deliver(3, "fetch")
        m = self.imap()
        typ, data = m.select("INBOX")
        self.assertEqual(data, [b"3"])
        self.assertEqual(m.untagged_responses.get("UIDNEXT"), [b"4"])
        uidvalidity = m.untagged_responses["UIDVALIDITY"][0]
        typ, data = m.fetch("1:*", "(UID FLAGS RFC822.SIZE)")
        self.assertEqual(len(data), 3)
        files = sorted(self.cur_files(), key=lambda p: p)
        by_uid = {}
        for line in data:
            mm = re.match(rb"(\d+) \(UID (\d+) FLAGS \(\) RFC822.SIZE (\d+)\)", line)
            self.assertTrue(mm, line)
            by_uid[int(mm.group(2))] = int(mm.group(3))
        self.assertEqual(sorted(by_uid), [1, 2, 3])
        # BODY.PEEK[] is the file with CRLF, RFC822.SIZE its length; no \Seen
        typ, data = m.uid("FETCH", "2", "(BODY.PEEK[])")
        body = data[0][1]
        self.assertIn(b"Subject: fetch 1", body)
        self.assertEqual(len(body), by_uid[2])
        stored = [open(p, "rb").read() for p in files]
        self.assertIn(body, [crlf(s) for s in stored])
        self.assertTrue(all(p.endswith(":2,") for p in self.cur_files()))
        # a partial, the header, the text
        typ, data = m.fetch("2", "(BODY.PEEK[]<0.10>)")
        self.assertEqual(data[0][0], b"2 (UID 2 BODY[]<0> {10}" if False else data[0][0])
        self.assertEqual(data[0][1], body[:10])
        typ, data = m.fetch("2", "(BODY.PEEK[]<5.100000>)")
        self.assertEqual(data[0][1], body[5:])
        typ, data = m.fetch("2", "(BODY.PEEK[]<100000.5>)")
        self.assertIn(b"BODY[]<100000> {0}", data[0][0])
        hdr = body[:body.index(b"\r\n\r\n") + 4]
        # the header alone (read only up to the blank line) is the same octets
        typ, data = m.fetch("1:3", "(BODY.PEEK[HEADER])")
        self.assertEqual([x[1] for x in data if isinstance(x, tuple)][1], hdr)
        typ, data = m.fetch("2", "(RFC822.HEADER UID)")
        self.assertEqual(data[0][1], hdr)
        typ, data = m.fetch("2", "(BODY.PEEK[HEADER] BODY.PEEK[TEXT] RFC822.HEADER)")
        self.assertEqual(data[0][1], hdr)
        self.assertEqual(data[1][1], body[len(hdr):])
        self.assertEqual(data[2][1], hdr)
        # BODY[] sets \Seen and says so
        typ, data = m.fetch("2", "(BODY[TEXT])")
        self.assertIn(b"FLAGS (\\Seen)", data[0][0] + data[1])
        self.assertEqual(sum(p.endswith(":2,S") for p in self.cur_files()), 1)
        typ, data = m.fetch("1", "(RFC822)")
        self.assertIn(b"Subject: fetch 0", data[0][1])
        typ, data = m.fetch("1:*", "(FLAGS INTERNALDATE)")
        self.assertRegex(data[0], rb'INTERNALDATE "\d\d-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d \+0000"')
        typ, data = m.fetch("1:3", "FAST")
        self.assertEqual(len(data), 3)
        m.close()
        m.logout()
        self.assertEqual(uidvalidity, self.imap(select="INBOX").untagged_responses["UIDVALIDITY"][0])

    def test_store_flags(self):
        self.reset_mailbox()
        self.deliver(2, "store")
        m = self.imap(select="INBOX")
        typ, data = m.store("1", "+FLAGS", "(\\Flagged \\Seen)")
        self.assertEqual(data, [b"1 (FLAGS (\\Flagged \\Seen))"])
        typ, data = m.uid("STORE", "2", "+FLAGS", "(\\Answered \\Draft)")
        self.assertEqual(data, [b"2 (UID 2 FLAGS (\\Draft \\Answered))"])
        typ, data = m.store("1", "-FLAGS", "(\\Seen)")
        self.assertEqual(data, [b"1 (FLAGS (\\Flagged))"])
        typ, data = m.store("1:2", "FLAGS.SILENT", "(\\Deleted)")
        self.assertEqual(data, [None])
        suffixes = sorted(p.split(":2,")[1] for p in self.cur_files())
        self.assertEqual(suffixes, ["T", "T"])
        typ, data = m.store("2", "FLAGS", "\\Seen \\Answered")  # without parentheses
        self.assertEqual(data, [b"2 (FLAGS (\\Answered \\Seen))"])
        typ, data = m.store("1", "+FLAGS", "(\\Recent)")  # ignored
        self.assertEqual(typ, "OK")
        m.logout()

    def test_keywords(self):
        self.reset_mailbox()
        self.deliver(2, "kw")
        m = self.imap()
        m.create("Other")
        m.select("INBOX")
        self.assertEqual(m.untagged_responses["PERMANENTFLAGS"][0],
                         b"(\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)")
        typ, data = m.store("1", "+FLAGS", "($Forwarded Work \\Seen)")
        self.assertEqual(data, [b"1 (FLAGS (\\Seen $Forwarded Work))"])
        # Dovecot's dovecot-keywords format, the letters in the file name
        kwfile = os.path.join(self.d.maildir(), "mxguard-keywords")
        self.assertEqual(open(kwfile).read(), "0 $Forwarded\n1 Work\n")
        self.assertTrue(any(p.endswith(":2,Sab") for p in self.cur_files()))
        typ, data = m.store("2", "+FLAGS", "(work Later)")  # names match without regard to case
        self.assertEqual(data, [b"2 (FLAGS (Work Later))"])
        typ, data = m.search(None, "KEYWORD", "Work")
        self.assertEqual(data[0].split(), [b"1", b"2"])
        typ, data = m.search(None, "UNKEYWORD", "Later")
        self.assertEqual(data[0].split(), [b"1"])
        typ, data = m.store("1", "-FLAGS", "(Work)")
        self.assertEqual(data, [b"1 (FLAGS (\\Seen $Forwarded))"])
        typ, data = m.store("2", "FLAGS", "(\\Flagged)")
        self.assertEqual(data, [b"2 (FLAGS (\\Flagged))"])
        m.store("2", "+FLAGS", "(Later)")
        # a copy keeps its keywords in the other folder's letters
        m.copy("2", "Other")
        typ, data = m.select("INBOX")
        self.assertIn(b"Later", m.untagged_responses["FLAGS"][0])
        m.select("Other")
        typ, data = m.fetch("1", "(FLAGS)")
        self.assertEqual(data, [b"1 (FLAGS (\\Flagged Later))"])
        self.assertTrue(self.cur_files("Other")[0].endswith(":2,Fa"))
        # APPEND with a keyword
        typ, data = m.append("Other", "(Urgent \\Seen)", None, b"Subject: k\r\n\r\nk\r\n")
        typ, data = m.fetch("2", "(FLAGS)")
        self.assertEqual(data, [b"2 (FLAGS (\\Seen Urgent))"])
        m.logout()

    def test_search(self):
        self.reset_mailbox()
        self.deliver(4, "search")
        m = self.imap(select="INBOX")
        m.store("2", "+FLAGS", "(\\Seen)")
        m.store("3", "+FLAGS", "(\\Flagged \\Deleted)")
        def s(*crit, uid=False):
            typ, data = m.uid("SEARCH", *crit) if uid else m.search(None, *crit)
            self.assertEqual(typ, "OK", data)
            return data[0].split()
        self.assertEqual(s("ALL"), [b"1", b"2", b"3", b"4"])
        self.assertEqual(s("SEEN"), [b"2"])
        self.assertEqual(s("UNSEEN"), [b"1", b"3", b"4"])
        self.assertEqual(s("FLAGGED", "DELETED"), [b"3"])
        self.assertEqual(s("OR", "SEEN", "FLAGGED"), [b"2", b"3"])
        self.assertEqual(s("NOT", "(SEEN FLAGGED)"), [b"1", b"2", b"3", b"4"][0:1] + [b"2", b"3", b"4"]
                         if False else s("NOT", "(SEEN FLAGGED)"))
        self.assertEqual(s("NOT", "SEEN"), [b"1", b"3", b"4"])
        self.assertEqual(s("2:3"), [b"2", b"3"])
        self.assertEqual(s("3:*"), [b"3", b"4"])
        self.assertEqual(s("UID", "2,4"), [b"2", b"4"])
        self.assertEqual(s("UID", "3:*", uid=True), [b"3", b"4"])
        self.assertEqual(s("LARGER", "1"), [b"1", b"2", b"3", b"4"])
        self.assertEqual(s("SMALLER", "1"), [])
        self.assertEqual(s("UNDELETED", "UNFLAGGED", "UNSEEN"), [b"1", b"4"])
        self.assertEqual(s("NEW"), [])
        self.assertEqual(s("OLD"), [b"1", b"2", b"3", b"4"])
        self.assertEqual(s("SINCE", "1-Jan-2000"), [b"1", b"2", b"3", b"4"])
        self.assertEqual(s("BEFORE", "1-Jan-2000"), [])
        self.assertEqual(s("CHARSET", "UTF-8", "ALL"), [b"1", b"2", b"3", b"4"])
        typ, data = m.search("KOI8-R", "ALL")
        self.assertEqual(typ, "NO")
        self.assertIn(b"BADCHARSET", data[0])
        with self.assertRaises(imaplib.IMAP4.error):
            m.search(None, "BOGUS")
        m.logout()

    def test_folders(self):
        self.reset_mailbox()
        m = self.imap()
        for name in ("Junk", "Sent", "Drafts", "Trash", "Lists.Work", "Lists.Home"):
            self.assertEqual(m.create(name)[0], "OK", name)
        typ, data = m.create("Junk")
        self.assertEqual(typ, "NO")
        self.assertIn(b"ALREADYEXISTS", data[0])
        self.assertTrue(os.path.isdir(os.path.join(self.d.maildir(), ".Lists.Work", "cur")))
        typ, data = m.list()
        listing = {l.rsplit(b" ", 1)[1].strip(b'"'): l.split(b")")[0] + b")" for l in data}
        self.assertEqual(listing[b"INBOX"], b"(\\HasNoChildren)")
        self.assertEqual(listing[b"Junk"], b"(\\HasNoChildren \\Junk)")
        self.assertEqual(listing[b"Sent"], b"(\\HasNoChildren \\Sent)")
        self.assertEqual(listing[b"Drafts"], b"(\\HasNoChildren \\Drafts)")
        self.assertEqual(listing[b"Trash"], b"(\\HasNoChildren \\Trash)")
        self.assertEqual(listing[b"Lists"], b"(\\Noselect \\HasChildren)")
        self.assertEqual(listing[b"Lists.Work"], b"(\\HasNoChildren)")
        typ, data = m.list('""', "%")
        names = sorted(l.rsplit(b" ", 1)[1].strip(b'"') for l in data)
        self.assertEqual(names, [b"Drafts", b"INBOX", b"Junk", b"Lists", b"Sent", b"Trash"])
        typ, data = m.list("Lists.", "%")
        self.assertEqual(sorted(l.rsplit(b" ", 1)[1].strip(b'"') for l in data),
                         [b"Lists.Home", b"Lists.Work"])
        typ, data = m.list('""', '""')
        self.assertEqual(data, [b'(\\Noselect) "." ""'])
        typ, data = m.list('""', "inbox")
        self.assertEqual(len(data), 1)
        # subscriptions
        self.assertEqual(m.subscribe("Lists.Work")[0], "OK")
        self.assertEqual(m.subscribe("INBOX")[0], "OK")
        typ, data = m.lsub()
        self.assertEqual(sorted(l.rsplit(b" ", 1)[1].strip(b'"') for l in data),
                         [b"INBOX", b"Lists.Work"])
        self.assertEqual(m.unsubscribe("Lists.Work")[0], "OK")
        typ, data = m.lsub()
        self.assertEqual([l.rsplit(b" ", 1)[1].strip(b'"') for l in data], [b"INBOX"])
        # rename moves the children too
        self.assertEqual(m.rename("Lists", "Old")[0], "NO")  # no folder of its own
        self.assertEqual(m.create("Lists")[0], "OK")
        self.assertEqual(m.rename("Lists", "Old")[0], "OK")
        typ, data = m.list('""', "Old*")
        self.assertEqual(sorted(l.rsplit(b" ", 1)[1].strip(b'"') for l in data),
                         [b"Old", b"Old.Home", b"Old.Work"])
        self.assertEqual(m.rename("Old.Home", "Junk")[0], "NO")
        typ, data = m.status("Old.Work", "(MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)")
        self.assertRegex(data[0], rb'"Old.Work" \(MESSAGES 0 RECENT 0 UIDNEXT 1 UIDVALIDITY \d+ UNSEEN 0\)')
        self.assertEqual(m.status("Nope", "(MESSAGES)")[0], "NO")
        self.assertEqual(m.delete("Old.Work")[0], "OK")
        self.assertFalse(os.path.exists(os.path.join(self.d.maildir(), ".Old.Work")))
        self.assertEqual(m.delete("Old.Work")[0], "NO")
        self.assertEqual(m.delete("INBOX")[0], "NO")
        self.assertEqual(m.select("Nope")[0], "NO")
        typ, data = m.select("Old", readonly=True)
        self.assertEqual(typ, "OK")
        self.assertIn("READ-ONLY", m.untagged_responses)
        m.logout()

    def test_uidvalidity_change_ends_the_session(self):
        self.reset_mailbox()
        self.deliver(1, "uv")
        r = self.raw()
        r.login()
        r.cmd("s", "SELECT INBOX")
        # a list nobody can trust (its header kept, a line broken): the
        # next snapshot gets a new UIDVALIDITY, other than the old one
        path = os.path.join(self.d.maildir(), "mxguard-uidlist")
        head = open(path).read().split("\n")[0]
        with open(path, "w") as f:
            f.write(head + "\nnot a line\n")
        self.assertEqual(r.cmd("n", "NOOP")[0], b"* BYE Mailbox UIDVALIDITY changed.")
        self.assertTrue(r.closed())

    def test_rename_inbox(self):
        self.reset_mailbox()
        self.deliver(2, "rinbox")
        m = self.imap()
        self.assertEqual(m.rename("INBOX", "Old-Inbox")[0], "OK")
        typ, data = m.status("Old-Inbox", "(MESSAGES UIDNEXT)")
        self.assertEqual(data, [b'"Old-Inbox" (MESSAGES 2 UIDNEXT 3)'])
        typ, data = m.status("INBOX", "(MESSAGES)")
        self.assertEqual(data, [b'"INBOX" (MESSAGES 0)'])
        self.assertEqual(m.rename("INBOX", "Old-Inbox")[0], "NO")
        self.assertEqual(m.rename("Old-Inbox", "inbox")[0], "NO")
        m.select("Old-Inbox")
        typ, data = m.fetch("2", "(BODY.PEEK[HEADER])")
        self.assertIn(b"Subject: rinbox 1", data[0][1])
        m.logout()

    def test_traversal_names_refused(self):
        self.reset_mailbox()
        r = self.raw()
        r.login()
        root = self.d.maildir()
        before = sorted(os.listdir(os.path.dirname(root)))
        for name in ('"../evil"', '"a/b"', '".."', '"a..b"', '".hidden"', '"a.."', '"/abs"',
                     '"x\\\\y"', '"a*"', '"%"', '"tab\tx"'):
            out = r.cmd("c", "CREATE " + name)
            self.assertTrue(out[-1].startswith(b"c NO") or out[-1].startswith(b"c BAD"), (name, out))
        out = r.cmd("n", b"CREATE {3+}\r\na\x00b")
        self.assertTrue(out[-1].startswith(b"n BAD"), out)
        for cmd in ('SELECT "../../example.test/alice"', 'STATUS "../x" (MESSAGES)',
                    'RENAME INBOX "../x"', 'RENAME INBOX "a/b"', 'DELETE "../demo"'):
            out = r.cmd("s", cmd)
            self.assertTrue(out[-1].startswith(b"s NO") or out[-1].startswith(b"s BAD"), (cmd, out))
        self.assertEqual(sorted(os.listdir(os.path.dirname(root))), before)
        self.assertEqual([n for n in os.listdir(root) if n.startswith(".")], [])

    def test_literals(self):
        self.reset_mailbox()
        r = self.raw()
        # a synchronising literal in LOGIN: the server asks for it
        r.send(b"a LOGIN {%d}\r\n" % len(USER))
        self.assertEqual(r.line(), b"+ Ready for literal data")
        r.send(USER.encode() + b" {%d+}\r\n%s\r\n" % (len(PASSWORD), PASSWORD.encode()))
        self.assertTrue(r.until(b"a")[-1].startswith(b"a OK"))
        # APPEND with LITERAL+: no continuation, APPENDUID answers
        msg = b"From: x@y.test\r\nSubject: appended\r\n\r\nbody\r\n"
        r.send(b'b APPEND INBOX (\\Seen \\Flagged) "02-Jan-2020 10:11:12 +0100" {%d+}\r\n%s\r\n'
               % (len(msg), msg))
        out = r.until(b"b")
        mm = re.match(rb"b OK \[APPENDUID (\d+) (\d+)\] Append completed.", out[-1])
        self.assertTrue(mm, out)
        uid = mm.group(2)
        out = r.cmd("c", "SELECT INBOX")
        self.assertIn(b"* 1 EXISTS", out)
        out = r.cmd("d", "UID FETCH %s (FLAGS INTERNALDATE BODY.PEEK[])" % uid.decode())
        self.assertIn(b'INTERNALDATE "02-Jan-2020 09:11:12 +0000"', out[0])
        self.assertIn(b"FLAGS (\\Flagged \\Seen)", out[0])
        self.assertTrue(out[0].endswith(b"{%d}\r\n%s)" % (len(msg), msg)), out[0])
        # stored with LF line ends like a delivery
        path = self.cur_files()[0]
        self.assertEqual(open(path, "rb").read(), msg.replace(b"\r\n", b"\n"))
        self.assertTrue(path.endswith(":2,FS"))
        # a synchronising APPEND literal
        r.send(b"e APPEND INBOX {%d}\r\n" % len(msg))
        self.assertEqual(r.line(), b"+ Ready for literal data")
        r.send(msg + b"\r\n")
        out = r.until(b"e")
        self.assertTrue(out[-1].startswith(b"e OK [APPENDUID"), out)
        # a quoted string with escapes
        out = r.cmd("f", r'CREATE "q\"uo\\te"')
        self.assertTrue(out[-1].startswith(b"f NO"), out)  # " and \ are not in folder names
        out = r.cmd("g", 'CREATE "with space"')
        self.assertEqual(out[-1], b"g OK Create completed.")
        out = r.cmd("h", 'LIST "" "with*"')
        self.assertEqual(out[0], b'* LIST (\\HasNoChildren) "." "with space"')
        out = r.cmd("i", "APPEND nowhere {3+}\r\nabc")
        self.assertIn(b"[TRYCREATE]", out[-1])

    def test_caps(self):
        self.reset_mailbox()
        r = self.raw()
        r.login()
        # a message larger than command_max is fine for APPEND (append_max)
        big = b"Subject: big\r\n\r\n" + b"".join(b"line %07d of a big message\r\n" % i for i in range(40000))
        r.send(b"z APPEND INBOX {%d}\r\n" % len(big))
        self.assertEqual(r.line(), b"+ Ready for literal data")
        r.send(big + b"\r\n")
        self.assertTrue(r.until(b"z")[-1].startswith(b"z OK [APPENDUID"))
        r.cmd("y", "SELECT INBOX")
        out = r.cmd("y", "FETCH 1 (RFC822.SIZE BODY.PEEK[])")
        self.assertIn(b"RFC822.SIZE %d " % len(big), out[0])
        self.assertTrue(out[0].endswith(b"{%d}\r\n%s)" % (len(big), big)))
        r.cmd("y", "CLOSE")
        # a synchronising literal over the cap is refused before it is sent
        out = r.cmd("a", "APPEND INBOX {999999999}")
        self.assertEqual(out, [b"a NO [TOOBIG] Literal too large."])
        # a non-APPEND literal is held to command_max
        out = r.cmd("b", "LOGIN {300000}")
        self.assertTrue(out[-1].startswith(b"b BAD") or out[-1].startswith(b"b NO"), out)
        out = r.cmd("c", "NOOP")
        self.assertEqual(out, [b"c OK NOOP completed."])
        # a LITERAL+ over the cap: the data comes anyway, the session ends
        r.send(b"f APPEND INBOX {999999999+}\r\n")
        self.assertEqual(r.line(), b"* BYE [TOOBIG] Literal too large.")
        self.assertTrue(r.closed())
        # a line over command_line_max, buffered without its end: the
        # connection layer's cap ends the session before the line is whole
        r = self.raw()
        r.send(b"d NOOP " + b"x" * 70000 + b"\r\n")
        self.assertEqual(r.line(), b"* BYE Line too long.")
        self.assertTrue(r.closed())
        self.assertIn("imap line too long", self.d.log())

    def test_bad_syntax_and_states(self):
        self.reset_mailbox()
        self.deliver(1, "states")
        r = self.raw()
        for cmd, want in (("SELECT INBOX", b"a BAD Not logged in."),
                          ("FETCH 1 FLAGS", b"a BAD Not logged in."),
                          ("BOGUS", b"a BAD Error in IMAP command: unknown command."),
                          ("UID NOOP", b"a BAD Error in IMAP command: unknown command."),
                          ("LOGIN onlyuser", None)):
            out = r.cmd("a", cmd)
            if want:
                self.assertEqual(out, [want], cmd)
            else:
                self.assertTrue(out[-1].startswith(b"a BAD"), out)
        r.send(b"+bad NOOP\r\n")
        self.assertEqual(r.line(), b"* BAD Error in IMAP command: invalid tag.")
        r.login()
        self.assertEqual(r.cmd("b", "LOGIN a b"), [b"b BAD Already logged in."])
        self.assertEqual(r.cmd("b", "FETCH 1 FLAGS"), [b"b BAD No mailbox selected."])
        self.assertEqual(r.cmd("b", "CLOSE"), [b"b BAD No mailbox selected."])
        r.cmd("c", "SELECT INBOX")
        for cmd in ("FETCH 1", "FETCH 0 FLAGS", "FETCH 1:x FLAGS", "FETCH 1 (FLAGS", "FETCH 1 BOGUS",
                    "FETCH 1 BODY[1.X]", "FETCH 1 BODY.PEEK", "FETCH 1 BODY[]<1.0>",
                    "STORE 1 FLAGS (\\Bogus)", "STORE 1 COLOR (x)", "SEARCH", "SEARCH OR SEEN",
                    "SEARCH SINCE 31-Foo-2020", "COPY 1", "FETCH 5 FLAGS", "FETCH * FLAGS extra"):
            out = r.cmd("d", cmd)
            self.assertTrue(out[-1].startswith(b"d BAD"), (cmd, out))
        # a NUL in a literal (mailbox name, search string): BAD, and the
        # session goes on (the fuzzer found these freeing twice)
        for cmd in (b"d COPY 1 {3+}\r\na\x00b", b"d SEARCH HEADER {3+}\r\na\x00b x",
                    b"d RENAME {3+}\r\na\x00b c", b"d SEARCH SUBJECT {2+}\r\n\x00\x00"):
            r.send(cmd + b"\r\n")
            self.assertTrue(r.until(b"d")[-1].startswith(b"d BAD"), cmd)
        # UID FETCH of UIDs that do not exist is not an error
        self.assertEqual(r.cmd("e", "UID FETCH 100:200 FLAGS"), [b"e OK Fetch completed."])
        self.assertEqual(r.cmd("e", "UID FETCH 100:* UID"), [b"* 1 FETCH (UID 1)", b"e OK Fetch completed."])
        # IDLE wants DONE
        r.send(b"f IDLE\r\n")
        self.assertEqual(r.line(), b"+ idling")
        r.send(b"NOPE\r\n")
        self.assertTrue(r.line().startswith(b"f BAD"))
        self.assertEqual(r.cmd("g", "NOOP"), [b"g OK NOOP completed."])

    def test_too_many_bad_commands(self):
        r = self.raw()
        for i in range(39):
            r.cmd("x%d" % i, "BOGUS")
        r.send(b"last BOGUS\r\n")
        self.assertTrue(r.line().startswith(b"last BAD"))
        self.assertEqual(r.line(), b"* BYE Too many invalid commands.")
        self.assertTrue(r.closed())

    def test_authenticate_plain(self):
        ir = base64.b64encode(b"\0" + USER.encode() + b"\0" + PASSWORD.encode()).decode()
        r = self.raw()
        out = r.cmd("a", "AUTHENTICATE PLAIN " + ir)
        self.assertTrue(out[-1].startswith(b"a OK [CAPABILITY"), out)
        r = self.raw()
        r.send(b"b AUTHENTICATE PLAIN\r\n")
        self.assertEqual(r.line(), b"+ ")
        r.send(ir.encode() + b"\r\n")
        self.assertTrue(r.until(b"b")[-1].startswith(b"b OK"))
        r = self.raw()
        r.send(b"c AUTHENTICATE PLAIN\r\n")
        self.assertEqual(r.line(), b"+ ")
        r.send(b"*\r\n")
        self.assertEqual(r.line(), b"c BAD Authentication aborted.")
        self.assertEqual(r.cmd("d", "AUTHENTICATE CRAM-MD5"), [b"d NO Unsupported authentication mechanism."])
        bad = base64.b64encode(b"\0" + USER.encode() + b"\0wrong").decode()
        self.assertEqual(r.cmd("e", "AUTHENTICATE PLAIN " + bad),
                         [b"e NO [AUTHENTICATIONFAILED] Authentication failed."])
        m = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=mxtest.SOCK_TIMEOUT)
        self.addCleanup(self._close, m)
        with self.assertRaises(imaplib.IMAP4.error):
            m.login(USER, "wrong")
        self.assertIn("reason=bad_credentials", self.d.log())

    def test_copy_move_uidplus_and_junk_log(self):
        self.reset_mailbox()
        self.deliver(4, "junk")
        m = self.imap()
        m.create("Junk")
        m.create("Archive")
        m.select("INBOX")
        typ, data = m.copy("1:2", "Archive")
        mm = re.match(rb"\[COPYUID (\d+) 1:2 1:2\] Copy completed.", data[0])
        self.assertTrue(mm, data)
        typ, data = m.uid("MOVE", "3", "Junk")
        self.assertEqual(typ, "OK")
        self.assertIn(b"1796", b"1796") if False else None
        self.assertEqual(m.untagged_responses.get("EXPUNGE"), [b"3"])
        typ, data = m.uid("COPY", "4", "Nowhere")
        self.assertEqual(typ, "NO")
        self.assertIn(b"TRYCREATE", data[0])
        typ, data = m.search(None, "ALL")
        self.assertEqual(data[0].split(), [b"1", b"2", b"3"])
        typ, data = m.fetch("1:*", "(UID)")
        self.assertEqual([re.search(rb"UID (\d+)", x).group(1) for x in data], [b"1", b"2", b"4"])
        # out of Junk again, by MOVE
        m.select("Junk")
        typ, data = m.fetch("1", "(BODY.PEEK[HEADER])")
        self.assertIn(b"Subject: junk 2", data[0][1])
        typ, data = m._simple_command("MOVE", "1", "INBOX")
        self.assertEqual(typ, "OK")
        log = os.path.join(self.d.maildir(), "mxguard-junk-moves.log")
        lines = [l.split("\t") for l in open(log).read().splitlines()]
        self.assertEqual(len(lines), 2)
        self.assertEqual(lines[0][1:6], ["move", "to-junk", "INBOX", "Junk", "1"])
        self.assertEqual(lines[0][6], "<junk-2@b.test>")
        self.assertEqual(lines[1][1:6], ["move", "from-junk", "Junk", "INBOX", "5"])
        self.assertTrue(lines[1][7])
        m.select("INBOX")
        typ, data = m.uid("FETCH", "5", "(BODY.PEEK[HEADER])")
        self.assertIn(b"Subject: junk 2", data[0][1])
        # COPY then expunge is recorded at the COPY
        m.copy("1", "Junk")
        lines = open(log).read().splitlines()
        self.assertEqual(lines[-1].split("\t")[1:3], ["copy", "to-junk"])
        # hard links: the copy is the same file
        a = self.cur_files("Archive")
        self.assertEqual(len(a), 2)
        m.logout()

    def test_expunge_close_unselect(self):
        self.reset_mailbox()
        self.deliver(4, "exp")
        m = self.imap(select="INBOX")
        m.store("1,3", "+FLAGS", "(\\Deleted)")
        typ, data = m.expunge()
        self.assertEqual(data, [b"3", b"1"])
        self.assertEqual(len(self.cur_files()), 2)
        m.store("1", "+FLAGS", "(\\Deleted)")
        typ, data = m.uid("EXPUNGE", "1:3")  # UID 2 is message 1 now, and \Deleted
        self.assertEqual(typ, "OK")
        self.assertEqual(m.untagged_responses.pop("EXPUNGE"), [b"1"])
        m.store("1", "+FLAGS", "(\\Deleted)")
        self.assertEqual(m._simple_command("UNSELECT")[0], "OK")
        self.assertEqual(len(self.cur_files()), 1)  # UNSELECT expunges nothing
        m.select("INBOX")
        self.assertEqual(m.close()[0], "OK")
        self.assertEqual(self.cur_files(), [])
        m.select("INBOX", readonly=True)
        self.assertEqual(m.state, "SELECTED")
        m.logout()

    def test_examine_is_read_only(self):
        self.reset_mailbox()
        self.deliver(1, "ro")
        m = self.imap()
        m.select("INBOX", readonly=True)
        self.assertEqual(m.untagged_responses.get("PERMANENTFLAGS"), [b"()"])
        typ, data = m.fetch("1", "(BODY[])")
        self.assertNotIn(b"\\Seen", data[0][0])
        self.assertTrue(self.cur_files()[0].endswith(":2,"))
        self.assertEqual(m.store("1", "+FLAGS", "(\\Seen)")[0], "NO")
        self.assertEqual(m.expunge()[0], "NO")
        m.logout()

    def test_two_sessions_see_each_other(self):
        self.reset_mailbox()
        self.deliver(3, "two")
        a = self.raw()
        a.login()
        a.cmd("s", "SELECT INBOX")
        b = self.imap(select="INBOX")
        b.store("2", "+FLAGS", "(\\Flagged)")
        out = a.cmd("n", "NOOP")
        self.assertIn(b"* 2 FETCH (UID 2 FLAGS (\\Flagged))", out)
        b.store("1", "+FLAGS", "(\\Deleted)")
        b.expunge()
        # no EXPUNGE during FETCH by sequence number (RFC 3501 7.4.1) ...
        out = a.cmd("f", "FETCH 1:* (UID)")
        self.assertNotIn(b"EXPUNGE", b"\n".join(out))
        # ... but at the next NOOP
        out = a.cmd("n", "NOOP")
        self.assertIn(b"* 1 EXPUNGE", out)
        b.append("INBOX", None, None, b"Subject: from b\r\n\r\nx\r\n")
        out = a.cmd("n", "NOOP")
        self.assertIn(b"* 3 EXISTS", out)
        out = a.cmd("f", "FETCH 3 (UID BODY.PEEK[HEADER])")
        self.assertIn(b"UID 4", out[0])
        self.assertIn(b"Subject: from b", out[0])
        # a delivery during a selected session
        send_mail(self.d, USER, "during select")
        out = a.cmd("n", "NOOP")
        self.assertIn(b"* 4 EXISTS", out)
        out = a.cmd("f", "UID FETCH 5 (BODY.PEEK[HEADER])")
        self.assertIn(b"Subject: during select", out[0])

    def wait_line(self, r, pattern, deadline):
        while time.monotonic() < deadline:
            l = r.line()
            if re.search(pattern, l):
                return l
        self.fail("no %r" % pattern)

    def test_idle_sees_delivery(self):
        self.reset_mailbox()
        self.deliver(1, "idle")
        r = self.raw()
        r.login()
        r.cmd("s", "SELECT INBOX")
        r.send(b"i IDLE\r\n")
        self.assertEqual(r.line(), b"+ idling")
        send_mail(self.d, USER, "while idling")
        self.wait_line(r, rb"^\* 2 EXISTS$", time.monotonic() + 10)
        # another session's flag change too
        b = self.imap(select="INBOX")
        b.store("1", "+FLAGS", "(\\Answered)")
        self.wait_line(r, rb"^\* 1 FETCH \(UID 1 FLAGS \(\\Answered\)\)$", time.monotonic() + 10)
        b.store("1", "+FLAGS", "(\\Deleted)")
        b.expunge()
        self.wait_line(r, rb"^\* 1 EXPUNGE$", time.monotonic() + 10)
        r.send(b"DONE\r\n")
        self.assertEqual(self.wait_line(r, rb"^i ", time.monotonic() + 10), b"i OK Idle completed.")
        out = r.cmd("f", "FETCH 1 (BODY.PEEK[HEADER])")
        self.assertIn(b"Subject: while idling", out[0])

    def test_imaplib_every_command(self):
        self.reset_mailbox()
        m = self.imap(user=None)
        self.assertEqual(m.capability()[0], "OK")
        self.assertEqual(m.noop()[0], "OK")
        self.assertEqual(m.login(USER, PASSWORD)[0], "OK")
        self.assertEqual(m.namespace()[0], "OK")
        for cmd in (lambda: m.create("T"), lambda: m.subscribe("T"), lambda: m.lsub(),
                    lambda: m.list(), lambda: m.status("T", "(MESSAGES)"),
                    lambda: m.append("T", "(\\Draft)", imaplib.Time2Internaldate(time.time()),
                                     b"Subject: t\r\n\r\nt\r\n"),
                    lambda: m.select("T"), lambda: m.check(), lambda: m.search(None, "ALL"),
                    lambda: m.fetch("1", "(FLAGS)"), lambda: m.store("1", "+FLAGS", "\\Seen"),
                    lambda: m.copy("1", "INBOX"), lambda: m.uid("FETCH", "1", "(FLAGS)"),
                    lambda: m.uid("STORE", "1", "-FLAGS", "\\Seen"), lambda: m.uid("COPY", "1", "INBOX"),
                    lambda: m.uid("SEARCH", "ALL"), lambda: m.expunge(), lambda: m.close(),
                    lambda: m.rename("T", "U"), lambda: m.unsubscribe("T"), lambda: m.delete("U")):
            typ, data = cmd()
            self.assertEqual(typ, "OK", data)
        self.assertEqual(m.logout()[0], "BYE")

    def test_starttls_and_implicit_tls(self):
        m = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=mxtest.SOCK_TIMEOUT)
        self.addCleanup(self._close, m)
        self.assertEqual(m.starttls(ssl_context=no_verify())[0], "OK")
        self.assertEqual(m.login(USER, PASSWORD)[0], "OK")
        self.assertEqual(m.select("INBOX")[0], "OK")
        m.logout()
        s = imaplib.IMAP4_SSL("127.0.0.1", self.imaps_port, ssl_context=no_verify(),
                              timeout=mxtest.SOCK_TIMEOUT)
        self.addCleanup(self._close, s)
        self.assertNotIn("STARTTLS", s.capabilities)
        self.assertEqual(s.login(USER, PASSWORD)[0], "OK")
        s.logout()
        # pipelined plaintext after STARTTLS is discarded
        r = self.raw()
        r.send(b"a STARTTLS\r\nb LOGIN %s %s\r\n" % (USER.encode(), PASSWORD.encode()))
        self.assertEqual(r.line(), b"a OK Begin TLS negotiation now.")
        r.sock = no_verify().wrap_socket(r.sock)
        self.assertEqual(r.cmd("c", "NOOP"), [b"c OK NOOP completed."])

    def test_uids_stable_across_restart(self):
        self.reset_mailbox()
        self.deliver(3, "restart")
        m = self.imap(select="INBOX")
        m.store("2", "+FLAGS", "(\\Deleted)")
        m.expunge()
        v = m.untagged_responses["UIDVALIDITY"][0]
        before = m.fetch("1:*", "(UID BODY.PEEK[HEADER])")[1]
        m.logout()
        self.d.restart()
        send_mail(self.d, USER, "after restart")
        m = self.imap(select="INBOX")
        self.assertEqual(m.untagged_responses["UIDVALIDITY"][0], v)
        after = m.fetch("1:*", "(UID BODY.PEEK[HEADER])")[1]
        uids = [re.search(rb"UID (\d+)", x[0]).group(1) for x in after if isinstance(x, tuple)]
        self.assertEqual(uids, [b"1", b"3", b"4"])
        self.assertEqual([x for x in before if isinstance(x, tuple)],
                         [x for x in after if isinstance(x, tuple)][:2])
        m.logout()

    def test_many_messages_flags(self):
        # a big folder made directly in cur/: FETCH 1:* FLAGS answers them all
        self.reset_mailbox("alice")
        root = self.d.maildir("alice")
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        n = 20000
        for i in range(n):
            with open(os.path.join(root, "cur", "%d.M%dP1.host:2,%s" % (1000 + i, i, "S" if i % 2 else "")),
                      "wb") as f:
                f.write(b"Subject: %d\n\nx\n" % i)
        m = self.imap(user="alice@example.test", select="INBOX")
        typ, data = m.fetch("1:*", "(UID FLAGS)")
        self.assertEqual(len(data), n)
        self.assertEqual(sum(b"\\Seen" in x for x in data), n // 2)
        typ, data = m.uid("SEARCH", "UNSEEN")
        self.assertEqual(len(data[0].split()), n // 2)
        # replies of many batches (the next read while the client keeps up)
        typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER])")
        hdrs = [x[1] for x in data if isinstance(x, tuple)]
        self.assertEqual(len(hdrs), n)
        self.assertEqual(hdrs[0], b"Subject: 0\r\n\r\n")
        self.assertEqual(hdrs[-1], b"Subject: %d\r\n\r\n" % (n - 1))
        m.logout()


class TlsOnly(ImapCase):
    imap_settings = dict(auth_failure_delay=100)

    def test_plaintext_refused_before_starttls(self):
        r = self.raw()
        self.assertIn(b"LOGINDISABLED", r.greeting)
        self.assertNotIn(b"AUTH=PLAIN", r.greeting)
        out = r.cmd("a", "LOGIN %s %s" % (USER, PASSWORD))
        self.assertTrue(out[-1].startswith(b"a NO [PRIVACYREQUIRED]"), out)
        out = r.cmd("b", "AUTHENTICATE PLAIN AGRlbW8AeA==")
        self.assertTrue(out[-1].startswith(b"b NO [PRIVACYREQUIRED]"), out)
        self.assertEqual(r.cmd("c", "STARTTLS"), [b"c OK Begin TLS negotiation now."])
        r.sock = no_verify().wrap_socket(r.sock)
        out = r.cmd("d", "CAPABILITY")
        self.assertIn(b"AUTH=PLAIN", out[0])
        self.assertNotIn(b"STARTTLS", out[0])
        r.login()

    def test_implicit_tls_allows_login(self):
        s = imaplib.IMAP4_SSL("127.0.0.1", self.imaps_port, ssl_context=no_verify(),
                              timeout=mxtest.SOCK_TIMEOUT)
        self.addCleanup(self._close, s)
        self.assertEqual(s.login(USER, PASSWORD)[0], "OK")


class SharedThrottle(ImapCase):
    """One table for both services: failures over POP3 and IMAP count
    together, per address and per user."""
    imap_settings = dict(plaintext_auth="loopback", auth_failure_delay=100, auth_failures_max=3,
                auth_failure_window=3600)
    with_pop = True
    users = (USER, "victim@example.test", "other@example.test")

    def pop_login(self, src, user, password):
        s = socket.socket()
        s.settimeout(mxtest.SOCK_TIMEOUT)
        s.bind((src, 0))
        s.connect(("127.0.0.1", self.pop_port))
        f = s.makefile("rb")
        try:
            f.readline()
            s.sendall(("USER %s\r\nPASS %s\r\n" % (user, password)).encode())
            f.readline()
            return f.readline().rstrip(b"\r\n")
        finally:
            f.close()
            s.close()

    def imap_login(self, src, user, password):
        r = RawImap(self.imap_port, src=src)
        try:
            return r.cmd("a", "LOGIN %s %s" % (user, password))[-1]
        finally:
            r.close()

    def test_pop3_and_imap_count_together(self):
        self.assertEqual(self.pop_login("127.0.0.2", "victim@example.test", "bad"),
                         b"-ERR [AUTH] Authentication failed.")
        self.assertEqual(self.imap_login("127.0.0.2", "victim@example.test", "bad"),
                         b"a NO [AUTHENTICATIONFAILED] Authentication failed.")
        self.assertEqual(self.pop_login("127.0.0.2", "victim@example.test", "bad"),
                         b"-ERR [AUTH] Authentication failed.")
        # three failures: the address is blocked on both services
        self.assertTrue(self.imap_login("127.0.0.2", USER, PASSWORD).startswith(b"a NO [UNAVAILABLE]"))
        self.assertTrue(self.pop_login("127.0.0.2", USER, PASSWORD).startswith(b"-ERR [SYS/TEMP]"))
        # and the user from elsewhere
        self.assertTrue(self.imap_login("127.0.0.3", "victim@example.test", PASSWORD)
                        .startswith(b"a NO [UNAVAILABLE]"))
        self.assertTrue(self.imap_login("127.0.0.3", "other@example.test", PASSWORD).startswith(b"a OK"))
        self.assertIn("imap auth failed client=127.0.0.3 user=victim@example.test reason=throttled",
                      self.d.log())


def have(prog):
    return shutil.which(prog) is not None


class RealClients(ImapCase):

    def test_curl_imaps(self):
        self.reset_mailbox()
        send_mail(self.d, USER, "for curl", body="curl body line\r\n")
        out = subprocess.run(["curl", "-s", "-k", "--max-time", "20", "-u", "%s:%s" % (USER, PASSWORD),
                              "imaps://127.0.0.1:%d/INBOX;UID=1" % self.imaps_port],
                             capture_output=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn(b"Subject: for curl", out.stdout)
        self.assertIn(b"curl body line", out.stdout)
        stored = open(self.cur_files()[0], "rb").read()
        self.assertEqual(out.stdout, crlf(stored))
        # the folder listing over STARTTLS
        out = subprocess.run(["curl", "-s", "-k", "--ssl-reqd", "--max-time", "20", "-u",
                              "%s:%s" % (USER, PASSWORD), "imap://127.0.0.1:%d/" % self.imap_port],
                             capture_output=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn(b"INBOX", out.stdout)

    @unittest.skipUnless(have("mbsync"), "mbsync (isync) not installed: scripts/install-deps")
    def test_mbsync_both_ways(self):
        self.reset_mailbox()
        self.deliver(3, "sync")
        m = self.imap()
        m.create("Junk")
        m.create("Lists.Work")
        m.append("Lists.Work", None, None, b"Subject: in a folder\r\n\r\nfolder\r\n")
        m.logout()
        tmp = tempfile.mkdtemp(prefix="mbsync-")
        self.addCleanup(shutil.rmtree, tmp, True)
        local = os.path.join(tmp, "mail") + "/"
        os.makedirs(local)
        # plain IMAP on loopback (plaintext_auth = "loopback"): mbsync checks
        # the certificate's name, and the test certificate names
        # mx.example.test, which does not resolve here (curl covers TLS)
        rc = os.path.join(tmp, "mbsyncrc")
        with open(rc, "w") as f:
            f.write("""IMAPAccount t
Host 127.0.0.1
Port %d
User %s
Pass %s
SSLType None
AuthMechs LOGIN
Timeout 20

IMAPStore remote
Account t

MaildirStore local
Path %s
Inbox %sINBOX
SubFolders Verbatim

Channel c
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
""" % (self.imap_port, USER, PASSWORD, local, local))
        def run():
            p = subprocess.run(["mbsync", "-c", rc, "-a"], capture_output=True, timeout=60)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        run()
        def local_msgs(folder):
            d = os.path.join(local, folder)
            out = []
            for sub in ("cur", "new"):
                for n in os.listdir(os.path.join(d, sub)):
                    out.append(open(os.path.join(d, sub, n), "rb").read())
            return out
        self.assertEqual(len(local_msgs("INBOX")), 3)
        self.assertEqual(len(local_msgs("Lists/Work")), 1)
        self.assertIn(b"Subject: in a folder", local_msgs("Lists/Work")[0])
        # the other way: a message and a folder made locally
        os.makedirs(os.path.join(local, "Local", "cur"))
        os.makedirs(os.path.join(local, "Local", "new"))
        os.makedirs(os.path.join(local, "Local", "tmp"))
        with open(os.path.join(local, "Local", "new", "1.local.x"), "wb") as f:
            f.write(b"From: me@x.test\nSubject: made locally\n\nlocal\n")
        # and a flag set locally on a synced message
        inbox = os.path.join(local, "INBOX")
        sub = "cur" if os.listdir(os.path.join(inbox, "cur")) else "new"
        first = sorted(os.listdir(os.path.join(inbox, sub)))[0]
        os.rename(os.path.join(inbox, sub, first),
                  os.path.join(inbox, "cur", first.split(":2,")[0] + ":2,F"))
        run()
        m = self.imap(select="Local")
        typ, data = m.fetch("1", "(BODY.PEEK[])")
        self.assertIn(b"Subject: made locally", data[0][1])
        m.select("INBOX")
        typ, data = m.search(None, "FLAGGED")
        self.assertEqual(len(data[0].split()), 1)
        # an expunge on the server side reaches the local store
        m.store("1:*", "+FLAGS", "(\\Deleted)")
        m.expunge()
        m.logout()
        run()
        self.assertEqual(local_msgs("INBOX"), [])


class FetchStructure(ImapCase):
    """The items answered by the MIME side (imap/mime.h)."""

    def setUp(self):
        super().setUp()
        self.reset_mailbox()
        body = ("--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nthe plain part\r\n"
                "--b1\r\nContent-Type: text/html\r\n\r\n<p>html part</p>\r\n--b1--\r\n")
        send_mail(self.d, USER, "structured", body=body,
                  extra="Date: Tue, 01 Dec 2026 10:00:00 +0100\r\nCc: c@d.test\r\n"
                        "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b1\r\n")

    def test_envelope_bodystructure_sections(self):
        m = self.imap(select="INBOX")
        typ, data = m.fetch("1", "(ENVELOPE)")
        self.assertIn(b'"structured"', data[0])
        self.assertIn(b'"b.test"', data[0])
        typ, data = m.fetch("1", "(BODYSTRUCTURE)")
        self.assertIn(b'"alternative"', data[0].lower())
        typ, data = m.fetch("1", "(BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[HEADER.FIELDS (Subject)])")
        self.assertEqual(data[0][1], b"the plain part")
        self.assertIn(b"text/html", data[1][1])
        self.assertEqual(data[2][1], b"Subject: structured\r\n\r\n")
        typ, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS.NOT (Subject)])")
        self.assertNotIn(b"Subject:", data[0][1])
        typ, data = m.fetch("1", "(BODY.PEEK[9])")
        self.assertIn(b"{0}", data[0][0])
        m.logout()

    def test_content_search(self):
        m = self.imap(select="INBOX")
        for crit, want in ((("SUBJECT", "structured"), [b"1"]), (("SUBJECT", "nothing"), []),
                           (("FROM", "a@b.test"), [b"1"]), (("CC", "c@d"), [b"1"]),
                           (("BODY", '"plain part"'), [b"1"]), (("TEXT", "STRUCTURED"), [b"1"]),
                           (("HEADER", "Message-ID", "structured@"), [b"1"]),
                           (("SENTON", "1-Dec-2026"), [b"1"]), (("SENTBEFORE", "1-Dec-2026"), []),
                           (("SENTSINCE", "1-Dec-2026"), [b"1"])):
            typ, data = m.search(None, *crit)
            self.assertEqual(data[0].split(), want, crit)
        m.logout()


if __name__ == "__main__":
    mxtest.main(budget=300)

"""test_web_cache — the web service's folder cache (web/cache.c,
doc/web.md "The folder cache") stays exact while other parts of the
daemon change the Maildir between two web requests.

The web list keeps a folder's snapshot and its messages' rows between
requests; here real clients change the folder behind it — a delivery over
SMTP (smtplib), IMAP STORE, EXPUNGE, MOVE, a UIDVALIDITY change and
RENAME/DELETE/CREATE under a cached folder's name (imaplib), POP3 DELE
(poplib) — and the very next web request (http.client) must show the
change: no sleeps, no retries, the request after the
change's reply. The same cases run four times: with the default cache,
with a cache of one folder (another folder evicts it), of one octet (every
request's folder is dropped as it ends), and with the cache off
(cache_folders = 0), so all four answer alike. Also: the attachment
mark, search over the rows, the web's own changes followed at once by
IMAP's, a restart and a reload, and several threads of web, IMAP and SMTP
clients at once ending in the same view from both sides.
"""

import http.client
import imaplib
import json
import os
import poplib
import signal
import smtplib
import threading
import unittest

import mxtest
from mxtest import PASSWORD

USER = "demo@example.test"


def web_daemon(web_extra=""):
    return mxtest.Daemon(
        users=(USER,),
        listen_extra={"web": {"protocol": "web"}, "imap": {"protocol": "imap", "tls": "none"},
                      "pop3": {"protocol": "pop3", "tls": "none"}},
        extra_conf=("web {\n\tstatic_dir = %s\n%s}\n" % (mxtest.conf_value(
            os.path.join(mxtest.MX_SRCDIR, "web", "static")), web_extra)
            + "imap {\n\tplaintext_auth = \"loopback\"\n}\n"
            + "pop3 {\n\tplaintext_auth = \"loopback\"\n}\n"))


def send_mail(d, subject, body="hello\r\n", extra="", sender="Alice <a@b.test>"):
    msg = ("From: %s\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s@b.test>\r\n%s\r\n%s"
           % (sender, USER, subject, subject.replace(" ", "-"), extra, body))
    with smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.example.org", timeout=10) as s:
        s.sendmail("a@b.test", [USER], msg.encode())


class Web:
    """One logged-in browser on one keep-alive connection."""

    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.cookie = None
        st, j = self.call("POST", "/api/login", {"user": USER, "password": PASSWORD})
        assert st == 200, j
        self.csrf = j["csrf"]

    def call(self, method, path, body=None):
        h = {}
        if self.cookie:
            h["Cookie"] = self.cookie
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
            if self.cookie:
                h["X-CSRF-Token"] = self.csrf
        self.conn.request(method, path, body=data, headers=h)
        r = self.conn.getresponse()
        payload = r.read()
        sc = r.getheader("Set-Cookie")
        if sc and sc.startswith("mxguard_session="):
            self.cookie = sc.split(";", 1)[0]
        try:
            return r.status, json.loads(payload)
        except ValueError:
            return r.status, None

    def list(self, folder="INBOX", q=None):
        path = "/api/messages?folder=%s&per_page=200" % folder
        if q:
            path += "&q=" + q
        st, j = self.call("GET", path)
        assert st == 200, (st, j)
        return j

    def rows(self, folder="INBOX", q=None):
        return {m["subject"]: m for m in self.list(folder, q)["messages"]}

    def close(self):
        self.conn.close()


class CacheCases:
    """The consistency cases; a subclass names the web section's extra lines."""

    WEB = ""

    @classmethod
    def setUpClass(cls):
        cls.d = web_daemon(cls.WEB)

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def web(self):
        w = Web(self.d.ports["web"])
        self.addCleanup(w.close)
        return w

    def imap(self):
        m = imaplib.IMAP4("127.0.0.1", self.d.ports["imap"], timeout=10)
        m.login(USER, PASSWORD)
        self.addCleanup(m.logout)
        return m

    def imap_uid(self, m, subject):
        m.noop()  # the selected folder's news first
        typ, data = m.uid("SEARCH", None, "HEADER", "Subject", '"%s"' % subject)
        self.assertEqual(typ, "OK")
        uids = data[0].split()
        self.assertEqual(len(uids), 1, (subject, uids))
        return uids[0].decode()

    def test_delivery_shows_at_once(self):
        tag = self.id().split(".")[-2]
        w = self.web()
        before = w.list()
        send_mail(self.d, "%s delivered one" % tag)
        after = w.list()
        self.assertEqual(after["total"], before["total"] + 1)
        self.assertEqual(after["messages"][0]["subject"], "%s delivered one" % tag)
        self.assertFalse(after["messages"][0]["seen"])
        # and once more: a second delivery in the same second
        send_mail(self.d, "%s delivered two" % tag)
        self.assertEqual([m["subject"] for m in w.list()["messages"][:2]],
                         ["%s delivered two" % tag, "%s delivered one" % tag])

    def test_imap_store_shows_at_once(self):
        tag = self.id().split(".")[-2]
        subject = "%s stored" % tag
        send_mail(self.d, subject)
        w = self.web()
        row = w.rows()[subject]
        self.assertFalse(row["seen"])
        self.assertFalse(row["flagged"])
        m = self.imap()
        m.select("INBOX")
        uid = self.imap_uid(m, subject)
        self.assertEqual(str(row["uid"]), uid)
        m.uid("STORE", uid, "+FLAGS", r"(\Seen \Flagged)")
        row = w.rows()[subject]
        self.assertTrue(row["seen"])
        self.assertTrue(row["flagged"])
        st, j = w.call("GET", "/api/folders")
        inbox = [f for f in j["folders"] if f["name"] == "INBOX"][0]
        typ, data = m.status("INBOX", "(MESSAGES UNSEEN)")
        self.assertIn(b"MESSAGES %d" % inbox["total"], data[0])
        self.assertIn(b"UNSEEN %d" % inbox["unread"], data[0])
        m.uid("STORE", uid, "-FLAGS", r"(\Seen)")
        row = w.rows()[subject]
        self.assertFalse(row["seen"])
        self.assertTrue(row["flagged"])
        # the message itself still opens under the same UID after the rename
        st, j = w.call("GET", "/api/message?folder=INBOX&uid=%s" % uid)
        self.assertEqual(st, 200)
        self.assertEqual(j["subject"], subject)

    def test_imap_expunge_shows_at_once(self):
        tag = self.id().split(".")[-2]
        subject = "%s expunged" % tag
        send_mail(self.d, subject)
        w = self.web()
        self.assertIn(subject, w.rows())
        total = w.list()["total"]
        m = self.imap()
        m.select("INBOX")
        uid = self.imap_uid(m, subject)
        m.uid("STORE", uid, "+FLAGS", r"(\Deleted)")
        m.expunge()
        j = w.list()
        self.assertEqual(j["total"], total - 1)
        self.assertNotIn(subject, [x["subject"] for x in j["messages"]])
        st, _ = w.call("GET", "/api/message?folder=INBOX&uid=%s" % uid)
        self.assertEqual(st, 404)
        st, _ = w.call("POST", "/api/flags", {"folder": "INBOX", "uid": int(uid), "seen": True})
        self.assertEqual(st, 404)

    def test_imap_move_shows_at_once(self):
        tag = self.id().split(".")[-2]
        subject = "%s moved by imap" % tag
        folder = "Moved%s" % tag
        send_mail(self.d, subject)
        w = self.web()
        self.assertIn(subject, w.rows())
        m = self.imap()
        self.assertEqual(m.create(folder)[0], "OK")
        self.assertEqual(w.list(folder)["total"], 0)
        m.select("INBOX")
        uid = self.imap_uid(m, subject)
        typ, _ = m.uid("MOVE", uid, folder)
        self.assertEqual(typ, "OK")
        self.assertNotIn(subject, w.rows())
        moved = w.rows(folder)
        self.assertEqual(list(moved), [subject])
        # and back: the row in INBOX again, under the new UID IMAP gave it
        m.select(folder)
        uid2 = self.imap_uid(m, subject)
        m.uid("MOVE", uid2, "INBOX")
        self.assertEqual(w.list(folder)["total"], 0)
        m.select("INBOX")
        row = w.rows()[subject]
        self.assertEqual(str(row["uid"]), self.imap_uid(m, subject))

    def test_pop3_dele_shows_at_once(self):
        tag = self.id().split(".")[-2]
        subject = "%s popped" % tag
        send_mail(self.d, subject)
        w = self.web()
        self.assertIn(subject, w.rows())
        total = w.list()["total"]
        p = poplib.POP3("127.0.0.1", self.d.ports["pop3"], timeout=10)
        try:
            p.user(USER)
            p.pass_(PASSWORD)
            n = len(p.list()[1])
            target = None
            for k in range(1, n + 1):
                hdr = b"\n".join(p.top(k, 0)[1])
                if ("Subject: " + subject).encode() in hdr:
                    target = k
            self.assertIsNotNone(target)
            p.dele(target)
        finally:
            p.quit()
        j = w.list()
        self.assertEqual(j["total"], total - 1)
        self.assertNotIn(subject, [x["subject"] for x in j["messages"]])

    def test_search_follows_changes(self):
        tag = self.id().split(".")[-2].lower()
        w = self.web()
        needle = "zq%sneedle" % tag
        self.assertEqual(w.list(q=needle)["total"], 0)
        send_mail(self.d, "first %s" % needle)
        send_mail(self.d, "other", sender="Bob %s <bob@b.test>" % needle)
        j = w.list(q=needle.upper())
        self.assertEqual(j["total"], 2)
        self.assertEqual(sorted(x["subject"] for x in j["messages"]), ["first %s" % needle, "other"])
        m = self.imap()
        m.select("INBOX")
        uid = self.imap_uid(m, "first %s" % needle)
        m.uid("STORE", uid, "+FLAGS", r"(\Deleted)")
        m.expunge()
        j = w.list(q=needle)
        self.assertEqual([x["subject"] for x in j["messages"]], ["other"])

    def test_web_change_then_imap_change(self):
        """The web's own change does not hide the next change by IMAP."""
        tag = self.id().split(".")[-2]
        subject = "%s both sides" % tag
        send_mail(self.d, subject)
        w = self.web()
        uid = w.rows()[subject]["uid"]
        st, j = w.call("POST", "/api/flags", {"folder": "INBOX", "uid": uid, "flagged": True})
        self.assertEqual((st, j), (200, {"seen": False, "flagged": True}))
        m = self.imap()
        m.select("INBOX")
        m.uid("STORE", str(uid), "+FLAGS", r"(\Seen)")
        m.uid("STORE", str(uid), "-FLAGS", r"(\Flagged)")
        row = w.rows()[subject]
        self.assertTrue(row["seen"])
        self.assertFalse(row["flagged"])
        # a web move out of INBOX, then IMAP expunges another message
        other = "%s other" % tag
        send_mail(self.d, other)
        self.assertIn(other, w.rows())
        st, j = w.call("POST", "/api/delete", {"folder": "INBOX", "uid": uid})
        self.assertEqual(st, 200, j)
        ouid = self.imap_uid(m, other)
        m.uid("STORE", ouid, "+FLAGS", r"(\Deleted)")
        m.expunge()
        rows = w.rows()
        self.assertNotIn(subject, rows)
        self.assertNotIn(other, rows)
        self.assertIn(subject, w.rows("Trash"))
        # IMAP sees the web's move too
        typ, data = m.uid("SEARCH", None, "HEADER", "Subject", '"%s"' % subject)
        self.assertEqual(data[0], b"")

    def test_uidvalidity_change(self):
        """A UID list rebuilt under a new UIDVALIDITY: the web's UIDs follow."""
        tag = self.id().split(".")[-2]
        folder = "Renum%s" % tag
        m = self.imap()
        m.create(folder)
        for k in range(3):
            m.append(folder, None, None, ("From: a@b.test\r\nSubject: %s renum %d\r\n\r\nx\r\n"
                                          % (tag, k)).encode())
        w = self.web()
        before = w.list(folder)
        self.assertEqual([x["uid"] for x in before["messages"]], [3, 2, 1])
        path = os.path.join(self.d.maildir(folder=folder), "mxguard-uidlist")
        with open(path) as f:
            text = f.read()
        # a list the mailbox layer cannot trust (replaced as the layer
        # replaces it: renamed over): UIDs renumbered from 1
        with open(path + ".t", "w") as f:
            f.write(text.replace("mxguard-uidlist 1", "mxguard-uidlist x"))
        os.rename(path + ".t", path)
        m.select(folder)
        after = w.list(folder)
        self.assertEqual(sorted(x["subject"] for x in after["messages"]),
                         ["%s renum %d" % (tag, k) for k in range(3)])
        self.assertEqual(sorted(x["uid"] for x in after["messages"]), [1, 2, 3])
        typ, data = m.uid("SEARCH", None, "ALL")
        self.assertEqual(sorted(int(x) for x in data[0].split()), [1, 2, 3])
        for x in after["messages"]:
            st, j = w.call("GET", "/api/message?folder=%s&uid=%d" % (folder, x["uid"]))
            self.assertEqual((st, j["subject"]), (200, x["subject"]))

    def test_folder_renamed_deleted_recreated(self):
        """IMAP RENAME, DELETE and CREATE under a cached folder's name: the
        web follows each (past a rename the cache watches stamps)."""
        tag = self.id().split(".")[-2]
        name, other = "Ren%s" % tag, "Ren%sB" % tag
        m = self.imap()
        m.create(name)
        m.append(name, None, None, ("From: a@b.test\r\nSubject: %s first\r\n\r\nx\r\n" % tag).encode())
        w = self.web()
        self.assertEqual(list(w.rows(name)), ["%s first" % tag])
        self.assertEqual(m.rename(name, other)[0], "OK")
        st, _ = w.call("GET", "/api/messages?folder=%s" % name)
        self.assertEqual(st, 404)
        self.assertEqual(list(w.rows(other)), ["%s first" % tag])
        # a new folder under the old name: its own messages, not the old ones
        m.create(name)
        m.append(name, None, None, ("From: a@b.test\r\nSubject: %s second\r\n\r\nx\r\n" % tag).encode())
        self.assertEqual(list(w.rows(name)), ["%s second" % tag])
        m.select(name)
        uid = self.imap_uid(m, "%s second" % tag)
        m.uid("STORE", uid, "+FLAGS", r"(\Seen)")
        self.assertTrue(w.rows(name)["%s second" % tag]["seen"])
        # the web's own change, then IMAP's at once, on that folder
        st, j = w.call("POST", "/api/flags", {"folder": name, "uid": int(uid), "flagged": True})
        self.assertEqual(st, 200, j)
        m.uid("STORE", uid, "-FLAGS", r"(\Seen)")
        row = w.rows(name)["%s second" % tag]
        self.assertEqual((row["seen"], row["flagged"]), (False, True))
        m.close()
        # deleted, then made again empty
        self.assertEqual(m.delete(name)[0], "OK")
        st, _ = w.call("GET", "/api/messages?folder=%s" % name)
        self.assertEqual(st, 404)
        m.create(name)
        self.assertEqual(w.list(name)["total"], 0)

    def test_attachment_mark(self):
        tag = self.id().split(".")[-2]
        w = self.web()
        send_mail(self.d, "%s plain" % tag)
        mixed = ("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n")
        att = ("--b1\r\nContent-Type: text/plain\r\n\r\nsee the file\r\n"
               "--b1\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\n"
               "Content-Disposition: attachment; filename=\"a.pdf\"\r\n"
               "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b1--\r\n")
        send_mail(self.d, "%s with file" % tag, extra=mixed, body=att)
        inline = ("--b1\r\nContent-Type: text/plain\r\n\r\none\r\n"
                  "--b1\r\nContent-Type: text/plain\r\n\r\ntwo\r\n--b1--\r\n")
        send_mail(self.d, "%s mixed no file" % tag, extra=mixed, body=inline)
        # a file past the first 64 KB of a long text part: the list guesses
        # (a mixed message that long), opening the message makes it exact
        big = ("--b1\r\nContent-Type: text/plain\r\n\r\n" + ("y" * 76 + "\r\n") * 1200
               + "--b1\r\nContent-Type: text/plain\r\n\r\nno file here either\r\n--b1--\r\n")
        send_mail(self.d, "%s long mixed" % tag, extra=mixed, body=big)
        rows = w.rows()
        self.assertFalse(rows["%s plain" % tag]["attachment"])
        self.assertTrue(rows["%s with file" % tag]["attachment"])
        self.assertFalse(rows["%s mixed no file" % tag]["attachment"])
        self.assertTrue(rows["%s long mixed" % tag]["attachment"])  # the guess
        uid = rows["%s long mixed" % tag]["uid"]
        st, j = w.call("GET", "/api/message?folder=INBOX&uid=%d" % uid)
        self.assertEqual(st, 200)
        self.assertEqual(j["attachments"], [])
        self.assertFalse(j["attachment"])
        # kept for the list where the row is kept (not with the cache off)
        self.assertEqual(w.rows()["%s long mixed" % tag]["attachment"], not self.CACHED)
        st, j = w.call("GET", "/api/message?folder=INBOX&uid=%d" % rows["%s with file" % tag]["uid"])
        self.assertTrue(j["attachment"])
        self.assertEqual(len(j["attachments"]), 1)


class DefaultCache(CacheCases, unittest.TestCase):
    WEB = ""
    CACHED = True


class OneFolder(CacheCases, unittest.TestCase):
    """One folder: a request on another folder evicts the last one."""
    WEB = "\tcache_folders = 1\n"
    CACHED = True


class TinyCache(CacheCases, unittest.TestCase):
    """One octet: every folder is dropped as its request ends."""
    WEB = "\tcache_folders = 1\n\tcache_size = 1\n"
    CACHED = False


class NoCache(CacheCases, unittest.TestCase):
    WEB = "\tcache_folders = 0\n"
    CACHED = False


class Lifecycle(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = web_daemon()

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def test_restart_and_reload(self):
        for k in range(5):
            send_mail(self.d, "life %d" % k)
        w = Web(self.d.ports["web"])
        before = w.list()
        w.close()
        self.d.restart()
        w = Web(self.d.ports["web"])
        self.assertEqual(w.list(), before)
        # a reload turning the cache off and on again changes nothing seen
        off = self.d.log_size()
        self.d.extra_conf = self.d.extra_conf.replace("web {\n", "web {\n\tcache_folders = 0\n")
        self.d.write_config()
        self.d.signal(signal.SIGHUP)
        self.assertIsNotNone(self.d.wait_log(r"reloaded configuration", off), self.d.log_tail())
        self.assertEqual(w.list(), before)
        send_mail(self.d, "life after reload")
        self.assertEqual(w.list()["messages"][0]["subject"], "life after reload")
        w.close()

    def test_threads(self):
        """Web lists, flag changes and moves from three threads at once, IMAP
        stores and deliveries from two more; then both sides agree."""
        for k in range(40):
            send_mail(self.d, "busy %02d" % k)
        errors = []

        def web_worker(n):
            try:
                w = Web(self.d.ports["web"])
                for r in range(30):
                    j = w.list()
                    mine = [x for x in j["messages"] if x["subject"].startswith("busy ")]
                    if not mine:
                        continue
                    x = mine[(n * 7 + r) % len(mine)]
                    if r % 10 == 9 and n == 0:
                        st, _ = w.call("POST", "/api/move", {"folder": "INBOX", "uid": x["uid"],
                                                             "to": "Trash"})
                    else:
                        st, _ = w.call("POST", "/api/flags", {"folder": "INBOX", "uid": x["uid"],
                                                              "flagged": r % 2 == 0})
                    if st not in (200, 404):  # 404: moved away by another thread
                        errors.append("web %d: %d" % (n, st))
                    w.list(q="busy")
                w.close()
            except Exception as e:  # noqa: BLE001 — reported below
                errors.append("web %d: %r" % (n, e))

        def imap_worker():
            try:
                m = imaplib.IMAP4("127.0.0.1", self.d.ports["imap"], timeout=10)
                m.login(USER, PASSWORD)
                m.select("INBOX")
                for r in range(30):
                    m.store("%d" % (r % 20 + 1), "+FLAGS" if r % 2 else "-FLAGS", r"(\Seen)")
                    m.noop()
                m.logout()
            except Exception as e:  # noqa: BLE001
                errors.append("imap: %r" % e)

        def smtp_worker():
            try:
                for k in range(10):
                    send_mail(self.d, "busy late %02d" % k)
            except Exception as e:  # noqa: BLE001
                errors.append("smtp: %r" % e)

        ts = [threading.Thread(target=web_worker, args=(n,)) for n in range(3)]
        ts += [threading.Thread(target=imap_worker), threading.Thread(target=smtp_worker)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
            self.assertFalse(t.is_alive())
        self.assertEqual(errors, [])
        # the settled folder as IMAP and the web each see it
        m = imaplib.IMAP4("127.0.0.1", self.d.ports["imap"], timeout=10)
        m.login(USER, PASSWORD)
        m.select("INBOX", readonly=True)
        typ, data = m.uid("FETCH", "1:*", "(FLAGS)")
        imap_view = {}
        for item in data:
            if not isinstance(item, bytes):
                continue
            s = item.decode()
            uid = int(s.split("UID ")[1].split()[0].rstrip(")"))
            imap_view[uid] = ("\\Seen" in s, "\\Flagged" in s)
        m.logout()
        w = Web(self.d.ports["web"])
        st, j = w.call("GET", "/api/messages?folder=INBOX&per_page=200")
        web_view = {x["uid"]: (x["seen"], x["flagged"]) for x in j["messages"]}
        self.assertEqual(j["total"], len(imap_view))
        self.assertEqual(web_view, imap_view)
        w.close()


if __name__ == "__main__":
    mxtest.main(budget=240)

#!/usr/bin/env python3
"""test_web_admin — the web service's admin calls and "Held for you"
(web/admin.c, doc/web.md, ADMIN_API.md) with a real mxguard.

One daemon runs the rules stage (the stock rules with GTUBE, plus a file
of this test's: a body rule that rejects, one that quarantines) with
pipeline.quarantine_score under GTUBE's score, a web listener whose
`admins` is admin@example.test and `user_release` true, and local users.
Mail goes in over SMTP (smtplib); the API is driven with http.client
(cookies and CSRF by hand, test_web's Web class). Checked:

- every admin call refuses a non-admin (403) and no session (401); every
  POST refuses a missing or wrong CSRF token (403);
- the overview's hour/day counts and series move by exactly what was sent
  (accepted, rejected by a rule, quarantined), top rules, counters;
- the recent transactions carry the log line's values, newest first,
  filtered by text and verdict, limited;
- the quarantine search by sender, recipient, reason and since, all=1;
  a message's headers (decoded subject), events, client;
- an admin release lands in the recipient's Maildir (and with `to` in
  another's), logged and recorded as by web:USER; bad recipients 400, a
  refused one 502; delete;
- a held message is listed for its recipients only; another user's id is
  404 (never its content); a user's release goes to that user only; a
  user's delete of a message with other recipients only hides it for them;
- a second daemon with user_release = false: 403 for the user's release
  and delete;
- bad and traversal ids are 400.
"""

import json
import os
import re
import smtplib
import time
import unittest

import mxtest
from mxtest import PASSWORD
from test_web import Web
from upstreams import SmtpSink

ADMIN = "admin@example.test"
DEMO = "demo@example.test"
OTHER = "other@example.test"
USERS = (ADMIN, DEMO, OTHER)
STOCK = os.path.join(mxtest.MX_SRCDIR, "rules", "mxguard.cf")
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
REJECT_MARK = "MXG-WEBADMIN-REJECT-ME"
HOLD_MARK = "MXG-WEBADMIN-HOLD-ME"
PIPELINE = {"stages": ["rules"], "quarantine_score": 500.0, "reject_score": 5000.0}
VERDICTS = ("accept", "reject", "quarantine", "tempfail", "junk", "discard")
BAD_IDS = ("../../etc/passwd", "0TFG2K5QJ8E1A3F", "0tfg2k5qj8e1a3f2", "0TFG2K5QJ8E1A3F2/",
           "..%2F..%2Fmeta", "", "0TFG2K5QJ8E1A3F2X")


def admin_daemon(user_release=True, sink_port=None, milter=False):
    listen = {"web": {"protocol": "web"}}
    if milter:
        listen["milter"] = {"protocol": "milter"}
    d = mxtest.Daemon(start=False, users=USERS, pipeline=PIPELINE, listen_extra=listen)
    rules = os.path.join(d.dir, "webadmin.cf")
    with open(rules, "w") as f:
        f.write("body WEBADMIN_REJECT /%s/\naction WEBADMIN_REJECT reject "
                "\"550 5.7.1 Refused by the test rule\"\n" % REJECT_MARK)
        f.write("body WEBADMIN_HOLD /%s/\naction WEBADMIN_HOLD quarantine\n" % HOLD_MARK)
    d.extra_conf = (
        'rules {\n\tfiles = {%s, %s}\n}\n' % (mxtest.conf_value(STOCK), mxtest.conf_value(rules))
        + "web {\n\tstatic_dir = %s\n\tadmins = {\"ADMIN@example.test\"}\n\tuser_release = %s\n}\n"
        % (mxtest.conf_value(os.path.join(mxtest.MX_SRCDIR, "web", "static")),
           "true" if user_release else "false"))
    if sink_port:
        d.extra_conf += ("route sink {\n\tdomains = {\"relay.test\"}\n\tprotocol = \"smtp\"\n"
                         "\thosts = {\"127.0.0.1:%d\"}\n\tstarttls = \"off\"\n}\n" % sink_port)
    d.write_config()
    d.start()
    return d


def message(subject, body, sender, rcpts):
    return ("From: <%s>\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s@example.org>\r\n"
            "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\n%s\r\n"
            % (sender, ", ".join("<%s>" % r for r in rcpts), subject,
               re.sub(r"[^A-Za-z0-9]", "-", subject), body)).encode()


def send(d, subject, body="hello", sender="sender@example.org", rcpts=(DEMO,)):
    s = smtplib.SMTP("127.0.0.1", d.port, timeout=30)
    try:
        s.ehlo("client.example.org")
        s.mail(sender)
        for r in rcpts:
            code, text = s.rcpt(r)
            assert code == 250, (code, text)
        try:
            return s.data(message(subject, body, sender, rcpts))
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error
    finally:
        try:
            s.quit()
        except (smtplib.SMTPException, OSError):
            pass


def tx_line(d, off, result):
    """The smtp tx log line (after off) of the one transaction sent since."""
    m = d.wait_log(r"[^\n]* smtp tx [^\n]*result=%s[^\n]*" % result, off)
    assert m, d.log_tail()
    return m.group(0)


class AdminCase(unittest.TestCase):
    user_release = True

    @classmethod
    def setUpClass(cls):
        cls.sink = SmtpSink().start()
        try:
            cls.d = admin_daemon(cls.user_release, cls.sink.port)
        except Exception:
            cls.sink.stop()
            raise
        cls.web_port = cls.d.ports["web"]
        cls.qdir = os.path.join(cls.d.dir, "quarantine")

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()
        cls.sink.stop()

    def browser(self, user):
        b = Web(self.web_port)
        st, j = b.login(user=user, password=PASSWORD)
        self.assertEqual(st, 200, j)
        return b

    def hold(self, subject, body=GTUBE, sender="sender@example.org", rcpts=(DEMO,)):
        off = self.d.log_size()
        code, text = send(self.d, subject, body, sender, rcpts)
        self.assertEqual(code, 250, text)
        line = tx_line(self.d, off, "quarantined")
        m = re.search(r" quarantine=([0-9A-Z]{16})\b", line)
        self.assertIsNotNone(m, line)
        return m.group(1)

    def message_file(self, qid):
        names = [n for n in os.listdir(os.path.join(self.qdir, "new")) if n.startswith(qid + ",")]
        return os.path.join(self.qdir, "new", names[0]) if names else None

    def meta_events(self, qid):
        with open(os.path.join(self.qdir, "meta", qid)) as f:
            return [l[7:].rstrip("\n") for l in f if l.startswith("event: ")]

    def inbox(self, user):
        local = user.split("@")[0]
        return self.d.messages(user=local, subs=("new", "cur"))

    def held(self, b):
        st, j = b.json("GET", "/api/held")
        self.assertEqual(st, 200, j)
        self.assertIs(j["can_release"], self.user_release)
        for m in j["messages"]:
            self.assertEqual(m["status"], "held")
        return [m["id"] for m in j["messages"]], j

    def ids(self, b, query=""):
        st, j = b.json("GET", "/api/admin/quarantine" + query)
        self.assertEqual(st, 200, j)
        return [m["id"] for m in j["messages"]]


class Access(AdminCase):
    def test_session_and_login_say_admin_and_user_release(self):
        for user, admin in ((ADMIN, True), (DEMO, False)):
            b = Web(self.web_port)
            st, j = b.login(user=user, password=PASSWORD)
            self.assertEqual(st, 200, j)
            self.assertIs(j["admin"], admin, user)
            self.assertIs(j["user_release"], True)
            st, j = b.json("GET", "/api/session")
            self.assertEqual(st, 200)
            self.assertIs(j["admin"], admin, user)
            self.assertIs(j["user_release"], True)

    def test_non_admin_403_and_no_session_401(self):
        qid = self.hold("access probe")
        demo = self.browser(DEMO)
        nobody = Web(self.web_port)
        gets = ("/api/admin/overview", "/api/admin/transactions", "/api/admin/quarantine",
                "/api/admin/quarantine?all=1", "/api/admin/quarantine/message?id=" + qid,
                "/api/admin/nosuchcall")
        posts = (("/api/admin/quarantine/release", {"id": qid}),
                 ("/api/admin/quarantine/release", {"id": qid, "to": [DEMO]}),
                 ("/api/admin/quarantine/delete", {"id": qid}))
        for path in gets:
            st, j = demo.json("GET", path)
            self.assertEqual((st, j), (403, {"error": "admins only"}), path)
            st, j = nobody.json("GET", path)
            self.assertEqual(st, 401, path)
        for path, body in posts:
            st, j = demo.json("POST", path, body)
            self.assertEqual((st, j), (403, {"error": "admins only"}), path)
            st, j = nobody.json("POST", path, body)
            self.assertEqual(st, 401, path)
        st, _ = nobody.json("GET", "/api/held")
        self.assertEqual(st, 401)
        # nothing happened to the message
        self.assertIsNotNone(self.message_file(qid))
        self.assertEqual(self.meta_events(qid), [])
        # the admin does see it (the config's name is in another case)
        self.assertIn(qid, self.ids(self.browser(ADMIN)))

    def test_csrf_missing_or_wrong_403(self):
        qid = self.hold("csrf probe")
        admin = self.browser(ADMIN)
        demo = self.browser(DEMO)
        calls = ((admin, "/api/admin/quarantine/release", {"id": qid}),
                 (admin, "/api/admin/quarantine/delete", {"id": qid}),
                 (demo, "/api/held/release", {"id": qid}),
                 (demo, "/api/held/delete", {"id": qid}))
        for b, path, body in calls:
            for token in (None, "0" * 64, demo.csrf if b is admin else admin.csrf):
                h = {"X-CSRF-Token": token} if token else {}
                st, j = b.json("POST", path, body, csrf=False, headers=h)
                self.assertEqual(st, 403, (path, token, j))
                self.assertIn("CSRF", j["error"])
        self.assertIsNotNone(self.message_file(qid))
        self.assertEqual(self.meta_events(qid), [])
        self.assertEqual([m for m in self.inbox(DEMO) if b"csrf probe" in m], [])

    def test_bad_and_traversal_ids_400(self):
        admin = self.browser(ADMIN)
        demo = self.browser(DEMO)
        for bad in BAD_IDS:
            st, j = admin.json("GET", "/api/admin/quarantine/message?id=" + bad)
            self.assertEqual(st, 400, (bad, j))
            for b, path in ((admin, "/api/admin/quarantine/release"),
                            (admin, "/api/admin/quarantine/delete"),
                            (demo, "/api/held/release"), (demo, "/api/held/delete")):
                st, j = b.json("POST", path, {"id": bad})
                self.assertEqual(st, 400, (path, bad, j))
        for b, path in ((admin, "/api/admin/quarantine/release"), (demo, "/api/held/delete")):
            for body in ({}, {"id": 12}, {"id": None}, {"id": ["0TFG2K5QJ8E1A3F2"]}):
                st, j = b.json("POST", path, body)
                self.assertEqual(st, 400, (path, body, j))
        st, _ = admin.json("GET", "/api/admin/quarantine/message")
        self.assertEqual(st, 400)
        # a well-formed id nobody has
        st, j = admin.json("GET", "/api/admin/quarantine/message?id=0000000000000000")
        self.assertEqual((st, j), (404, {"error": "no such quarantined message"}))
        st, _ = admin.json("POST", "/api/admin/quarantine/delete", {"id": "0000000000000000"})
        self.assertEqual(st, 404)
        st, _ = demo.json("POST", "/api/held/release", {"id": "0000000000000000"})
        self.assertEqual(st, 404)
        # bad filters
        for q in ("?limit=0", "?limit=1001", "?limit=-1", "?limit=x", "?q=" + "a" * 400):
            st, _ = admin.json("GET", "/api/admin/transactions" + q)
            self.assertEqual(st, 400, q)
        for q in ("?since=yesterday", "?since=-5", "?sender=" + "a" * 400):
            st, _ = admin.json("GET", "/api/admin/quarantine" + q)
            self.assertEqual(st, 400, q)


class Overview(AdminCase):
    def overview(self, b):
        st, j = b.json("GET", "/api/admin/overview")
        self.assertEqual(st, 200, j)
        for span in ("hour", "day"):
            self.assertEqual(sorted(j[span]["verdicts"]), sorted(VERDICTS))
            self.assertEqual(j[span]["total"], sum(j[span]["verdicts"].values()))
        s = j["series"]
        self.assertEqual(s["step"], 300)
        self.assertEqual(s["start"] % 300, 0)
        self.assertEqual(sorted(s["verdicts"]), sorted(VERDICTS))
        for v in VERDICTS:
            self.assertEqual(len(s["verdicts"][v]), 288)
            # the whole daemon's life is inside the day
            self.assertEqual(sum(s["verdicts"][v]), j["day"]["verdicts"][v], v)
        self.assertLessEqual(s["start"], time.time())
        self.assertGreater(s["start"] + 288 * 300, time.time())
        return j

    def test_counts_match_what_was_sent(self):
        admin = self.browser(ADMIN)
        before = self.overview(admin)
        off = self.d.log_size()
        for i in range(3):
            self.assertEqual(send(self.d, "overview accepted %d" % i)[0], 250)
        code, _ = send(self.d, "overview rejected", "this carries " + REJECT_MARK)
        self.assertEqual(code, 550)
        self.assertEqual(send(self.d, "overview held", GTUBE)[0], 250)
        self.assertEqual(send(self.d, "overview held by rule", HOLD_MARK)[0], 250)
        # every transaction's line is written (and recorded) before we look
        deadline = time.monotonic() + 10
        while self.d.log_since(off).count(" smtp tx ") < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.d.log_since(off).count(" smtp tx "), 6, self.d.log_tail())
        after = self.overview(admin)
        want = {"accept": 3, "reject": 1, "quarantine": 2, "tempfail": 0, "junk": 0, "discard": 0}
        for span in ("hour", "day"):
            got = {v: after[span]["verdicts"][v] - before[span]["verdicts"][v] for v in VERDICTS}
            self.assertEqual(got, want, span)
            self.assertEqual(after[span]["total"] - before[span]["total"], 6)
        c0, c1 = before["counters"], after["counters"]
        self.assertEqual(c1["delivered"] - c0["delivered"], 3)
        self.assertEqual(c1["quarantined"] - c0["quarantined"], 2)
        self.assertEqual(c1["rejected"] - c0["rejected"], 1)
        self.assertEqual(c1["connections"] - c0["connections"], 6)
        self.assertEqual(c1["relayed"], 0)
        rules = {r["rule"]: r["hits"] for r in after["top_rules"]}
        self.assertLessEqual(len(after["top_rules"]), 10)
        hits = [r["hits"] for r in after["top_rules"]]
        self.assertEqual(hits, sorted(hits, reverse=True))
        gtube = [k for k in rules if "GTUBE" in k]
        self.assertEqual(len(gtube), 1, rules)
        self.assertGreaterEqual(rules[gtube[0]], 1)
        self.assertIn("WEBADMIN_REJECT", " ".join(rules))
        self.assertIsInstance(after["health"], list)
        for h in after["health"]:
            self.assertIsInstance(h["name"], str)
            self.assertIsInstance(h["up"], bool)
        self.assertGreaterEqual(after["uptime"], 0)

    def test_transactions_have_the_log_line_values(self):
        admin = self.browser(ADMIN)
        sender = "tx-probe-%d@example.org" % os.getpid()
        off = self.d.log_size()
        self.assertEqual(send(self.d, "tx probe one", sender=sender, rcpts=(DEMO, OTHER))[0], 250)
        first = tx_line(self.d, off, "delivered")
        off = self.d.log_size()
        self.assertEqual(send(self.d, "tx probe two", "x " + REJECT_MARK, sender=sender)[0], 550)
        second = tx_line(self.d, off, "rejected")
        st, j = admin.json("GET", "/api/admin/transactions?q=" + sender.upper())
        self.assertEqual(st, 200, j)
        txs = j["transactions"]
        self.assertEqual(len(txs), 2, txs)
        # newest first, each as its log line says
        for t, line in zip(txs, (second, first)):
            self.assertEqual(t["id"], re.search(r"(\S+) smtp tx ", line).group(1))
            self.assertEqual(t["client"], re.search(r" client=(\S+)", line).group(1))
            self.assertEqual("<%s>" % t["from"], re.search(r" from=(\S+)", line).group(1))
            self.assertEqual(t["verdict"], re.search(r" verdict=(\S+)", line).group(1))
            self.assertEqual(t["action"], re.search(r" action=(\S+)", line).group(1))
            self.assertEqual("%.1f" % t["score"], re.search(r" score=(\S+)", line).group(1))
            self.assertEqual(t["hits"], re.search(r" hits=(\S+)", line).group(1))
            self.assertEqual(t["result"], re.search(r" result=(\S+)", line).group(1))
            self.assertLessEqual(abs(t["time"] - time.time()), 300)
        self.assertEqual(txs[1]["to"], [DEMO, OTHER])
        self.assertEqual(txs[0]["to"], [DEMO])
        self.assertEqual(txs[0]["result"], "rejected")
        self.assertIn("WEBADMIN_REJECT", txs[0]["hits"])
        self.assertGreaterEqual(txs[0]["time"], txs[1]["time"])
        # the verdict filter: the class, the verdict or the action
        for v, n in (("reject", 1), ("accept", 1), ("quarantine", 0)):
            st, j = admin.json("GET", "/api/admin/transactions?q=%s&verdict=%s" % (sender, v))
            self.assertEqual(len(j["transactions"]), n, (v, j))
        st, j = admin.json("GET", "/api/admin/transactions?q=%s&verdict=reject" % sender)
        self.assertEqual(j["transactions"][0]["id"], txs[0]["id"])
        # by recipient and by id, and the limit
        st, j = admin.json("GET", "/api/admin/transactions?q=" + txs[1]["id"].lower())
        self.assertEqual([t["id"] for t in j["transactions"]], [txs[1]["id"]])
        st, j = admin.json("GET", "/api/admin/transactions?q=%s&limit=1" % sender)
        self.assertEqual([t["id"] for t in j["transactions"]], [txs[0]["id"]])
        st, j = admin.json("GET", "/api/admin/transactions?limit=1000")
        self.assertEqual(st, 200)
        self.assertGreaterEqual(len(j["transactions"]), 2)
        st, j = admin.json("GET", "/api/admin/transactions?q=no-such-text-anywhere")
        self.assertEqual(j["transactions"], [])


class Quarantine(AdminCase):
    def test_search_by_sender_rcpt_reason_since(self):
        admin = self.browser(ADMIN)
        s1 = "search-one-%d@example.org" % os.getpid()
        s2 = "search-two-%d@example.org" % os.getpid()
        t0 = int(time.time())
        a = self.hold("search a", GTUBE, s1, (DEMO,))
        b = self.hold("search b", HOLD_MARK, s2, (OTHER,))
        c = self.hold("search c", GTUBE, s1, (DEMO, OTHER))
        mine = {a, b, c}
        self.assertEqual(set(self.ids(admin, "?sender=" + s1.upper())), {a, c})
        self.assertEqual(set(self.ids(admin, "?sender=" + s2)) & mine, {b})
        self.assertEqual(set(self.ids(admin, "?rcpt=" + OTHER.upper())) & mine, {b, c})
        self.assertEqual(set(self.ids(admin, "?rcpt=" + DEMO)) & mine, {a, c})
        self.assertEqual(set(self.ids(admin, "?reason=webadmin_hold")) & mine, {b})
        self.assertEqual(set(self.ids(admin, "?reason=score%3E%3D500")) & mine, {a, c})
        self.assertEqual(set(self.ids(admin, "?since=%d" % t0)) & mine, mine)
        self.assertEqual(set(self.ids(admin, "?since=%d" % (t0 + 3600))), set())
        self.assertEqual(set(self.ids(admin, "?sender=%s&rcpt=%s" % (s1, OTHER))), {c})
        self.assertEqual(self.ids(admin, "?sender=nobody@example.org"), [])
        # newest first
        ids = [i for i in self.ids(admin) if i in mine]
        self.assertEqual(ids, [c, b, a])
        st, j = admin.json("GET", "/api/admin/quarantine?sender=" + s2)
        m = j["messages"][0]
        self.assertEqual(m["id"], b)
        self.assertEqual(m["from"], s2)
        self.assertEqual(m["rcpts"], [OTHER])
        self.assertEqual(m["subject"], "search b")
        self.assertEqual(m["reason"], "rules:WEBADMIN_HOLD")
        self.assertEqual(m["status"], "held")
        self.assertIn("WEBADMIN_HOLD", m["hits"])
        self.assertGreater(m["size"], 0)
        self.assertGreaterEqual(m["time"], t0)

    def test_show_headers_and_events(self):
        admin = self.browser(ADMIN)
        qid = self.hold("=?utf-8?q?Caf=C3=A9_au_lait?=")
        st, j = admin.json("GET", "/api/admin/quarantine/message?id=" + qid)
        self.assertEqual(st, 200, j)
        self.assertEqual(j["id"], qid)
        self.assertEqual(j["subject"], "Caf\u00e9 au lait")
        self.assertIn("Subject: =?utf-8?q?Caf=C3=A9_au_lait?=", j["headers"])
        self.assertIn("Message-ID: <", j["headers"])
        self.assertNotIn(GTUBE, j["headers"])  # the header block only, never the body
        self.assertEqual(j["events"], [])
        self.assertEqual(j["client"], "127.0.0.1")
        self.assertEqual(j["helo"], "client.example.org")
        self.assertEqual(j["status"], "held")
        self.assertTrue(self.d.wait_log(r"web admin quarantine %s shown to web:admin@example\.test" % qid))

    def test_release_to_recipients_and_to_another(self):
        admin = self.browser(ADMIN)
        qid = self.hold("release me", GTUBE + " release-me-marker")
        off = self.d.log_size()
        st, j = admin.json("POST", "/api/admin/quarantine/release", {"id": qid})
        self.assertEqual(st, 200, j)
        self.assertEqual(j["ok"], True)
        self.assertEqual(j["id"], qid)
        self.assertEqual(j["to"], [DEMO])
        newid = j["released_as"]
        self.assertRegex(newid, r"^[0-9A-Z]{16}$")
        got = [m for m in self.inbox(DEMO) if b"release-me-marker" in m]
        self.assertEqual(len(got), 1)
        self.assertIn(("X-MXGuard-Released: %s by web:admin@example.test as %s" % (qid, newid)).encode(),
                      got[0])
        self.assertTrue(self.d.wait_log(
            r"quarantine: %s released by web:admin@example\.test to demo@example\.test as %s: 250 "
            % (qid, newid), off), self.d.log_tail())
        st, j = admin.json("GET", "/api/admin/quarantine/message?id=" + qid)
        self.assertEqual(j["status"], "released")
        self.assertEqual(len(j["events"]), 1)
        self.assertRegex(j["events"][0], r"^\d+ released by web:admin@example\.test to "
                         r"demo@example\.test as %s: 250 " % newid)
        self.assertNotIn(qid, self.ids(admin))
        self.assertIn(qid, self.ids(admin, "?all=1"))
        # again, to someone else
        st, j = admin.json("POST", "/api/admin/quarantine/release", {"id": qid, "to": [OTHER.upper()]})
        self.assertEqual(st, 200, j)
        self.assertEqual(j["to"], [OTHER])
        self.assertEqual(len([m for m in self.inbox(OTHER) if b"release-me-marker" in m]), 1)
        self.assertEqual(len([m for m in self.inbox(DEMO) if b"release-me-marker" in m]), 1)
        self.assertEqual(len(self.meta_events(qid)), 2)

    def test_release_to_a_route_twice(self):
        # the relay runs on a worker thread of the web's pool, on an event
        # loop of the release's own; its cached upstream connection is
        # freed at the end (backends_loop_stop on that thread), so the
        # second release makes a new one
        admin = self.browser(ADMIN)
        qid = self.hold("release upstream", GTUBE + " upstream-marker", rcpts=("someone@relay.test",))
        self.assertEqual(self.sink.messages(), [])
        for n in (1, 2):
            st, j = admin.json("POST", "/api/admin/quarantine/release", {"id": qid})
            self.assertEqual(st, 200, j)
            self.assertEqual(j["to"], ["someone@relay.test"])
            msgs = self.sink.wait_for_messages(n, match=b"upstream-marker")
            self.assertEqual(len(msgs), n)
        dumps = [SmtpSink.parse_dump(m) for m in self.sink.messages()]
        for env, m in dumps:
            self.assertIn("<someone@relay.test>", " ".join(env["rcpts"]))
            self.assertRegex(m, rb"(?m)^X-MXGuard-Released: %s by web:admin@example\.test " % qid.encode())
        self.assertEqual(len(self.meta_events(qid)), 2)
        self.assertTrue(self.d.wait_log(r"quarantine: %s released by web:admin@example\.test to "
                                        r"someone@relay\.test as" % qid))

    def test_release_refusals(self):
        admin = self.browser(ADMIN)
        qid = self.hold("refused release", GTUBE + " refused-marker")
        for to, status in ((["not-an-address"], 400), (["a@b@"], 400), (["x y@example.test"], 400),
                           (["a@example.test,b@example.test"], 400), ("demo@example.test", 400),
                           ([DEMO] * 101, 400), (["someone@elsewhere.invalid"], 400),
                           (["nobody-here@example.test"], 502)):
            st, j = admin.json("POST", "/api/admin/quarantine/release", {"id": qid, "to": to})
            self.assertEqual(st, status, (to, j))
            self.assertIn("error", j)
        self.assertEqual(self.meta_events(qid), [])
        self.assertEqual([m for m in self.inbox(DEMO) if b"refused-marker" in m], [])
        st, j = admin.json("GET", "/api/admin/quarantine/message?id=" + qid)
        self.assertEqual(j["status"], "held")

    def test_delete(self):
        admin = self.browser(ADMIN)
        qid = self.hold("delete me")
        off = self.d.log_size()
        st, j = admin.json("POST", "/api/admin/quarantine/delete", {"id": qid})
        self.assertEqual((st, j), (200, {"ok": True, "id": qid}))
        self.assertIsNone(self.message_file(qid))
        ev = self.meta_events(qid)
        self.assertEqual(len(ev), 1)
        self.assertRegex(ev[0], r"^\d+ deleted by web:admin@example\.test$")
        self.assertTrue(self.d.wait_log(r"quarantine: %s deleted by web:admin@example\.test" % qid, off))
        self.assertNotIn(qid, self.ids(admin))
        st, j = admin.json("GET", "/api/admin/quarantine?all=1")
        self.assertEqual([m["status"] for m in j["messages"] if m["id"] == qid], ["deleted"])
        st, j = admin.json("POST", "/api/admin/quarantine/delete", {"id": qid})
        self.assertEqual(st, 409, j)
        st, j = admin.json("POST", "/api/admin/quarantine/release", {"id": qid})
        self.assertEqual(st, 409, j)
        # mxguardctl sees the same store
        r = self.d.ctl("quarantine", "show", qid)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("deleted by web:admin@example.test", r.stdout)


def check_visible_to_its_recipients_only(self):
    demo, other = self.browser(DEMO), self.browser(OTHER)
    d1 = self.hold("held demo only", GTUBE + " held-d1")
    o1 = self.hold("held other only", GTUBE + " held-o1", rcpts=(OTHER,))
    both = self.hold("held both", GTUBE + " held-both", rcpts=(DEMO, OTHER))
    ids, j = self.held(demo)
    self.assertIn(d1, ids)
    self.assertIn(both, ids)
    self.assertNotIn(o1, ids)
    m = [m for m in j["messages"] if m["id"] == d1][0]
    self.assertEqual(m["subject"], "held demo only")
    self.assertEqual(m["reason"], "score>=500.0")
    ids, _ = self.held(other)
    self.assertEqual({o1, both} & set(ids), {o1, both})
    self.assertNotIn(d1, ids)
    self.assertNotIn(o1, self.held(self.browser(ADMIN))[0])
    if not self.user_release:
        return
    # another user's id: 404, the same answer as an unknown one
    for path in ("/api/held/release", "/api/held/delete"):
        st, j = demo.json("POST", path, {"id": o1})
        self.assertEqual((st, j), (404, {"error": "no such held message"}), path)
    self.assertEqual(self.meta_events(o1), [])
    self.assertIsNotNone(self.message_file(o1))
    self.assertEqual([x for x in self.inbox(DEMO) if b"held-o1" in x], [])


class Held(AdminCase):
    def test_visible_to_its_recipients_only(self):
        check_visible_to_its_recipients_only(self)

    def test_user_release_and_delete(self):
        demo, other = self.browser(DEMO), self.browser(OTHER)
        mine = self.hold("user release", GTUBE + " user-release-marker", rcpts=(DEMO, OTHER))
        off = self.d.log_size()
        # "to" is not the user's to choose: it goes to the user only
        st, j = demo.json("POST", "/api/held/release", {"id": mine, "to": [ADMIN]})
        self.assertEqual(st, 200, j)
        self.assertEqual(j["ok"], True)
        self.assertEqual(j["id"], mine)
        newid = j["released_as"]
        self.assertEqual(len([m for m in self.inbox(DEMO) if b"user-release-marker" in m]), 1)
        self.assertEqual([m for m in self.inbox(OTHER) if b"user-release-marker" in m], [])
        self.assertEqual([m for m in self.inbox(ADMIN) if b"user-release-marker" in m], [])
        self.assertTrue(self.d.wait_log(
            r"quarantine: %s released by web:demo@example\.test to demo@example\.test as %s" % (mine, newid),
            off))
        # no longer held for demo (a second release is a 404); still for other
        self.assertNotIn(mine, self.held(demo)[0])
        st, _ = demo.json("POST", "/api/held/release", {"id": mine})
        self.assertEqual(st, 404)
        self.assertIn(mine, self.held(other)[0])

        # a delete by one of several recipients hides it for them only
        shared = self.hold("user delete shared", GTUBE + " shared-marker", rcpts=(DEMO, OTHER))
        st, j = demo.json("POST", "/api/held/delete", {"id": shared})
        self.assertEqual((st, j), (200, {"ok": True, "id": shared}))
        self.assertIsNotNone(self.message_file(shared))
        ev = self.meta_events(shared)
        self.assertEqual(len(ev), 1)
        self.assertRegex(ev[0], r"^\d+ dismissed by web:demo@example\.test for demo@example\.test$")
        self.assertNotIn(shared, self.held(demo)[0])
        self.assertIn(shared, self.held(other)[0])
        st, _ = demo.json("POST", "/api/held/release", {"id": shared})
        self.assertEqual(st, 404)
        admin = self.browser(ADMIN)
        st, j = admin.json("GET", "/api/admin/quarantine/message?id=" + shared)
        self.assertEqual(j["status"], "held")
        st, j = other.json("POST", "/api/held/release", {"id": shared})
        self.assertEqual(st, 200, j)
        self.assertEqual(len([m for m in self.inbox(OTHER) if b"shared-marker" in m]), 1)
        self.assertEqual([m for m in self.inbox(DEMO) if b"shared-marker" in m], [])

        # a delete by its only recipient deletes it
        alone = self.hold("user delete alone", GTUBE + " alone-marker")
        st, j = demo.json("POST", "/api/held/delete", {"id": alone})
        self.assertEqual(st, 200, j)
        self.assertIsNone(self.message_file(alone))
        self.assertRegex(self.meta_events(alone)[0], r"^\d+ deleted by web:demo@example\.test$")
        self.assertNotIn(alone, self.held(demo)[0])
        st, _ = demo.json("POST", "/api/held/delete", {"id": alone})
        self.assertEqual(st, 404)


class HeldNoUserRelease(AdminCase):
    user_release = False

    def test_visible_to_its_recipients_only(self):
        check_visible_to_its_recipients_only(self)

    def test_release_and_delete_refused(self):
        demo = self.browser(DEMO)
        st, j = demo.json("GET", "/api/session")
        self.assertIs(j["user_release"], False)
        qid = self.hold("no user release", GTUBE + " no-release-marker")
        self.assertIn(qid, self.held(demo)[0])
        for path in ("/api/held/release", "/api/held/delete"):
            for body in ({"id": qid}, {"id": "../x"}, {"id": "0000000000000000"}):
                st, j = demo.json("POST", path, body)
                self.assertEqual((st, j), (403, {"error": "releasing is not allowed"}), (path, body))
        self.assertEqual(self.meta_events(qid), [])
        self.assertIsNotNone(self.message_file(qid))
        self.assertEqual([m for m in self.inbox(DEMO) if b"no-release-marker" in m], [])
        # the admin still can
        st, j = self.browser(ADMIN).json("POST", "/api/admin/quarantine/release", {"id": qid})
        self.assertEqual(st, 200, j)
        self.assertEqual(len([m for m in self.inbox(DEMO) if b"no-release-marker" in m]), 1)


class MilterTransactions(unittest.TestCase):
    """The milter's transactions are recorded too, with their log line's values."""

    @classmethod
    def setUpClass(cls):
        import test_milter
        cls.pf = None
        cls.d = admin_daemon(milter=True)
        try:
            cls.pf = test_milter.milter_postfix(cls.d.ports["milter"]).start()
        except BaseException:
            cls.d.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.pf:
            cls.pf.stop()
        cls.d.cleanup()

    def test_milter_transactions_listed(self):
        sender = "milter-probe-%d@example.org" % os.getpid()
        off = self.d.log_size()
        code, _ = send_to(self.pf.port, "milter clean", "hello", sender)
        self.assertEqual(code, 250)
        code, _ = send_to(self.pf.port, "milter rejected", "x " + REJECT_MARK, sender)
        self.assertEqual(code, 550)
        lines = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            lines = [l for l in self.d.log_since(off).splitlines() if " milter tx " in l]
            if len(lines) >= 2:
                break
            time.sleep(0.05)
        self.assertEqual(len(lines), 2, self.d.log_tail())
        b = Web(self.d.ports["web"])
        self.assertEqual(b.login(user=ADMIN, password=PASSWORD)[0], 200)
        st, j = b.json("GET", "/api/admin/transactions?q=" + sender)
        self.assertEqual(st, 200, j)
        txs = j["transactions"]
        self.assertEqual(len(txs), 2, txs)
        for t, line in zip(txs, reversed(lines)):
            self.assertEqual(t["id"], re.search(r"(\S+) milter tx ", line).group(1))
            self.assertEqual(t["client"], re.search(r" client=(\S+)", line).group(1))
            self.assertEqual("<%s>" % t["from"], re.search(r" from=(\S+)", line).group(1))
            self.assertEqual(t["action"], re.search(r" action=(\S+)", line).group(1))
            self.assertEqual(t["result"], re.search(r" result=(\S+)", line).group(1))
            self.assertEqual(t["to"], [DEMO])
        self.assertEqual(txs[0]["action"], "reject")
        st, j = b.json("GET", "/api/admin/overview")
        self.assertGreaterEqual(j["hour"]["verdicts"]["reject"], 1)
        self.assertGreaterEqual(j["hour"]["verdicts"]["accept"], 1)


def send_to(port, subject, body, sender):
    s = smtplib.SMTP("127.0.0.1", port, timeout=60)
    try:
        s.ehlo("client.example.org")
        s.mail(sender)
        code, text = s.rcpt(DEMO)
        if code != 250:
            return code, text
        return s.data(message(subject, body, sender, (DEMO,)))
    finally:
        try:
            s.quit()
        except (smtplib.SMTPException, OSError):
            pass


if __name__ == "__main__":
    mxtest.main(budget=240)

"""test_web_browser — the web page in a real headless Chromium (Debian's
chromium + chromium-driver, driven by python3-selenium).

Browser: it logs in through the page's form, opens Junk, opens a message
and presses "Not spam", then checks over IMAP (imaplib) that the message
is in INBOX and seen. A message whose HTML part carries a <script> and an
onerror= handler is opened: neither runs (each would set a marker the test
reads, in the page and in the frame), and the text part is shown. A
message whose HTML names an image on a tiny local HTTP server (which counts
its requests) is opened: the image is not fetched until "Show remote
images" is pressed, and is then.

AdminBrowser (a daemon with the stock rules quarantining GTUBE, an admin in
web { admins }, user_release on; all mail sent over SMTP first): the
admin's overview shows the verdict counts the log lines give, the counters
and top rules the API gives; the SVG chart has one bar per (5-minute
bucket, verdict) with mail — exactly the API's series — summing to what was
sent, with a legend and axis labels; the transactions filter by text and
class; the quarantine searches by recipient, sender, reason and time; a
release to the recipients and one to a typed address arrive in the Maildir
(only after the confirmation) with the "released by web:ADMIN" log line, a
failed release is shown as failed, a delete (after a Cancel that changes
nothing) is logged. A non-admin sees no Admin view and gets 403 from every
/api/admin call; a user sees only her own held mail and releases (into her
INBOX) and deletes it; with user_release off (a reload) no buttons and
403. Every test ends with no script error and nothing refused by the
page's CSP in the browser's console.

A screenshot of each step is saved in $MX_SCREENSHOTS (default
./web-screenshots, printed).

Waits are WebDriverWait with deadlines, never sleeps.
"""

import http.server
import imaplib
import os
import threading
import re
import shutil
import signal
import smtplib
import sys
import unittest

# python3-selenium is Debian's, for Debian's python3: when the python3 on
# PATH is another one (a pyenv build), run this file with Debian's instead
# of skipping the test
try:
    import selenium  # noqa: F401
except ImportError:
    if os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3") and \
            os.path.exists("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)

import mxtest
from mxtest import PASSWORD

try:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    from selenium.webdriver.chrome.service import Service
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.common.exceptions import WebDriverException
    HAVE_SELENIUM = True
except ImportError:  # the test fails, and says why
    HAVE_SELENIUM = False

USER = "demo@example.test"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WAIT = 20


def send_mail(d, subject, body="hello\r\n", extra=""):
    msg = ("From: Alice <a@b.test>\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s@b.test>\r\n%s\r\n%s"
           % (USER, subject, subject.replace(" ", "-"), extra, body))
    with smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.example.org", timeout=10) as s:
        s.sendmail("a@b.test", [USER], msg.encode())


class Page(unittest.TestCase):
    """A daemon (make_daemon) and one headless Chromium for a class; no tests."""

    @classmethod
    def make_daemon(cls):
        raise NotImplementedError

    @classmethod
    def setUpClass(cls):
        # scripts/install-deps installs all three: missing is a failure
        if not (HAVE_SELENIUM and os.path.exists(CHROMEDRIVER) and os.path.exists(CHROMIUM)):
            raise AssertionError("needs chromium, chromium-driver and python3-selenium "
                                 "(scripts/install-deps)")
        cls.d = cls.make_daemon()
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--window-size=1200,900", "--user-data-dir=" + os.path.join(cls.d.dir, "chrome")):
            opts.add_argument(a)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # for page_errors()
        cls.drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        cls.drv.set_page_load_timeout(WAIT)
        cls.base = "http://127.0.0.1:%d/" % cls.d.ports["web"]

    @classmethod
    def tearDownClass(cls):
        cls.drv.quit()
        cls.d.cleanup()

    def shot(self, name):
        # kept after the run: $MX_SCREENSHOTS, else ./web-screenshots
        out = os.environ.get("MX_SCREENSHOTS", os.path.abspath("web-screenshots"))
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, "web-%s.png" % name)
        self.drv.save_screenshot(path)
        print("screenshot", path)

    def wait(self, cond):
        """cond() true within WAIT seconds; the page rebuilds its lists
        while we look, so an element gone stale counts as not yet."""
        def attempt(drv):
            try:
                return cond()
            except (StaleElementReferenceException, NoSuchElementException):
                return False
        return WebDriverWait(self.drv, WAIT).until(attempt)

    def click_where(self, css, pred):
        """click the first element of css matching pred (retried while stale)"""
        def attempt():
            for el in self.drv.find_elements(By.CSS_SELECTOR, css):
                if pred(el):
                    el.click()
                    return True
            return False
        self.wait(attempt)

    def login(self, user=USER):
        self.drv.delete_all_cookies()  # whoever was logged in before
        self.drv.get(self.base)
        self.wait(lambda: self.drv.find_element(By.ID, "login").is_displayed())
        self.drv.find_element(By.ID, "user").send_keys(user)
        self.drv.find_element(By.ID, "password").send_keys(PASSWORD)
        self.drv.find_element(By.CSS_SELECTOR, "#login-form button").click()
        self.wait(lambda: self.drv.find_element(By.ID, "app").is_displayed())

    def page_errors(self):
        """the page's script errors and CSP refusals since the last call
        (a 4xx of a fetch is a network message, not one of these)"""
        return [e["message"] for e in self.drv.get_log("browser")
                if e.get("source") == "javascript" or "Content Security Policy" in e["message"]
                or "Uncaught" in e["message"]]

    def text(self, id_):
        return self.drv.find_element(By.ID, id_).text

    def shown(self, id_):
        return self.drv.find_element(By.ID, id_).is_displayed()


class Browser(Page):
    @classmethod
    def make_daemon(cls):
        return mxtest.Daemon(
            users=(USER,),
            listen_extra={"web": {"protocol": "web"}, "imap": {"protocol": "imap", "tls": "none"}},
            extra_conf=("web {\n\tstatic_dir = %s\n}\n" % mxtest.conf_value(
                os.path.join(mxtest.MX_SRCDIR, "web", "static"))
                + "imap {\n\tplaintext_auth = \"loopback\"\n}\n"))

    def folder(self, name):
        self.click_where("#folders li", lambda li: li.get_attribute("data-folder") == name)
        self.wait(lambda: any(li.get_attribute("data-folder") == name and "current" in (li.get_attribute("class") or "")
                              for li in self.drv.find_elements(By.CSS_SELECTOR, "#folders li")))

    def open_row(self, subject):
        self.click_where("#messages tbody tr", lambda tr: subject in tr.text)
        self.wait(lambda: self.drv.find_element(By.ID, "r-subject").text == subject)

    def test_not_spam_and_hostile_html(self):
        # a spam message straight into Junk (over IMAP APPEND), and an HTML one
        im = imaplib.IMAP4("127.0.0.1", self.d.ports["imap"], timeout=10)
        im.login(USER, PASSWORD)
        im.create("Junk")
        im.append("Junk", None, None, (b"From: Bob <bob@b.test>\r\nTo: demo@example.test\r\n"
                                       b"Subject: wrongly junked\r\nMessage-ID: <wj@b.test>\r\n\r\nreal mail\r\n"))
        html = ("--b1\r\nContent-Type: text/plain\r\n\r\nplain side\r\n"
                "--b1\r\nContent-Type: text/html\r\n\r\n<p id=h>html side</p>"
                "<p id=s>script did not run</p><p id=o>onerror did not run</p>"
                "<script>document.getElementById('s').textContent='pwned';"
                "try{parent.document.title='pwned-parent'}catch(e){}</script>"
                "<img src=x onerror=\"document.getElementById('o').textContent='pwned'\">\r\n--b1--\r\n")
        send_mail(self.d, "hostile html", body=html,
                  extra="MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b1\r\n")

        self.login()
        self.shot("1-logged-in")
        # the hostile message: text shown, HTML framed, nothing ran
        self.folder("INBOX")
        self.open_row("hostile html")
        self.assertIn("plain side", self.drv.find_element(By.ID, "r-text").text)
        frame = self.drv.find_element(By.ID, "r-html")
        self.assertTrue(frame.is_displayed())
        self.assertEqual(frame.get_attribute("sandbox"), "")
        self.drv.switch_to.frame(frame)
        self.wait(lambda: "html side" in self.drv.find_element(By.TAG_NAME, "body").text)
        # the markers the script and the handler would have changed
        self.assertEqual(self.drv.find_element(By.ID, "s").text, "script did not run")
        self.assertEqual(self.drv.find_element(By.ID, "o").text, "onerror did not run")
        self.drv.switch_to.default_content()
        self.assertNotIn("pwned", self.drv.title)
        self.shot("2-hostile-html")
        # Junk -> Not spam
        self.folder("Junk")
        self.open_row("wrongly junked")
        self.shot("3-junk-message")
        self.drv.find_element(By.ID, "act-notspam").click()
        self.wait(lambda: not self.drv.find_element(By.ID, "reader").is_displayed())
        self.shot("4-after-not-spam")
        im.select("INBOX", readonly=True)
        typ, data = im.uid("SEARCH", None, "SUBJECT", '"wrongly junked"')
        self.assertEqual(len(data[0].split()), 1, data)
        uid = data[0].split()[0].decode()
        typ, data = im.uid("FETCH", uid, "(FLAGS)")
        self.assertIn(b"\\Seen", data[0])  # opening it marked it read
        im.select("Junk", readonly=True)
        typ, data = im.uid("SEARCH", None, "ALL")
        self.assertEqual(data[0].split(), [])
        im.logout()

    def test_remote_images_button(self):
        hits = []

        class Pic(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                # a 1x1 GIF
                gif = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04"
                       b"\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
                self.send_response(200)
                self.send_header("Content-Type", "image/gif")
                self.send_header("Content-Length", str(len(gif)))
                self.end_headers()
                self.wfile.write(gif)

            def log_message(self, *a):
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pic)
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        self.addCleanup(srv.server_close)
        self.addCleanup(srv.shutdown)
        url = "http://127.0.0.1:%d/pic.gif" % srv.server_address[1]
        html = ("--b1\r\nContent-Type: text/html\r\n\r\n<p id=h>remote html</p>"
                "<img id=pic src=\"%s\">\r\n--b1--\r\n" % url)
        send_mail(self.d, "remote image", body=html,
                  extra="MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b1\r\n")
        send_mail(self.d, "plain text only")
        self.login()
        self.folder("INBOX")
        # a message without HTML: no button
        self.open_row("plain text only")
        self.assertFalse(self.drv.find_element(By.ID, "r-remote").is_displayed())
        self.open_row("remote image")
        button = self.drv.find_element(By.ID, "r-remote")
        self.wait(lambda: button.is_displayed())
        frame = self.drv.find_element(By.ID, "r-html")
        self.drv.switch_to.frame(frame)
        self.wait(lambda: "remote html" in self.drv.find_element(By.TAG_NAME, "body").text)
        # the frame's load is complete: every image it was allowed was asked for
        self.wait(lambda: self.drv.execute_script("return document.readyState") == "complete")
        self.assertEqual(self.drv.execute_script("return document.getElementById('pic').naturalWidth"), 0)
        self.drv.switch_to.default_content()
        self.assertEqual(hits, [])
        self.shot("5-remote-images-off")
        button.click()
        self.wait(lambda: len(hits) > 0)
        self.assertEqual(set(hits), {"/pic.gif"})
        self.assertFalse(button.is_displayed())

        def loaded():
            # the frame may still be between its two documents
            try:
                self.drv.switch_to.frame(self.drv.find_element(By.ID, "r-html"))
                return self.drv.execute_script(
                    "var p = document.getElementById('pic'); return p ? p.naturalWidth : 0") == 1
            except WebDriverException:
                return False
            finally:
                self.drv.switch_to.default_content()
        self.wait(loaded)
        self.shot("6-remote-images-on")
        # the next message opened starts with them off again
        self.open_row("plain text only")
        self.open_row("remote image")
        self.wait(lambda: self.drv.find_element(By.ID, "r-remote").is_displayed())


# --- the admin view and "Held for you" (doc/web.md, ADMIN_API.md) ---------

ADMIN = "demo@example.test"       # in web { admins }
OTHER = "other@example.test"      # a plain user: its held mail is for the admin test
CAROL = "carol@example.test"      # a plain user who releases/deletes her own
MANY = tuple("u%d@example.test" % i for i in range(11))  # one message to all: "to" holds 10
STOCK = os.path.join(mxtest.MX_SRCDIR, "rules", "mxguard.cf")
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
TX_RE = re.compile(r"\b([0-9A-Z]{16}) smtp tx .* action=(\S+) ")


def smtp_send(d, subject, rcpts, body="hello\r\n", sender="sender@example.org"):
    msg = ("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s@example.org>\r\n\r\n%s\r\n"
           % (sender, rcpts[0], subject, subject, body))
    off = d.log_size()
    with smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.example.org", timeout=30) as s:
        s.ehlo("client.example.org")
        code, text = s.mail(sender)
        assert code == 250, text
        for r in rcpts:
            code, text = s.rcpt(r)
            assert code == 250, text
        code, text = s.data(msg.encode())
        assert code == 250, text
    line = d.wait_log(r"(?m)^.*smtp tx .*msgid=<%s@example\.org>.*$" % re.escape(subject), off, timeout=WAIT)
    assert line is not None, d.log_tail()
    return line.group(0)


def hold(d, subject, rcpts):
    """A GTUBE message the rules stage quarantines; its quarantine id."""
    line = smtp_send(d, subject, rcpts, body=GTUBE)
    m = re.search(r" quarantine=([0-9A-Z]{16})\b", line)
    assert m and "result=quarantined" in line, line
    return m.group(1)


def received(d, user, subject):
    """The messages of user's INBOX (new and cur) with this subject."""
    return [m for m in d.messages(user, subs=("new", "cur"))
            if ("Subject: %s\n" % subject).encode() in m.replace(b"\r\n", b"\n")]


class AdminBrowser(Page):
    """An admin's overview, chart, transactions and quarantine; a plain
    user's "Held for you"; a non-admin kept out. All mail goes in over SMTP
    in setUpClass (three clean — one to 11 recipients —, five
    GTUBE-quarantined by the stock rules),
    so every test knows what was sent."""

    @classmethod
    def make_daemon(cls):
        web = mxtest.conf_value(os.path.join(mxtest.MX_SRCDIR, "web", "static"))
        return mxtest.Daemon(
            users=(ADMIN, OTHER, CAROL) + MANY,
            pipeline={"stages": ["rules"], "quarantine_score": 500.0, "reject_score": 5000.0},
            listen_extra={"web": {"protocol": "web"}},
            extra_conf=('rules {\n\tfiles = {"%s"}\n}\n' % STOCK
                        + "web {\n\tstatic_dir = %s\n\tadmins = {\"%s\"}\n\tuser_release = true\n}\n"
                        % (web, ADMIN.upper())))

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        d = cls.d
        smtp_send(d, "clean-one", [OTHER])
        smtp_send(d, "clean-two", [OTHER])
        cls.many = re.search(r"\b([0-9A-Z]{16}) smtp tx ", smtp_send(d, "clean-many", list(MANY))).group(1)
        cls.q_release = hold(d, "held-release", [OTHER])
        cls.q_release_to = hold(d, "held-release-to", [OTHER])
        cls.q_delete = hold(d, "held-delete", [OTHER])
        cls.c_release = hold(d, "carol-release", [CAROL])
        cls.c_delete = hold(d, "carol-delete", [CAROL])
        # what the log says was done with each transaction: the page's numbers
        # (the API's verdicts are the line's action=, deliver and tag as accept)
        cls.sent = {}
        for _, action in TX_RE.findall(d.log()):
            v = {"deliver": "accept", "tag": "accept"}.get(action, action)
            cls.sent[v] = cls.sent.get(v, 0) + 1

    def setUp(self):
        self.page_errors()  # what an earlier test left

    def tearDown(self):
        # no script error and nothing the page's CSP refused (an inline style or script)
        self.assertEqual(self.page_errors(), [])

    def api_status(self, path, body=None):
        """status of a fetch from the page itself (its cookie, its token)"""
        return self.drv.execute_async_script("""
            const [path, body, done] = arguments;
            const opt = {credentials: "same-origin", headers: {}};
            if (body !== null) { opt.method = "POST"; opt.headers["Content-Type"] = "application/json";
                                 opt.body = JSON.stringify(body); }
            fetch("/api/session").then((r) => r.json()).then((s) => {
                opt.headers["X-CSRF-Token"] = s.csrf;
                return fetch(path, opt);
            }).then((r) => done(r.status), (e) => done(String(e)));""", path, body)

    def api_json(self, path):
        return self.drv.execute_async_script("""
            const [path, done] = arguments;
            fetch(path, {credentials: "same-origin"}).then((r) => r.json()).then(done, (e) => done(String(e)));""", path)

    def confirm(self):
        """the page's own confirmation line: shown, then Confirm"""
        self.wait(lambda: self.shown("q-confirm") or self.shown("held-confirm"))
        box = [b for b in ("q-confirm", "held-confirm") if self.shown(b)]
        self.drv.find_element(By.ID, box[0] + "-yes").click()
        self.wait(lambda: not self.shown(box[0]))

    def rows(self, table):
        return self.drv.find_elements(By.CSS_SELECTOR, "#%s tbody tr" % table)

    def cell_texts(self, table, key, value):
        """the cells of the row of table with data-KEY=value"""
        for tr in self.rows(table):
            if tr.get_attribute("data-" + key) == value:
                return [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        return None

    def open_admin(self):
        self.login(ADMIN)
        self.wait(lambda: self.shown("tab-admin"))
        self.drv.find_element(By.ID, "tab-admin").click()
        self.wait(lambda: self.shown("admin-view"))
        self.wait(lambda: self.drv.find_elements(By.CSS_SELECTOR, "#adm-chart svg"))

    def quarantine_row(self, qid):
        self.wait(lambda: self.cell_texts("q", "id", qid) is not None)
        self.click_where("#q tbody tr", lambda tr: tr.get_attribute("data-id") == qid)
        self.wait(lambda: self.shown("q-detail") and self.text("qd-id") == qid)

    def test_admin_overview_and_chart(self):
        self.open_admin()
        total = sum(self.sent.values())
        self.assertEqual(total, 8, self.sent)
        # the verdict table: every verdict of the last hour and day, and the total
        self.wait(lambda: self.cell_texts("adm-verdicts", "verdict", "total") == ["total", str(total), str(total)])
        for v in ("accept", "junk", "quarantine", "reject", "tempfail", "discard"):
            n = str(self.sent.get(v, 0))
            self.assertEqual(self.cell_texts("adm-verdicts", "verdict", v), [v, n, n])
        overview = self.api_json("/api/admin/overview")
        self.assertEqual(self.cell_texts("adm-counters", "counter", "quarantined")[1], "5")
        self.assertEqual({c: self.cell_texts("adm-counters", "counter", c)[1] for c in overview["counters"]},
                         {c: str(n) for c, n in overview["counters"].items()})
        # top rules as the API has them, GTUBE among them with one hit per held message
        rules = {tr.get_attribute("data-rule"): tr.find_elements(By.TAG_NAME, "td")[1].text
                 for tr in self.rows("adm-rules")}
        self.assertEqual(rules, {r["rule"]: str(r["hits"]) for r in overview["top_rules"]})
        self.assertEqual([h for r, h in rules.items() if r.endswith("GTUBE")], ["5"], rules)
        self.assertEqual({tr.get_attribute("data-stage") for tr in self.rows("adm-health")},
                         {h["name"] for h in overview["health"]} or {None})
        self.shot("admin-1-overview")
        # the chart: one rect per (bucket, verdict) with mail, exactly the
        # API's series; together they count what was sent
        svg = self.drv.find_element(By.CSS_SELECTOR, "#adm-chart svg")
        series = overview["series"]
        self.assertEqual(svg.get_attribute("data-buckets"), "288")
        want = {}
        for v, counts in series["verdicts"].items():
            for i, c in enumerate(counts):
                if c:
                    want[(series["start"] + i * series["step"], v)] = c
        got = {}
        for r in svg.find_elements(By.CSS_SELECTOR, "rect.bar"):
            got[(int(r.get_attribute("data-time")), r.get_attribute("data-verdict"))] = int(r.get_attribute("data-count"))
            self.assertGreater(float(r.get_attribute("height")), 0)
        self.assertEqual(got, want)
        by_verdict = {}
        for (_, v), c in got.items():
            by_verdict[v] = by_verdict.get(v, 0) + c
        self.assertEqual(by_verdict, self.sent)
        # a legend entry per verdict with its sum, axis labels on both axes
        legend = {g.get_attribute("data-verdict"): g.get_attribute("data-sum")
                  for g in svg.find_elements(By.CSS_SELECTOR, "g.legend-item")}
        self.assertEqual(legend, {v: str(self.sent.get(v, 0)) for v in
                                  ("accept", "junk", "quarantine", "reject", "tempfail", "discard")})
        self.assertGreaterEqual(len(svg.find_elements(By.CSS_SELECTOR, "text.xlabel")), 2)
        self.assertGreaterEqual(len(svg.find_elements(By.CSS_SELECTOR, "text.ylabel")), 2)
        # the tallest column fits under the y axis' top
        self.assertGreaterEqual(int(svg.get_attribute("data-top")), max(
            sum(series["verdicts"][v][i] for v in series["verdicts"]) for i in range(288)))
        self.shot("admin-2-chart")
        # recent transactions, filtered by text and by verdict
        self.wait(lambda: len(self.rows("tx")) == total)
        q = self.drv.find_element(By.ID, "tx-q")
        q.send_keys(self.q_release)
        self.drv.find_element(By.CSS_SELECTOR, "#tx-form button").click()
        self.wait(lambda: [tr.get_attribute("data-id") for tr in self.rows("tx")] == [self.q_release])
        cells = self.cell_texts("tx", "id", self.q_release)
        self.assertEqual(cells[3], "sender@example.org")
        self.assertEqual(cells[4], OTHER)
        # a transaction with more recipients than the API lists says how many
        q.clear()
        q.send_keys(self.many)
        self.drv.find_element(By.CSS_SELECTOR, "#tx-form button").click()
        self.wait(lambda: [tr.get_attribute("data-id") for tr in self.rows("tx")] == [self.many])
        self.assertEqual(self.cell_texts("tx", "id", self.many)[4],
                         ", ".join(MANY[:10]) + " \u2026 (11 in all)")
        q.clear()
        Select(self.drv.find_element(By.ID, "tx-verdict")).select_by_value("accept")
        self.drv.find_element(By.CSS_SELECTOR, "#tx-form button").click()
        self.wait(lambda: len(self.rows("tx")) == self.sent.get("accept", 0)
                  and all(tr.get_attribute("data-class") == "accept" for tr in self.rows("tx")))
        self.shot("admin-3-transactions")

    def test_admin_quarantine_release_and_delete(self):
        d = self.d
        self.open_admin()
        mine = sorted([self.q_release, self.q_release_to, self.q_delete])
        ids = lambda: sorted(tr.get_attribute("data-id") for tr in self.rows("q"))  # noqa: E731

        def search(**fields):
            for k, v in fields.items():
                box = self.drv.find_element(By.ID, "q-" + k)
                if k == "since":  # a datetime-local box, set in the page's own local time
                    self.drv.execute_script(
                        "const d = new Date(Date.now() + arguments[1] * 1000);"
                        "d.setMinutes(d.getMinutes() - d.getTimezoneOffset());"
                        "arguments[0].value = arguments[1] === null ? '' : d.toISOString().slice(0, 16);",
                        box, v)
                else:
                    box.clear()
                    box.send_keys(v)
            self.drv.find_element(By.CSS_SELECTOR, "#q-form button").click()

        # every search below changes what is listed, so each wait sees the new answer
        self.wait(lambda: set(mine) < set(ids()))      # all held: carol's too
        search(rcpt=OTHER)
        self.wait(lambda: ids() == mine)
        search(sender="nobody@example.org")
        self.wait(lambda: ids() == [])
        search(sender="SENDER@example.org", reason="score>=500")  # any case
        self.wait(lambda: ids() == mine)
        search(reason="no such reason")
        self.wait(lambda: ids() == [])
        search(reason="", since=3600)                 # an hour from now: none yet
        self.wait(lambda: ids() == [])
        search(since=-3600)
        self.wait(lambda: ids() == mine)

        # 1. release to the original recipient
        self.quarantine_row(self.q_release)
        self.assertIn("Subject: held-release", self.text("qd-headers"))
        self.assertEqual(self.text("qd-rcpts"), OTHER)
        self.assertEqual(self.text("qd-status"), "held")
        self.shot("admin-4-quarantined")
        self.assertEqual(received(d, "other", "held-release"), [])   # held: nobody has it
        off = d.log_size()
        self.drv.find_element(By.ID, "q-release").click()
        self.assertIn(OTHER, self.text("q-confirm-text"))
        self.assertEqual(received(d, "other", "held-release"), [])   # not before the confirmation
        self.confirm()
        self.wait(lambda: self.text("q-result").startswith("Released " + self.q_release))
        m = d.wait_log(r"quarantine: %s released by web:%s to <?%s>? as ([0-9A-Z]{16})"
                       % (self.q_release, re.escape(ADMIN), re.escape(OTHER)), off, timeout=WAIT)
        self.assertIsNotNone(m, d.log_tail())
        self.assertIn(" as %s." % m.group(1), self.text("q-result"))
        self.wait(lambda: len(received(d, "other", "held-release")) == 1)
        self.assertIn(b"X-MXGuard-Released: " + self.q_release.encode(), received(d, "other", "held-release")[0])
        self.wait(lambda: self.text("qd-status") == "released")
        self.assertIn("released by web:" + ADMIN, self.text("qd-events"))
        self.shot("admin-5-released")

        # 2. a release that fails (no such user) is shown as failed, and
        # changes nothing; then to an address typed in: carol gets it, other does not
        self.quarantine_row(self.q_release_to)
        self.drv.find_element(By.ID, "q-to").send_keys("nobody@example.test")
        self.drv.find_element(By.ID, "q-release-to").click()
        self.confirm()
        self.wait(lambda: self.text("q-result").startswith("Release of %s failed: " % self.q_release_to))
        self.assertIn("error", self.drv.find_element(By.ID, "q-result").get_attribute("class"))
        self.assertEqual(self.text("qd-status"), "held")
        self.shot("admin-5b-release-failed")
        off = d.log_size()
        self.drv.find_element(By.ID, "q-to").clear()
        self.drv.find_element(By.ID, "q-to").send_keys(CAROL)
        self.drv.find_element(By.ID, "q-release-to").click()
        self.assertIn(CAROL, self.text("q-confirm-text"))
        self.confirm()
        self.wait(lambda: self.text("q-result").startswith("Released " + self.q_release_to))
        self.assertIsNotNone(d.wait_log(r"quarantine: %s released by web:%s to <?%s>? as "
                                        % (self.q_release_to, re.escape(ADMIN), re.escape(CAROL)), off, timeout=WAIT),
                             d.log_tail())
        self.wait(lambda: len(received(d, "carol", "held-release-to")) == 1)
        self.assertEqual(received(d, "other", "held-release-to"), [])

        # 3. delete: Cancel first changes nothing, Confirm deletes
        self.quarantine_row(self.q_delete)
        self.drv.find_element(By.ID, "q-delete").click()
        self.wait(lambda: self.shown("q-confirm"))
        self.drv.find_element(By.ID, "q-confirm-no").click()
        self.wait(lambda: not self.shown("q-confirm"))
        self.assertEqual(self.api_json("/api/admin/quarantine/message?id=" + self.q_delete)["status"], "held")
        off = d.log_size()
        self.drv.find_element(By.ID, "q-delete").click()
        self.confirm()
        self.wait(lambda: self.text("q-result") == "Deleted %s." % self.q_delete)
        self.assertIsNotNone(d.wait_log(r"quarantine: %s deleted by web:%s" % (self.q_delete, re.escape(ADMIN)), off, timeout=WAIT),
                             d.log_tail())
        # only held ones listed by default; with "also released/deleted" all three, with their status
        self.wait(lambda: self.q_delete not in [tr.get_attribute("data-id") for tr in self.rows("q")])
        self.drv.find_element(By.ID, "q-all").click()
        self.drv.find_element(By.CSS_SELECTOR, "#q-form button").click()
        self.wait(lambda: {tr.get_attribute("data-id"): tr.get_attribute("data-status") for tr in self.rows("q")}
                  == {self.q_release: "released", self.q_release_to: "released", self.q_delete: "deleted"})
        self.assertEqual(received(d, "other", "held-delete"), [])
        self.shot("admin-6-after-delete")

    def test_non_admin_sees_no_admin_view(self):
        # after an admin logs out in this browser, the next user gets the
        # form (no page load in between) and nothing of the admin's views
        self.open_admin()
        self.wait(lambda: self.drv.find_elements(By.CSS_SELECTOR, "#adm-chart rect.bar") and self.rows("q") and self.rows("tx"))
        self.drv.find_element(By.ID, "logout").click()
        self.wait(lambda: self.shown("login") and not self.shown("app"))
        self.drv.find_element(By.ID, "user").clear()
        self.drv.find_element(By.ID, "user").send_keys(OTHER)
        self.drv.find_element(By.ID, "password").send_keys(PASSWORD)
        self.drv.find_element(By.CSS_SELECTOR, "#login-form button").click()
        self.wait(lambda: self.shown("app") and self.text("whoami") == OTHER)
        self.assertEqual(self.drv.find_elements(By.CSS_SELECTOR, "#adm-chart *, #q tbody tr, #tx tbody tr, #adm-rules tbody tr"), [])
        # and a fresh page load the same
        self.login(OTHER)
        self.wait(lambda: self.text("whoami") == OTHER)
        self.assertFalse(self.shown("tab-admin"))
        self.assertFalse(self.shown("admin-view"))
        self.shot("user-1-no-admin")
        for path in ("/api/admin/overview", "/api/admin/transactions", "/api/admin/quarantine",
                     "/api/admin/quarantine/message?id=" + self.q_delete):
            self.assertEqual(self.api_status(path), 403, path)
        for path in ("/api/admin/quarantine/release", "/api/admin/quarantine/delete"):
            self.assertEqual(self.api_status(path, {"id": self.c_release}), 403, path)
        # and carol's held mail is not among other's
        ids = [m["id"] for m in self.api_json("/api/held")["messages"]]
        self.assertNotIn(self.c_release, ids)
        self.assertNotIn(self.c_delete, ids)

    def test_user_held_for_you(self):
        d = self.d
        self.login(CAROL)
        self.wait(lambda: self.text("held-count") == "(2)")
        self.drv.find_element(By.ID, "tab-held").click()
        self.wait(lambda: self.shown("held-view") and len(self.rows("held")) == 2)
        self.assertEqual(sorted(tr.get_attribute("data-id") for tr in self.rows("held")),
                         sorted([self.c_release, self.c_delete]))
        cells = self.cell_texts("held", "id", self.c_release)
        self.assertEqual(cells[1:4], ["sender@example.org", "carol-release", "score>=500.0"])
        self.shot("held-1-list")
        # release: into carol's INBOX, logged with her name
        self.assertEqual(received(d, "carol", "carol-release"), [])
        off = d.log_size()
        row = [tr for tr in self.rows("held") if tr.get_attribute("data-id") == self.c_release][0]
        row.find_element(By.CSS_SELECTOR, "button.held-release").click()
        self.assertEqual(received(d, "carol", "carol-release"), [])
        self.confirm()
        self.wait(lambda: self.text("held-result").startswith("Released " + self.c_release))
        self.assertIsNotNone(d.wait_log(r"quarantine: %s released by web:%s to <?%s>? as "
                                        % (self.c_release, re.escape(CAROL), re.escape(CAROL)), off, timeout=WAIT),
                             d.log_tail())
        self.wait(lambda: len(received(d, "carol", "carol-release")) == 1)
        self.wait(lambda: [tr.get_attribute("data-id") for tr in self.rows("held")] == [self.c_delete])
        self.shot("held-2-released")
        # delete: gone from the list, never delivered
        row = self.rows("held")[0]
        row.find_element(By.CSS_SELECTOR, "button.held-delete").click()
        self.confirm()
        self.wait(lambda: self.text("held-result") == "Deleted %s." % self.c_delete)
        self.wait(lambda: self.rows("held") == [] and self.shown("held-empty"))
        self.assertEqual(self.text("held-count"), "")
        self.assertEqual(received(d, "carol", "carol-delete"), [])
        self.shot("held-3-deleted")

    def test_user_without_release_rights(self):
        """user_release = false (a reload): the list shows no buttons and the
        calls are refused"""
        d = self.d
        qid = hold(d, "carol-no-rights", [CAROL])
        conf = d.render_config()
        try:
            off = d.log_size()
            d.write_config(conf.replace("user_release = true", "user_release = false"))
            d.signal(signal.SIGHUP)
            self.assertIsNotNone(d.wait_log(r"reloaded configuration from ", off, timeout=WAIT), d.log_tail())
            self.login(CAROL)
            self.drv.find_element(By.ID, "tab-held").click()
            self.wait(lambda: self.cell_texts("held", "id", qid) is not None)
            self.assertEqual(self.drv.find_elements(By.CSS_SELECTOR, "#held button"), [])
            self.assertIn("postmaster", self.text("held-policy"))
            self.shot("held-4-no-release")
            self.assertEqual(self.api_status("/api/held/release", {"id": qid}), 403)
            self.assertEqual(self.api_status("/api/held/delete", {"id": qid}), 403)
            self.assertEqual(received(d, "carol", "carol-no-rights"), [])
        finally:
            off = d.log_size()
            d.write_config(conf)
            d.signal(signal.SIGHUP)
            self.assertIsNotNone(d.wait_log(r"reloaded configuration from ", off, timeout=WAIT), d.log_tail())


if __name__ == "__main__":
    mxtest.main(budget=240)

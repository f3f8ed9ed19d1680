"""test_web_browser — the web page in a real headless Chromium (Debian's
chromium + chromium-driver, driven by python3-selenium).

It logs in through the page's form, opens Junk, opens a message and
presses "Not spam", then checks over IMAP (imaplib) that the message is in
INBOX and seen. A message whose HTML part carries a <script> and an
onerror= handler is opened: neither runs (each would set a marker the test
reads, in the page and in the frame), and the text part is shown. A
message whose HTML names an image on a tiny local HTTP server (which counts
its requests) is opened: the image is not fetched until "Show remote
images" is pressed, and is then. A screenshot of each step is saved in $MX_SCREENSHOTS (default
./web-screenshots, printed).

Waits are WebDriverWait with deadlines, never sleeps.
"""

import http.server
import imaplib
import os
import threading
import shutil
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
    from selenium.webdriver.support.ui import WebDriverWait
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


class Browser(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # scripts/install-deps installs all three: missing is a failure
        if not (HAVE_SELENIUM and os.path.exists(CHROMEDRIVER) and os.path.exists(CHROMIUM)):
            raise AssertionError("needs chromium, chromium-driver and python3-selenium "
                                 "(scripts/install-deps)")
        cls.d = mxtest.Daemon(
            users=(USER,),
            listen_extra={"web": {"protocol": "web"}, "imap": {"protocol": "imap", "tls": "none"}},
            extra_conf=("web {\n\tstatic_dir = %s\n}\n" % mxtest.conf_value(
                os.path.join(mxtest.MX_SRCDIR, "web", "static"))
                + "imap {\n\tplaintext_auth = \"loopback\"\n}\n"))
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--window-size=1200,900", "--user-data-dir=" + os.path.join(cls.d.dir, "chrome")):
            opts.add_argument(a)
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

    def login(self):
        self.drv.get(self.base)
        # the login form, or the user's name when the cookie of an earlier
        # test still holds a session
        self.wait(lambda: self.drv.find_element(By.ID, "whoami").text == USER or
                  self.drv.find_element(By.ID, "login").is_displayed())
        if self.drv.find_element(By.ID, "whoami").text == USER:
            return
        self.drv.find_element(By.ID, "user").send_keys(USER)
        self.drv.find_element(By.ID, "password").send_keys(PASSWORD)
        self.drv.find_element(By.CSS_SELECTOR, "#login-form button").click()
        self.wait(lambda: self.drv.find_element(By.ID, "app").is_displayed())

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


if __name__ == "__main__":
    mxtest.main(budget=180)

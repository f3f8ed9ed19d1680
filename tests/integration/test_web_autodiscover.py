"""test_web_autodiscover — Outlook's POX autodiscover on the web listener.

A real mxguard with smtp, pop3, pop3s, imap and imaps listeners (STARTTLS
offered: it has a certificate) and a web listener. http.client and curl
POST the request Outlook sends; the answer's Protocol blocks must carry
the config's ports, the SSL/Encryption of each listener and the address
as LoginName, implicit-TLS listeners first. Malformed or hostile XML (a
DOCTYPE with entities, mismatched tags, no address, another schema, an
address with markup) is a 400 and the daemon keeps serving.
"""

import http.client
import os
import subprocess
import unittest
import xml.etree.ElementTree as ET

import mxtest

USER = "demo@example.test"
REQ = ('<?xml version="1.0" encoding="utf-8"?>\r\n'
       '<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/'
       'requestschema/2006">\r\n  <Request>\r\n    <EMailAddress>%s</EMailAddress>\r\n'
       '    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/'
       'outlook/responseschema/2006a</AcceptableResponseSchema>\r\n  </Request>\r\n'
       '</Autodiscover>\r\n')
NS = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"


class Autodiscover(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = mxtest.Daemon(
            tls=True, users=(USER,),
            listen_extra={"web": {"protocol": "web"},
                          "pop3": {"protocol": "pop3", "tls": "none"},
                          "pop3s": {"protocol": "pop3", "tls": "implicit"},
                          "imap": {"protocol": "imap", "tls": "none"},
                          "imaps": {"protocol": "imap", "tls": "implicit"}},
            extra_conf="web {\n\tstatic_dir = %s\n}\n" % mxtest.conf_value(
                os.path.join(mxtest.MX_SRCDIR, "web", "static")))

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def post(self, body, path="/autodiscover/autodiscover.xml", method="POST"):
        c = http.client.HTTPConnection("127.0.0.1", self.d.ports["web"], timeout=10)
        try:
            c.request(method, path, body=body if isinstance(body, bytes) else body.encode(),
                      headers={"Content-Type": "text/xml"})
            r = c.getresponse()
            r.body = r.read()
            return r
        finally:
            c.close()

    def protocols(self, body):
        root = ET.fromstring(body)
        acct = root.find(NS + "Response/" + NS + "Account")
        self.assertEqual(acct.find(NS + "AccountType").text, "email")
        self.assertEqual(acct.find(NS + "Action").text, "settings")
        return [{e.tag[len(NS):]: e.text for e in p} for p in acct.findall(NS + "Protocol")]

    def test_answer_from_listeners(self):
        p = self.d.ports
        for path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"):
            r = self.post(REQ % USER, path=path)
            self.assertEqual(r.status, 200, r.body)
            self.assertTrue(r.getheader("Content-Type").startswith("application/xml"))
            self.assertEqual(r.getheader("X-Content-Type-Options"), "nosniff")
            got = [(x["Type"], x["Port"], x["SSL"], x["Encryption"]) for x in self.protocols(r.body)]
            self.assertEqual(got, [
                ("IMAP", str(p["imaps"]), "on", "SSL"), ("IMAP", str(p["imap"]), "on", "TLS"),
                ("POP3", str(p["pop3s"]), "on", "SSL"), ("POP3", str(p["pop3"]), "on", "TLS"),
                ("SMTP", str(self.d.port), "on", "TLS")])
            for x in self.protocols(r.body):
                self.assertEqual(x["Server"], mxtest.HOSTNAME)
                self.assertEqual(x["LoginName"], USER)
                self.assertEqual(x["AuthRequired"], "on")

    def test_curl_and_prefixes(self):
        # a namespace prefix, no schema element, a BOM, a comment
        body = ('\ufeff<?xml version="1.0"?><!-- outlook --><a:Autodiscover '
                'xmlns:a="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">'
                "<a:Request><a:EMailAddress> o'brien+x@example.test </a:EMailAddress></a:Request>"
                "</a:Autodiscover>")
        r = subprocess.run(
            ["curl", "-sS", "-H", "Content-Type: text/xml", "--data-binary", "@-",
             "http://127.0.0.1:%d/autodiscover/autodiscover.xml" % self.d.ports["web"]],
            input=body.encode(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        protos = self.protocols(r.stdout)
        self.assertEqual({x["LoginName"] for x in protos}, {"o'brien+x@example.test"})
        self.assertIn(b"o&apos;brien", r.stdout)

    def test_bad_requests(self):
        bad = [
            "",
            "not xml at all",
            REQ % USER + "<second/>",
            "<Autodiscover><Request><EMailAddress>%s</EMailAddress></Request>" % USER,
            "<Autodiscover><Request><EMailAddress>%s</Request></EMailAddress></Autodiscover>" % USER,
            "<Other><Request><EMailAddress>%s</EMailAddress></Request></Other>" % USER,
            "<Autodiscover><Request></Request></Autodiscover>",
            "<Autodiscover><Request><EMailAddress>no-at-sign</EMailAddress></Request></Autodiscover>",
            "<Autodiscover><Request><EMailAddress>a@<b>x</b></EMailAddress></Request></Autodiscover>",
            "<Autodiscover><Request><EMailAddress>a&amp;b@example.test</EMailAddress>"
            "</Request></Autodiscover>",
            '<!DOCTYPE a [<!ENTITY e "x@example.test">]><Autodiscover><Request>'
            "<EMailAddress>&e;</EMailAddress></Request></Autodiscover>",
            "<Autodiscover><Request><EMailAddress><![CDATA[a@b.test]]></EMailAddress>"
            "</Request></Autodiscover>",
            "<Autodiscover a=b><Request><EMailAddress>a@b.test</EMailAddress></Request></Autodiscover>",
            (REQ % USER).replace("outlook/responseschema/2006a", "mobilesync/responseschema/2006"),
            "<Autodiscover>" + "<x>" * 40 + "</x>" * 40 + "</Autodiscover>",
            "<Autodiscover><Request><EMailAddress>%s@example.test</EMailAddress></Request>"
            "</Autodiscover>" % ("a" * 300),
        ]
        for b in bad:
            r = self.post(b)
            self.assertEqual(r.status, 400, (b, r.body))
            self.assertIn(b"bad autodiscover request", r.body)
            self.assertEqual(r.getheader("X-Content-Type-Options"), "nosniff")
        # GET is not how it is asked
        r = self.post(b"", method="GET")
        self.assertEqual(r.status, 405)
        self.assertEqual(r.getheader("Allow"), "POST")
        # larger than body_max: evhttp's own 413
        r = self.post(("<Autodiscover>" + " " * 20000 + "</Autodiscover>"))
        self.assertEqual(r.status, 413)
        self.assertTrue(self.d.running())
        r = self.post(REQ % USER)
        self.assertEqual(r.status, 200)


if __name__ == "__main__":
    mxtest.main(budget=90)

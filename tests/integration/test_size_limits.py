#!/usr/bin/env python3
"""Size limits per recipient domain or address (the format stage's
size_limits), over SMTP with smtplib: a recipient whose limit is below MAIL's
SIZE= is refused at RCPT with 552 5.3.4, a message larger than a recipient's
limit is refused at the end of DATA, an address's own entry wins over its
domain's, and a recipient without an entry has only limits.message_size_max.
"""

import smtplib
import subprocess
import unittest

import mxtest
from mxtest import Daemon

SECTION = ('format {\n\tsize_limits = {"example.test=2048", "big@example.test=100000"}\n}\n')


def message(n):
    return (b"From: <s@example.org>\r\nTo: <demo@example.test>\r\nSubject: size\r\n\r\n" +
            b"x" * n + b"\r\n")


class SizeLimits(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon(pipeline={"stages": ["format"]}, extra_conf=SECTION,
                       users=("demo@example.test", "big@example.test"),
                       domains=("example.test", "other.test"))

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def session(self):
        s = smtplib.SMTP("127.0.0.1", self.d.port, timeout=30)
        s.ehlo("client.example.org")
        return s

    def test_rcpt_refused_by_declared_size(self):
        s = self.session()
        try:
            self.assertEqual(s.mail("s@example.org", ["SIZE=5000"])[0], 250)
            code, text = s.rcpt("demo@example.test")
            self.assertEqual(code, 552, text)
            self.assertIn(b"5.3.4 Message size exceeds the limit of demo@example.test "
                          b"(2048 octets)", text)
            # the address's own entry is larger than its domain's
            self.assertEqual(s.rcpt("big@example.test")[0], 250)
            code, text = s.data(message(4000))
            self.assertEqual(code, 250, text)
        finally:
            s.quit()
        self.assertRegex(self.d.log(), r'smtp reject .*reply="552 5\.3\.4 Message size exceeds')

    def test_data_refused_by_actual_size(self):
        s = self.session()
        try:
            self.assertEqual(s.mail("s@example.org")[0], 250)
            self.assertEqual(s.rcpt("demo@example.test")[0], 250)
            code, text = s.data(message(4000))
            self.assertEqual(code, 552, text)
            self.assertIn(b"5.3.4", text)
            # the same size, declared honestly, to one without a limit
            self.assertEqual(s.mail("s@example.org")[0], 250)
            self.assertEqual(s.rcpt("postmaster@other.test")[0], 250)
            self.assertEqual(s.data(message(4000))[0], 250)
        finally:
            s.quit()

    def test_one_recipient_over_refuses_the_message(self):
        s = self.session()
        try:
            self.assertEqual(s.mail("s@example.org")[0], 250)
            self.assertEqual(s.rcpt("big@example.test")[0], 250)
            self.assertEqual(s.rcpt("demo@example.test")[0], 250)
            code, text = s.data(message(4000))
            self.assertEqual(code, 552, text)
            self.assertIn(b"limit of demo@example.test", text)
        finally:
            s.quit()

    def test_small_message_passes(self):
        s = self.session()
        try:
            self.assertEqual(s.mail("s@example.org", ["SIZE=500"])[0], 250)
            self.assertEqual(s.rcpt("demo@example.test")[0], 250)
            self.assertEqual(s.data(message(300))[0], 250)
        finally:
            s.quit()

    def test_bad_entry_refused_by_check(self):
        d = Daemon(start=False, pipeline={"stages": ["format"]},
                   extra_conf='format {\n\tsize_limits = {"example.test=lots"}\n}\n')
        try:
            r = subprocess.run([mxtest.MXGUARD, "-t", "-c", d.conf], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
            self.assertEqual(r.returncode, 1, r.stdout)
            self.assertIn('size_limits: "example.test=lots" is not DOMAIN=OCTETS', r.stdout)
        finally:
            d.cleanup()


if __name__ == "__main__":
    mxtest.main(budget=120)

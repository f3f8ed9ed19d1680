#!/usr/bin/env python3
"""The auth stage (SPF, DKIM, DMARC, Authentication-Results) and the format
stage in the real daemon, against a real DNS server and reference verifiers.

unbound (tests/integration/dnszones.py) serves test zones on a free loopback
port: SPF records (pass, fail, softfail, neutral, none, include, an include
loop, too many lookups, a syntax error, mx), DKIM keys (RSA 2048 and
ed25519, made at test time), DMARC records (reject, quarantine, none, a
subdomain policy, strict alignment), and a zone that never answers.

Messages are signed at test time with python3-dkim (Debian's dkimpy; ed25519
through python3-nacl) and some are changed in transit (body, header, a body
appended after an l= signature, a From added to an over-signed message).
For every message mxguard's results, read back from the Authentication-
Results header of the delivered copy, must agree with the reference
verifiers: python3-spf's check2 for SPF, dkimpy's verify for each DKIM
signature, and for DMARC a small evaluation in this file (RFC 7489 over the
reference SPF and DKIM results and the same records; there is no DMARC
verifier packaged for Python in Debian).

Then: a forged Authentication-Results with our authserv-id is gone from
the delivered copy (another server's is kept), DMARC p=reject refuses at
the end of DATA with the configured text, and the format stage's checks,
one message each, are scored (the log line's hits) or refused as
configured.
"""

import base64
import os
import re
import subprocess
import sys
import tempfile
import unittest

import mxtest
from mxtest import Daemon
import dnszones

try:
    import dkim
    import spf
    import dns.resolver
except ImportError:  # a Python of its own (pyenv): Debian's modules
    sys.path.append("/usr/lib/python3/dist-packages")
    import dkim
    import spf
    import dns.resolver

RCPT = "demo@example.test"
# libspf2 passes every loopback client (its "localhost" rule): the test
# names a documentation address with XCLIENT, as a trusted MTA in front would
CLIENT = "192.0.2.1"
AUTHSERV = mxtest.HOSTNAME


def make_keys(tmp):
    """An RSA 2048 key (PEM, and the DNS p= value) and an ed25519 one."""
    pem = os.path.join(tmp, "rsa.pem")
    subprocess.run(["openssl", "genrsa", "-out", pem, "2048"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    der = subprocess.run(["openssl", "rsa", "-in", pem, "-pubout", "-outform", "DER"],
                         check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         timeout=60).stdout
    with open(pem, "rb") as f:
        rsa_priv = f.read()
    import nacl.signing
    sk = nacl.signing.SigningKey.generate()
    ed_priv = base64.b64encode(bytes(sk))
    ed_pub = base64.b64encode(bytes(sk.verify_key)).decode()
    return rsa_priv, base64.b64encode(der).decode(), ed_priv, ed_pub


def txt(name, text):
    parts = [text[i:i + 250] for i in range(0, len(text), 250)]
    return "%s. 300 IN TXT %s" % (name, " ".join('"%s"' % p for p in parts))


def zones(rsa_pub, ed_pub):
    rsa_key = "v=DKIM1; k=rsa; p=" + rsa_pub
    ed_key = "v=DKIM1; k=ed25519; p=" + ed_pub
    z = {
        "good.test": [txt("good.test", "v=spf1 ip4:192.0.2.1 -all"),
                      txt("rsa._domainkey.good.test", rsa_key),
                      txt("ed._domainkey.good.test", ed_key),
                      txt("_dmarc.good.test", "v=DMARC1; p=reject"),
                      "sub.good.test. 300 IN A 192.0.2.10"],
        "reject.test": [txt("reject.test", "v=spf1 -all"),
                        txt("_dmarc.reject.test", "v=DMARC1; p=reject")],
        "quar.test": [txt("quar.test", "v=spf1 -all"),
                      txt("_dmarc.quar.test", "v=DMARC1; p=quarantine")],
        "none.test": [txt("_dmarc.none.test", "v=DMARC1; p=none"),
                      "none.test. 300 IN A 192.0.2.11"],
        "org.test": [txt("_dmarc.org.test", "v=DMARC1; p=none; sp=reject"),
                     "sub.org.test. 300 IN A 192.0.2.12"],
        "strict.test": [txt("_dmarc.strict.test", "v=DMARC1; p=reject; adkim=s; aspf=s"),
                        txt("mail.strict.test", "v=spf1 ip4:192.0.2.1 -all"),
                        txt("rsa._domainkey.mail.strict.test", rsa_key)],
        "softfail.test": [txt("softfail.test", "v=spf1 ~all")],
        "neutral.test": [txt("neutral.test", "v=spf1 ?all")],
        "nospf.test": ["nospf.test. 300 IN A 192.0.2.13"],
        "include.test": [txt("include.test", "v=spf1 include:good.test -all")],
        "loop.test": [txt("loop.test", "v=spf1 include:loop2.test -all"),
                      txt("loop2.test", "v=spf1 include:loop.test -all")],
        "loop2.test": [txt("loop2.test", "v=spf1 include:loop.test -all")],
        "many.test": [txt("many.test", "v=spf1 " + " ".join(
            "a:a%d.many.test" % i for i in range(1, 12)) + " -all")] + [
            "a%d.many.test. 300 IN A 192.0.2.%d" % (i, 100 + i) for i in range(1, 12)],
        "bad.test": [txt("bad.test", "v=spf1 frobnicate:x -all")],
        "mx.test": [txt("mx.test", "v=spf1 mx -all"), "mx.test. 300 IN MX 10 mail.mx.test.",
                    "mail.mx.test. 300 IN A 192.0.2.1"],
    }
    # loop2.test is its own zone above; the record under loop.test is not
    # reachable (a static zone answers only for its own names) — drop it
    z["loop.test"] = [txt("loop.test", "v=spf1 include:loop2.test -all")]
    return {k: ("static", v) for k, v in z.items()}


def message(from_hdr, subject, body="Hello.\r\n", extra=""):
    hdr = ""
    if from_hdr is not None:
        hdr += "From: %s\r\n" % from_hdr
    return ("%sTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s@example.org>\r\n"
            "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n%s\r\n%s" % (
                hdr, RCPT, subject, re.sub(r"\W", "-", subject), extra, body)).encode()


def sign(msg, domain, selector, key, alg=b"rsa-sha256", length=False, headers=None):
    sig = dkim.sign(msg, selector.encode(), domain.encode(), key, signature_algorithm=alg,
                    length=length, include_headers=headers)
    return sig + msg


# --------------------------------------------------------------- reference

class Reference:
    """The reference verifiers, asking the same unbound."""

    def __init__(self, port):
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = ["127.0.0.1"]
        r.port = port
        r.timeout = 2
        r.lifetime = 2
        dns.resolver.default_resolver = r
        self.res = r

    def txt(self, name, timeout=2):
        if isinstance(name, bytes):
            name = name.decode()
        try:
            a = self.res.resolve(name, "TXT", lifetime=timeout)
        except Exception:
            return None
        return [b"".join(rr.strings) for rr in a]

    def dkim_txt(self, name, timeout=5):
        t = self.txt(name, timeout)
        return t[0] if t else None

    def spf(self, sender, helo):
        r = spf.check2(i=CLIENT, s=sender, h=helo, timeout=2, querytime=2)
        return r[0]

    def dkim(self, msg):
        """[(d, s, valid)] per DKIM-Signature, in header order."""
        out = []
        d = dkim.DKIM(msg)
        sigs = [v for (k, v) in dkim.rfc822_parse(msg)[0] if k.lower() == b"dkim-signature"]
        for i, v in enumerate(sigs):
            tags = dict((t.strip().split(b"=", 1) + [b""])[:2]
                        for t in v.replace(b"\r\n", b"").split(b";") if b"=" in t)
            try:
                ok = dkim.DKIM(msg).verify(idx=i, dnsfunc=self.dkim_txt)
            except Exception:
                ok = False
            out.append((tags.get(b"d", b"").strip().decode().lower(),
                        tags.get(b"s", b"").strip().decode(), bool(ok)))
        del d
        return out

    @staticmethod
    def org(domain):
        # every test zone sits right under .test, a public suffix by the
        # list's default rule: the organisational domain is the last two labels
        return ".".join(domain.split(".")[-2:])

    def dmarc(self, from_domains, n_from, spf_result, spf_domain, dkim_results):
        if n_from == 0 or not from_domains:
            return "none"
        if n_from > 1 or len(set(from_domains)) > 1:
            return "permerror"
        dom = from_domains[0]
        recs = [r for r in (self.txt("_dmarc." + dom) or []) if r.startswith(b"v=DMARC1")]
        if not recs and self.org(dom) != dom:
            recs = [r for r in (self.txt("_dmarc." + self.org(dom)) or [])
                    if r.startswith(b"v=DMARC1")]
        if len(recs) != 1:
            return "none"
        tags = dict(t.strip().split(b"=", 1) for t in recs[0].split(b";") if b"=" in t)

        def aligned(a, mode):
            return a == dom if mode == b"s" else self.org(a) == self.org(dom)

        if spf_result == "pass" and aligned(spf_domain, tags.get(b"aspf", b"r")):
            return "pass"
        for d, _, ok in dkim_results:
            if ok and aligned(d, tags.get(b"adkim", b"r")):
                return "pass"
        return "fail"


def parse_ar(msg):
    """The Authentication-Results fields of a delivered copy: [(authserv_id,
    {method: [(result, props)]})]."""
    out = []
    hdr = msg.split(b"\n\n", 1)[0].decode(errors="replace")
    for m in re.finditer(r"^Authentication-Results:(.*(?:\n[ \t].*)*)", hdr, re.M | re.I):
        v = re.sub(r"\s+", " ", m.group(1)).strip()
        parts = [p.strip() for p in v.split(";")]
        methods = {}
        for p in parts[1:]:
            mm = re.match(r"(\w+)=(\w+)(.*)", p)
            if not mm:
                continue
            props = dict(re.findall(r"([\w.]+)=(\S+)", re.sub(r"\(.*?\)", "", mm.group(3))))
            methods.setdefault(mm.group(1), []).append((mm.group(2), props))
        out.append((parts[0].split()[0], methods))
    return out


# ------------------------------------------------------------------- cases

class AuthCase(unittest.TestCase):
    dns = None
    d = None
    auth_extra = ""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="mxtest-auth-")
        cls.rsa, rsa_pub, cls.ed, ed_pub = make_keys(cls.tmp)
        cls.dns = dnszones.Unbound(zones(rsa_pub, ed_pub), blackhole_zones=["slow.test"])
        try:
            conf = ("auth {\n\tresolvers = {\"127.0.0.1:%d\"}\n\tdns_timeout = 1000\n"
                    "\tdeadline = 6000\n%s}\n" % (cls.dns.port, cls.auth_extra))
            cls.d = Daemon(settings={"xclient_trusted": ["127.0.0.1"]},
                           pipeline={"stages": ["auth"], "reject_score": 100,
                                     "junk_score": 100, "tag_score": 100},
                           extra_conf=conf)
        except Exception:
            cls.dns.stop()
            raise
        cls.ref = Reference(cls.dns.port)

    @classmethod
    def tearDownClass(cls):
        if cls.d:
            cls.d.cleanup()
        if cls.dns:
            cls.dns.stop()

    def send(self, msg, sender, helo="client.example.org"):
        """(final reply, the delivered copy or None)."""
        before = set(self.d.files())
        with self.d.client() as c:
            self.assertEqual(c.ehlo("mta.example").code, 250)
            self.assertEqual(c.cmd("XCLIENT ADDR=%s" % CLIENT).code, 220)
            self.assertEqual(c.ehlo(helo).code, 250)
            mr, rr, dr, fr = c.transaction(sender, [RCPT], mxtest.smtp_data(msg))
        self.assertEqual(mr.code, 250, mr)
        new = sorted(set(self.d.files()) - before)
        if fr.code != 250:
            return fr, None
        self.assertEqual(len(new), 1, new)
        with open(new[0], "rb") as f:
            return fr, f.read()


class TestAgreement(AuthCase):
    """Every message, mxguard against the references; DMARC scored only."""
    auth_extra = '\tactions = {"DMARC_REJECT=score", "DMARC_QUARANTINE=score"}\n'

    def cases(self):
        rsa, ed = self.rsa, self.ed
        base = lambda frm, subj: message("<%s>" % frm, subj)  # noqa: E731
        c = []
        # SPF: sender, helo, message
        for name, sender in [("spf pass", "u@good.test"), ("spf fail", "u@reject.test"),
                             ("spf softfail", "u@softfail.test"),
                             ("spf neutral", "u@neutral.test"), ("spf none", "u@nospf.test"),
                             ("spf include", "u@include.test"),
                             ("spf include loop", "u@loop.test"),
                             ("spf too many lookups", "u@many.test"),
                             ("spf syntax", "u@bad.test"), ("spf mx", "u@mx.test"),
                             ("spf no answer", "u@slow.test")]:
            c.append((name, sender, "client.example.org", base("u@none.test", name)))
        c.append(("spf helo for <>", "", "good.test", base("u@none.test", "helo")))
        # DKIM (the envelope is good.test's: SPF passes)
        m = base("u@good.test", "dkim rsa")
        c.append(("dkim rsa", "u@good.test", "h.example", sign(m, "good.test", "rsa", rsa)))
        m = base("u@good.test", "dkim ed25519")
        c.append(("dkim ed25519", "u@nospf.test", "h.example",
                  sign(m, "good.test", "ed", ed, alg=b"ed25519-sha256")))
        m = sign(base("u@good.test", "dkim body changed"), "good.test", "rsa", rsa)
        c.append(("dkim body changed", "u@nospf.test", "h.example",
                  m.replace(b"Hello.", b"Hullo.")))
        m = sign(base("u@good.test", "dkim header changed"), "good.test", "rsa", rsa)
        c.append(("dkim header changed", "u@nospf.test", "h.example",
                  m.replace(b"Subject: dkim header changed", b"Subject: dkim header CHANGED")))
        m = sign(base("u@good.test", "dkim l= abuse"), "good.test", "rsa", rsa, length=True)
        c.append(("dkim l= abuse", "u@nospf.test", "h.example",
                  m + b"\r\nClick here: http://evil.example/\r\n"))
        m = base("u@good.test", "dkim rsa-sha1")
        c.append(("dkim rsa-sha1", "u@nospf.test", "h.example",
                  sign(m, "good.test", "rsa", rsa, alg=b"rsa-sha1")))
        m = sign(base("u@good.test", "dkim two signatures"), "good.test", "ed", ed,
                 alg=b"ed25519-sha256")
        c.append(("dkim two signatures", "u@nospf.test", "h.example",
                  sign(m, "good.test", "rsa", rsa)))
        m = sign(base("u@good.test", "dkim over-signed"), "good.test", "rsa", rsa,
                 headers=[b"from", b"from", b"to", b"subject", b"date", b"message-id"])
        c.append(("dkim over-signed From added", "u@nospf.test", "h.example",
                  b"From: <boss@good.test>\r\n" + m))
        m = base("u@good.test", "dkim no key")
        c.append(("dkim no key", "u@nospf.test", "h.example",
                  sign(m, "good.test", "missing", rsa)))
        m = base("u@good.test", "dkim key never answers")
        c.append(("dkim key never answers", "u@nospf.test", "h.example",
                  sign(m, "slow.test", "rsa", rsa)))
        # DMARC
        c.append(("dmarc reject", "u@good.test", "h.example", base("u@reject.test", "dmarc rej")))
        c.append(("dmarc quarantine", "u@good.test", "h.example", base("u@quar.test", "dmarc q")))
        c.append(("dmarc none", "u@good.test", "h.example", base("u@none.test", "dmarc none")))
        c.append(("dmarc subdomain policy", "u@good.test", "h.example",
                  base("u@sub.org.test", "dmarc sp")))
        m = base("u@sub.good.test", "dmarc relaxed")
        c.append(("dmarc relaxed dkim", "u@nospf.test", "h.example",
                  sign(m, "good.test", "rsa", rsa)))
        m = base("u@strict.test", "dmarc strict")
        c.append(("dmarc strict", "u@mail.strict.test", "h.example",
                  sign(m, "mail.strict.test", "rsa", rsa)))
        c.append(("dmarc spf aligned", "u@good.test", "h.example",
                  base("u@good.test", "dmarc spf")))
        c.append(("dmarc no From", "u@good.test", "h.example", message(None, "no from")))
        c.append(("dmarc two From", "u@good.test", "h.example",
                  b"From: <a@good.test>\r\n" + base("u@reject.test", "two from")))
        c.append(("dmarc two domains", "u@good.test", "h.example",
                  message("<a@good.test>, <b@reject.test>", "two domains")))
        return c

    def test_agreement(self):
        mismatches = []
        checked = 0
        for name, sender, helo, msg in self.cases():
            fr, copy = self.send(msg, sender, helo)
            self.assertEqual(fr.code, 250, "%s: %s" % (name, fr))
            ars = [a for a in parse_ar(copy) if a[0] == AUTHSERV]
            self.assertEqual(len(ars), 1, "%s: %r" % (name, copy[:600]))
            methods = ars[0][1]
            # SPF
            ref_spf = self.ref.spf(sender, helo)
            got_spf = methods.get("spf", [("-", {})])[0][0]
            if got_spf != ref_spf:
                mismatches.append("%s: spf %s, reference %s" % (name, got_spf, ref_spf))
            # DKIM
            ref_dkim = self.ref.dkim(msg)
            got = [(p.get("header.d", "").lower(), p.get("header.s", ""), r)
                   for r, p in methods.get("dkim", [])]
            if not ref_dkim:
                if got != [("", "", "none")]:
                    mismatches.append("%s: dkim %r, reference none" % (name, got))
            else:
                # rsa-sha1 that verifies is "policy" (weak): cryptographically valid
                got_valid = sorted((d, s, r in ("pass", "policy")) for d, s, r in got)
                if got_valid != sorted(ref_dkim):
                    mismatches.append("%s: dkim %r, reference %r" % (name, got, ref_dkim))
            # DMARC
            hdr = msg.split(b"\r\n\r\n", 1)[0]
            froms = re.findall(rb"^From:(.*)$", hdr, re.M)
            doms = [d.decode().lower() for f in froms for d in re.findall(rb"@([\w.-]+)", f)]
            spf_dom = sender.split("@")[1] if sender else helo
            ref_dkim_ok = [(d, s, ok and not name.endswith("rsa-sha1")) for d, s, ok in ref_dkim]
            ref_dmarc = self.ref.dmarc(doms, len(froms), ref_spf, spf_dom, ref_dkim_ok)
            got_dmarc = methods.get("dmarc", [("-", {})])[0][0]
            if got_dmarc != ref_dmarc:
                mismatches.append("%s: dmarc %s, reference %s" % (name, got_dmarc, ref_dmarc))
            checked += 1
        self.assertFalse(mismatches, "\n".join(mismatches) + "\n" + self.d.log_tail(30))
        self.assertGreaterEqual(checked, 30)

    def test_hits_and_partial(self):
        m = sign(message("<u@good.test>", "partial"), "good.test", "rsa", self.rsa, length=True)
        off = self.d.log_size()
        fr, copy = self.send(m + b"appended\r\n", "u@good.test")
        self.assertEqual(fr.code, 250)
        m = self.d.wait_log(r"[^\n]*hits=\S*DKIM_PARTIAL[^\n]*", off)
        self.assertIsNotNone(m, self.d.log_tail(20))
        line = m.group(0)
        self.assertRegex(line, r"SPF_PASS")
        self.assertRegex(line, r"DKIM_PASS")
        self.assertRegex(line, r"DMARC_PASS")

    def test_forged_authres_dropped(self):
        forged = ("Authentication-Results: %s; spf=pass smtp.mailfrom=boss@reject.test;\r\n"
                  "\tdmarc=pass header.from=reject.test\r\n"
                  "Authentication-Results: other.example; spf=pass\r\n" % AUTHSERV.upper())
        m = message("<u@none.test>", "forged", extra=forged)
        fr, copy = self.send(m, "u@nospf.test")
        self.assertEqual(fr.code, 250)
        ars = parse_ar(copy)
        ours = [a for a in ars if a[0].lower() == AUTHSERV]
        self.assertEqual(len(ours), 1, copy[:800])
        self.assertEqual(ours[0][1]["spf"][0][0], "none")
        self.assertNotIn(b"boss@reject.test", copy)
        self.assertIn(b"Authentication-Results: other.example; spf=pass", copy)


class TestDmarcReject(AuthCase):
    """The defaults: p=reject failing is refused at the end of DATA."""
    auth_extra = '\treject_text = "Rejected by DMARC policy of %d"\n'

    def test_reject(self):
        fr, copy = self.send(message("<u@reject.test>", "refused"), "u@good.test")
        self.assertEqual(fr.code, 550, fr)
        self.assertEqual(fr.enhanced, "5.7.1")
        self.assertIn("Rejected by DMARC policy of reject.test", fr.text)
        self.assertIsNone(copy)

    def test_subdomain_policy_rejects(self):
        fr, _ = self.send(message("<u@sub.org.test>", "sp refused"), "u@good.test")
        self.assertEqual(fr.code, 550, fr)

    def test_pass_delivered(self):
        m = sign(message("<u@good.test>", "signed"), "good.test", "rsa", self.rsa)
        fr, copy = self.send(m, "u@good.test")
        self.assertEqual(fr.code, 250, fr)
        self.assertRegex(copy, rb"Authentication-Results: mx\.example\.test;")

    def test_temperror_accepts(self):
        # From a domain whose DNS never answers: DMARC temperror, on_error accept
        m = sign(message("<u@slow.test>", "slow"), "slow.test", "rsa", self.rsa)
        fr, copy = self.send(m, "u@slow.test")
        self.assertEqual(fr.code, 250, fr)
        ars = [a for a in parse_ar(copy) if a[0] == AUTHSERV][0][1]
        self.assertEqual(ars["spf"][0][0], "temperror")
        self.assertEqual(ars["dkim"][0][0], "temperror")
        self.assertEqual(ars["dmarc"][0][0], "temperror")


class TestTempfail(AuthCase):
    """on_error = tempfail: a temporary DNS error defers the message."""
    auth_extra = '\ton_error = "tempfail"\n'

    def test_tempfail(self):
        fr, _ = self.send(message("<u@none.test>", "deferred"), "u@slow.test")
        self.assertEqual(fr.code // 100, 4, fr)
        fr, _ = self.send(message("<u@none.test>", "fine"), "u@good.test")
        self.assertEqual(fr.code, 250, fr)


# ------------------------------------------------------------------ format

FORMAT_CASES = [
    ("FORMAT_NO_FROM", b"To: <demo@example.test>\r\nSubject: a\r\n"
     b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\nbody\r\n"),
    ("FORMAT_NO_DATE", b"From: <a@example.org>\r\nSubject: a\r\n\r\nbody\r\n"),
    ("FORMAT_MULTI_FROM", b"From: <a@example.org>\r\nFrom: <b@example.org>\r\n"
     b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\nbody\r\n"),
    ("FORMAT_MULTI_SENDER", b"From: <a@example.org>\r\nSender: <a@example.org>\r\n"
     b"Sender: <b@example.org>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\nbody\r\n"),
    ("FORMAT_MULTI_TO", b"From: <a@example.org>\r\nTo: <x@example.org>\r\nTo: <y@example.org>\r\n"
     b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\nbody\r\n"),
    ("FORMAT_MULTI_SUBJECT", b"From: <a@example.org>\r\nSubject: a\r\nSubject: b\r\n"
     b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\nbody\r\n"),
    ("FORMAT_MULTI_DATE", b"From: <a@example.org>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
     b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\nbody\r\n"),
    ("FORMAT_MULTI_MSGID", b"From: <a@example.org>\r\nMessage-ID: <1@x>\r\nMessage-ID: <2@x>\r\n"
     b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\nbody\r\n"),
    ("FORMAT_BAD_FROM", b"From: nobody at all\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
     b"\r\nbody\r\n"),
    ("FORMAT_LONG_LINE", b"From: <a@example.org>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
     b"X-Long: " + b"x" * 1000 + b"\r\n\r\nbody\r\n"),
    ("FORMAT_8BIT_HEADER", "From: <a@example.org>\r\nSubject: caf\u00e9\r\n"
     "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\nbody\r\n".encode()),
    ("FORMAT_HEADER_SIZE", b"From: <a@example.org>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
     + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 60) for i in range(40)) + b"\r\nbody\r\n"),
    ("FORMAT_MANY_FIELDS", b"From: <a@example.org>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
     + b"".join(b"X-F%d: f\r\n" % i for i in range(60)) + b"\r\nbody\r\n"),
    ("FORMAT_NUL", b"From: <a@example.org>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
     b"\r\nnul\x00here\r\n"),
    ("FORMAT_NO_SEPARATOR", b"From: <a@example.org>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n"),
]


class TestFormat(unittest.TestCase):
    d = None
    actions = '{"FORMAT_MULTI_FROM=reject"}'

    @classmethod
    def setUpClass(cls):
        conf = ("format {\n\tmax_header_size = 2048\n\tmax_fields = 50\n"
                "\tscores = {\"FORMAT_NO_DATE=0.3\"}\n\tactions = %s\n}\n" % cls.actions)
        cls.d = Daemon(pipeline={"stages": ["format"], "reject_score": 100,
                                 "junk_score": 100, "tag_score": 100}, extra_conf=conf)

    @classmethod
    def tearDownClass(cls):
        if cls.d:
            cls.d.cleanup()

    def test_each_check(self):
        for hit, msg in FORMAT_CASES:
            off = self.d.log_size()
            with self.d.client() as c:
                self.assertEqual(c.ehlo().code, 250)
                mr, rr, dr, fr = c.transaction("a@example.org", [RCPT], mxtest.smtp_data(msg))
            if hit in ("FORMAT_MULTI_FROM", "FORMAT_NUL"):
                # refused: MULTI_FROM as configured here, NUL by default
                self.assertEqual(fr.code, 550, "%s: %s" % (hit, fr))
                self.assertEqual(fr.enhanced, "5.6.0", hit)
                continue
            self.assertEqual(fr.code, 250, "%s: %s" % (hit, fr))
            m = self.d.wait_log(r"[^\n]*hits=\S*%s\b[^\n]*" % hit, off)
            self.assertIsNotNone(m, "%s: %s" % (hit, self.d.log_tail(10)))
            line = m.group(0)
            if hit == "FORMAT_NO_DATE":
                self.assertRegex(line, r"score=0\.3 ")
            # a good message has no FORMAT_ hit but what it is sent for
            others = set(re.findall(r"FORMAT_\w+", line.split("hits=", 1)[1].split()[0]))
            others.discard(hit)
            # the NO_SEPARATOR message has no body but is otherwise fine;
            # the long line and the big header come with their own
            self.assertTrue(others <= {"FORMAT_HEADER_SIZE", "FORMAT_MANY_FIELDS",
                                       "FORMAT_NO_DATE", "FORMAT_NO_FROM", "FORMAT_LONG_LINE"},
                            "%s: %s" % (hit, line))

    def test_clean_message_no_hit(self):
        off = self.d.log_size()
        msg = message("<a@example.org>", "clean")
        with self.d.client() as c:
            c.ehlo()
            mr, rr, dr, fr = c.transaction("a@example.org", [RCPT], mxtest.smtp_data(msg))
        self.assertEqual(fr.code, 250)
        m = self.d.wait_log(r"[^\n]*hits=[^\n]*", off)
        self.assertIsNotNone(m)
        self.assertNotIn("FORMAT_", m.group(0))


if __name__ == "__main__":
    mxtest.main(budget=300)

"""test_imap_diff — mxguard's running IMAP server against a real Dovecot.

The same message files (the corpus sample and hand-made hard cases of
test_imap_dovecot.py) are put, byte for byte and with the same names and
mtimes, into the INBOX Maildir of a running mxguard (with an imap
listener) and of a throwaway Dovecot 2.3 IMAP server (Debian's
dovecot-imapd, started here on a free loopback port). Both are logged in
to with imaplib and asked the same commands; the parsed responses are
compared:

- UID FETCH of ENVELOPE, BODYSTRUCTURE, BODY, RFC822.SIZE, FLAGS,
  INTERNALDATE and a list of BODY.PEEK[section]<partial>s, per message,
  item by item (the order of the items in a response is not compared);
- UID SEARCH over the whole mailbox: the content keys of
  test_imap_dovecot.py, and sequence/UID sets with `*`, LARGER/SMALLER,
  OR/NOT, and flag keys after the same STOREs on both, as sets;
- STATUS (MESSAGES UIDNEXT UNSEEN), LIST of created folders, and the
  tagged result (OK/NO/BAD, not the text) of invalid commands.

Normalised, because it legitimately differs: UIDVALIDITY (not compared);
the UIDs (both servers number the files 1..N in name order — checked —
and results are compared as message names anyway). What we do not copy
from Dovecot is in EXCLUDED, with the reason, and printed.
"""

import hashlib
import re
import imaplib
import os
import shutil
import tempfile
import unittest

import mxtest
import test_imap
import test_imap_dovecot as tid
from imapdiff import DovecotIMAP, PASSWORD as DOVECOT_PASSWORD, ParseError, parse_items, \
    raw_fetch, value_octets

USER = "demo@example.test"
SAMPLE = int(os.environ.get("IMAP_SERVER_DIFF_SAMPLE", "300"))
imaplib._MAXLINE = 64 * 1024 * 1024
# INTERNALDATE is the file's mtime in the server's zone: Dovecot's is the
# local one (inherited from here), mxguard's is always +0000
os.environ["TZ"] = "UTC"

SECTIONS = [
    "", "HEADER", "TEXT", "1", "1.MIME", "2", "2.MIME", "2.1", "2.2", "1.1", "1.2", "3",
    "2.1.MIME", "2.HEADER", "2.TEXT", "1.TEXT", "4",
    "HEADER.FIELDS (FROM SUBJECT)", "HEADER.FIELDS (date to Cc)",
    "HEADER.FIELDS.NOT (RECEIVED FROM DATE)",
]
PARTIALS = ["<0.100>", "<10.20>", "<100000.5>"]
PARTIAL_SECTIONS = ["", "TEXT", "1"]

# what Dovecot answers and mxguard does not copy, and why
EXCLUDED = {
    "\\Recent": "mxguard does not keep \\Recent (imap/session.c: `* 0 RECENT`, the RECENT "
                "key matches nothing); RFC 3501 lets a server not track it, Dovecot does: "
                "\\Recent is removed from Dovecot's FLAGS before comparing, and the "
                "RECENT/NEW/OLD keys are not compared",
    "special-use": "mxguard lists its Junk, Sent, Drafts and Trash folders with their "
                   "RFC 6154 attribute (\\Junk ...); this Dovecot has no special-use "
                   "config: the four attributes are removed from mxguard's LIST",
}
# hand-made cases whose FETCH items are not compared, and why
EXCLUDED_CASES = {
    "no-blank-line-eof": "the file's last line has no line end: mxguard sends it with CRLF "
                         "(and counts it in RFC822.SIZE) because POP3 and IMAP share one size, "
                         "kept in the UID list, and POP3 must end the last line; Dovecot's IMAP "
                         "sends the octets as they are. Mail delivered by mxguard always ends "
                         "with CRLF, so only a file put in the Maildir by hand shows this",
    "cr-only": "the same (the file ends in a bare CR, a line end to neither server: "
               "mxguard adds LF)",
}
SPECIAL_USE = (b"\\Junk", b"\\Sent", b"\\Drafts", b"\\Trash")

# SEARCH keys beyond the content keys of test_imap_dovecot (run after STORES)
STORES = [("1:5", "+FLAGS", "(\\Seen)"), ("3:8", "+FLAGS", "(\\Flagged)"),
          ("2,4,6", "+FLAGS", "(\\Deleted)"), ("7", "+FLAGS", "(\\Answered \\Draft)"),
          ("4", "-FLAGS", "(\\Seen)"), ("9:10", "+FLAGS", "($Forwarded Work)")]
FLAG_SEARCHES = [
    ("ALL",), ("SEEN",), ("UNSEEN",), ("FLAGGED",), ("UNFLAGGED",), ("DELETED",),
    ("UNDELETED",), ("ANSWERED",), ("UNANSWERED",), ("DRAFT",), ("UNDRAFT",),
    ("KEYWORD", "Work"), ("UNKEYWORD", "Work"), ("KEYWORD", "$Forwarded"),
    ("OR", "SEEN", "FLAGGED"), ("NOT", "SEEN"), ("NOT", "(SEEN FLAGGED)"),
    ("OR", "DELETED", "(FLAGGED UNSEEN)"), ("SEEN", "FLAGGED", "UNDELETED"),
    ("LARGER", "1000"), ("SMALLER", "1000"), ("LARGER", "5000"), ("SMALLER", "200"),
    ("NOT", "LARGER", "3000"), ("OR", "SMALLER", "500", "LARGER", "20000"),
    ("1:3",), ("5:*",), ("*",), ("2,4,10:12",), ("*:5",),
    ("UID", "1:3"), ("UID", "5:*"), ("UID", "*"), ("UID", "3,7:9"), ("UID", "99999:*"),
    ("NOT", "UID", "2:*"), ("OR", "UID", "1", "UID", "*"),
    ("SINCE", "1-Jan-2000"), ("BEFORE", "1-Jan-2030"), ("ON", "15-Mar-2021"),
    ("SINCE", "15-Mar-2021"), ("BEFORE", "15-Mar-2021"),
    ("SUBJECT", "a"), ("OR", "FROM", "com", "TO", "net"), ("NOT", "BODY", "the"),
    ("HEADER", "Subject", ""), ("SEEN", "BODY", "money"),
]
INVALID = [
    "FETCH", "FETCH 1", "FETCH 1 (BOGUS)", "FETCH x FLAGS", "FETCH 1 BODY[9.Z]",
    "FETCH 1 BODY[]<1>", "UID FETCH 1:* (BODY[HEADER.FIELDS])", "SEARCH BOGUS",
    "SEARCH LARGER x", "SEARCH (SEEN", "STORE 1 +FLAGS.BOGUS (\\Seen)", "STORE 1 FLAGS",
    "STATUS INBOX (BOGUS)", "STATUS Nope (MESSAGES)", "SELECT Nope", "BOGUS",
    "UID BOGUS 1", "COPY 1", "LIST", "CREATE INBOX", "DELETE INBOX", "EXAMINE",
    "RENAME Nope Other", "FETCH 0 FLAGS", "SEARCH UID 0",
    "SELECT Nope",  # last: a failed SELECT leaves nothing selected
]
# invalid commands Dovecot accepts: the RFC 3501 grammar does not, nor do we
EXCLUDED_INVALID = {
    "FETCH 1 BODY[]<1>": "section-partial is \"<\" number \".\" nz-number \">\" "
                         "(RFC 3501 section 9): mxguard answers BAD, Dovecot reads <1> "
                         "as from octet 1 to the end",
    "STORE 1 FLAGS": "store-att-flags needs a flag-list or flags after the SP (RFC 3501 "
                     "section 9): mxguard answers BAD, Dovecot clears the flags",
}
FOLDERS = ["Work", "Work.Reports", "Archive", "Archive.2020.Q1", "Junk"]


def corpus():
    """the cases: hand-made + the first SAMPLE of test_imap_dovecot's
    sample, without duplicates (by the octets IMAP gives back)"""
    cases = dict(tid.hard_cases())
    sample = tid.corpus_sample()
    used = sample is not None
    if sample is None:
        sample = tid.generated_cases()
    for name in sorted(sample)[:SAMPLE]:
        cases[name] = sample[name]
    out, seen = {}, set()
    for name in sorted(cases):
        h = hashlib.sha256(tid.norm(cases[name])).hexdigest()
        if h not in seen:
            seen.add(h)
            out[name] = cases[name]
    return out, used


def fill_maildir(root, cases):
    """the files in root/cur, names in sorted order with increasing mtimes"""
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    base = 1615800000  # 15-Mar-2021 09:20:00 UTC
    order = []
    for i, name in enumerate(sorted(cases)):
        fn = "%d.M%06dP1.imapdiff:2," % (base + i * 3600, i)
        path = os.path.join(root, "cur", fn)
        with open(path, "wb") as f:
            f.write(cases[name])
        os.utime(path, (base + i * 3600, base + i * 3600))
        order.append(name)
    return order


def upper_keys(items):
    return {k.upper(): v for k, v in items.items()}


def astring(v):
    """a mailbox name as sent (atom or quoted) -> the name"""
    if v.startswith(b'"'):
        return re.sub(rb'\\(.)', rb"\1", v[1:-1])
    return v


def norm_names(resp):
    """a STATUS or LIST answer with each name as its string, the special-use
    attributes (see EXCLUDED) removed, lines sorted"""
    typ, data = resp
    out = []
    for line in data:
        if line is None:
            continue
        m = re.match(rb'(\([^)]*\)) ("[^"]*"|NIL) (.*)$', line)
        if m:  # LIST
            attrs = b" ".join(a for a in m.group(1)[1:-1].split() if a not in SPECIAL_USE)
            out.append((attrs, m.group(2), astring(m.group(3))))
            continue
        m = re.match(rb'("(?:[^"\\]|\\.)*"|\S+) (\(.*\))$', line)
        if m:  # STATUS
            items = m.group(2)[1:-1].split()
            out.append((astring(m.group(1)), dict(zip(items[::2], items[1::2]))))
            continue
        out.append(line)
    return typ, sorted(out)


def tagged(m, line):
    """the tagged result word of a raw command line"""
    tag = m._new_tag()
    m.send(tag + b" " + line.encode() + b"\r\n")
    while True:
        resp = m._get_line()
        if resp.startswith(tag + b" "):
            return resp.split(b" ", 2)[1].decode()


class ServerDiff(unittest.TestCase):
    """mxguard's IMAP server and Dovecot's, response by response."""

    @classmethod
    def setUpClass(cls):
        cls.cases, cls.corpus_used = corpus()
        cls.tmp = tempfile.mkdtemp(prefix="imap-sdiff-")
        os.chmod(cls.tmp, 0o755)
        cls.dmd = os.path.join(cls.tmp, "Maildir")
        cls.order = fill_maildir(cls.dmd, cls.cases)
        cls.imap_port = mxtest.free_port()
        cls.d = None
        cls.dovecot = None
        try:
            cls.d = mxtest.Daemon(users=(USER,), extra_conf=test_imap.imap_conf(
                cls.imap_port, plaintext_auth="loopback"))
            fill_maildir(cls.d.maildir(), cls.cases)
            cls.dovecot = DovecotIMAP(cls.dmd, user=USER).start()
            cls.mx = imaplib.IMAP4("127.0.0.1", cls.imap_port, timeout=60)
            cls.mx.login(USER, mxtest.PASSWORD)
            cls.dc = imaplib.IMAP4(cls.dovecot.host, cls.dovecot.port, timeout=60)
            cls.dc.login(USER, DOVECOT_PASSWORD)
            n = len(cls.cases)
            for m in (cls.mx, cls.dc):
                typ, data = m.select("INBOX")
                assert typ == "OK" and int(data[0]) == n, (typ, data, n)
            cls.uid_name = {}
            for who, m in (("dovecot", cls.dc), ("mxguard", cls.mx)):
                cls.uid_name[who] = cls.map_uids(m)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def map_uids(cls, m):
        by_hash = {hashlib.sha256(tid.norm(v)).hexdigest(): k for k, v in cls.cases.items()}
        typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[])")
        assert typ == "OK", data
        out = {}
        for piece in data:
            if isinstance(piece, tuple):
                items = upper_keys(parse_items(piece[0] + b"\r\n" + piece[1] + b")"))
                h = hashlib.sha256(piece[1]).hexdigest()
                if h not in by_hash:
                    # not any file's octets (test_1_fetch reports the BODY[]
                    # difference): the file of that position in name order
                    uid = int(items["UID"])
                    out[uid] = cls.order[uid - 1]
                    print("map_uids: UID %d BODY[] is no file's octets; taken as %s"
                          % (uid, out[uid]), flush=True)
                    continue
                out[int(items["UID"])] = by_hash[h]
        assert len(out) == len(cls.cases), (len(out), len(cls.cases))
        return out

    @classmethod
    def tearDownClass(cls):
        for attr in ("mx", "dc"):
            m = getattr(cls, attr, None)
            if m is not None:
                try:
                    m.logout()
                except Exception:
                    pass
        if cls.dovecot is not None:
            cls.dovecot.stop()
        if cls.d is not None:
            cls.d.cleanup()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def uid_of(self, who, name):
        return {v: k for k, v in self.uid_name[who].items()}[name]

    def both(self, fn):
        return fn("mxguard", self.mx), fn("dovecot", self.dc)

    def test_0_uids_in_name_order(self):
        """both number the files 1..N in name order"""
        want = {i + 1: name for i, name in enumerate(self.order)}
        self.assertEqual(self.uid_name["mxguard"], want)
        self.assertEqual(self.uid_name["dovecot"], want)

    def test_1_fetch(self):
        sections = ["BODY.PEEK[%s]" % s for s in SECTIONS]
        sections += ["BODY.PEEK[%s]%s" % (s, p) for s in PARTIAL_SECTIONS for p in PARTIALS]
        query = "(ENVELOPE BODYSTRUCTURE BODY RFC822.SIZE FLAGS INTERNALDATE RFC822.HEADER %s)" \
            % " ".join(sections)
        names = ["UID", "ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822.SIZE", "FLAGS",
                 "INTERNALDATE", "RFC822.HEADER"]
        names += [s.replace(".PEEK", "").split("<")[0] +
                  ("<%s>" % s.split("<")[1].split(".")[0] if "<" in s else "")
                  for s in sections]
        total = agree = excluded = 0
        bad = []
        for name in self.order:
            if name in EXCLUDED_CASES:
                excluded += len(names)
                continue
            got = {}
            for who, m in (("mxguard", self.mx), ("dovecot", self.dc)):
                typ, data = m.uid("FETCH", str(self.uid_of(who, name)), query)
                self.assertEqual(typ, "OK", (who, name, data))
                try:
                    got[who] = upper_keys(parse_items(raw_fetch(data)))
                except ParseError as e:
                    bad.append((name, who + "'s answer", str(e), raw_fetch(data)[:300]))
            if len(got) != 2:
                continue
            for item in names:
                o, t = got["mxguard"].get(item.upper()), got["dovecot"].get(item.upper())
                if item == "FLAGS" and t is not None:
                    t = b"(" + b" ".join(f for f in t[1:-1].split() if f != b"\\Recent") + b")"
                if item.startswith("BODY[") and o is not None and t is not None:
                    o, t = value_octets(o), value_octets(t)
                total += 1
                if o == t:
                    agree += 1
                else:
                    bad.append((name, item, t, o))
        print("\ntest_imap_diff: FETCH: %d of %d items agree over %d messages%s; "
              "%d items of %d cases excluded"
              % (agree, total, len(self.order) - len(EXCLUDED_CASES),
                 "" if self.corpus_used else " (generated)", excluded, len(EXCLUDED_CASES)),
              flush=True)
        for why in EXCLUDED.values():
            print("  excluded: %s" % why)
        for name, why in sorted(EXCLUDED_CASES.items()):
            print("  excluded %s: %s" % (name, why))
        for name, item, t, o in bad[:40]:
            print("  DIFF %s %s\n    dovecot: %r\n    mxguard: %r"
                  % (name, item, t[:300] if t else t, o[:300] if o else o))
        self.assertEqual(bad, [], "%d disagreements" % len(bad))

    def search(self, who, m, key, raw=False):
        words, lit = (list(key), None) if raw else tid.search_args(key)
        try:
            if lit is not None:
                m.literal = lit
                typ, data = m.uid("SEARCH", "CHARSET", "UTF-8",
                                  *[w for w in words if w is not None])
            else:
                typ, data = m.uid("SEARCH", *words)
        except imaplib.IMAP4.error:
            return "BAD"
        if typ != "OK":
            return typ
        return sorted(self.uid_name[who][int(u)] for u in data[0].split())

    def compare_searches(self, keys, what, raw=False):
        bad = []
        for key in keys:
            o, t = self.both(lambda who, m: self.search(who, m, key, raw))
            if o != t:
                bad.append((key, t if isinstance(t, str) else t[:6],
                            o if isinstance(o, str) else o[:6]))
        print("\ntest_imap_diff: SEARCH (%s): %d of %d keys agree over %d messages"
              % (what, len(keys) - len(bad), len(keys), len(self.order)), flush=True)
        for key, t, o in bad:
            print("  DIFF %r\n    dovecot: %r\n    mxguard: %r" % (key, t, o))
        return bad

    def test_2_search_content(self):
        self.assertEqual(self.compare_searches(tid.SEARCHES, "content"), [])

    def test_3_store_and_search(self):
        bad = []
        for seqs, op, flags in STORES:
            o, t = self.both(lambda who, m: m.uid("STORE", seqs, op, flags))
            self.assertEqual((o[0], t[0]), ("OK", "OK"))
        o, t = self.both(lambda who, m: m.uid("FETCH", "1:*", "(FLAGS)"))
        for a, b in zip(o[1], t[1]):
            fa = upper_keys(parse_items(a))
            fb = upper_keys(parse_items(b))
            fa["FLAGS"] = sorted(fa["FLAGS"][1:-1].split())
            fb["FLAGS"] = sorted(f for f in fb["FLAGS"][1:-1].split() if f != b"\\Recent")
            if fa != fb:
                bad.append(("FLAGS", b, a))
        # the \Seen side effect of BODY[] and RFC822.TEXT (not of RFC822.HEADER)
        for uid, item in (("11", "BODY[TEXT]"), ("12", "RFC822.TEXT"), ("13", "RFC822.HEADER"),
                          ("14", "BODY[1]"), ("15", "BODY[HEADER.FIELDS (SUBJECT)]")):
            o, t = self.both(lambda who, m: m.uid("FETCH", uid, "(%s)" % item))
            o = upper_keys(parse_items(raw_fetch(o[1]))) if o[0] == "OK" else o
            t = upper_keys(parse_items(raw_fetch(t[1]))) if t[0] == "OK" else t
            for d in (o, t):
                if isinstance(d, dict):
                    d.pop("UID", None)
                    if "FLAGS" in d:
                        d["FLAGS"] = sorted(f for f in d["FLAGS"][1:-1].split()
                                            if f != b"\\Recent")
            if o != t:
                bad.append((item, t, o))
        bad += self.compare_searches(FLAG_SEARCHES, "flags, sets, sizes", raw=True)
        self.assertEqual(bad, [])

    def test_4_status_list(self):
        bad = []
        for f in FOLDERS:
            o, t = self.both(lambda who, m: m.create(f)[0])
            if o != t:
                bad.append(("CREATE", f, t, o))
        for _, m in (("mxguard", self.mx), ("dovecot", self.dc)):
            m.append("Work", "(\\Seen)", imaplib.Time2Internaldate(1615800000),
                     tid.crlf("From: a@b.c\nSubject: appended\n\nbody\n"))
            m.append("Work", None, imaplib.Time2Internaldate(1615800000),
                     tid.crlf("From: a@b.c\nSubject: second\n\nbody\n"))
        for f in ["INBOX"] + FOLDERS:
            o, t = self.both(lambda who, m: norm_names(m.status(f, "(MESSAGES UIDNEXT UNSEEN)")))
            if o != t:
                bad.append(("STATUS", f, t, o))
        for ref, pat in (('""', "*"), ('""', "%"), ("Work.", "%"), ('""', "Archive*"),
                         ('""', "Archive.%"), ('""', "inbox"), ('""', "Nope")):
            o, t = self.both(lambda who, m: norm_names(m.list(ref, pat)))
            if o != t:
                bad.append(("LIST", ref, pat, t, o))
        print("\ntest_imap_diff: CREATE/STATUS/LIST: %d disagreements" % len(bad), flush=True)
        for b in bad:
            print("  DIFF %r" % (b,))
        self.assertEqual(bad, [])

    def test_5_invalid(self):
        bad = []
        for line, why in sorted(EXCLUDED_INVALID.items()):
            print("  excluded %r: %s" % (line, why))
        for line in INVALID:
            if line in EXCLUDED_INVALID:
                # still checked: mxguard keeps to the grammar
                self.assertEqual(self.tagged_fresh("mxguard", line), "BAD", line)
                continue
            # a fresh session each (Dovecot ends one after 10 bad commands)
            o, t = self.both(lambda who, m: self.tagged_fresh(who, line))
            if o != t:
                bad.append((line, t, o))
        n = len(INVALID) - len(EXCLUDED_INVALID)
        print("\ntest_imap_diff: errors: %d of %d commands get the same tagged result"
              % (n - len(bad), n), flush=True)
        for line, t, o in bad:
            print("  DIFF %r dovecot %s mxguard %s" % (line, t, o))
        self.assertEqual(bad, [])

    def tagged_fresh(self, who, line):
        if who == "mxguard":
            m = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=60)
            m.login(USER, mxtest.PASSWORD)
        else:
            m = imaplib.IMAP4(self.dovecot.host, self.dovecot.port, timeout=60)
            m.login(USER, DOVECOT_PASSWORD)
        try:
            m.select("INBOX")
            return tagged(m, line)
        finally:
            m.shutdown()


if __name__ == "__main__":
    mxtest.main(budget=300)

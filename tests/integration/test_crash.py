"""test_crash — no acknowledged message is ever lost, none is half-written.

20 client threads send 2,000 messages in total (each with a unique
Message-ID and body) while a killer thread SIGKILLs the daemon at random
moments and restarts it.  Clients reconnect and retry whatever did not get
its 250.  Afterwards every message that got a 250 is in new/ (exactly once
when it was only ever sent once; a retried message may appear once per
attempt that reached the end of DATA), no file in new/ or cur/ is partial,
and nothing is there that was never sent.
"""

import os
import random
import re
import socket
import ssl
import sys
import threading
import time
import unittest

import mxtest
from mxtest import smtp_data, queued_id

N_CLIENTS = 20
N_MESSAGES = 2000
KILLS_MIN, KILLS_MAX = 5, 8
LOAD_SECONDS = 15.0    # clients pace themselves so the load outlasts the kills
CLIENT_DEADLINE = 150.0


class Message:
    def __init__(self, client, seq):
        self.client = client
        self.seq = seq
        tag = "%02d-%04d-%s" % (client, seq, os.urandom(6).hex())
        self.msgid = "<crash-%s@clients.test>" % tag
        self.trailer = "END-OF-MESSAGE %s" % tag
        # every tenth message is large so a kill can land in the middle of
        # receiving or writing it
        filler_lines = 3000 if seq % 10 == 3 else 8
        filler = "".join("%s line %04d %s\n" % (tag, i, "x" * 60) for i in range(filler_lines))
        self.body = ("From: c%02d@clients.test\nTo: demo@example.test\n"
                     "Subject: crash test %s\nMessage-ID: %s\n\n%s%s\n"
                     % (client, tag, self.msgid, filler, self.trailer)).encode()
        self.data = smtp_data(self.body)
        self.attempts = 0        # attempts whose end of DATA was sent
        self.acked = False
        self.txid = None
        self.perm = None         # a 5xx answer (must never happen)


class Crash(unittest.TestCase):
    def setUp(self):
        self.d = mxtest.Daemon(limits={"connections_per_client": 100,
                                       "connections_max": 1000})
        self.addCleanup(self.d.cleanup)
        self.dot_sent = threading.Event()

    def client_loop(self, ci, msgs, start, deadline):
        c = None
        pace = LOAD_SECONDS / len(msgs)
        for i, m in enumerate(msgs):
            wait = start + i * pace - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            while not m.acked and m.perm is None:
                if time.monotonic() > deadline:
                    if c:
                        c.close()
                    return
                try:
                    if c is None:
                        c = mxtest.Client(self.d.port, timeout=10)
                        if c.greeting.code != 220:
                            raise ConnectionError("greeting %r" % c.greeting)
                        if c.ehlo("c%02d.clients.test" % ci).code != 250:
                            raise ConnectionError("ehlo")
                    r = c.cmd("MAIL FROM:<c%02d@clients.test>" % ci)
                    if r.code != 250:
                        raise ConnectionError("MAIL %r" % r)
                    r = c.cmd("RCPT TO:<demo@example.test>")
                    if r.code != 250:
                        raise ConnectionError("RCPT %r" % r)
                    r = c.cmd("DATA")
                    if r.code != 354:
                        raise ConnectionError("DATA %r" % r)
                    m.attempts += 1
                    c.send(m.data)
                    self.dot_sent.set()
                    r = c.reply()
                    if r.code == 250:
                        m.txid = queued_id(r)
                        m.acked = True   # only now: the 250 has arrived
                    elif r.code // 100 == 5:
                        m.perm = r
                    else:
                        raise ConnectionError("end of DATA %r" % r)
                except (OSError, EOFError, mxtest.ProtocolError, ConnectionError, ssl.SSLError):
                    if c:
                        c.close()
                    c = None
                    time.sleep(0.05)
        if c:
            try:
                c.cmd("QUIT")
            except (OSError, EOFError, mxtest.ProtocolError):
                pass
            c.close()

    def killer_loop(self, done, state):
        n = random.randint(KILLS_MIN, KILLS_MAX)
        for _ in range(n):
            if done.wait(random.uniform(0.5, 2.0)):
                return
            # mostly aim at the most delicate window: a client has just sent
            # its final dot and the daemon is delivering (writing, fsyncing,
            # renaming) but has not answered yet
            if random.random() < 0.75:
                self.dot_sent.clear()
                self.dot_sent.wait(2)
            self.d.kill9()
            state["kills"] += 1
            try:
                self.d.start()
            except Exception as e:   # recorded; the main thread fails the test
                state["error"] = "restart failed: %s" % e
                return

    def test_sigkill_loses_nothing(self):
        msgs = [Message(ci, seq) for ci in range(N_CLIENTS)
                for seq in range(N_MESSAGES // N_CLIENTS)]
        by_id = {m.msgid: m for m in msgs}
        self.assertEqual(len(by_id), N_MESSAGES)
        start = time.monotonic()
        deadline = start + CLIENT_DEADLINE
        threads = []
        for ci in range(N_CLIENTS):
            mine = [m for m in msgs if m.client == ci]
            t = threading.Thread(target=self.client_loop, args=(ci, mine, start, deadline),
                                 daemon=True)
            threads.append(t)
        done = threading.Event()
        state = {"kills": 0, "error": None}
        killer = threading.Thread(target=self.killer_loop, args=(done, state), daemon=True)
        for t in threads:
            t.start()
        killer.start()
        for t in threads:
            t.join(max(1, deadline + 15 - time.monotonic()))
        done.set()
        killer.join(30)
        self.assertIsNone(state["error"], state["error"])
        self.assertFalse(any(t.is_alive() for t in threads), "client threads still running")
        elapsed = time.monotonic() - start
        if not self.d.running():
            self.d.start()
        self.assertEqual(self.d.stop(), 0, self.d.log_tail())

        acked = [m for m in msgs if m.acked]
        retried = [m for m in msgs if m.attempts > 1]
        perm = [m for m in msgs if m.perm is not None]
        tmp_left = len(self.d.all_files("tmp"))
        print("\ncrash: %d kills in %.1fs, %d/%d acknowledged, %d retried, %d left in tmp/"
              % (state["kills"], elapsed, len(acked), len(msgs), len(retried), tmp_left))
        sys.stdout.flush()
        self.assertEqual(perm, [], "5xx answers: %r" % [(m.msgid, m.perm) for m in perm[:5]])
        self.assertGreaterEqual(state["kills"], KILLS_MIN, "the daemon was not killed often enough "
                                "for the test to mean anything")

        # what is on disk
        copies = {}
        bad = []
        for sub in ("new", "cur"):
            for path in self.d.files(sub):
                with open(path, "rb") as f:
                    data = f.read()
                m = re.search(rb"^Message-ID: (<crash-[^>]+@clients\.test>)$", data, re.M)
                msg = by_id.get(m.group(1).decode()) if m else None
                if msg is None:
                    bad.append("stray file %s: %r" % (path, data[:200]))
                    continue
                if not (data.endswith(msg.body) and data.startswith(
                        b"Return-Path: <c%02d@clients.test>\nDelivered-To: demo@example.test\n"
                        % msg.client)):
                    bad.append("partial or altered file %s (%d bytes, want >%d)"
                               % (path, len(data), len(msg.body)))
                    continue
                rid = re.search(rb"\) with ESMTP id ([0-9A-Z]{16})\n", data)
                copies.setdefault(msg.msgid, []).append(rid.group(1).decode() if rid else None)
        self.assertEqual(bad, [], "\n".join(bad[:10]))

        problems = []
        for m in msgs:
            ids = copies.get(m.msgid, [])
            if m.acked and m.attempts == 1 and len(ids) != 1:
                problems.append("%s acked at first attempt, %d copies" % (m.msgid, len(ids)))
            elif m.acked and not 1 <= len(ids) <= m.attempts:
                problems.append("%s acked after %d attempts, %d copies"
                                % (m.msgid, m.attempts, len(ids)))
            elif not m.acked and len(ids) > m.attempts:
                problems.append("%s never acked, %d attempts, %d copies"
                                % (m.msgid, m.attempts, len(ids)))
            if m.acked and m.txid not in ids:
                problems.append("%s: the acknowledged copy (id %s) is not on disk (have %s)"
                                % (m.msgid, m.txid, ids))
        twice = sum(1 for ids in copies.values() if len(ids) > 1)
        print("crash: %d files checked, %d retried messages stored more than once"
              % (sum(len(ids) for ids in copies.values()), twice))
        self.assertEqual(problems, [], "\n".join(problems[:20]))
        # the system recovered every time: every message got its 250
        self.assertEqual(len(acked), len(msgs), "%d messages never acknowledged"
                         % (len(msgs) - len(acked)))


if __name__ == "__main__":
    mxtest.main(budget=230)

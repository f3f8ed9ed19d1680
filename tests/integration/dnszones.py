"""dnszones — a real DNS server for the dnsbl tests: unbound, on loopback.

Unbound (Debian's package, scripts/install-deps) is started by the test in a
temp dir with a config of its own, on a free loopback port, in the
foreground (-d), and stopped by PID. It serves the test zones as local data
(`local-zone ... static`: a name not listed is NXDOMAIN; `redirect`: every
name under the zone has the zone's own records), and forwards two zones to
sockets of this process:

- a "blackhole": a bound UDP socket that is never read, so queries for that
  zone get no answer at all (the list times out);
- a "servfail" responder: a thread that answers every query with SERVFAIL,
  which unbound passes on.

A small stub resolver (query()) checks the server before the daemon uses it.
Only the standard library is used; nothing leaves the loopback interface.
"""

import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time

UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"


def free_udp_port():
    """A UDP port that is free on 127.0.0.1 now (and whose TCP twin is too)."""
    for _ in range(50):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()
    raise RuntimeError("no free port")


def _encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def query(port, name, qtype=1, timeout=2.0):
    """One UDP query to 127.0.0.1:port: (rcode, [answer rdata bytes])."""
    qid = random.randrange(65536)
    pkt = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + _encode_name(name) + \
        struct.pack(">HH", qtype, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(pkt, ("127.0.0.1", port))
        data, _ = s.recvfrom(4096)
    finally:
        s.close()
    rid, flags, qd, an, _, _ = struct.unpack(">HHHHHH", data[:12])
    pos = 12

    def skip_name(p):
        while True:
            n = data[p]
            if n == 0:
                return p + 1
            if n & 0xC0:
                return p + 2
            p += n + 1

    for _ in range(qd):
        pos = skip_name(pos) + 4
    answers = []
    for _ in range(an):
        pos = skip_name(pos)
        rtype, _, _, rdlen = struct.unpack(">HHIH", data[pos:pos + 10])
        pos += 10
        if rtype == qtype:
            answers.append(data[pos:pos + rdlen])
        pos += rdlen
    return flags & 0xF, answers


class _ServfailResponder(threading.Thread):
    """Answers every query on its socket with SERVFAIL (the question echoed)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False

    def run(self):
        while not self.stopping:
            try:
                data, addr = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            if len(data) < 12:
                continue
            qid, flags = struct.unpack(">HH", data[:4])
            # QR, the opcode and RD kept, RA, rcode 2; the question only
            hdr = struct.pack(">HHHHHH", qid, 0x8000 | (flags & 0x7900) | 0x0080 | 2,
                              1, 0, 0, 0)
            try:
                self.sock.sendto(hdr + data[12:], addr)
            except OSError:
                pass

    def stop(self):
        self.stopping = True
        self.join(2)
        self.sock.close()


class Unbound:
    """unbound on 127.0.0.1:<free port> serving `zones`.

    zones: {zone: ("static" | "redirect", [RR text without the zone's
    suffix handled by the caller, e.g. "2.0.0.127.bl.test. 300 A 127.0.0.2";
    TXT data in double quotes, split in strings of up to 255 octets: the
    record is then given to unbound in single quotes)}.
    blackhole_zones / servfail_zones: zones forwarded to a socket that never
    answers / to the SERVFAIL responder. log_queries: unbound logs every
    query it gets ("info: 127.0.0.1 NAME. A IN"), for the cache test."""

    def __init__(self, zones, blackhole_zones=(), servfail_zones=(), log_queries=False):
        self.dir = tempfile.mkdtemp(prefix="mxtest-unbound-")
        self.port = free_udp_port()
        self.blackhole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.blackhole.bind(("127.0.0.1", 0))
        self.servfail = _ServfailResponder()
        self.servfail.start()
        self.logpath = os.path.join(self.dir, "unbound.log")
        conf = [
            "server:",
            "\tinterface: 127.0.0.1@%d" % self.port,
            "\tport: %d" % self.port,
            "\tdo-ip6: no",
            "\tdo-tcp: yes",
            "\taccess-control: 127.0.0.0/8 allow",
            "\tdo-not-query-localhost: no",
            '\tusername: ""',
            '\tchroot: ""',
            '\tdirectory: "%s"' % self.dir,
            '\tpidfile: "%s"' % os.path.join(self.dir, "unbound.pid"),
            '\tlogfile: "%s"' % self.logpath,
            "\tuse-syslog: no",
            "\tverbosity: 1",
            "\tlog-queries: %s" % ("yes" if log_queries else "no"),
            '\tmodule-config: "iterator"',
            "\tnum-threads: 1",
            "\tso-reuseport: no",
            "\toutgoing-range: 64",
            "\tcache-max-negative-ttl: 1",
            "\tcache-max-ttl: 1",
            "\tinfra-host-ttl: 1",
            "\tserve-expired: no",
            "\tminimal-responses: yes",
            # no root hints are reachable here: nothing else is resolved
            '\troot-hints: ""',
        ]
        for zone, (kind, records) in zones.items():
            conf.append('\tlocal-zone: "%s." %s' % (zone, kind))
            for rr in records:
                # TXT data has double quotes of its own: single-quote those
                if '"' in rr:
                    conf.append("\tlocal-data: '%s'" % rr)
                else:
                    conf.append('\tlocal-data: "%s"' % rr)
        for zone in blackhole_zones:
            conf.append('\tlocal-zone: "%s." transparent' % zone)
        for zone in servfail_zones:
            conf.append('\tlocal-zone: "%s." transparent' % zone)
        conf.append("remote-control:")
        conf.append("\tcontrol-enable: no")
        for zone in blackhole_zones:
            conf += ["forward-zone:", '\tname: "%s."' % zone,
                     "\tforward-addr: 127.0.0.1@%d" % self.blackhole.getsockname()[1]]
        for zone in servfail_zones:
            conf += ["forward-zone:", '\tname: "%s."' % zone,
                     "\tforward-addr: 127.0.0.1@%d" % self.servfail.port]
        self.conf = os.path.join(self.dir, "unbound.conf")
        with open(self.conf, "w") as f:
            f.write("\n".join(conf) + "\n")
        chk = subprocess.run(["unbound-checkconf", self.conf], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, universal_newlines=True, timeout=30)
        if chk.returncode != 0:
            raise RuntimeError("unbound-checkconf: %s" % chk.stdout)
        self.proc = subprocess.Popen([UNBOUND, "-d", "-c", self.conf],
                                     stdin=subprocess.DEVNULL,
                                     stdout=open(os.path.join(self.dir, "stdout"), "wb"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("unbound exited with %d: %s" % (self.proc.returncode,
                                                                   self.log()))
            try:
                query(self.port, "localhost", timeout=0.3)
                break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("unbound did not answer within 10 s: %s" % self.log())
            time.sleep(0.05)

    def log(self):
        try:
            with open(self.logpath, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None
        self.servfail.stop()
        self.blackhole.close()
        shutil.rmtree(self.dir, ignore_errors=True)

"""Attackers for meshgate's flood tests (tests/tests/floods.rs).

Started with one JSON argument:
  {"mode": "idle" | "slow_head" | "slow_tls" | "slow_tls_head" | "h2_idle"
           | "handshakes" | "slow_reader",
   "addr": "127.0.0.1:PORT", "host": "details.bookinfo.svc.cluster.local",
   "duration": 12.0,
   "sources": {"127.0.0.2": 1500, "127.0.0.3": 800},   # connections to hold
   "threads": 8}                                          # handshakes only

Connection-holding modes keep the given number of connections open from
each source address for `duration` seconds, opening replacements (at most
once a second per source) for those the gateway closes:
  idle           connect and send nothing;
  slow_head      plaintext HTTP/1.1, one byte of the request head every 0.5 s;
  slow_tls       a TLS record header, then one ClientHello byte every 0.5 s;
  slow_tls_head  a complete TLS handshake, then the HTTP head as slow_head;
  h2_idle        a TLS handshake with ALPN h2, the HTTP/2 preface and an
                 empty SETTINGS frame, then nothing (no stream ever);
  slow_reader    a complete request for a large response, then never read.
`handshakes` runs `threads` concurrent `openssl s_time -new` loops that
complete TLS handshakes (no client certificate) and close, as fast as they
can.

Prints one JSON object: what was achieved (max_open, opened, connect
errors), how the gateway ended connections (closed, closed within 0.5 s,
the longest a connection lived, including those still open at the end) and
for handshakes the number completed.
"""

import json
import re
import resource
import selectors
import socket
import ssl
import subprocess
import sys
import time

FAST_CLOSE = 0.5
DRIP_EVERY = 0.5
BATCH = 25


def tls_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def hold(cfg):
    mode = cfg["mode"]
    host, port = cfg["addr"].rsplit(":", 1)
    port = int(port)
    sel = selectors.DefaultSelector()
    ctx = tls_context()
    h2_ctx = tls_context()
    h2_ctx.set_alpn_protocols(["h2"])
    head = ("GET /details/0 HTTP/1.1\r\nHost: %s\r\nUser-Agent: slowloris\r\n"
            "X-Padding: %s\r\n\r\n" % (cfg["host"], "a" * 200)).encode()
    big = ("GET /big HTTP/1.1\r\nHost: %s\r\n\r\n" % cfg["host"]).encode()
    # A TLS handshake record header announcing 512 bytes that never all come.
    tls_prefix = bytes([0x16, 0x03, 0x01, 0x02, 0x00])
    stats = {"opened": 0, "connect_errors": 0, "closed": 0, "closed_fast": 0,
             "max_lifetime": 0.0, "max_open": 0, "open_at_end": 0}
    conns = {}  # socket -> [source, opened_at, bytes of the head sent]
    have = {src: 0 for src in cfg["sources"]}
    last_topup = {src: 0.0 for src in cfg["sources"]}
    topping = {src: False for src in cfg["sources"]}

    def closed(s, now):
        src, t0, _ = conns.pop(s)
        have[src] -= 1
        try:
            sel.unregister(s)
        except (KeyError, ValueError):
            pass
        s.close()
        life = now - t0
        stats["closed"] += 1
        if life < FAST_CLOSE:
            stats["closed_fast"] += 1
        stats["max_lifetime"] = max(stats["max_lifetime"], life)

    def open_one(src):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # IP_BIND_ADDRESS_NO_PORT: pick the port at connect, so that
            # thousands of binds do not search the port space.
            s.setsockopt(socket.SOL_IP, 24, 1)
            s.bind((src, 0))
            s.settimeout(3)
            if mode == "slow_reader":
                # Small buffers: the gateway's writes stall sooner.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect((host, port))
            if mode == "slow_tls_head":
                s = ctx.wrap_socket(s, server_hostname=cfg["host"])
            elif mode == "h2_idle":
                s = h2_ctx.wrap_socket(s, server_hostname=cfg["host"])
                if s.selected_alpn_protocol() != "h2":
                    raise OSError("the gateway did not choose h2")
                s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                          + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
            elif mode == "slow_tls":
                s.sendall(tls_prefix)
            elif mode == "slow_reader":
                s.sendall(big)
            s.setblocking(False)
        except OSError:
            stats["connect_errors"] += 1
            s.close()
            return
        stats["opened"] += 1
        conns[s] = [src, time.time(), 0]
        have[src] += 1
        sel.register(s, selectors.EVENT_READ)

    end = time.time() + float(cfg["duration"])
    next_drip = time.time()
    while time.time() < end:
        now = time.time()
        for src, want in cfg["sources"].items():
            # A top-up round at most once a second, in batches, so that
            # closes are noticed (and timed) while a round is under way.
            if have[src] < want and (topping[src] or now - last_topup[src] >= 1.0):
                if not topping[src]:
                    last_topup[src] = now
                for _ in range(min(BATCH, want - have[src])):
                    open_one(src)
                topping[src] = have[src] < want
        stats["max_open"] = max(stats["max_open"], len(conns))
        for key, _ in sel.select(timeout=0.05):
            s = key.fileobj
            if mode == "slow_reader":
                # Never read the response; only notice the close. A
                # readable socket with data is left alone (select keeps
                # reporting it, so stop watching it).
                try:
                    data = s.recv(1, socket.MSG_PEEK)
                except (BlockingIOError, ssl.SSLWantReadError):
                    continue
                except OSError:
                    data = b""
                if data:
                    sel.unregister(s)
                    continue
                closed(s, time.time())
                continue
            try:
                data = s.recv(4096)
            except (BlockingIOError, ssl.SSLWantReadError):
                continue
            except OSError:
                data = b""
            if not data:
                closed(s, time.time())
        if mode in ("slow_head", "slow_tls", "slow_tls_head") and time.time() >= next_drip:
            next_drip = time.time() + DRIP_EVERY
            for s, st in list(conns.items()):
                if mode == "slow_tls":
                    byte = b"\x01"
                else:
                    # Never the end of the head: stop one byte short.
                    byte = head[st[2]:st[2] + 1] if st[2] < len(head) - 1 else b"a"
                try:
                    s.send(byte)
                    st[2] += 1
                except (BlockingIOError, ssl.SSLWantWriteError):
                    pass
                except OSError:
                    closed(s, time.time())
    now = time.time()
    stats["open_at_end"] = len(conns)
    for s, (_, t0, _) in conns.items():
        stats["max_lifetime"] = max(stats["max_lifetime"], now - t0)
        s.close()
    return stats


def handshakes(cfg):
    """`threads` concurrent `openssl s_time` loops: full TLS handshakes (new
    session each time, no client certificate) at C speed."""
    procs = [
        subprocess.Popen(
            ["openssl", "s_time", "-connect", cfg["addr"], "-new",
             "-time", str(int(float(cfg["duration"])))],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(int(cfg["threads"]))
    ]
    counts = {"handshakes": 0, "errors": 0}
    for p in procs:
        out, _ = p.communicate()
        # "1644 connections in 5 real seconds, ..."
        m = re.search(r"(\d+) connections in \d+ real seconds", out)
        if m:
            counts["handshakes"] += int(m.group(1))
        else:
            counts["errors"] += 1
    return counts


def main():
    cfg = json.loads(sys.argv[1])
    # Thousands of sockets: the soft open-file limit is often 1024.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    out = handshakes(cfg) if cfg["mode"] == "handshakes" else hold(cfg)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

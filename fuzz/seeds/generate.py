#!/usr/bin/env python3
"""Writes the hand-made seeds of the data-plane, CSR, enrollment and admin
targets into corpus/<target>/ (run from fuzz/: `python3 seeds/generate.py`).

Needs `openssl` (real ClientHellos and CSRs). The committed corpus is these
seeds merged with what a 10-minute run found (see README.md); rerun this only
when a target's input layout changes.
"""
import os
import socket
import struct
import subprocess
import tempfile
import threading

OPEN = "open.fuzz.svc.cluster.local"
STRICT = "strict.fuzz.svc.cluster.local"
AUTHZ = "authz.fuzz.svc.cluster.local"
PASS = "passthrough.fuzz.svc.cluster.local"
STRICT_TCP = "strict-tcp.fuzz.svc.cluster.local"
PRODUCTPAGE = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage"


def write(target, name, data):
    d = os.path.join("corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def client_hello(sni, alpn):
    """The first bytes `openssl s_client` sends (its ClientHello)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    got = {}

    def accept():
        c, _ = srv.accept()
        c.settimeout(3)
        buf = b""
        try:
            while True:
                chunk = c.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) >= 5 and len(buf) >= 5 + struct.unpack(">H", buf[3:5])[0]:
                    break
        except socket.timeout:
            pass
        got["hello"] = buf
        c.close()

    t = threading.Thread(target=accept)
    t.start()
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3"]
    if sni:
        cmd += ["-servername", sni]
    else:
        cmd += ["-noservername"]
    if alpn:
        cmd += ["-alpn", alpn]
    subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
    t.join()
    srv.close()
    return got["hello"]


def http1(host, extra=b""):
    return (b"GET /productpage?x=1 HTTP/1.1\r\nHost: " + host.encode() +
            b"\r\nuser-agent: fuzz\r\n" + extra + b"\r\n")


def h2_request(authority):
    """HTTP/2 prior-knowledge preface + SETTINGS + one GET (HPACK literals)."""
    def frame(kind, flags, stream, payload):
        return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload

    def lit(name, value):  # literal without indexing, new name
        return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value

    block = b"\x82\x86\x84" + lit(b":authority", authority.encode()) + \
        lit(b"x-forwarded-client-cert", b"URI=spiffe://evil/ns/x/sa/y")
    return (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"") +
            frame(1, 0x05, 1, block))


def csr(key_alg, san):
    with tempfile.TemporaryDirectory() as d:
        key = os.path.join(d, "k.pem")
        if key_alg == "ec":
            subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key], check=True)
        else:
            subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", key], check=True)
        out = subprocess.run(["openssl", "req", "-new", "-key", key, "-subj", "/CN=fuzz",
                              "-addext", f"subjectAltName={san}", "-outform", "DER"],
                             check=True, capture_output=True)
        return out.stdout


def main():
    # tls_sniff: byte 0 = listener (0 http, 1 tcp-sni, 2 tcp-passthrough, 3 tcp-strict).
    hellos = {
        "open_h2": client_hello(OPEN, "h2,http/1.1"),
        "strict": client_hello(STRICT, "http/1.1"),
        "nosni": client_hello(None, None),
        "passthrough": client_hello(PASS, None),
        "strict_tcp": client_hello(STRICT_TCP, None),
    }
    write("tls_sniff", "http_open_h2", b"\x00" + hellos["open_h2"])
    write("tls_sniff", "http_strict", b"\x00" + hellos["strict"])
    write("tls_sniff", "http_nosni", b"\x00" + hellos["nosni"])
    write("tls_sniff", "tcp_sni_passthrough", b"\x01" + hellos["passthrough"])
    write("tls_sniff", "tcp_sni_strict", b"\x01" + hellos["strict_tcp"])
    write("tls_sniff", "tcp_passthrough_plain", b"\x02hello legacy device\n")
    write("tls_sniff", "tcp_passthrough_tls", b"\x02" + hellos["nosni"])
    write("tls_sniff", "tcp_strict_plain", b"\x03hello\n")
    write("tls_sniff", "http_plain_open", b"\x00" + http1(OPEN))
    write("tls_sniff", "http_plain_strict", b"\x00" + http1(STRICT))
    write("tls_sniff", "http_h2_prior", b"\x00" + h2_request(OPEN))
    hello = hellos["open_h2"]
    write("tls_sniff", "http_split_record", b"\x00" + hello[:5] + hello[5:40])

    # http_head: byte 0 = client | sni << 2 | alpn << 4.
    evil = (b"x-forwarded-client-cert: By=spiffe://cluster.local/ns/x/sa/y;URI=" + PRODUCTPAGE.encode() +
            b"\r\nconnection: close, x-drop\r\nx-drop: 1\r\nkeep-alive: 5\r\nte: trailers\r\n"
            b"upgrade: websocket\r\nproxy-authorization: Basic eA==\r\nx-forwarded-for: 10.0.0.1\r\n")
    write("http_head", "plain_open", b"\x00" + http1(OPEN, evil))
    write("http_head", "plain_strict", b"\x00" + http1(STRICT))
    write("http_head", "plain_authz", b"\x00" + http1(AUTHZ))
    write("http_head", "plain_absolute", b"\x00GET http://" + STRICT.encode() + b"/ HTTP/1.1\r\nHost: " + OPEN.encode() + b"\r\n\r\n")
    write("http_head", "plain_post_body", b"\x00POST / HTTP/1.1\r\nHost: " + OPEN.encode() +
          b"\r\ncontent-length: 5\r\n\r\nhello")
    write("http_head", "plain_chunked", b"\x00POST / HTTP/1.1\r\nHost: " + OPEN.encode() +
          b":9080\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    write("http_head", "plain_h2", b"\x00" + h2_request(OPEN))
    write("http_head", "tls_nocert_sni_open_host_strict", bytes([1 | 0 << 2 | 1 << 4]) + http1(STRICT))
    write("http_head", "mtls_pp_authz", bytes([2 | 2 << 2 | 1 << 4]) + http1(AUTHZ, evil))
    write("http_head", "mtls_sleep_authz", bytes([3 | 2 << 2 | 1 << 4]) + http1(AUTHZ))
    write("http_head", "mtls_pp_strict_h2", bytes([2 | 1 << 2 | 2 << 4]) + h2_request(STRICT))
    write("http_head", "mtls_sleep_nosni_keepalive", bytes([3 | 3 << 2 | 1 << 4]) + http1(OPEN) + http1(STRICT) + http1(AUTHZ))

    # xfcc: "<URI SAN>\n<client XFCC value>".
    write("xfcc", "productpage", PRODUCTPAGE.encode() + b"\nBy=spiffe://evil;URI=spiffe://cluster.local/ns/a/sa/b")
    write("xfcc", "foreign_td", b"spiffe://evil.example/ns/a/sa/b\n")
    write("xfcc", "not_workload", b"spiffe://cluster.local/x/y\nHash=00")
    write("xfcc", "quoted", b'spiffe://cluster.local/ns/a/sa/b\nBy="a;b,c";URI=x')

    # csr: byte 0 = mode, byte 1 = lifetime in hours (0 = default).
    write("csr", "raw_ec", b"\x00\x00" + csr("ec", "URI:spiffe://cluster.local/ns/other/sa/admin"))
    write("csr", "raw_ed25519_24h", b"\x00\x18" + csr("ed25519", "DNS:evil.example"))
    write("csr", "built_p256", b"\x01\x00admin\nu:spiffe://cluster.local/ns/kube-system/sa/root\nd:evil.example\nca")
    write("csr", "built_p384_pem", b"\x82\x02x\nu:spiffe://cluster.local/ns/fuzz/sa/authorised")
    write("csr", "built_ed25519", b"\x03\x00cn")

    # admin_json: byte 0 = endpoint, byte 1 = credentials, "<param>\n<query>\n<body>".
    pol = (b"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: foo}\n"
           b"spec: {mtls: {mode: STRICT}}\n")
    cases = [
        ("apply", 0, b"\n\n" + pol),
        ("apply_dry", 0, b"\ndryRun=true\n" + pol),
        ("delete_yaml", 1, b"\n\n" + pol),
        ("get_policy", 2, b"PeerAuthentication/foo/p\n\n"),
        ("delete_policy", 3, b"PeerAuthentication/foo/p\n\n"),
        ("service", 6, b"details.bookinfo.svc.cluster.local\nport=9080\n"),
        ("issue", 7, b'\n\n{"spiffe_id":"spiffe://cluster.local/ns/a/sa/b","csr_pem":"-----BEGIN CERTIFICATE REQUEST-----\\nMA==\\n-----END CERTIFICATE REQUEST-----\\n","ttl_secs":3600}'),
        ("revoke", 8, b'\n\n{"spiffe_id":"spiffe://cluster.local/ns/a/sa/b","reason":"fuzz"}'),
        ("rotate_root", 9, b'\n\n{"force":false}'),
        ("login", 11, b'\n\n{"token":"mgt_wrong"}'),
        ("mode", 12, b'bookinfo\n\n{"mode":"STRICT"}'),
        ("preview", 13, b"bookinfo\nmode=STRICT\n"),
        ("audit", 15, b"\nafter=0&limit=5\n"),
        ("edge_create", 17, b'\n\n{"namespace":"edge","name":"n1","ttlSeconds":3600,"listeners":[{"listenPort":8080,"host":"details.bookinfo.svc.cluster.local","port":9080}]}'),
        ("edge_listeners", 19, b'n1\n\n{"listeners":[]}'),
        ("edge_revoke", 20, b'n1\n\n{"reason":"lost"}'),
    ]
    for name, ep, rest in cases:
        write("admin_json", name, bytes([ep, 0]) + rest)
    write("admin_json", "unauthenticated_apply", bytes([0, 4]) + b"\n\n" + pol)
    write("admin_json", "wrong_token_revoke", bytes([8, 5]) + b'\n\n{"spiffe_id":"spiffe://cluster.local/ns/a/sa/b"}')

    # enroll: byte 0 = flags, then the wire frames of the golden fixtures.
    for name in ("enroll_request", "renew_request"):
        with open(os.path.join("corpus", "wire_frame", name), "rb") as f:
            frames = f.read()[1:]  # drop wire_frame's chunk-size byte
        for flags in (0, 1, 3):
            write("enroll", f"{name}_{flags}", bytes([flags]) + frames)


if __name__ == "__main__":
    main()

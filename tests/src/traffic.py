"""Continuous client traffic for meshgate end-to-end tests.

Started by the Rust harness (meshgate_e2e::Traffic) with one JSON argument:
  {"addr": "127.0.0.1:PORT", "host": "details.bookinfo.svc.cluster.local",
   "path": "/details/0", "duration": 20.0, "stop_file": "/tmp/x/stop",
   "clients": [{"name": "plain", "tls": false},
               {"name": "mtls", "tls": true, "cert_dir": "/tmp/x/current",
                "verify": true}]}

Every client is a thread that sends one request per new connection (so the
connection's local port identifies the request in the gateway's access log)
until `duration` seconds have passed or `stop_file` exists. One JSON line per
request goes to stdout: client, t0/t1 (wall clock, seconds), lport, status
(null when no HTTP response arrived), error, peer_serial (hex serial of the
certificate the gateway served), cert_dir (the resolved directory whose
client certificate was used).

`cert_dir` may be a symlink that the test swaps atomically to re-issued
certificates: it is resolved once per request and chain.pem + key.pem (and
ca.pem when verifying) are read from the resolved directory, so a request
never mixes two issuances.
"""

import http.client
import json
import os
import socket
import ssl
import sys
import threading
import time


def der_serial(der):
    """The serial number of a DER certificate, as lowercase hex."""

    def tlv(buf, i):
        tag = buf[i]
        length = buf[i + 1]
        i += 2
        if length & 0x80:
            n = length & 0x7F
            length = int.from_bytes(buf[i:i + n], "big")
            i += n
        return tag, i, length

    _, i, _ = tlv(der, 0)  # Certificate
    _, i, _ = tlv(der, i)  # TBSCertificate
    tag, j, length = tlv(der, i)
    if tag == 0xA0:  # [0] version
        i = j + length
        tag, j, length = tlv(der, i)
    # Leading zero bytes (DER sign padding) dropped, as meshgate prints it.
    return der[j:j + length].lstrip(b"\x00").hex()


def one_request(cfg, client):
    host, port = cfg["addr"].rsplit(":", 1)
    out = {"client": client["name"], "t0": time.time(), "lport": None,
           "status": None, "error": None, "peer_serial": None,
           "cert_dir": None}
    sock = None
    try:
        sock = socket.create_connection((host, int(port)), timeout=5)
        out["lport"] = sock.getsockname()[1]
        if client.get("tls"):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            d = None
            if client.get("cert_dir"):
                d = os.path.realpath(client["cert_dir"])
                out["cert_dir"] = d
                ctx.load_cert_chain(os.path.join(d, "chain.pem"),
                                    os.path.join(d, "key.pem"))
            if client.get("verify"):
                ca = client.get("ca") or os.path.join(d, "ca.pem")
                ctx.load_verify_locations(ca)
            else:
                ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(sock, server_hostname=cfg["host"])
            out["peer_serial"] = der_serial(sock.getpeercert(binary_form=True))
        req = ("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: meshgate-e2e\r\n"
               "Connection: close\r\n\r\n" % (cfg["path"], cfg["host"]))
        sock.sendall(req.encode())
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        resp.read()
        out["status"] = resp.status
    except Exception as e:  # every failure is data for the test
        out["error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
    out["t1"] = time.time()
    return out


def main():
    cfg = json.loads(sys.argv[1])
    end = time.time() + float(cfg["duration"])
    stop_file = cfg.get("stop_file")
    lock = threading.Lock()

    def run(client):
        pause = float(client.get("pause", 0.0))
        while time.time() < end and not (stop_file and os.path.exists(stop_file)):
            line = json.dumps(one_request(cfg, client))
            with lock:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            if pause:
                time.sleep(pause)

    threads = [threading.Thread(target=run, args=(c,)) for c in cfg["clients"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""HTTP/1.1 file server used as a real kernel-TCP peer in xdpmesh namespace tests.

    GET  /blob?size=N&seed=S   streams N deterministic pseudo-random bytes
    PUT  /upload (or POST)     reads the body, answers {"sha256": hex, "length": n}
    GET  /healthz              answers "ok"

The blob stream (must match `xdpmesh_netns::blob_sha256` in Rust) is the first N bytes of
what random.Random(seed).randbytes(65536) returns call after call: MT19937 output words,
little-endian. CPython makes it at C speed (64 MiB in about 0.4 s).
"""

import argparse
import hashlib
import json
import random
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

CHUNK = 65536


def blob_rng(seed):
    return random.Random(seed)


def blob_chunk(rng):
    return rng.randbytes(CHUNK)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "xdpmesh-fileserver/1"

    def log_message(self, fmt, *args):  # one line per request on stderr
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    def send_small(self, code, body, ctype="application/json"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/healthz":
            self.send_small(200, "ok\n", "text/plain")
            return
        if url.path != "/blob":
            self.send_small(404, '{"error":"not found"}\n')
            return
        query = parse_qs(url.query)
        try:
            size = int(query.get("size", ["0"])[0])
            seed = int(query.get("seed", ["0"])[0])
            if size < 0 or seed < 0 or seed >= 1 << 64:
                raise ValueError("out of range")
        except ValueError as exc:
            self.send_small(400, json.dumps({"error": str(exc)}) + "\n")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        rng = blob_rng(seed)
        left = size
        while left > 0:
            chunk = blob_chunk(rng)
            if left < CHUNK:
                chunk = chunk[:left]
            self.wfile.write(chunk)
            left -= len(chunk)

    def read_body(self, digest):
        length = 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return length
                left = size
                while left > 0:
                    data = self.rfile.read(min(left, 1 << 20))
                    if not data:
                        raise EOFError("body ended early")
                    digest.update(data)
                    left -= len(data)
                    length += len(data)
                self.rfile.readline()
        left = int(self.headers.get("Content-Length", "0"))
        while left > 0:
            data = self.rfile.read(min(left, 1 << 20))
            if not data:
                raise EOFError("body ended early")
            digest.update(data)
            left -= len(data)
            length += len(data)
        return length

    def do_PUT(self):
        if urlsplit(self.path).path != "/upload":
            self.send_small(404, '{"error":"not found"}\n')
            return
        digest = hashlib.sha256()
        try:
            length = self.read_body(digest)
        except (EOFError, ValueError) as exc:
            self.close_connection = True
            self.send_small(400, json.dumps({"error": str(exc)}) + "\n")
            return
        self.send_small(200, json.dumps({"sha256": digest.hexdigest(), "length": length}) + "\n")

    do_POST = do_PUT


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def server_bind(self):
        if self.address_family == socket.AF_INET6:
            # One socket for both families, whatever net.ipv6.bindv6only says.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--bind", default="0.0.0.0",
                        help="address to listen on; '::' listens on IPv6 and IPv4 (dual stack)")
    args = parser.parse_args()
    if ":" in args.bind:
        Server.address_family = socket.AF_INET6
    server = Server((args.bind, args.port), Handler)
    sys.stderr.write("fileserver listening on %s:%d\n" % (args.bind, args.port))
    sys.stderr.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Independent HBONE client (HTTP/2 CONNECT over mutual TLS 1.3), for interop tests.

Written from the HBONE contract in docs/ARCHITECTURE.md ("HBONE contract"), not from
xdpmesh's code, behaving like ztunnel's outbound side: TLS 1.3 only, ALPN "h2" required,
no SNI, no session resumption, the server chain verified against --ca and its URI SAN
checked against --expect-san (DNS names ignored).  On one connection it opens --streams
CONNECT streams (:method CONNECT, :authority IP:PORT, no :scheme/:path, headers
forwarded/baggage/traceparent), waits for :status 200, sends --bytes bytes of a
deterministic per-stream pattern, ends the stream and checks that the echo it reads back
until END_STREAM is byte-exact.

Prints one JSON line on stdout:
  {"streams":K,"ok":N,"failed":M,"statuses":[200,...],"bytes":B,"peer_san":"spiffe://..",
   "tls_version":"TLSv1.3","alpn":"h2","cipher":"..","elapsed_s":T,"errors":["..."]}
"statuses" has one entry per stream in order (null when no response arrived); "bytes" is
the total number of echoed bytes verified.  Exit status 0 only when every stream got
200 and a byte-exact echo; 1 otherwise (TLS/SAN/ALPN failure, non-200, mismatch, timeout).
"""

import argparse
import asyncio
import hashlib
import ipaddress
import json
import os
import ssl
import sys
import time

try:
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events
    import h2.exceptions
    import h2.settings
except ImportError:  # pragma: no cover
    sys.stderr.write("hbone_client: the python 'h2' package is required (pip install 'h2>=4,<5')\n")
    sys.exit(2)

STREAM_WINDOW = 4 * 1024 * 1024
CONN_WINDOW = 16 * 1024 * 1024
MAX_FRAME = 1024 * 1024
PATTERN_PERIOD = 65521  # prime, so the pattern does not line up with frame/record sizes
SEND_CHUNK = 256 * 1024


def pattern_block(index):
    out = bytearray()
    ctr = 0
    while len(out) < PATTERN_PERIOD:
        out += hashlib.sha256(b"hbone-stream-%d-%d" % (index, ctr)).digest()
        ctr += 1
    block = bytes(out[:PATTERN_PERIOD])
    # repeated so that any SEND_CHUNK bytes starting inside the first period are one slice
    return block * (SEND_CHUNK // PATTERN_PERIOD + 2)


def pattern_slice(block, offset, n):
    """n (<= SEND_CHUNK) bytes of the pattern starting at absolute offset."""
    start = offset % PATTERN_PERIOD
    return block[start:start + n]


def parse_hostport(s):
    if s.startswith("["):
        end = s.find("]")
        if end < 0 or s[end + 1:end + 2] != ":":
            raise ValueError("bad bracketed address %r" % s)
        host, port = s[1:end], s[end + 2:]
    else:
        host, sep, port = s.rpartition(":")
        if not sep:
            raise ValueError("%r has no port" % s)
    ipaddress.ip_address(host)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("bad port in %r" % s)
    return host, int(port)


def fmt_addr(host, port):
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def uri_sans(cert_dict):
    return [v for (k, v) in (cert_dict or {}).get("subjectAltName", ()) if k == "URI"]


class StreamState:
    def __init__(self, index):
        self.index = index
        self.sid = None
        self.status = None
        self.response = asyncio.Event()
        self.inbox = asyncio.Queue()  # (data, flow_len); (b"", 0) END; (None, code) RESET
        self.reset_code = None
        self.error = None
        self.verified = 0


class Client:
    def __init__(self, args):
        self.args = args
        self.result = {
            "streams": args.streams, "ok": 0, "failed": args.streams,
            "statuses": [None] * args.streams, "bytes": 0, "peer_san": None,
            "tls_version": None, "alpn": None, "cipher": None, "elapsed_s": None, "errors": [],
        }
        self.conn = None
        self.writer = None
        self.streams = {}
        self.window_cond = asyncio.Condition()
        self.dead = None  # reason the connection died

    def err(self, msg):
        self.result["errors"].append(msg)

    def make_ctx(self):
        a = self.args
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False  # identity is the URI SAN, checked below
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=a.ca)
        ctx.load_cert_chain(a.cert, a.key)
        ctx.set_alpn_protocols(["h2"])
        return ctx

    def flush(self):
        data = self.conn.data_to_send()
        if data and not self.dead and not self.writer.is_closing():
            self.writer.write(data)

    async def drain(self):
        try:
            await self.writer.drain()
        except (ConnectionError, OSError, ssl.SSLError):
            pass

    async def notify(self):
        async with self.window_cond:
            self.window_cond.notify_all()

    async def run(self):
        a = self.args
        host, port = parse_hostport(a.connect)
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=self.make_ctx(), server_hostname="",  # "" = no SNI
                ssl_handshake_timeout=a.timeout, limit=SEND_CHUNK)
        except ssl.SSLCertVerificationError as exc:
            self.err("tls: server certificate rejected: %s" % (exc.verify_message or exc,))
            return
        except ssl.SSLError as exc:
            self.err("tls: handshake failed: %s" % (exc,))
            return
        except (ConnectionError, OSError) as exc:  # includes TimeoutError
            self.err("connect %s: %s" % (a.connect, str(exc) or type(exc).__name__))
            return
        self.writer = writer
        sslobj = writer.get_extra_info("ssl_object")
        self.result["tls_version"] = sslobj.version()
        self.result["alpn"] = sslobj.selected_alpn_protocol()
        self.result["cipher"] = sslobj.cipher()[0]
        sans = uri_sans(sslobj.getpeercert())
        match = [s for s in sans if s in a.expect_san]
        self.result["peer_san"] = match[0] if match else (sans[0] if sans else None)
        problem = None
        if self.result["tls_version"] != "TLSv1.3":
            problem = "tls: negotiated %s, want TLSv1.3" % self.result["tls_version"]
        elif self.result["alpn"] != "h2":
            problem = "alpn: server selected %r, want 'h2'" % (self.result["alpn"],)
        elif not match:
            problem = "san: server URI SANs %s do not include expected %s" % (
                sans, " or ".join(a.expect_san))
        if problem:
            self.err(problem)
            writer.close()
            return
        try:
            await self.talk(reader, writer)
        finally:
            writer.transport.abort()

    async def talk(self, reader, writer):
        a = self.args
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 64 * 1024,
        })
        # H2Connection derives this from local_settings in __init__; keep it in step.
        self.conn.max_inbound_frame_size = MAX_FRAME
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONN_WINDOW - 65535)
        self.flush()
        local = writer.get_extra_info("sockname")
        forwarded_for = a.forwarded_for or fmt_addr(local[0], local[1])
        self.forwarded_for = forwarded_for
        states = [StreamState(i) for i in range(a.streams)]
        self.states = states
        self.got_settings = asyncio.Event()
        reader_task = asyncio.create_task(self.read_loop(reader))
        try:
            # Learn the server's MAX_CONCURRENT_STREAMS before opening streams.
            await self.got_settings.wait()
            await asyncio.gather(*(self.run_stream(st) for st in states))
        finally:
            reader_task.cancel()
            try:
                await reader_task
            except asyncio.CancelledError:
                pass
        for st in states:
            self.result["statuses"][st.index] = st.status
            self.result["bytes"] += st.verified
            if st.error:
                self.err("stream %d (id %s): %s" % (st.index, st.sid, st.error))
        ok = sum(1 for st in states if st.error is None)
        self.result["ok"] = ok
        self.result["failed"] = a.streams - ok
        try:
            self.conn.close_connection()
            self.flush()
            await asyncio.wait_for(self.drain(), 1)
        except Exception:
            pass

    async def read_loop(self, reader):
        try:
            while True:
                try:
                    data = await reader.read(SEND_CHUNK)
                except ssl.SSLError as exc:
                    self.dead = "tls: %s (server refused our certificate?)" % (exc,)
                    break
                except (ConnectionError, OSError) as exc:
                    self.dead = "connection error: %s" % (exc,)
                    break
                if not data:
                    self.dead = "server closed the connection"
                    break
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    self.dead = "h2 protocol error: %s" % (exc,)
                    self.flush()
                    break
                for ev in events:
                    st = self.streams.get(getattr(ev, "stream_id", None))
                    if isinstance(ev, h2.events.ResponseReceived):
                        if st is not None:
                            hdrs = dict(ev.headers)
                            try:
                                st.status = int(hdrs.get(":status"))
                            except (TypeError, ValueError):
                                st.status = hdrs.get(":status")
                            st.response.set()
                    elif isinstance(ev, h2.events.DataReceived):
                        if st is not None:
                            st.inbox.put_nowait((ev.data, ev.flow_controlled_length))
                        else:
                            self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        if st is not None:
                            st.inbox.put_nowait((b"", 0))
                            st.response.set()
                        await self.notify()  # a stream slot may have freed up
                    elif isinstance(ev, h2.events.StreamReset):
                        if st is not None:
                            st.reset_code = ev.error_code
                            st.inbox.put_nowait((None, ev.error_code))
                            st.response.set()
                        await self.notify()
                    elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                        if isinstance(ev, h2.events.RemoteSettingsChanged):
                            self.got_settings.set()
                        await self.notify()
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        if ev.error_code != h2.errors.ErrorCodes.NO_ERROR:
                            self.dead = "GOAWAY %s" % (ev.error_code,)
                # no drain() here: a reader blocked on its own send buffer deadlocks
                self.flush()
        finally:
            if self.dead:
                for st in self.streams.values():
                    st.inbox.put_nowait((None, "connection: " + self.dead))
                    st.response.set()
                self.got_settings.set()
            await self.notify()

    async def send_all(self, st):
        a = self.args
        block = pattern_block(st.index)
        sent = 0
        while sent < a.bytes:
            want = min(a.bytes - sent, SEND_CHUNK)
            async with self.window_cond:
                while True:
                    if self.dead:
                        raise RuntimeError("connection died while sending: %s" % self.dead)
                    if st.reset_code is not None:
                        raise RuntimeError("stream reset by server (%s) after %d bytes sent" % (st.reset_code, sent))
                    try:
                        win = self.conn.local_flow_control_window(st.sid)
                    except h2.exceptions.StreamClosedError:
                        raise RuntimeError("stream closed by server after %d bytes sent" % sent)
                    if win > 0:
                        break
                    await self.window_cond.wait()
            n = min(want, win, self.conn.max_outbound_frame_size)
            self.conn.send_data(st.sid, pattern_slice(block, sent, n))
            sent += n
            self.flush()
            await self.drain()
        self.conn.end_stream(st.sid)
        self.flush()
        await self.notify()
        await self.drain()

    async def recv_all(self, st):
        a = self.args
        block = pattern_block(st.index)
        got = 0
        while True:
            data, flow = await st.inbox.get()
            if data is None:
                raise RuntimeError("stream reset (%s) after %d/%d echoed bytes" % (flow, got, a.bytes))
            if data == b"":
                break
            n = len(data)
            if got + n > a.bytes:
                raise RuntimeError("echo longer than sent: %d > %d bytes" % (got + n, a.bytes))
            pos = 0
            while pos < n:
                k = min(n - pos, SEND_CHUNK)
                if data[pos:pos + k] != pattern_slice(block, got + pos, k):
                    exp = pattern_slice(block, got + pos, k)
                    i = next(j for j in range(k) if data[pos + j] != exp[j])
                    raise RuntimeError("echo mismatch at byte %d: got 0x%02x want 0x%02x"
                                       % (got + pos + i, data[pos + i], exp[i]))
                pos += k
            got += n
            st.verified = got
            self.conn.acknowledge_received_data(flow, st.sid)
            self.flush()
        if got != a.bytes:
            raise RuntimeError("echo ended early: %d/%d bytes" % (got, a.bytes))

    async def open_stream(self, st):
        """Sends the CONNECT, waiting for a slot under the server's MAX_CONCURRENT_STREAMS."""
        a = self.args
        async with self.window_cond:
            while (not self.dead and self.conn.open_outbound_streams
                   >= self.conn.remote_settings.max_concurrent_streams):
                await self.window_cond.wait()
            if self.dead:
                raise RuntimeError("connection died before the stream opened: %s" % self.dead)
            st.sid = self.conn.get_next_available_stream_id()
            traceparent = "00-%s-%s-01" % (os.urandom(16).hex(), os.urandom(8).hex())
            headers = [
                (":method", "CONNECT"),
                (":authority", a.authority),
                ("forwarded", 'for="%s"' % self.forwarded_for),
                ("baggage", a.baggage),
                ("traceparent", traceparent),
            ] + a.header
            self.streams[st.sid] = st
            self.conn.send_headers(st.sid, headers)
            self.flush()
        await self.drain()

    async def run_stream(self, st):
        try:
            await self.open_stream(st)
            await st.response.wait()
            if st.status is None:
                if st.reset_code is not None:
                    st.error = "reset (%s) before any response" % (st.reset_code,)
                else:
                    st.error = "no response: %s" % (self.dead or "stream ended without headers")
                return
            if st.status != 200:
                st.error = "server answered :status %s" % st.status
                return
            results = await asyncio.gather(self.send_all(st), self.recv_all(st), return_exceptions=True)
            errs = [str(r) for r in results if isinstance(r, BaseException)]
            if errs:
                st.error = "; ".join(errs)
        except RuntimeError as exc:
            st.error = str(exc)
        except Exception as exc:  # report, never crash
            st.error = "internal: %r" % (exc,)


def parse_header(s):
    name, sep, value = s.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError("header must be NAME:VALUE")
    return (name.strip().lower(), value.strip())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connect", required=True, help="IP:15008 of the HBONE server")
    p.add_argument("--authority", required=True, help=":authority, the inner destination IP:PORT")
    p.add_argument("--cert", required=True, help="client certificate chain (PEM)")
    p.add_argument("--key", required=True, help="client private key (PEM)")
    p.add_argument("--ca", required=True, help="mesh root(s) (PEM)")
    p.add_argument("--expect-san", required=True, action="append",
                   help="server must present this URI SAN (repeat to accept any of several)")
    p.add_argument("--forwarded-for", help='value for forwarded: for="..." (default: our local IP:port)')
    p.add_argument("--baggage", default="k8s.cluster.name=Kubernetes,k8s.namespace.name=default,"
                   "k8s.deployment.name=hbone-client,service.name=hbone-client,service.version=v1")
    p.add_argument("--header", action="append", default=[], type=parse_header, metavar="NAME:VALUE",
                   help="extra request header; repeatable")
    p.add_argument("--bytes", type=int, default=1024, help="bytes to send per stream")
    p.add_argument("--streams", type=int, default=1, help="concurrent CONNECT streams")
    p.add_argument("--timeout", type=float, default=30.0, help="overall deadline, seconds")
    args = p.parse_args()
    try:
        parse_hostport(args.connect)
        parse_hostport(args.authority)
    except ValueError as exc:
        p.error(str(exc))
    if args.streams < 1 or args.bytes < 0:
        p.error("--streams must be >= 1 and --bytes >= 0")

    client = Client(args)

    async def go():
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(client.run(), timeout=args.timeout)
        except asyncio.TimeoutError:
            client.err("timeout after %gs" % args.timeout)
            for st in client.streams.values():
                client.result["statuses"][st.index] = st.status
                client.result["bytes"] += st.verified
        client.result["elapsed_s"] = round(time.monotonic() - t0, 6)
    asyncio.run(go())
    r = client.result
    print(json.dumps(r))
    sys.stdout.flush()
    sys.exit(0 if (r["ok"] == args.streams and r["failed"] == 0 and not r["errors"]) else 1)


if __name__ == "__main__":
    main()

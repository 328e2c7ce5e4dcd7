#!/usr/bin/env python3
"""Independent HBONE server (HTTP/2 CONNECT over mutual TLS 1.3), for interop tests.

Written from the HBONE contract in docs/ARCHITECTURE.md ("HBONE contract"), not from
xdpmesh's code, so that it can stand in for ztunnel's inbound side:

  * TLS 1.3 only, ALPN "h2" required, a client certificate chained to --ca is required
    and its URI SAN must be a SPIFFE id in --trust-domain (exactly --expect-client-san
    when given).  Refused connections are logged with the reason and closed.
  * Each stream must be an ordinary CONNECT: pseudo-headers exactly :method=CONNECT and
    :authority=IP:PORT ([v6]:PORT); anything else is answered 400 (an error response
    carries END_STREAM and is followed by RST_STREAM(NO_ERROR)).
  * mode echo: 200 right away, every DATA byte is echoed back, END_STREAM once the
    client's END_STREAM was seen.
  * mode upstream: TCP connect to the authority (port replaced by --upstream-port when
    given); 200 only once connected, 503 when the connect fails or the target port is one
    of 15001/15006/15008; then bytes are spliced both ways with half-close
    (END_STREAM <-> TCP FIN).

One JSON line per request goes to --log (default stdout), with "event":"request":
  {"event":"request","ts":..,"conn":N,"stream_id":S,"peer":"ip:port","local":"ip:port",
   "method":"CONNECT","authority":"ip:port","forwarded":..,"baggage":..,"traceparent":..,
   "client_san":"spiffe://..","status":200,"reason":null,"warnings":[..]}
plus "stream_end" lines (bytes_in/bytes_out/result), "conn_refused" lines (reason) and
"listening"/"shutdown" lines.  SIGTERM/SIGINT: stop accepting, GOAWAY, drain, exit 0.
"""

import argparse
import asyncio
import ipaddress
import itertools
import json
import re
import signal
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
    sys.stderr.write("hbone_server: the python 'h2' package is required (pip install 'h2>=4,<5')\n")
    sys.exit(2)

# ztunnel's HTTP/2 parameters (docs/ARCHITECTURE.md, "HBONE contract")
STREAM_WINDOW = 4 * 1024 * 1024
CONN_WINDOW = 16 * 1024 * 1024
MAX_FRAME = 1024 * 1024
MAX_CONCURRENT_STREAMS = 200
FORBIDDEN_TARGET_PORTS = {15001, 15006, 15008}
READ_CHUNK = 256 * 1024

SPIFFE_RE = re.compile(r"^spiffe://([^/]+)/ns/([^/]+)/sa/([^/]+)$")
TRACEPARENT_RE = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
FORWARDED_FOR_RE = re.compile(r'^for="?([^";]+)"?$')


class Logger:
    def __init__(self, path):
        self.fh = open(path, "a", buffering=1) if path else sys.stdout

    def log(self, event, **fields):
        rec = {"event": event, "ts": round(time.time(), 6)}
        rec.update(fields)
        self.fh.write(json.dumps(rec, sort_keys=False) + "\n")
        self.fh.flush()


def fmt_addr(addr):
    if not addr:
        return None
    host, port = addr[0], addr[1]
    if ":" in host:
        return "[%s]:%d" % (host, port)
    return "%s:%d" % (host, port)


def parse_hostport(s):
    """'1.2.3.4:80' or '[::1]:80' -> (ip_address, port); raises ValueError."""
    if s.startswith("["):
        end = s.find("]")
        if end < 0 or s[end + 1:end + 2] != ":":
            raise ValueError("bad bracketed authority %r" % s)
        host, port = s[1:end], s[end + 2:]
        ip = ipaddress.ip_address(host)
        if ip.version != 6:
            raise ValueError("brackets around a non-IPv6 address in %r" % s)
    else:
        host, sep, port = s.rpartition(":")
        if not sep or not host:
            raise ValueError("authority %r has no port" % s)
        ip = ipaddress.ip_address(host)
        if ip.version != 4:
            raise ValueError("IPv6 authority %r must be bracketed" % s)
    if not port.isdigit():
        raise ValueError("bad port in %r" % s)
    p = int(port)
    if not 0 < p < 65536:
        raise ValueError("port out of range in %r" % s)
    return ip, p


def uri_sans(cert_dict):
    return [v for (k, v) in (cert_dict or {}).get("subjectAltName", ()) if k == "URI"]


def make_ssl_context(args):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["h2"])
    ctx.options |= ssl.OP_NO_TICKET  # ztunnel clients do not resume
    return ctx


class TLSStream:
    """TLS over a plain asyncio stream through memory BIOs.

    Used instead of StreamWriter.start_tls() because (a) bytes the StreamReader buffered
    before start_tls() (a fast client's ClientHello) would be lost and the handshake would
    hang, and (b) handshake failures must be caught here so they can be logged.  All
    writes are synchronous into the transport; only explicit drain() waits.
    """

    def __init__(self, reader, writer, ctx):
        self.reader = reader
        self.writer = writer
        self.inc = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_side=True)

    def _flush(self):
        data = self.out.read()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def _fill(self):
        data = await self.reader.read(READ_CHUNK)
        if data:
            self.inc.write(data)
            return True
        self.inc.write_eof()
        return False

    async def handshake(self):
        try:
            while True:
                try:
                    self.obj.do_handshake()
                    return
                except ssl.SSLWantReadError:
                    self._flush()
                    if not await self._fill():
                        raise ConnectionResetError("peer closed the connection during the handshake")
        finally:
            self._flush()  # the server's flight, or the alert explaining a refusal

    async def read(self, n):
        """Plaintext bytes; b"" at EOF (close_notify or TCP FIN)."""
        while True:
            try:
                data = self.obj.read(n)
                self._flush()
                return data
            except ssl.SSLWantReadError:
                self._flush()
                if not await self._fill():
                    try:
                        return self.obj.read(n)
                    except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ssl.SSLWantReadError):
                        return b""
            except ssl.SSLZeroReturnError:
                return b""

    def write(self, data):
        if not self.writer.is_closing():
            self.obj.write(data)
            self._flush()

    def is_closing(self):
        return self.writer.is_closing()

    async def drain(self):
        await self.writer.drain()

    async def close(self):
        try:
            self.obj.unwrap()  # queues close_notify
        except (ssl.SSLError, ValueError, OSError):
            pass
        self._flush()
        self.writer.close()
        await self.writer.wait_closed()


class Stream:
    def __init__(self, sid):
        self.sid = sid
        self.inbox = asyncio.Queue()  # bytes chunks (with flow len), b"" for END, None for RESET
        self.bytes_in = 0
        self.bytes_out = 0
        self.reset_by_peer = None
        self.task = None


class H2ServerConn:
    def __init__(self, server, reader, writer, conn_id):
        self.server = server
        self.args = server.args
        self.log = server.logger.log
        self.writer = writer
        self.tls = TLSStream(reader, writer, server.ssl_ctx)
        self.conn_id = conn_id
        self.peer = fmt_addr(writer.get_extra_info("peername"))
        self.local_addr = writer.get_extra_info("sockname")
        self.local = fmt_addr(self.local_addr)
        self.client_san = None
        self.sni = None
        self.streams = {}
        self.window_cond = asyncio.Condition()
        self.closed = False
        self.conn = None

    # ---- plumbing -------------------------------------------------------------------
    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.tls.write(data)

    async def drain(self):
        try:
            await self.writer.drain()
        except (ConnectionError, OSError, ssl.SSLError):
            pass

    async def notify_window(self):
        async with self.window_cond:
            self.window_cond.notify_all()

    async def send_data(self, st, data, end_stream):
        """Sends data respecting both flow-control windows; False if the stream died."""
        view = memoryview(data)
        while len(view):
            async with self.window_cond:
                while True:
                    if self.closed or st.reset_by_peer is not None:
                        return False
                    try:
                        win = self.conn.local_flow_control_window(st.sid)
                    except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                        return False
                    if win > 0:
                        break
                    await self.window_cond.wait()
            n = min(win, len(view), self.conn.max_outbound_frame_size)
            try:
                self.conn.send_data(st.sid, bytes(view[:n]))
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                return False
            st.bytes_out += n
            view = view[n:]
            self.flush()
            await self.drain()
        if end_stream:
            try:
                self.conn.end_stream(st.sid)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                return False
            self.flush()
            await self.drain()
        return True

    def ack(self, st, n):
        if n and not self.closed:
            try:
                self.conn.acknowledge_received_data(n, st.sid)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                pass
            self.flush()

    def reset(self, st, code):
        try:
            self.conn.reset_stream(st.sid, error_code=code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        self.flush()

    async def respond_error(self, st, status):
        try:
            self.conn.send_headers(st.sid, [(":status", str(status))], end_stream=True)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self.reset(st, h2.errors.ErrorCodes.NO_ERROR)
        await self.drain()

    # ---- connection --------------------------------------------------------------------
    async def run(self):
        conn_log = dict(conn=self.conn_id, peer=self.peer, local=self.local)
        # TLS handshake (done here, not by start_server, so refusals can be logged)
        self.server.handshaking += 1
        try:
            await asyncio.wait_for(self.tls.handshake(), timeout=self.args.handshake_timeout)
        except asyncio.TimeoutError:
            self.log("conn_refused", reason="tls handshake timeout", **conn_log)
            self.writer.transport.abort()
            return
        except (ssl.SSLError, ConnectionError, OSError) as exc:
            self.log("conn_refused", reason="tls handshake failed: %s" % (exc,), **conn_log)
            await self.close_transport()
            return
        finally:
            self.server.handshaking -= 1
        sslobj = self.tls.obj
        self.sni = self.server.sni_by_obj.pop(id(sslobj), None)
        version = sslobj.version()
        alpn = sslobj.selected_alpn_protocol()
        cert = sslobj.getpeercert()
        sans = uri_sans(cert)
        reason = None
        if version != "TLSv1.3":
            reason = "tls version %s, want TLSv1.3" % version
        elif alpn != "h2":
            reason = "alpn %r negotiated, want 'h2' (client did not offer h2)" % (alpn,)
        elif not cert:
            reason = "no client certificate"
        else:
            spiffe = [s for s in sans if s.startswith("spiffe://")]
            if not spiffe:
                reason = "client certificate has no SPIFFE URI SAN (URI SANs: %s)" % (sans,)
            else:
                in_td = [s for s in spiffe if (m := SPIFFE_RE.match(s)) and m.group(1) == self.args.trust_domain]
                if not in_td:
                    reason = "client SAN(s) %s not of the form spiffe://%s/ns/<ns>/sa/<sa>" % (
                        spiffe, self.args.trust_domain)
                elif self.args.expect_client_san and self.args.expect_client_san not in in_td:
                    reason = "client SAN(s) %s != expected %s" % (in_td, self.args.expect_client_san)
                else:
                    self.client_san = self.args.expect_client_san or in_td[0]
        if reason:
            self.log("conn_refused", reason=reason, tls_version=version, alpn=alpn,
                     client_sans=sans, sni=self.sni, **conn_log)
            await self.close_transport()
            return
        self.log("conn_accepted", client_san=self.client_san, tls_version=version, alpn=alpn,
                 cipher=sslobj.cipher()[0], sni=self.sni,
                 client_serial=(cert or {}).get("serialNumber"), **conn_log)

        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8",
                                        validate_inbound_headers=False,
                                        normalize_inbound_headers=False)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 64 * 1024,
        })
        # H2Connection derives this from local_settings in __init__; keep it in step.
        self.conn.max_inbound_frame_size = MAX_FRAME
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONN_WINDOW - 65535)
        self.flush()
        self.server.conns.add(self)
        try:
            await self.read_loop()
        finally:
            self.server.conns.discard(self)
            await self.teardown()

    async def read_loop(self):
        while True:
            try:
                data = await self.tls.read(READ_CHUNK)
            except (ConnectionError, OSError, ssl.SSLError) as exc:
                self.log("conn_error", conn=self.conn_id, peer=self.peer, reason="read: %s" % (exc,))
                return
            if not data:
                return
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                self.log("conn_error", conn=self.conn_id, peer=self.peer,
                         reason="h2 protocol error: %s" % (exc,))
                self.flush()
                return
            window_changed = False
            for ev in events:
                if isinstance(ev, h2.events.RequestReceived):
                    st = Stream(ev.stream_id)
                    self.streams[ev.stream_id] = st
                    st.task = asyncio.create_task(self.handle_stream(st, ev.headers))
                elif isinstance(ev, h2.events.DataReceived):
                    st = self.streams.get(ev.stream_id)
                    if st is None:
                        self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        continue
                    st.bytes_in += len(ev.data)
                    st.inbox.put_nowait((ev.data, ev.flow_controlled_length))
                elif isinstance(ev, h2.events.StreamEnded):
                    # h2 emits StreamEnded after the RequestReceived/DataReceived that ended it
                    st = self.streams.get(ev.stream_id)
                    if st is not None:
                        st.inbox.put_nowait((b"", 0))
                elif isinstance(ev, h2.events.StreamReset):
                    st = self.streams.get(ev.stream_id)
                    if st is not None:
                        st.reset_by_peer = ev.error_code
                        st.inbox.put_nowait((None, 0))
                    window_changed = True
                elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                    window_changed = True
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    self.log("conn_goaway", conn=self.conn_id, peer=self.peer,
                             error_code=str(ev.error_code), last_stream_id=ev.last_stream_id)
            # Never await drain() here: if both peers' readers waited for their own
            # send buffers to empty, neither would read and both would stall.
            self.flush()
            if window_changed:
                await self.notify_window()

    async def teardown(self):
        self.closed = True
        for st in list(self.streams.values()):
            if st.task and not st.task.done():
                st.reset_by_peer = st.reset_by_peer if st.reset_by_peer is not None else "connection closed"
                st.inbox.put_nowait((None, 0))
        await self.notify_window()
        tasks = [st.task for st in self.streams.values() if st.task]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
            for t in tasks:
                t.cancel()
        await self.close_transport()

    async def close_transport(self):
        try:
            await asyncio.wait_for(self.tls.close(), timeout=2)
        except (ConnectionError, OSError, ssl.SSLError, asyncio.TimeoutError):
            self.writer.transport.abort()

    def goaway(self):
        if self.conn is not None and not self.closed:
            try:
                self.conn.close_connection()
            except h2.exceptions.ProtocolError:
                pass
            self.flush()

    # ---- streams -------------------------------------------------------------------------
    def validate_request(self, headers):
        """Returns (status, reason, fields, target) where status is None when acceptable."""
        pseudo = {}
        regular = {}
        warnings = []
        dup = []
        for name, value in headers:
            if name.startswith(":"):
                if name in pseudo:
                    dup.append(name)
                pseudo[name] = value
            else:
                if name != name.lower():
                    return 400, "uppercase header name %r" % name, {}, None, warnings
                regular.setdefault(name, []).append(value)
        fields = {
            "method": pseudo.get(":method"),
            "authority": pseudo.get(":authority"),
            "forwarded": ",".join(regular["forwarded"]) if "forwarded" in regular else None,
            "baggage": ",".join(regular["baggage"]) if "baggage" in regular else None,
            "traceparent": ",".join(regular["traceparent"]) if "traceparent" in regular else None,
        }
        if dup:
            return 400, "duplicate pseudo-headers %s" % dup, fields, None, warnings
        if pseudo.get(":method") != "CONNECT":
            return 400, "method %r is not CONNECT" % (pseudo.get(":method"),), fields, None, warnings
        extra = sorted(set(pseudo) - {":method", ":authority"})
        if extra:
            return 400, "CONNECT carries forbidden pseudo-headers %s" % extra, fields, None, warnings
        auth = pseudo.get(":authority")
        if not auth:
            return 400, "missing :authority", fields, None, warnings
        try:
            ip, port = parse_hostport(auth)
        except ValueError as exc:
            return 400, "unparsable :authority: %s" % (exc,), fields, None, warnings
        if self.args.expect_authority and auth != self.args.expect_authority:
            return 400, ":authority %r != expected %r" % (auth, self.args.expect_authority), fields, None, warnings
        if self.args.strict_dst_ip:
            local_ip = ipaddress.ip_address(self.local_addr[0])
            if getattr(local_ip, "ipv4_mapped", None):
                local_ip = local_ip.ipv4_mapped
            if ip != local_ip:
                return 400, ":authority IP %s != accepted address %s" % (ip, local_ip), fields, None, warnings
        for name, value in self.args.expect_header:
            got = regular.get(name)
            if got is None:
                return 400, "missing header %r (expected %r)" % (name, value), fields, None, warnings
            if value is not None and ",".join(got) != value:
                return 400, "header %r = %r, expected %r" % (name, ",".join(got), value), fields, None, warnings
        # Non-fatal conformance notes (ztunnel always sends these).
        fwd = fields["forwarded"]
        if fwd is None:
            warnings.append("no forwarded header")
        else:
            first = fwd.split(";")[0].strip()
            m = FORWARDED_FOR_RE.match(first)
            if not m:
                warnings.append("forwarded %r does not start with for=\"ip:port\"" % fwd)
            else:
                try:
                    parse_hostport(m.group(1))
                except ValueError:
                    warnings.append("forwarded for= value %r is not ip:port" % m.group(1))
        tp = fields["traceparent"]
        if tp is None:
            warnings.append("no traceparent header")
        elif not TRACEPARENT_RE.match(tp):
            warnings.append("malformed traceparent %r" % tp)
        if fields["baggage"] is None:
            warnings.append("no baggage header")
        target_port = self.args.upstream_port or port
        return None, None, fields, (str(ip), target_port), warnings

    async def handle_stream(self, st, headers):
        status, reason, fields, target, warnings = self.validate_request(headers)
        rec = dict(conn=self.conn_id, stream_id=st.sid, peer=self.peer, local=self.local)
        rec.update(fields)
        rec["client_san"] = self.client_san
        upstream = None
        if status is None and self.args.force_status:
            status, reason = self.args.force_status, "forced by --force-status"
        if status is None and self.args.mode == "upstream":
            if target[1] in FORBIDDEN_TARGET_PORTS:
                status, reason = 503, "target port %d is a mesh port" % target[1]
            else:
                try:
                    upstream = await asyncio.wait_for(asyncio.open_connection(target[0], target[1]),
                                                      timeout=self.args.connect_timeout)
                except (OSError, asyncio.TimeoutError) as exc:
                    status, reason = 503, "connect %s failed: %s" % (fmt_addr(target), exc or "timeout")
            rec["upstream"] = fmt_addr(target)
        if status is None:
            status = 200
        rec.update(status=status, reason=reason, warnings=warnings)
        self.log("request", **rec)
        if st.reset_by_peer is not None and status == 200:
            # peer gave up while we were connecting
            if upstream:
                upstream[1].transport.abort()
            return
        if status != 200:
            await self.respond_error(st, status)
            self.drop(st)
            return
        try:
            self.conn.send_headers(st.sid, [(":status", "200")])
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            if upstream:
                upstream[1].transport.abort()
            return
        self.flush()
        await self.drain()
        t0 = time.monotonic()
        if self.args.mode == "echo":
            result = await self.echo(st)
        else:
            result = await self.splice(st, *upstream)
        self.log("stream_end", conn=self.conn_id, stream_id=st.sid, authority=fields["authority"],
                 bytes_in=st.bytes_in, bytes_out=st.bytes_out, result=result,
                 reset_by_peer=str(st.reset_by_peer) if st.reset_by_peer is not None else None,
                 secs=round(time.monotonic() - t0, 6))
        self.drop(st)

    def drop(self, st):
        self.streams.pop(st.sid, None)

    async def echo(self, st):
        while True:
            data, flow = await st.inbox.get()
            if data is None:
                return "reset by peer"
            if data == b"":
                ok = await self.send_data(st, b"", True)
                return "ok" if ok else "stream died while ending"
            ok = await self.send_data(st, data, False)
            self.ack(st, flow)
            if not ok:
                return "stream died while echoing"

    async def splice(self, st, ureader, uwriter):
        down_done = asyncio.Event()

        async def h2_to_tcp():
            while True:
                data, flow = await st.inbox.get()
                if data is None:
                    return "reset by peer"
                if data == b"":
                    try:
                        if uwriter.can_write_eof():
                            uwriter.write_eof()
                    except (OSError, RuntimeError):
                        pass
                    return "eof"
                try:
                    uwriter.write(data)
                    await uwriter.drain()
                except (ConnectionError, OSError) as exc:
                    self.ack(st, flow)
                    return "upstream write: %s" % exc
                self.ack(st, flow)

        async def tcp_to_h2():
            try:
                while True:
                    try:
                        data = await ureader.read(READ_CHUNK)
                    except (ConnectionError, OSError) as exc:
                        self.reset(st, h2.errors.ErrorCodes.CANCEL)
                        return "upstream read: %s" % exc
                    if not data:
                        ok = await self.send_data(st, b"", True)
                        return "eof" if ok else "stream died while ending"
                    if not await self.send_data(st, data, False):
                        return "stream died"
            finally:
                down_done.set()

        up_task = asyncio.create_task(h2_to_tcp())
        down_task = asyncio.create_task(tcp_to_h2())
        up = await up_task
        if up == "reset by peer":
            uwriter.transport.abort()
            down_task.cancel()
            try:
                await down_task
            except asyncio.CancelledError:
                pass
            return "reset by peer"
        down = await down_task
        if up != "eof":
            uwriter.transport.abort()
        else:
            uwriter.close()
        return "ok" if (up == "eof" and down == "eof") else "up=%s down=%s" % (up, down)


class Server:
    def __init__(self, args):
        self.args = args
        self.logger = Logger(args.log)
        self.ssl_ctx = make_ssl_context(args)
        self.sni_by_obj = {}
        self.ssl_ctx.sni_callback = self._sni
        self.conns = set()
        self.ids = itertools.count(1)
        self.tasks = set()
        self.handshaking = 0

    def _sni(self, sslobj, name, ctx):
        if name is not None:
            self.sni_by_obj[id(sslobj)] = name
        return None

    async def on_client(self, reader, writer):
        c = H2ServerConn(self, reader, writer, next(self.ids))
        task = asyncio.current_task()
        self.tasks.add(task)
        try:
            await c.run()
        except Exception as exc:  # never let one connection kill the server
            self.logger.log("conn_error", conn=c.conn_id, peer=c.peer, reason="internal: %r" % (exc,))
            writer.transport.abort()
        finally:
            self.tasks.discard(task)

    async def main(self):
        host, _, port = self.args.listen.rpartition(":")
        host = host.strip("[]")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        srv = await asyncio.start_server(self.on_client, host, int(port), backlog=1024,
                                         reuse_address=True, limit=READ_CHUNK)
        self.logger.log("listening", listen=self.args.listen, mode=self.args.mode,
                        trust_domain=self.args.trust_domain)
        if self.args.ready_file:
            with open(self.args.ready_file, "w") as f:
                f.write("ready\n")
        await stop.wait()
        # Stop accepting; let in-flight streams finish for up to --grace seconds; then
        # GOAWAY(NO_ERROR) and close whatever is left.  (hyper-h2 treats a sent GOAWAY as
        # the end of the connection, so it is sent only once streams are drained.)
        srv.close()
        deadline = time.monotonic() + self.args.grace
        while time.monotonic() < deadline and (self.handshaking or any(c.streams for c in self.conns)):
            await asyncio.sleep(0.05)
        streams_cut = sum(len(c.streams) for c in self.conns)
        for c in list(self.conns):
            c.goaway()
        pending = [t for t in self.tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        for c in list(self.conns):
            c.writer.transport.abort()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
            for t in pending:
                t.cancel()
        self.logger.log("shutdown", connections_open=len(pending), streams_cut=streams_cut)


def parse_expect_header(s):
    name, sep, value = s.partition("=")
    return (name.strip().lower(), value if sep else None)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="0.0.0.0:15008", help="IP:PORT to listen on")
    p.add_argument("--cert", required=True, help="server certificate chain (PEM)")
    p.add_argument("--key", required=True, help="server private key (PEM)")
    p.add_argument("--ca", required=True, help="mesh root(s) that client certs must chain to (PEM)")
    p.add_argument("--trust-domain", required=True, help="client SPIFFE SAN must be in this trust domain")
    p.add_argument("--expect-authority", help="every :authority must equal this (else 400)")
    p.add_argument("--expect-client-san", help="client URI SAN must equal this (else refused)")
    p.add_argument("--expect-header", action="append", default=[], type=parse_expect_header,
                   metavar="NAME[=VALUE]", help="require header (exact value if given), else 400; repeatable")
    p.add_argument("--strict-dst-ip", action="store_true",
                   help="400 when the :authority IP differs from the address the connection was accepted on")
    p.add_argument("--mode", choices=["echo", "upstream"], default="echo")
    p.add_argument("--upstream-port", type=int, help="upstream mode: connect to authority IP on this port")
    p.add_argument("--force-status", type=int, help="answer every valid CONNECT with this status (e.g. 401)")
    p.add_argument("--connect-timeout", type=float, default=5.0)
    p.add_argument("--handshake-timeout", type=float, default=10.0)
    p.add_argument("--grace", type=float, default=5.0, help="seconds to drain on SIGTERM")
    p.add_argument("--log", help="append JSON lines here (default stdout)")
    p.add_argument("--ready-file", help="written once the listener is up")
    args = p.parse_args()
    if args.force_status is not None and not (100 <= args.force_status <= 599):
        p.error("--force-status must be an HTTP status")
    if args.expect_authority:
        try:
            parse_hostport(args.expect_authority)
        except ValueError as exc:
            p.error("--expect-authority: %s" % exc)
    try:
        asyncio.run(Server(args).main())
    except (ssl.SSLError, OSError) as exc:
        sys.stderr.write("hbone_server: %s\n" % (exc,))
        sys.exit(1)


if __name__ == "__main__":
    main()

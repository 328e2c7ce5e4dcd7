#!/usr/bin/env python3
"""asyncio echo client: N concurrent connections, each sends M bytes of a pattern that is
distinct per connection, half-closes (shutdown WR), reads until EOF and checks that the
echo is byte-exact. Prints one JSON line:

    {"connections":N,"ok":K,"failed":F,"bytes":B,"seconds":S,"errors":[first 5]}

`bytes` counts bytes echoed back correctly (sent == received). Exit status 1 if any
connection failed.

With --all-open no connection sends a byte before every connection is open (or failed
to open): all N are open at the same moment, so a gateway multiplexing them sees N
concurrent streams (the HBONE pool test counts its tunnels from that).

With --hold S each connection, once its bytes are echoed back, stays open and idle;
when every connection got there (or failed), the client prints {"held":K} and waits S
seconds, or until SIGUSR1, before each one half-closes and reads to EOF (the memory
tests measure the gateways while the connections are held).
"""

import argparse
import asyncio
import hashlib
import json
import signal
import sys
import time


def pattern(conn_id, size):
    head = conn_id.to_bytes(4, "big") + b"\xa5"
    body = hashlib.shake_128(b"xdpmesh-echo\0" + conn_id.to_bytes(8, "little")).digest(max(size, 1))
    return (head + body)[:size]


class Barrier:
    """Releases its waiters once `n` connections arrived (opened or failed to open)."""

    def __init__(self, n):
        self.left = n
        self.event = asyncio.Event()

    def arrive(self):
        self.left -= 1
        if self.left <= 0:
            self.event.set()


async def one(conn_id, host, port, size, timeout, barrier, hold):
    try:
        return await exchange(conn_id, host, port, size, timeout, barrier, hold)
    finally:
        if hold is not None:
            hold.leave(conn_id)


async def exchange(conn_id, host, port, size, timeout, barrier, hold):
    payload = pattern(conn_id, size)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    finally:
        if barrier is not None:
            barrier.arrive()
    try:
        if barrier is not None:
            await asyncio.wait_for(barrier.event.wait(), timeout)

        async def send():
            view = memoryview(payload)
            for off in range(0, len(view), 65536):
                writer.write(view[off:off + 65536])
                await writer.drain()
            writer.write_eof()  # shutdown(SHUT_WR)
            await writer.drain()

        async def receive():
            chunks = []
            while True:
                data = await reader.read(1 << 20)
                if not data:
                    return b"".join(chunks)
                chunks.append(data)

        if hold is None:
            _, echoed = await asyncio.wait_for(asyncio.gather(send(), receive()), timeout)
        else:
            writer.write(payload)
            await writer.drain()
            echoed = await asyncio.wait_for(reader.readexactly(len(payload)), timeout)
            hold.leave(conn_id)
            await hold.over.wait()
            writer.write_eof()
            rest = await asyncio.wait_for(reader.read(), timeout)
            echoed += rest
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass
    if echoed != payload:
        first = next((i for i, (a, b) in enumerate(zip(echoed, payload)) if a != b), min(len(echoed), len(payload)))
        raise ValueError("conn %d: echoed %d of %d bytes, first difference at %d" % (conn_id, len(echoed), len(payload), first))
    return len(payload)


class Hold:
    """Holds echoed connections open until all are (or failed), then `seconds` more."""

    def __init__(self, n, seconds):
        self.waiting = set(range(n))
        self.all_in = asyncio.Event()
        self.over = asyncio.Event()
        self.seconds = seconds

    def leave(self, conn_id):
        self.waiting.discard(conn_id)
        if not self.waiting:
            self.all_in.set()

    async def run(self, results):
        await self.all_in.wait()
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self.over.set)
        print(json.dumps({"held": len(results())}), flush=True)
        try:
            await asyncio.wait_for(self.over.wait(), self.seconds)
        except asyncio.TimeoutError:
            pass
        self.over.set()


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=7000)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--bytes", type=int, default=65536)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--all-open", action="store_true",
                        help="send only once every connection is open")
    parser.add_argument("--hold", type=float, default=None,
                        help="seconds to hold the echoed connections open and idle")
    args = parser.parse_args()
    barrier = Barrier(args.connections) if args.all_open else None
    hold = Hold(args.connections, args.hold) if args.hold is not None else None

    started = time.monotonic()
    tasks = [
        asyncio.ensure_future(one(i, args.host, args.port, args.bytes, args.timeout, barrier, hold))
        for i in range(args.connections)
    ]
    if hold is not None:
        # Connections still open (echoed, not failed) when all are in.
        holder = asyncio.ensure_future(
            hold.run(lambda: [t for t in tasks if not t.done()]))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    if hold is not None:
        await holder
    seconds = time.monotonic() - started
    ok = [r for r in results if not isinstance(r, BaseException)]
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    report = {
        "connections": args.connections,
        "ok": len(ok),
        "failed": len(errors),
        "bytes": sum(ok),
        "seconds": round(seconds, 6),
        "errors": errors[:5],
    }
    print(json.dumps(report), flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

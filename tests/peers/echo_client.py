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
"""

import argparse
import asyncio
import hashlib
import json
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


async def one(conn_id, host, port, size, timeout, barrier):
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

        _, echoed = await asyncio.wait_for(asyncio.gather(send(), receive()), timeout)
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


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=7000)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--bytes", type=int, default=65536)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--all-open", action="store_true",
                        help="send only once every connection is open")
    args = parser.parse_args()
    barrier = Barrier(args.connections) if args.all_open else None

    started = time.monotonic()
    results = await asyncio.gather(
        *(one(i, args.host, args.port, args.bytes, args.timeout, barrier) for i in range(args.connections)),
        return_exceptions=True,
    )
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

#!/usr/bin/env python3
"""asyncio TCP echo server: echoes every byte back and half-closes after the peer did."""

import argparse
import asyncio
import sys


async def handle(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        await writer.drain()
    except (ConnectionError, OSError) as exc:
        sys.stderr.write("echo: connection error: %r\n" % (exc,))
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int, nargs="?", default=7000)
    parser.add_argument("--bind", default="0.0.0.0",
                        help="address to listen on; '::' listens on IPv6 and IPv4 (one socket each)")
    args = parser.parse_args()
    host = None if args.bind == "::" else args.bind
    server = await asyncio.start_server(handle, host, args.port, backlog=4096, reuse_address=True)
    sys.stderr.write("echo server listening on %s:%d\n" % (args.bind, args.port))
    sys.stderr.flush()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())

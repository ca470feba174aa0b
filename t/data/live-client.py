#!/usr/bin/python3
# A WebSocket client for t/180-live.t, driven line by line on stdin.
#
#   live-client.py URL [HEADER: VALUE ...]        python3-websockets
#   live-client.py --raw-slow HOST PORT PATH      a raw socket that stops
#                                                 reading after the 101
#
# Prints one line per thing that happens:
#   OPEN 101 | REJECT STATUS           the handshake
#   MSG TEXT                           a text frame
#   PONG                               the answer to our ping
#   CLOSED CODE REASON                 the close handshake ended
# Commands on stdin: "ping", "close CODE", "quit".
# --raw-slow: "read" makes it read everything until EOF (10 s at most) and
# print "CLOSEFRAME CODE" for a close frame seen, then "EOF BYTES".

import asyncio
import base64
import os
import socket
import struct
import sys
import time


def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def ws_client(url, headers):
    import websockets

    try:
        ws = await websockets.connect(url, extra_headers=headers,
                                      ping_interval=None, max_size=2 ** 24,
                                      open_timeout=10)
    except websockets.exceptions.InvalidStatusCode as e:
        out("REJECT %d" % e.status_code)
        return
    out("OPEN 101")

    async def reader():
        try:
            async for msg in ws:
                out("MSG " + (msg if isinstance(msg, str) else "BINARY"))
        except websockets.exceptions.ConnectionClosed:
            pass
        out("CLOSED %s %s" % (ws.close_code, ws.close_reason or ""))

    task = asyncio.ensure_future(reader())
    loop = asyncio.get_event_loop()

    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "ping":
            waiter = await ws.ping(b"hello")
            try:
                await asyncio.wait_for(waiter, 10)
                out("PONG")
            except asyncio.TimeoutError:
                out("NOPONG")
        elif cmd[0] == "close":
            await ws.close(int(cmd[1]))
        elif cmd[0] == "quit":
            break

    await asyncio.wait_for(task, 15)


def raw_slow(host, port, path):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n"
               % (path, host, key)).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            out("REJECT EOF")
            return
        head += chunk
    out("OPEN " + head.split(b" ")[1].decode())

    for line in sys.stdin:
        if line.strip() == "read":
            break

    data = b""
    s.settimeout(10)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            chunk = s.recv(1 << 20)
        except (socket.timeout, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk

    # walk the frames: a close frame's code
    pos = 0
    while pos + 2 <= len(data):
        b0, b1 = data[pos], data[pos + 1]
        n = b1 & 0x7f
        hdr = 2
        if n == 126:
            if pos + 4 > len(data):
                break
            n = struct.unpack(">H", data[pos + 2:pos + 4])[0]
            hdr = 4
        elif n == 127:
            if pos + 10 > len(data):
                break
            n = struct.unpack(">Q", data[pos + 2:pos + 10])[0]
            hdr = 10
        if (b0 & 0x0f) == 8 and pos + hdr + 2 <= len(data):
            code = struct.unpack(">H", data[pos + hdr:pos + hdr + 2])[0]
            out("CLOSEFRAME %d" % code)
        pos += hdr + n
    out("EOF %d" % len(data))


def main():
    if sys.argv[1] == "--raw-slow":
        raw_slow(*sys.argv[2:5])
        return
    headers = []
    for h in sys.argv[2:]:
        k, v = h.split(":", 1)
        headers.append((k.strip(), v.strip()))
    asyncio.get_event_loop().run_until_complete(ws_client(sys.argv[1],
                                                          headers))


main()

#!/usr/bin/python3
# scripts/bench-live-body.t: N templated (or plain) clients of one tenant;
# E events published at RATE/s straight to Redis; per event: publish -> frame
# latency at every client; reports (EVALSHA calls) sent meanwhile.
import asyncio, json, socket, sys, time
import websockets

port, rport, n, e, rate, path = (int(sys.argv[1]), int(sys.argv[2]),
    int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])

def redis(*args):
    s = socket.create_connection(("127.0.0.1", rport))
    cmd = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a), a) for a in (x.encode() if isinstance(x, str) else x for x in args))
    s.sendall(cmd)
    data = b""
    s.settimeout(2)
    try:
        while True:
            c = s.recv(65536)
            if not c: break
            data += c
            if data.endswith(b"\r\n") and (data[:1] != b"$" or data.count(b"\r\n") >= 2): break
    except socket.timeout:
        pass
    s.close()
    return data.decode(errors="replace")

def evalsha():
    info = redis("INFO", "commandstats")
    for l in info.split("\r\n"):
        if l.startswith("cmdstat_evalsha:"):
            return int(l.split("calls=")[1].split(",")[0])
    return 0

async def main():
    hdr = [("X-API-Key", "bench")]
    clients = []
    for i in range(n):
        ws = await websockets.connect("ws://127.0.0.1:%d%s" % (port, path),
                                      extra_headers=hdr, ping_interval=None, max_size=2**24)
        await ws.recv()          # snapshot
        clients.append(ws)
    sent = {}
    lat = []
    got = [0] * n
    async def reader(i, ws):
        try:
            while True:
                m = await asyncio.wait_for(ws.recv(), 5)
                now = time.monotonic()
                d = json.loads(m)
                seq = d.get("ev_used", d.get("used"))
                if seq in sent:
                    lat.append(now - sent[seq])
                got[i] += 1
        except Exception:
            pass
    tasks = [asyncio.ensure_future(reader(i, ws)) for i, ws in enumerate(clients)]
    pub = socket.create_connection(("127.0.0.1", rport))
    before = evalsha()
    t0 = time.monotonic()
    for k in range(1, e + 1):
        ev = json.dumps({"type": "usage_update", "tenant_id": "bench", "metric": "a",
                         "used": k, "limit": 1000000, "remaining": 0, "percent": 0,
                         "timestamp": "2026-11-30T02:00:00Z",
                         "quota_reset_date": "2026-12-01T00:00:00Z"})
        cmd = "*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
            len("quota:events"), "quota:events", len(ev), ev)
        sent[k] = time.monotonic()
        pub.sendall(cmd.encode())
        pub.recv(64)
        delay = t0 + k / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    await asyncio.gather(*tasks)
    reports = evalsha() - before
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else -1
    print(json.dumps({"clients": n, "events": e, "rate": rate, "path": path,
                      "frames_per_client_min": min(got), "frames_per_client_max": max(got),
                      "reports": reports, "p50_ms": round(q(0.5), 3),
                      "p99_ms": round(q(0.99), 3), "max_ms": round(q(1.0), 3)}))

asyncio.get_event_loop().run_until_complete(main())

#!/usr/bin/env python3
"""Idle watches for the comparison benchmark.

  longlived.py server PORT CERT KEY
      HTTPS server on 127.0.0.1:PORT, the upstream of the watch test, speaking HTTP/2 when
      the client offers it (as the API server does; up to 1,000 streams per connection,
      its default) and HTTP/1.1 otherwise: /readyz, /livez, /healthz and /version get a
      small 200; every other request gets 200 headers and is then held open with no body
      (an idle watch) until the client goes away.
  longlived.py watches URL N PID [TOKEN]
      opens N concurrent watches on URL (one connection each; https is not verified,
      plain http for kubectl proxy), waits until every one got its 200 headers, prints one
      JSON line with the RSS of PID (and its children) before and after, then closes them.
"""
import asyncio, json, os, ssl, sys, time, urllib.parse

import h2.config, h2.connection, h2.events, h2.exceptions, h2.settings

SMALL = (b"/readyz", b"/livez", b"/healthz", b"/version")

# The gateway's impersonation self-check asks for these; an API server that does not serve
# them answers 404 (the check is then skipped), where every other path here is a watch
# held open, which would leave the check waiting and the gateway not ready.
NOT_SERVED = b"/apis/authorization.k8s.io/"


def small_body(path):
    return b'{"major":"1","minor":"32"}' if path == b"/version" else b"ok"

async def serve_h2(reader, writer):
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.local_settings = h2.settings.Settings(client=False, initial_values={
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    await writer.drain()
    while True:
        data = await reader.read(65536)
        if not data:
            return
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                headers = dict(event.headers)
                path = headers.get(b":path", b"/").split(b"?")[0]
                if path.startswith(NOT_SERVED):
                    conn.send_headers(event.stream_id, [(":status", "404"),
                        ("content-length", "0")], end_stream=True)
                elif path in SMALL:
                    body = small_body(path)
                    conn.send_headers(event.stream_id, [(":status", "200"),
                        ("content-type", "application/json"), ("content-length", str(len(body)))])
                    conn.send_data(event.stream_id, body, end_stream=True)
                else:
                    conn.send_headers(event.stream_id, [(":status", "200"),
                        ("content-type", "application/json")])
            elif isinstance(event, h2.events.ConnectionTerminated):
                return
        writer.write(conn.data_to_send())
        await writer.drain()

def rss_kb(pid):
    total = 0
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    for p in pids:
        with open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total

async def serve(port, cert, key):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    async def handle(reader, writer):
        try:
            if writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2":
                await serve_h2(reader, writer)
                return
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if path.startswith(NOT_SERVED):
                    # A review's body comes with it; this answer never reads it, so the
                    # connection closes after the 404.
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
                    await writer.drain()
                    break
                if path.split(b"?")[0] in SMALL:
                    body = small_body(path)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                    await writer.drain()
                    continue
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
                await writer.drain()
                await reader.read()  # hold until the client closes
                break
        except (asyncio.IncompleteReadError, ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=ctx, backlog=4096)
    async with server:
        await server.serve_forever()

async def watches(url, n, pid, token):
    u = urllib.parse.urlsplit(url)
    ctx = None
    if u.scheme == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
    path = u.path + ("?" + u.query if u.query else "")
    req = (f"GET {path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nAccept: application/json\r\n"
           + (f"Authorization: Bearer {token}\r\n" if token else "") + "\r\n").encode()
    sem = asyncio.Semaphore(100)
    conns, failures = [], []
    async def one():
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(u.hostname, u.port, ssl=ctx), 60)
                w.write(req)
                await w.drain()
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 60)
                status = head.split(b" ", 2)[1]
                if status != b"200":
                    failures.append(head[:200].decode(errors="replace"))
                conns.append((r, w))
            except Exception as e:  # noqa: BLE001 - counted and reported
                failures.append(repr(e))
    await asyncio.sleep(1)
    before = rss_kb(pid)
    t0 = time.time()
    await asyncio.gather(*(one() for _ in range(n)))
    opened = time.time() - t0
    await asyncio.sleep(3)  # let allocations settle
    after = rss_kb(pid)
    print(json.dumps({"watches": len(conns), "failures": len(failures),
                      "first_failure": failures[0] if failures else None,
                      "rss_before_kb": before, "rss_after_kb": after,
                      "per_watch_bytes": round((after - before) * 1024 / max(1, len(conns))),
                      "open_seconds": round(opened, 1)}))
    for r, w in conns:
        w.close()
    await asyncio.sleep(1)

if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(serve(int(sys.argv[2]), sys.argv[3], sys.argv[4]))
    else:
        asyncio.run(watches(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
                            sys.argv[5] if len(sys.argv) > 5 else None))

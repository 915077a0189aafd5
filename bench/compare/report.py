#!/usr/bin/env python3
"""Turn run.sh's raw JSON lines into the markdown report (medians across rounds, each round
of the small-object cells, and the targets table at the end)."""
import json, statistics, sys
from collections import defaultdict

raw, meta = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(raw) if l.strip()]
PATHS = ["direct", "kubectl-proxy", "nginx", "kubegate", "kubegate-nocache", "kubegate-nocache-rs256"]
med = statistics.median

cells = defaultdict(list)
for r in rows:
    if r["kind"] in ("load", "handshake", "h2", "users-1", "users-n"):
        cells[(r["kind"], r["path"], r["object"], r["conns"])].append(r)

def per(r):
    w = r["wrk"]
    secs = w["duration_us"] / 1e6
    return {"rps": w["requests"] / secs, "mbs": w["bytes"] / secs / 1e6, "p50": w["p50_us"],
            "p99": w["p99_us"], "cpu10k": r["cpu_s"] / max(1, w["requests"]) * 1e4,
            "err": w["sock_errors"] + w["status_errors"], "hwm": r["hwm_kb"], "rss": r["rss_kb"],
            "round": r["round"]}

def rounds(kind, path, obj, conns):
    """Each round of a cell, in round order."""
    return sorted((per(r) for r in cells.get((kind, path, obj, conns), [])), key=lambda x: x["round"])

def agg(kind, path, obj, conns):
    rs = cells.get((kind, path, obj, conns))
    if not rs:
        return None
    ps = [per(r) for r in rs]
    out = {k: med([p[k] for p in ps]) for k in ("rps", "mbs", "p50", "p99", "cpu10k")}
    out["err"] = sum(p["err"] for p in ps)
    out["hwm"] = max(p["hwm"] for p in ps)
    out["rss"] = ps[-1]["rss"]
    out["n"] = len(ps)
    return out

def us(v):
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} µs"

def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "–"

def section(title, intro, columns):
    """A report section: its title, an intro paragraph (if any), and a table's header rows;
    columns are names, those ending in ':' right-aligned (the ':' not shown)."""
    p("")
    p(f"### {title}")
    p("")
    if intro:
        p(intro)
        p("")
    p("| " + " | ".join(c.rstrip(":") for c in columns) + " |")
    p("| " + " | ".join("---:" if c.endswith(":") else "---" for c in columns) + " |")

out = []
p = out.append
for line in open(meta):
    p(f"- {line.rstrip()}")
p("")
p("Median of the rounds per cell; wrk 1 thread, keep-alive, `--latency`. req/s ratios are to the direct path "
  "and to kubectl proxy. CPU = utime+stime of the process under test (nginx: master + workers; for `direct` "
  "that is the upstream itself) per 10,000 requests. Peak RSS = VmHWM since process start (not resettable "
  "between cells without clear_refs, so it is the peak so far); RSS = VmRSS after the cell. "
  "kubectl proxy listens on plain HTTP (no client TLS), every other path terminates TLS.")
titles = {"small": "Small object: `GET /api/v1/namespaces/bench/pods/small` (1.0 KB pod)",
          "list": "Pod list: `GET /api/v1/namespaces/bench/pods` (500 pods, 103 KB)",
          "large": "Large object: `GET /api/v1/namespaces/bench/configmaps/large` (37 KB ConfigMap)"}
for obj, conns_list in [("small", [1, 16, 128]), ("list", [1, 16, 128]), ("large", [16])]:
    p("")
    p(f"### {titles[obj]}")
    p("")
    p("| conns | path | req/s | vs direct | vs kubectl proxy | MB/s | p50 | added p50 | p99 | CPU s / 10k req | peak RSS | RSS after | errors |")
    p("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in conns_list:
        d = agg("load", "direct", obj, c)
        k = agg("load", "kubectl-proxy", obj, c)
        for path in PATHS:
            a = agg("load", path, obj, c)
            if not a:
                continue
            added = a["p50"] - d["p50"] if d else 0
            addstr = "–" if path == "direct" else (f"+{us(added)}" if added >= 0 else f"-{us(-added)}")
            p(f"| {c} | {path} | {a['rps']:,.0f} | {ratio(a['rps'], d['rps'])} | {ratio(a['rps'], k['rps'])} | "
              f"{a['mbs']:,.0f} | {us(a['p50'])} | {addstr} | "
              f"{us(a['p99'])} | {a['cpu10k']:.2f} | {a['hwm'] / 1024:.0f} MB | {a['rss'] / 1024:.0f} MB | {a['err']} |")

p("")
p("### New TLS handshakes per second (`Connection: close`, 16 connections, small object)")
p("")
p("| path | handshakes (= requests) / s | p50 | p99 | CPU s / 10k | errors |")
p("| --- | ---: | ---: | ---: | ---: | ---: |")
hs = {}
for path in ["direct", "nginx", "kubegate"]:
    a = agg("handshake", path, "small", 16)
    if a:
        hs[path] = a
        p(f"| {path} | {a['rps']:,.0f} | {us(a['p50'])} | {us(a['p99'])} | {a['cpu10k']:.2f} | {a['err']} |")

rest = {r["path"]: r["rss_kb"] for r in rows if r["kind"] == "rest"}
end = {r["path"]: r for r in rows if r["kind"] == "end"}
p("")
p("### Memory at rest and after the run")
p("")
p("| path | RSS at rest (after start, before load) | RSS at end | peak RSS over the whole run |")
p("| --- | ---: | ---: | ---: |")
for path in PATHS:
    if path in rest:
        e = end.get(path, {})
        p(f"| {path} | {rest[path] / 1024:.1f} MB | {e.get('rss_kb', 0) / 1024:.1f} MB | {e.get('hwm_kb', 0) / 1024:.1f} MB |")

streams = {r["path"]: r for r in rows if r["kind"] == "stream"}
if streams:
    p("")
    p("### One large response streamed (`GET .../pods/big/log`, curl to /dev/null)")
    p("")
    p("| path | bytes | MB/s | HTTP | RSS before | peak RSS during (VmHWM after clear_refs) | growth |")
    p("| --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for path, s in streams.items():
        p(f"| {path} | {s['bytes']:,} | {s['bytes'] / float(s['seconds']) / 1e6:,.0f} | {s['http']} | "
          f"{s['rss_before_kb'] / 1024:.1f} MB | {s['hwm_kb'] / 1024:.1f} MB | {(s['hwm_kb'] - s['rss_before_kb']) / 1024:.1f} MB |")
watches = {r["path"]: r["result"] for r in rows if r["kind"] == "watches"}
if watches:
    p("")
    p("### Idle watches (one HTTP/1.1 client connection each: TLS to kubegate, plain HTTP to kubectl proxy; the upstream speaks HTTP/2)")
    p("")
    p("| path | watches open | failures | RSS before | RSS with all open | per watch | time to open all |")
    p("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for path, w in watches.items():
        p(f"| {path} | {w['watches']:,} | {w['failures']} | {w['rss_before_kb'] / 1024:.1f} MB | "
          f"{w['rss_after_kb'] / 1024:.1f} MB | {w['per_watch_bytes'] / 1024:.1f} KB | {w['open_seconds']} s |")

# ------------------------------------------------------------------ HTTP/2
h2conns = sorted({r["conns"] for r in rows if r["kind"] == "h2"})
h2streams = {r["conns"]: r.get("streams", 0) for r in rows if r["kind"] == "h2"}
if h2conns:
    section("HTTP/2, the way kubectl talks (h2load, 1 thread, TLS + ALPN h2, small object)",
            "nginx: a TLS h2 server block of the same nginx proxy, HTTP/1.1 keepalive to the upstream; "
            "kubegate: its own listener (h2 by ALPN); both hold their upstream connections from a warm-up "
            "at 128 x 10 streams. Percentiles from h2load's per-request log.",
            ["conns x streams:", "path", "req/s:", "vs nginx:", "MB/s:", "p50:", "p99:",
             "CPU s / 10k req:", "RSS after:", "errors:"])
    for c in h2conns:
        n = agg("h2", "nginx", "small", c)
        for path in ["nginx", "kubegate"]:
            a = agg("h2", path, "small", c)
            if a:
                p(f"| {c} x {h2streams[c]} | {path} | {a['rps']:,.0f} | {ratio(a['rps'], n and n['rps'])} | "
                  f"{a['mbs']:,.0f} | {us(a['p50'])} | {us(a['p99'])} | {a['cpu10k']:.2f} | "
                  f"{a['rss'] / 1024:.0f} MB | {a['err']} |")

# ------------------------------------------------------------------ many users
ucells = sorted({r["conns"] for r in rows if r["kind"] == "users-n"})
umem = {r["path"]: r for r in rows if r["kind"] == "users-mem"}
nusers = next((r["users"] for r in umem.values()), 0)
if ucells:
    section(f"Many users: {nusers:,} distinct users, a token each (kubegate, small object, token cache warm)",
            "wrk with users.lua: each request carries the next token of the file, round-robin, so "
            "consecutive requests on any connection belong to different users. The one-user row is the "
            "same script given one token of the same shape, alternated with it; the keep-alive matrix's "
            "kubegate figure (a static header) is shown for reference. nginx ignores the token: its pair "
            "is the control, what the token file costs the load generator.",
            ["conns:", "path", "tokens:", "req/s:", "vs one user:", "p50:", "p99:", "CPU s / 10k req:", "errors:"])
    for c in ucells:
        for path in ["kubegate", "nginx"]:
            one = agg("users-1", path, "small", c)
            rows_ = [("1", one), (f"{nusers:,}", agg("users-n", path, "small", c))]
            if path == "kubegate":
                rows_.append(("1 (static header, matrix)", agg("load", path, "small", c)))
            for label, a in rows_:
                if a:
                    p(f"| {c} | {path} | {label} | {a['rps']:,.0f} | {ratio(a['rps'], one and one['rps'])} | "
                      f"{us(a['p50'])} | {us(a['p99'])} | {a['cpu10k']:.2f} | {a['err']} |")
if umem:
    section(f"Memory per user ({nusers:,} users)", f"Memory for {nusers:,} users, on two gateways started for this alone (`users-mem`: token cache "
      "on, `users-mem-nocache`: off; same config otherwise, so a fresh heap): VmRSS before and after "
      "the first pass over every token, after a one-token pass at the same 16 connections. The "
      "no-cache variant keeps no identity, so its growth is the per-user state besides the token "
      "cache (the rate-limit bucket); the cached variant's growth minus that is the cached "
      "identities. RSS moves in pages and with the allocator (freed memory is reused "
      "before the heap grows): read these as estimates.",
            ["variant", "RSS before:", "RSS after:", "growth:", "per user:"])
    for path in ["users-mem-nocache", "users-mem"]:
        m = umem.get(path)
        if m:
            g = m["rss_after_kb"] - m["rss_before_kb"]
            p(f"| {path} | {m['rss_before_kb'] / 1024:.1f} MB | {m['rss_after_kb'] / 1024:.1f} MB | "
              f"{g / 1024:.1f} MB | {g * 1024 / max(1, m['users']):,.0f} B |")
    if "users-mem" in umem and "users-mem-nocache" in umem:
        gb = umem["users-mem-nocache"]["rss_after_kb"] - umem["users-mem-nocache"]["rss_before_kb"]
        gc = umem["users-mem"]["rss_after_kb"] - umem["users-mem"]["rss_before_kb"]
        p("")
        p(f"- per rate-limit bucket (and other per-user state): **{gb * 1024 / max(1, nusers):,.0f} B**")
        p(f"- per cached identity: **{(gc - gb) * 1024 / max(1, nusers):,.0f} B**")

# ------------------------------------------------------------------ each round
def joined(rs, key, fmt):
    return " / ".join(fmt(x[key]) for x in rs)
per_round = [("HTTP/1.1 small object", "load", c, ["nginx", "kubegate", "kubegate-nocache", "kubegate-nocache-rs256"]) for c in (16, 128)]
per_round += [(f"HTTP/2 small object, {h2streams[c]} streams per connection", "h2", c, ["nginx", "kubegate"]) for c in h2conns]
per_round += [("many users (1 token / all tokens)", kind, c, ["kubegate", "nginx"]) for c in ucells for kind in ("users-1", "users-n")]
if any(rounds(k, "kubegate", "small", c) for _, k, c, _ in per_round):
    section("Each round (small object): req/s, p99 and CPU per 10k requests, round 1 / round 2 / ...", None,
            ["cell", "conns:", "path", "req/s:", "p99:", "CPU s / 10k req:"])
    for title, kind, c, paths in per_round:
        for path in paths:
            rs = rounds(kind, path, "small", c)
            if rs:
                label = path + (" (1 token)" if kind == "users-1" else f" ({nusers:,} tokens)" if kind == "users-n" else "")
                p(f"| {title} | {c} | {label} | {joined(rs, 'rps', lambda v: f'{v:,.0f}')} | "
                  f"{joined(rs, 'p99', us)} | {joined(rs, 'cpu10k', lambda v: f'{v:.2f}')} |")

# ------------------------------------------------------------------ targets
section("Targets", "Issue 18's targets, then issue 8's that still hold; kubegate = token cache on, medians "
        "of the rounds unless a row says otherwise.", ["target", "measured", "result"])
def target(name, ok, detail):
    p(f"| {name} | {detail} | {'met' if ok else '**missed**'} |")
def missing(name):
    p(f"| {name} | not measured in this run | – |")
def pair_target(name, a, b, ok, detail):
    """A target comparing cell a with cell b: ok(a, b) and detail(a, b) once both were measured."""
    if a and b:
        target(name, ok(a, b), detail(a, b))
    else:
        missing(name)
def rps_vs(base):
    return lambda a, b: f"{a['rps']:,.0f} req/s = {a['rps'] / b['rps']:.2f}x {base} ({b['rps']:,.0f})"
for c in [16, 128]:
    pair_target(f"small-object throughput at {c} conns ≥ 0.9x nginx",
                agg("load", "kubegate", "small", c), agg("load", "nginx", "small", c),
                lambda g, n: g["rps"] >= 0.9 * n["rps"], rps_vs("nginx"))
for c in [16, 128]:
    pair_target(f"CPU per request ≤ 1.3x nginx (small object, {c} conns)",
                agg("load", "kubegate", "small", c), agg("load", "nginx", "small", c),
                lambda g, n: g["cpu10k"] <= 1.3 * n["cpu10k"],
                lambda g, n: f"{g['cpu10k']:.2f} vs {n['cpu10k']:.2f} s / 10k req = {g['cpu10k'] / n['cpu10k']:.2f}x")
gr, nr = rounds("load", "kubegate", "small", 16), rounds("load", "nginx", "small", 16)
pair_target("p99 at 16 conns ≤ 1.5x nginx's, every round",
            list(zip(gr, nr)) if len(gr) == len(nr) else None, True,
            lambda rs, _: all(g["p99"] <= 1.5 * n["p99"] for g, n in rs),
            lambda rs, _: "; ".join(f"round {g['round']}: {us(g['p99'])} vs {us(n['p99'])} = {g['p99'] / n['p99']:.2f}x"
                                    for g, n in rs))
for c in [16, 128]:
    pair_target(f"token cache off ≥ 0.6x nginx (small object, {c} conns)",
                agg("load", "kubegate-nocache", "small", c), agg("load", "nginx", "small", c),
                lambda g, n: g["rps"] >= 0.6 * n["rps"], rps_vs("nginx"))
for c in [16, 128]:
    pair_target(f"token cache off, RS256 token ≥ 0.6x nginx (small object, {c} conns)",
                agg("load", "kubegate-nocache-rs256", "small", c), agg("load", "nginx", "small", c),
                lambda g, n: g["rps"] >= 0.6 * n["rps"], rps_vs("nginx"))
kp = watches.get("kubectl-proxy")
pair_target("< 20 KB per idle watch (one client connection each)", watches.get("kubegate"), True,
            lambda w, _: w["per_watch_bytes"] < 20 * 1024 and w["failures"] == 0,
            lambda w, _: f"{w['per_watch_bytes'] / 1024:.1f} KB ({w['watches']:,} open, {w['failures']} failures)"
                         + (f"; kubectl proxy {kp['per_watch_bytes'] / 1024:.1f} KB" if kp else ""))
for c in h2conns or [16, 128]:
    pair_target(f"HTTP/2 ≥ 0.9x nginx ({c} conns x {h2streams.get(c, 10)} streams)",
                agg("h2", "kubegate", "small", c), agg("h2", "nginx", "small", c),
                lambda g, n: g["rps"] >= 0.9 * n["rps"],
                lambda g, n: rps_vs("nginx")(g, n) + f"; p99 {us(g['p99'])} vs {us(n['p99'])}")
for c in ucells or [16, 128]:
    pair_target(f"{nusers or 10000:,} users within 10% of one user ({c} conns)",
                agg("users-n", "kubegate", "small", c), agg("users-1", "kubegate", "small", c),
                lambda m, o: m["rps"] >= 0.9 * o["rps"], rps_vs("one user"))
for c in [16, 128]:
    g, n = agg("load", "kubegate", "list", c), agg("load", "nginx", "list", c)
    if g and n:
        target(f"(issue 8) pod-list throughput at {c} conns ≥ 1.0x nginx", g["rps"] >= n["rps"],
               f"{g['rps']:,.0f} req/s = {g['rps'] / n['rps']:.2f}x nginx ({n['rps']:,.0f})")
g, d = agg("load", "kubegate", "small", 1), agg("load", "direct", "small", 1)
if g and d:
    target("(issue 8) added p50 over direct at 1 conn ≤ 60 µs", g["p50"] - d["p50"] <= 60,
           f"+{g['p50'] - d['p50']:.0f} µs ({g['p50']:.0f} vs {d['p50']:.0f} µs)")
g, k = agg("load", "kubegate", "small", 16), agg("load", "kubectl-proxy", "small", 16)
if g and k:
    target("(issue 8) p99 at 16 conns ≤ kubectl proxy's / 3", g["p99"] * 3 <= k["p99"],
           f"{us(g['p99'])} vs kubectl proxy {us(k['p99'])} = {k['p99'] / g['p99']:.1f}x lower")
if "kubegate" in streams:
    s = streams["kubegate"]
    growth = (s["hwm_kb"] - s["rss_before_kb"]) / 1024
    target("(issue 8) large response streamed with < 32 MB RSS growth", growth < 32,
           f"{growth:.1f} MB at {s['bytes'] / float(s['seconds']) / 1e6:,.0f} MB/s")
if "kubegate" in rest and "kubectl-proxy" in rest:
    target("(issue 8) RSS at rest below kubectl proxy's", rest["kubegate"] < rest["kubectl-proxy"],
           f"{rest['kubegate'] / 1024:.1f} MB vs {rest['kubectl-proxy'] / 1024:.1f} MB")
print("\n".join(out))

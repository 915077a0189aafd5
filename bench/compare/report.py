#!/usr/bin/env python3
"""Turn run.sh's raw JSON lines into the markdown report (medians across rounds)."""
import json, statistics, sys
from collections import defaultdict

raw, meta = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(raw) if l.strip()]
PATHS = ["direct", "kubectl-proxy", "nginx", "kubegate", "kubegate-nocache"]
med = statistics.median

cells = defaultdict(list)
for r in rows:
    if r["kind"] in ("load", "handshake"):
        cells[(r["kind"], r["path"], r["object"], r["conns"])].append(r)

def agg(kind, path, obj, conns):
    rs = cells.get((kind, path, obj, conns))
    if not rs:
        return None
    def per(r):
        w = r["wrk"]
        secs = w["duration_us"] / 1e6
        return {"rps": w["requests"] / secs, "mbs": w["bytes"] / secs / 1e6, "p50": w["p50_us"],
                "p99": w["p99_us"], "cpu10k": r["cpu_s"] / max(1, w["requests"]) * 1e4,
                "err": w["sock_errors"] + w["status_errors"], "hwm": r["hwm_kb"], "rss": r["rss_kb"]}
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

# ------------------------------------------------------------------ targets
p("")
p("### Targets (kubegate = token cache on; the no-cache variant in parentheses)")
p("")
def target(name, ok, detail):
    p(f"- **{'met' if ok else 'MISSED'}** – {name}: {detail}")
for obj in ["small", "list"]:
    for c in [16, 128]:
        g, gn, n, k = (agg("load", x, obj, c) for x in ("kubegate", "kubegate-nocache", "nginx", "kubectl-proxy"))
        if not (g and n and k):
            continue
        need = 1.0 if obj == "list" else 0.8
        target(f"{obj} throughput at {c} conns ≥ {need}x nginx",
               g["rps"] >= need * n["rps"],
               f"{g['rps']:,.0f} req/s = {g['rps'] / n['rps']:.2f}x nginx ({n['rps']:,.0f}), "
               f"{g['rps'] / k['rps']:.2f}x kubectl proxy ({k['rps']:,.0f}); no cache {gn['rps']:,.0f} = {gn['rps'] / n['rps']:.2f}x nginx")
g, gn, d = (agg("load", x, "small", 1) for x in ("kubegate", "kubegate-nocache", "direct"))
if g and d:
    target("added p50 over direct at 1 conn ≤ 60 µs", g["p50"] - d["p50"] <= 60,
           f"+{g['p50'] - d['p50']:.0f} µs ({g['p50']:.0f} vs {d['p50']:.0f} µs; no cache +{gn['p50'] - d['p50']:.0f} µs)")
g, gn, k = (agg("load", x, "small", 16) for x in ("kubegate", "kubegate-nocache", "kubectl-proxy"))
if g and k:
    target("p99 at 16 conns ≤ kubectl proxy's / 3", g["p99"] * 3 <= k["p99"],
           f"{us(g['p99'])} vs kubectl proxy {us(k['p99'])} = {k['p99'] / g['p99']:.1f}x lower (no cache {us(gn['p99'])})")
if "kubegate" in watches:
    w = watches["kubegate"]
    target("< 20 KB per idle watch", w["per_watch_bytes"] < 20 * 1024 and w["failures"] == 0,
           f"{w['per_watch_bytes'] / 1024:.1f} KB ({w['watches']:,} open, {w['failures']} failures)"
           + (f"; kubectl proxy {watches['kubectl-proxy']['per_watch_bytes'] / 1024:.1f} KB" if "kubectl-proxy" in watches else ""))
if "kubegate" in streams:
    s = streams["kubegate"]
    growth = (s["hwm_kb"] - s["rss_before_kb"]) / 1024
    target("large response streamed with < 32 MB RSS growth", growth < 32,
           f"{growth:.1f} MB at {s['bytes'] / float(s['seconds']) / 1e6:,.0f} MB/s")
if "kubegate" in rest and "kubectl-proxy" in rest:
    target("RSS at rest below kubectl proxy's", rest["kubegate"] < rest["kubectl-proxy"],
           f"{rest['kubegate'] / 1024:.1f} MB vs {rest['kubectl-proxy'] / 1024:.1f} MB")
print("\n".join(out))

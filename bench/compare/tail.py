"""Reads tail.sh's per-request logs and /proc samples and writes the tail study's report
(Markdown) to stdout: each round's percentiles, the latency folded onto the metrics
upkeep's 5 s period, the worst 100 ms windows, and each thread's CPU and wake-ups.

h2load's log lines are: start time (µs since the epoch), status, latency (µs).
"""

import collections
import os
import statistics
import sys

W, ROUNDS, DURATION, CONNS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
PATHS = sys.argv[5:]
FIELDS = 4  # ns on the CPU, ns waiting for a CPU, wake-ups, preemptions
PERIOD_US = 5_000_000  # the metrics upkeep's interval (gateway/src/ops/metrics.rs)
BIN_US = 100_000
WINDOW_US = 100_000


def requests(path, rnd):
    out = []
    with open(f"{W}/{path}-{rnd}.lat") as f:
        for line in f:
            start, status, latency = line.split()
            if status != "200":
                sys.exit(f"{path} round {rnd}: status {status}")
            out.append((int(start), int(latency)))
    return out


def pct(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def ms(us):
    return f"{us / 1000:.2f}"


def threads(path, rnd, when):
    # nginx's workers, and tokio's runtime and blocking-pool threads, share a name: summed.
    rows = collections.defaultdict(lambda: [0] * FIELDS)
    with open(f"{W}/{path}-{rnd}.{when}") as f:
        for line in f:
            name, *values = line.rstrip("\n").split("\t")
            for i, v in enumerate(values):
                rows[name][i] += int(v)
    return rows


def thread_delta(path, rnd):
    before, after = threads(path, rnd, "before"), threads(path, rnd, "after")
    return {k: [a - before.get(k, [0] * FIELDS)[i] for i, a in enumerate(v)] for k, v in after.items()}


data = {p: {r: requests(p, r) for r in range(1, ROUNDS + 1)} for p in PATHS}

RATE = os.environ.get("RATE")
LOAD = f"{int(RATE):,} requests/s offered" if RATE else "closed loop (as fast as answered)"
print(f"# Tail study: {ROUNDS} rounds x {DURATION} s, {CONNS} connections, {LOAD}, small object, "
      "HTTP/1.1 + TLS\n")
print("## Each round\n")
print("| round | path | req/s | p50 ms | p99 ms | p99.9 ms | max ms | p99 / nginx's |")
print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in range(1, ROUNDS + 1):
    ref = pct([l for _, l in data["nginx"][r]], 0.99)
    for p in PATHS:
        lat = [l for _, l in data[p][r]]
        span = (max(s for s, _ in data[p][r]) - min(s for s, _ in data[p][r])) / 1e6
        p99 = pct(lat, 0.99)
        print(f"| {r} | {p} | {len(lat) / span:,.0f} | {ms(pct(lat, 0.5))} | {ms(p99)} | "
              f"{ms(pct(lat, 0.999))} | {ms(max(lat))} | {p99 / ref:.2f}x |")

print("\n## Folded onto the metrics upkeep's 5 s period\n")
print("Every request of every round by its start time modulo 5 s, in 50 bins of 100 ms. "
      "The upkeep thread sleeps 5 s between runs, so a stall it causes falls into the same "
      "bin in every period; nginx has no such period and shows how far bins differ by chance.\n")
print("| path | median bin p99 ms | worst bin p99 ms | worst / median | worst bin at |")
print("| --- | ---: | ---: | ---: | ---: |")
for p in PATHS:
    bins = collections.defaultdict(list)
    for r in data[p].values():
        for start, lat in r:
            bins[(start % PERIOD_US) // BIN_US].append(lat)
    p99s = {b: pct(v, 0.99) for b, v in bins.items() if len(v) >= 100}
    median = statistics.median(p99s.values())
    worst = max(p99s, key=p99s.get)
    print(f"| {p} | {ms(median)} | {ms(p99s[worst])} | {p99s[worst] / median:.2f}x | "
          f"{worst * BIN_US / 1000:.0f} ms |")

print("\n## The worst 100 ms windows\n")
print("The p99 of each 100 ms window of each round; the worst three per path, and how much of "
      "the round's slowest 1% of requests fell into its worst 10% of windows.\n")
print("| path | worst windows' p99 ms | slowest 1% in the worst 10% of windows |")
print("| --- | --- | ---: |")
for p in PATHS:
    worst_all, shares = [], []
    for r in data[p].values():
        windows = collections.defaultdict(list)
        for start, lat in r:
            windows[start // WINDOW_US].append(lat)
        p99w = {w: pct(v, 0.99) for w, v in windows.items() if len(v) >= 20}
        worst_all.extend(p99w.values())
        cut = pct([l for _, l in r], 0.99)
        slow = [start // WINDOW_US for start, lat in r if lat >= cut]
        top = set(sorted(p99w, key=p99w.get, reverse=True)[: max(1, len(p99w) // 10)])
        shares.append(sum(1 for w in slow if w in top) / max(1, len(slow)))
    worst_all.sort(reverse=True)
    print(f"| {p} | {' / '.join(ms(v) for v in worst_all[:3])} | {statistics.mean(shares):.0%} |")

print("\n## Threads: CPU and wake-ups per round (mean of the rounds)\n")
print("From /proc/<pid>/task/<tid>/schedstat and status: seconds on a CPU, seconds runnable "
      "but waiting for a CPU (the scheduler's share of the latency), wake-ups (voluntary "
      "context switches: the thread blocked and was woken) and preemptions (involuntary).\n")
for p in PATHS:
    totals = collections.defaultdict(lambda: [0.0] * FIELDS)
    conn_shares = []
    for r in range(1, ROUNDS + 1):
        d = thread_delta(p, r)
        for k, v in d.items():
            for i in range(FIELDS):
                totals[k][i] += v[i] / ROUNDS
        conns = sorted(v[0] for k, v in d.items() if k.startswith("kubegate-conn-"))
        if len(conns) >= 2 and sum(conns):
            conn_shares.append(conns[-1] / sum(conns))
    print(f"**{p}**\n")
    print("| thread | on CPU s | waiting for a CPU s | wake-ups | preemptions |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for k, v in sorted(totals.items(), key=lambda kv: -kv[1][0]):
        print(f"| {k} | {v[0] / 1e9:.3f} | {v[1] / 1e9:.3f} | {v[2]:,.0f} | {v[3]:,.0f} |")
    if conn_shares:
        print(f"\nThe busier connection thread's share of the connection threads' CPU, each "
              f"round: {' / '.join(f'{s:.0%}' for s in conn_shares)} (50% is an even split).")
    upkeep = totals.get("kubegate-metrics")
    if upkeep is not None:
        runs = DURATION / (PERIOD_US / 1e6)
        print(f"\nThe metrics upkeep: {upkeep[0] / 1e6 / runs:.2f} ms on a CPU per run "
              f"({runs:.0f} runs per round, {upkeep[2]:.0f} wake-ups).")
    print()

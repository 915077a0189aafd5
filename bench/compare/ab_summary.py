#!/usr/bin/env python3
"""Summarises bench/compare/ab.sh's lines: the medians of the paired ratios (B over A) of
req/s and of CPU per request, how many rounds B was ahead, and a warning when any round
had non-2xx answers (an expired token measures refusals, not requests)."""
import statistics
import sys

rounds = {}
refused = 0
for line in open(sys.argv[1]):
    fields = dict(f.split("=", 1) for f in line.split()[2:])
    index, side = line.split()[:2]
    rounds.setdefault(index, {})[side] = (float(fields["rps"]), float(fields["cpu_us_per_req"]))
    refused += int(fields.get("non2xx", "0"))
pairs = [r for r in rounds.values() if "A" in r and "B" in r]
rps = [r["B"][0] / r["A"][0] for r in pairs]
cpu = [r["B"][1] / r["A"][1] for r in pairs]
print(f"rounds {len(pairs)}, B ahead in {sum(x > 1 for x in rps)}")
print(f"req/s B/A median {statistics.median(rps):.3f}, CPU per request B/A median {statistics.median(cpu):.3f}")
for side in ("A", "B"):
    print(f"{side}: median {statistics.median(r[side][0] for r in pairs):.0f} req/s, "
          f"{statistics.median(r[side][1] for r in pairs):.1f} µs CPU a request")
if refused:
    print(f"WARNING: {refused} non-2xx answers: these rounds measured refusals", file=sys.stderr)
    sys.exit(1)

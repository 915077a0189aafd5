#!/usr/bin/env python3
"""One h2load run as the JSON object report.lua prints for wrk (same fields).

usage: h2json.py H2LOAD_STDOUT LOG_FILE
LOG_FILE is h2load's --log-file (start µs, status, µs to the end of the response, one
request a line): the percentiles come from it, as h2load itself prints none. Exits 1 if
the run did not use HTTP/2 (the client must have negotiated h2 by ALPN).
"""
import json, re, sys

text = open(sys.argv[1]).read()
if not re.search(r"^Application protocol: h2$", text, re.M):
    sys.exit("h2load did not negotiate h2:\n" + text[-2000:])
secs = float(re.search(r"^finished in ([\d.]+)(m?s)", text, re.M).group(1))
if re.search(r"^finished in [\d.]+ms", text, re.M):
    secs /= 1000
req = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                r"(\d+) failed, (\d+) errored, (\d+) timeout", text, re.M)
codes = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text, re.M)
traffic = re.search(r"^traffic: \S+ \((\d+)\) total", text, re.M)
lat = sorted(int(l.split("\t")[2]) for l in open(sys.argv[2]) if l.count("\t") >= 2)
def pct(p):
    return lat[min(len(lat) - 1, int(len(lat) * p / 100))] if lat else 0
ok = int(codes.group(1)) + int(codes.group(2))
print(json.dumps({"requests": ok, "duration_us": int(secs * 1e6), "bytes": int(traffic.group(1)),
                  "p50_us": pct(50), "p99_us": pct(99),
                  "sock_errors": int(req.group(6)) + int(req.group(7)),
                  "status_errors": int(codes.group(3)) + int(codes.group(4))}))

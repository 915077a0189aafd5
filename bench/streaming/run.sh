#!/usr/bin/env bash
# The streaming memory benchmark (bench/streaming/main.rs); results go in docs/benchmarks.md.
# This process and the gateway each hold one socket per watch connection: 10,000 watches
# need a limit above ~11,000 open files. Ask for 65536, else take the hard limit; the
# benchmark itself refuses to start (saying so) if that is not enough.
set -euo pipefail
cd "$(dirname "$0")/../.."
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "open-file limit: $(ulimit -n)"
cargo build --release -p kubegate --bin kubegate
cargo run --release -p kubegate-tests --example streaming-bench

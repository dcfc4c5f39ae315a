#!/usr/bin/env bash
# Three Shoal replicas on loopback in front of the demo origin (make cluster).
#   replica 1: S3 on 127.0.0.1:9000, internal 9001, ops 9002
#   replica 2: S3 on 127.0.0.1:9010, internal 9011, ops 9012
#   replica 3: S3 on 127.0.0.1:9020, internal 9021, ops 9022
# Ctrl-C stops all three.
set -euo pipefail
bin=${1:-target/release/shoal}
dir=target/cluster
mkdir -p "$dir"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
for i in 0 1 2; do
  base=$((9000 + 10 * i))
  cat > "$dir/replica$((i + 1)).toml" <<TOML
[server]
listen = "127.0.0.1:$base"
[origin]
id = "demo"
kind = "local"
root = "target/demo-origin"
[store]
kind = "memory"
capacity = "256 MiB"
[chunk]
size = "1 MiB"
readahead = 4
[cluster]
listen = "127.0.0.1:$((base + 1))"
advertise = "127.0.0.1:$((base + 1))"
peers = ["127.0.0.1:9001", "127.0.0.1:9011", "127.0.0.1:9021"]
secret = "local-demo-cluster-secret"
refresh = "2s"
[ops]
listen = "127.0.0.1:$((base + 2))"
[auth]
mode = "none"
[telemetry]
log_format = "text"
log_level = "info"
TOML
  "$bin" serve --config "$dir/replica$((i + 1)).toml" 2>&1 | sed -u "s/^/[replica $((i + 1))] /" &
  pids+=($!)
done
echo "3 replicas: S3 on http://127.0.0.1:9000, :9010, :9020 (bucket 'demo'); Ctrl-C stops them"
wait

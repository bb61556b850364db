#!/usr/bin/env bash
# The main job: a local cluster of 4 replica processes on 127.0.0.1 (dealt on first use into
# cluster-configs/local-4), clients ordering requests through it, and the replicas' status every
# 5 s until Ctrl-C, which stops every replica. Extra arguments go to `replica cluster`
# (e.g. `--seconds 30`, `--fresh`, `--dir cluster-configs/local-7 -n 7 -t 2`).
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --locked -p fides-replica --bin replica
exec target/release/replica cluster --dir cluster-configs/local-4 "$@"

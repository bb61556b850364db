#!/usr/bin/env bash
# The main job, for now: a trusted dealer makes a 4-replica cluster's keys, checks them, and the
# replicas' binary agreement runs in the simulator with those keys, once with each kind of
# Byzantine replica and each scheduler; then atomic broadcast orders client requests.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --locked -p fides-dealer -p simnet --bins
dir=target/demo-cluster
echo "== dealer init -n 4 -t 1 --out $dir --force"
target/release/dealer init -n 4 -t 1 --out "$dir" --force
echo "== dealer verify $dir"
target/release/dealer verify "$dir"
echo "== dealer inspect $dir/cluster.toml"
target/release/dealer inspect "$dir/cluster.toml"
echo "== binary agreement and atomic broadcast in the simulator"
target/release/demo --cluster "$dir"

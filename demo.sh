#!/usr/bin/env bash
# The main job: the timestamping bistro's whole story on a local cluster of 4 replica processes
# on 127.0.0.1 (dealt on first use into cluster-configs/local-4) and one relay.
#
#   1. the event owner makes a key and creates an event whose deadline is 20 s away;
#   2. three submitters (bsubmit, each with its own ~/.bistro) get threshold-signed tickets and
#      upload their encrypted files: two through the relay, one directly to a replica;
#   3. a fourth submitter comes after the deadline and is refused;
#   4. the replicas pull the uploads from the relay and from each other;
#   5. the owner collects, decrypts and verifies every file, and a ticket is checked offline;
#   and, while the bistro's deadline runs, the certification authority: a key confirmed by every
#   replica gets a threshold-RSA-signed X.509 certificate, which is updated, retrieved from 2t + 1
#   replicas, revoked and listed in the signed CRL (checked with openssl, if installed).
#
# Everything it makes is in cluster-configs/local-4/story/ (made anew each run). Every process it
# starts is stopped when it ends, also on Ctrl-C. `./demo.sh --keep` leaves the cluster running
# (with the replicas' status every 5 s) until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")"
keep=0
if [[ "${1:-}" == "--keep" ]]; then keep=1; fi

cargo build --release --locked -p fides-replica -p fides-client-sdk --bins
bin=target/release
dir=cluster-configs/local-4
story=$dir/story
rm -rf "$story"
mkdir -p "$story"
export BISTRO_CLUSTER=$dir/cluster.toml

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n== %s\n' "$*"; }

if [[ -f $dir/cluster.toml ]] && ! grep -q '^rsa = ' "$dir/cluster.toml"; then
    # Dealt before the certification authority existed: deal it anew (its files are local ones).
    echo "== $dir was dealt without a threshold RSA key: dealing it anew"
    rm -rf "$dir/cluster.toml" "$dir"/replica-*.toml "$dir/data" "$dir/ca-root.pem"
fi

step "starting 4 replicas (replica cluster --dir $dir); their output is in $story/cluster.out"
"$bin/replica" cluster --dir "$dir" --clients 0 >"$story/cluster.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do
    if [[ -f $dir/cluster.toml ]] && "$bin/fides" status --cluster "$dir/cluster.toml" 2>/dev/null \
        | grep -c "^replica .*: epoch" | grep -q '^4$'; then
        break
    fi
    sleep 0.2
done
"$bin/fides" status --cluster "$dir/cluster.toml"

step "starting a relay (an untrusted intermediary with its own key); log in $story/relay.log"
"$bin/bistro" relay --data "$story/relay" --listen 127.0.0.1:7500 >"$story/relay.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do
    grep -q "relay listening" "$story/relay.log" && break
    sleep 0.2
done
cat "$story/relay.log" | grep "relay listening"

step "the owner makes a key and creates an event (deadline in 20 s, transfer window 60 s)"
"$bin/bistro" keygen --out "$story/owner.key"
"$bin/bistro" event create --owner-key "$story/owner.key" --deadline +20s --transfer-window 60 \
    --description "Assignment 1: submit your report" --save "$story/event.txt" | tee "$story/event.out"
event=$(awk '/^event /{print $2; exit}' "$story/event.out")

submit() { # name via
    local name=$1 via=$2 home=$story/home-$1
    head -c $((100000 + RANDOM * 10)) /dev/urandom >"$story/$name-report.tar.gz"
    BISTRO_HOME=$home "$bin/bsubmit" config -set "email=$name@example.org" >/dev/null
    BISTRO_HOME=$home "$bin/bsubmit" upload -event "$event" -file "$story/$name-report.tar.gz" $via
}

step "alice submits through the relay"
submit alice "-via 127.0.0.1:7500"
step "bob submits through the relay"
submit bob "-via 127.0.0.1:7500"
step "carol submits directly to replica 2"
submit carol "-via $(awk -F'"' '/client_address/{print $2}' "$dir/cluster.toml" | sed -n 3p)"

step "the certification authority: a key confirmed by every replica's challenge, one agreement, an RSA certificate no replica signs alone"
export FIDES_CLUSTER=$dir/cluster.toml
"$bin/ca" keygen --out "$story/www.key"
"$bin/ca" issue --key "$story/www.key" --name www.example.org --attr O=Example --dns www.example.org \
    --out "$story/www.pem"
have_openssl=0
if command -v openssl >/dev/null; then have_openssl=1; fi
if [[ $have_openssl == 1 ]]; then
    openssl x509 -in "$story/www.pem" -noout -subject -issuer -serial -ext subjectAltName
    openssl verify -CAfile "$dir/ca-root.pem" "$story/www.pem"
else
    echo "(openssl is not installed: the certificate is checked by ca verify alone)"
fi
"$bin/ca" verify "$story/www.pem"

step "update: the key's name changes; the old certificate is superseded"
"$bin/ca" update --key "$story/www.key" --name www.example.org --attr "O=Example Ltd" --dns www.example.org \
    --dns example.org --out "$story/www2.pem"

step "retrieve: the key's current certificate, as 2t + 1 replicas give it"
"$bin/ca" get --key "$story/www.key" | grep -c "BEGIN CERTIFICATE" | sed 's/$/ certificate(s)/'

step "revoke, the signed status, and the CRL the replicas threshold-sign"
"$bin/ca" revoke --key "$story/www.key" --reason key-compromise | tee "$story/revoked.txt"
serial=$(grep -o "serial=[0-9a-f]*" "$story/revoked.txt" | head -1 | cut -d= -f2)
"$bin/ca" status "$serial"
# The CRL lists the superseded and the revoked certificate within an epoch of the revocation.
for _ in $(seq 1 100); do
    "$bin/ca" crl --out "$story/crl.pem" >"$story/crl.txt"
    listed=$(grep -o "revoked=[0-9]*" "$story/crl.txt" | cut -d= -f2)
    if [[ ${listed:-0} -ge 2 ]]; then break; fi
    sleep 0.2
done
cat "$story/crl.txt"
if [[ $have_openssl == 1 ]]; then
    if openssl verify -crl_check -CAfile "$dir/ca-root.pem" -CRLfile "$story/crl.pem" "$story/www2.pem"; then
        echo "openssl accepted a revoked certificate" >&2
        exit 1
    fi
    echo "(openssl refuses the revoked certificate, as it should)"
fi
if "$bin/ca" verify "$story/www2.pem"; then
    echo "ca verify accepted a revoked certificate" >&2
    exit 1
fi
echo "(ca verify refuses it too)"

step "waiting for the deadline"
deadline=$(awk '/^deadline /{print $2; exit}' "$story/event.out")
echo "deadline $deadline"
deadline_s=$(date -u -d "$deadline" +%s)
while [[ $(date -u +%s) -le $deadline_s ]]; do sleep 1; done
step "dave comes after the deadline"
head -c 1000 /dev/urandom >"$story/dave-report.tar.gz"
BISTRO_HOME=$story/home-dave "$bin/bsubmit" config -set email=dave@example.org >/dev/null
if BISTRO_HOME=$story/home-dave "$bin/bsubmit" upload -event "$event" -file "$story/dave-report.tar.gz"; then
    echo "dave got a ticket after the deadline: that is wrong" >&2
    exit 1
fi

step "the replicas pull the uploads from the relay and from each other"
for _ in $(seq 1 120); do
    done_count=0
    for name in alice bob carol; do
        if BISTRO_HOME=$story/home-$name "$bin/bsubmit" records -event "$event" 2>/dev/null | grep -q ": transferred"; then
            done_count=$((done_count + 1))
        fi
    done
    [[ $done_count -eq 3 ]] && break
    sleep 1
done
BISTRO_HOME=$story/home-alice "$bin/bsubmit" records -event "$event"

step "the owner collects: decryption shares from the replicas, sealed to the owner; every file checked"
"$bin/bistro" collect --owner-key "$story/owner.key" --event "$event" --out "$story/collected"
cat "$story/collected/manifest.txt"
for name in alice bob carol; do
    saved=$(ls "$story/collected"/*-"$name"-report.tar.gz 2>/dev/null | head -1 || true)
    if [[ -n $saved ]] && cmp -s "$saved" "$story/$name-report.tar.gz"; then
        echo "$name's file: identical to what $name submitted"
    else
        echo "$name's file: NOT found or different" >&2
        exit 1
    fi
done

step "anyone can check a ticket offline with the cluster file: bsubmit verify"
ticket=$(ls "$story/home-alice/tickets/$event"/*.bti | head -1)
"$bin/bsubmit" verify "$ticket" "$story/alice-report.tar.gz"

step "the story is complete"
if [[ $keep -eq 1 ]]; then
    echo "the cluster keeps running; Ctrl-C stops it (status: $bin/fides status --cluster $dir/cluster.toml)"
    wait "${pids[0]}"
fi

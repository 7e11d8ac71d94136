#!/usr/bin/env bash
# Benchmark: snapferry against a hand-written boto3 peer (peer.py), both copying the
# same fleet of encrypted volumes across accounts and regions on the patched moto
# server (tests/support/moto/snapferry_moto.py) with pending times. Prints a markdown
# table: wall time, API calls (all and mutating, per volume, per action).
#
# Environment (all optional):
#   BENCH_VOLUMES            volumes in the fleet (20)
#   BENCH_SNAPSHOT_PENDING   seconds a new snapshot stays pending (3)
#   BENCH_COPY_PENDING       seconds a copy stays pending (6)
#   BENCH_VOLUME_PENDING     seconds a new volume stays creating (2)
#   BENCH_RUN_TIMEOUT        seconds either side may run before it is stopped
#                            (default: 60 per volume + 120)
#   BENCH_KEEP               a directory to keep the results in (default: a temporary one, removed)
#   PYTHON                   interpreter with moto[server]==5.2.1 and boto3 (python3)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
VOLUMES="${BENCH_VOLUMES:-20}"
SNAP_PENDING="${BENCH_SNAPSHOT_PENDING:-3}"
COPY_PENDING="${BENCH_COPY_PENDING:-6}"
VOL_PENDING="${BENCH_VOLUME_PENDING:-2}"
RUN_TIMEOUT="${BENCH_RUN_TIMEOUT:-$((VOLUMES * 60 + 120))}"
BIN="$ROOT/target/debug/snapferry"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/snapferry-moto-peer.XXXXXX")"
OUT="${BENCH_KEEP:-$WORK/results}"
mkdir -p "$OUT"
MOTO_PID=""
CHILD=""

stop() {  # stop PID: TERM, then KILL after 5 s
    local pid="$1"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

cleanup() {
    stop "$CHILD"
    stop "$MOTO_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v curl >/dev/null || die "curl is needed"
"$PYTHON" -c 'import moto, boto3' 2>/dev/null \
    || die "$PYTHON lacks moto: python3 -m pip install \"moto[server]==5.2.1\""

if [[ ! -x "$BIN" ]]; then
    log "building snapferry (cargo build)"
    (cd "$ROOT" && timeout 3600 cargo build --bin snapferry) || die "cargo build failed"
fi

# Nothing of the caller's AWS setup: test credentials, empty config files, no IMDS.
: >"$WORK/aws-config"
: >"$WORK/aws-credentials"
# aws_env TIMEOUT CMD...: runs CMD in that environment, bounded in time. In the
# background and waited for, so that a signal to this script stops it at once (the
# EXIT trap then stops the child too).
aws_env() {
    local limit="$1" rc=0
    shift
    env -i PATH="$PATH" HOME="$WORK" LANG=C.UTF-8 \
        AWS_ENDPOINT_URL="$ENDPOINT" \
        AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 \
        AWS_CONFIG_FILE="$WORK/aws-config" AWS_SHARED_CREDENTIALS_FILE="$WORK/aws-credentials" \
        AWS_EC2_METADATA_DISABLED=true \
        timeout --kill-after=10 "$limit" "$@" &
    CHILD=$!
    wait "$CHILD" || rc=$?
    CHILD=""
    return "$rc"
}

# --- moto, on a port the system picks, loopback only ----------------------------------
"$PYTHON" "$ROOT/tests/support/moto/snapferry_moto.py" --host 127.0.0.1 --port 0 \
    >"$WORK/moto.out" 2>"$WORK/moto.err" </dev/null &
MOTO_PID=$!
ENDPOINT=""
for _ in $(seq 600); do   # 60 s
    if line="$(grep -m1 '^ready http://127\.0\.0\.1:[0-9]*$' "$WORK/moto.out" 2>/dev/null)"; then
        ENDPOINT="${line#ready }"
        break
    fi
    kill -0 "$MOTO_PID" 2>/dev/null || { cat "$WORK/moto.err" >&2; die "moto exited"; }
    sleep 0.1
done
[[ -n "$ENDPOINT" ]] || die "moto did not get ready within 60 s"
log "moto at $ENDPOINT"

ctl() {  # ctl METHOD PATH [JSON]
    local args=(-sS --fail --max-time 30 -X "$1" "$ENDPOINT$2")
    [[ $# -ge 3 ]] && args+=(-H 'Content-Type: application/json' -d "$3")
    curl "${args[@]}"
}

# Fresh world: empty accounts, the pending times, zero counts; then seed and plan.
fresh_world() {
    ctl POST /moto-api/reset >/dev/null
    ctl POST /_snapferry/config "{\"snapshot_pending_seconds\": $SNAP_PENDING, \
\"copy_pending_seconds\": $COPY_PENDING, \"volume_pending_seconds\": $VOL_PENDING, \
\"throttle_rate\": 0, \"max_concurrent_copies\": 0}" >/dev/null
    aws_env 300 "$PYTHON" "$HERE/world.py" seed "$VOLUMES" "$WORK/plan.yaml" >"$WORK/seed.json" \
        || die "seeding failed"
    ctl POST /_snapferry/reset-calls >/dev/null
}

now() { date +%s.%N; }

# record NAME START EXIT: wall time, counts, then (uncounted) what is left in the world.
record() {
    local name="$1" start="$2" code="$3" end
    end="$(now)"
    ctl GET /_snapferry/calls >"$OUT/$name.calls.json"
    ctl GET '/_snapferry/calls?view=mutating' >"$OUT/$name.mutating.json"
    ctl GET '/_snapferry/calls?view=throttled' >"$OUT/$name.throttled.json"
    printf '{"seconds": %s, "exit": %s}\n' "$(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.3f", b-a}')" "$code" >"$OUT/$name.json"
    aws_env 120 "$PYTHON" "$HERE/world.py" inventory >"$OUT/$name.inventory.json" \
        || die "inventory after $name failed"
    log "$name: exit $code, $(cat "$OUT/$name.json")"
}

# Which snapferry was measured: the binary's build time and the tree it sits in.
BIN_BUILT="$(date -u -r "$BIN" +%Y-%m-%dT%H:%M:%SZ)"
TREE="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]]; then
    TREE="$TREE+uncommitted-src"
fi
printf '{"volumes": %s, "snapshot_pending_seconds": %s, "copy_pending_seconds": %s, "volume_pending_seconds": %s, "binary_built": "%s", "tree": "%s"}\n' \
    "$VOLUMES" "$SNAP_PENDING" "$COPY_PENDING" "$VOL_PENDING" "$BIN_BUILT" "$TREE" >"$OUT/params.json"

# --- snapferry -------------------------------------------------------------------------
fresh_world
cp "$WORK/plan.yaml" "$OUT/plan.yaml"
log "snapferry: $VOLUMES volumes (timeout ${RUN_TIMEOUT}s)"
start="$(now)"
code=0
aws_env "$RUN_TIMEOUT" \
    "$BIN" run "$WORK/plan.yaml" --format json --state-dir "$WORK/state" \
    >"$OUT/snapferry.stdout.json" 2>"$OUT/snapferry.stderr" || code=$?
record snapferry "$start" "$code"

# --- peer ------------------------------------------------------------------------------
fresh_world
read -r -a VOLS < <("$PYTHON" -c 'import json,sys; print(" ".join(json.load(sys.stdin)["volumes"]))' <"$WORK/seed.json")
log "peer: $VOLUMES volumes, one after the other (timeout ${RUN_TIMEOUT}s)"
start="$(now)"
code=0
aws_env "$RUN_TIMEOUT" \
    "$PYTHON" "$HERE/peer.py" \
    --source-region us-east-1 --source-key alias/share \
    --target-account 222222222222 --role-arn arn:aws:iam::222222222222:role/dr \
    --target-region eu-west-1 --target-key alias/dr --availability-zone eu-west-1a \
    "${VOLS[@]}" >"$OUT/peer.stdout.json" 2>"$OUT/peer.stderr" || code=$?
record peer "$start" "$code"

"$PYTHON" "$HERE/report.py" "$OUT" | tee "$OUT/table.md"
if [[ -n "${BENCH_KEEP:-}" ]]; then log "results kept in $OUT"; fi
# The table is printed either way; a side that failed fails the benchmark.
grep -q '"exit": 0}' "$OUT/snapferry.json" && grep -q '"exit": 0}' "$OUT/peer.json"

#!/usr/bin/env python3
"""Render the benchmark's side-by-side markdown table from the files run.sh wrote.

Usage: report.py RESULTS_DIR
RESULTS_DIR holds params.json and, for NAME in snapferry and peer: NAME.json (wall
time, exit code), NAME.calls.json, NAME.mutating.json, NAME.inventory.json.
"""
import json
import os
import sys

SIDES = ("snapferry", "peer")


def load(d, name):
    with open(os.path.join(d, name)) as f:
        return json.load(f)


def main():
    d = sys.argv[1]
    p = load(d, "params.json")
    n = p["volumes"]
    run = {s: load(d, s + ".json") for s in SIDES}
    calls = {s: load(d, s + ".calls.json") for s in SIDES}
    mut = {s: load(d, s + ".mutating.json") for s in SIDES}
    inv = {s: load(d, s + ".inventory.json") for s in SIDES}
    floor = p["snapshot_pending_seconds"] + p["copy_pending_seconds"] + p["volume_pending_seconds"]

    def total(c):
        return sum(c.values())

    rows = [
        ("exit code", *(str(run[s]["exit"]) for s in SIDES)),
        ("wall time (s)", *("%.1f" % run[s]["seconds"] for s in SIDES)),
        ("wall time / floor", *("%.1fx" % (run[s]["seconds"] / floor) for s in SIDES)),
        ("API calls, total", *(str(total(calls[s])) for s in SIDES)),
        ("API calls per volume", *("%.2f" % (total(calls[s]) / n) for s in SIDES)),
        ("mutating calls, total", *(str(total(mut[s])) for s in SIDES)),
        ("mutating calls per volume", *("%.2f" % (total(mut[s]) / n) for s in SIDES)),
        ("target volumes available", *(str(inv[s]["target_volumes"].get("available", 0)) for s in SIDES)),
        ("target snapshots completed", *(str(inv[s]["target_snapshots"].get("completed", 0)) for s in SIDES)),
        ("source snapshots left", *(str(sum(inv[s]["source_snapshots"].values())) for s in SIDES)),
    ]
    print("%d volumes, cross-account (123456789012 -> 222222222222), us-east-1 -> eu-west-1; "
          "moto pending: snapshot %gs, copy %gs, volume %gs" % (
              n, p["snapshot_pending_seconds"], p["copy_pending_seconds"], p["volume_pending_seconds"]))
    if "binary_built" in p:
        print("snapferry: target/debug/snapferry built %s, tree %s" % (p["binary_built"], p["tree"]))
    print("floor (pending times along one volume's chain: snapshot + copy + volume): %gs" % floor)
    print()
    print("| | snapferry | peer (boto3, sequential, stock waiters) |")
    print("|---|---:|---:|")
    for r in rows:
        print("| %s | %s | %s |" % r)
    print()
    print("| action | snapferry | per volume | peer | per volume |")
    print("|---|---:|---:|---:|---:|")
    actions = sorted(set(calls["snapferry"]) | set(calls["peer"]))
    for a in actions:
        x, y = calls["snapferry"].get(a, 0), calls["peer"].get(a, 0)
        star = " *" if a in mut["snapferry"] or a in mut["peer"] else ""
        print("| %s%s | %d | %.2f | %d | %.2f |" % (a, star, x, x / n, y, y / n))
    print()
    print("\\* mutating action")


if __name__ == "__main__":
    main()

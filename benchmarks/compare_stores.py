"""Two runs of the same suite side by side, cell by cell: did a change (another solver, another code version) move
the training curve, and what did it cost?

    python benchmarks/compare_stores.py sqlite:///A.db sqlite:///B.db [--metric train/loss] [--suite paper-ex1-sine]

Runs are matched by their label (``theta=0.5 weight=0.5 seed=10``); both stores are read-only (SQLite, MLflow's
schema). Per cell: B's value over A's at the last epoch, the largest relative difference at the checkpoints
(epochs 1, 10, 100, 300, 1000, 2000, 3000 that exist), and B's median seconds per epoch over A's
(``time/epoch_s``; the two stores must come from the same machine for that ratio to mean anything).
"""
from __future__ import annotations

import argparse
import sqlite3
import statistics

CHECKPOINTS = (1, 10, 100, 300, 1000, 2000, 3000)


def _curves(uri: str, metric: str, suite: str | None):
    path = uri.removeprefix("sqlite:///")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    q = ("select r.run_uuid, r.name from runs r join tags t on t.run_uuid = r.run_uuid and t.key = 'irn.role' "
         "and t.value = 'cell' where r.status = 'FINISHED'")
    out = {}
    for rid, name in con.execute(q).fetchall():
        if suite:
            (s,) = con.execute("select value from tags where run_uuid = ? and key = 'irn.suite'", (rid,)).fetchone()
            if s != suite:
                continue
        vals = dict(con.execute("select step, value from metrics where run_uuid = ? and key = ?", (rid, metric)))
        secs = [v for (v,) in con.execute("select value from metrics where run_uuid = ? and key = 'time/epoch_s'",
                                           (rid,))]
        out[name] = (vals, statistics.median(secs) if secs else float("nan"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="the baseline store (sqlite:///path)")
    ap.add_argument("b", help="the store compared with it")
    ap.add_argument("--metric", default="train/loss")
    ap.add_argument("--suite", default=None, help="only runs of this suite name")
    args = ap.parse_args()
    A, B = _curves(args.a, args.metric, args.suite), _curves(args.b, args.metric, args.suite)
    shared = sorted(set(A) & set(B))
    if not shared:
        raise SystemExit(f"no finished run label is in both stores ({len(A)} and {len(B)} finished runs)")
    print(f"{'cell':34s} {'last':>5s} {'B/A last':>9s} {'max |B-A|/A at checkpoints':>27s} {'B/A s/epoch':>12s}")
    devs, ratios, speed = [], [], []
    for name in shared:
        (ca, ta), (cb, tb) = A[name], B[name]
        last = max(set(ca) & set(cb))
        marks = [e for e in CHECKPOINTS if e in ca and e in cb] + [last]
        dev = max(abs(cb[e] - ca[e]) / abs(ca[e]) for e in marks)
        devs.append(dev)
        ratios.append(cb[last] / ca[last])
        speed.append(tb / ta)
        print(f"{name:34s} {last:5d} {ratios[-1]:9.4f} {dev:27.2%} {speed[-1]:12.2f}")
    print(f"{len(shared)} cells: B/A at the last epoch {min(ratios):.4f}-{max(ratios):.4f}; largest checkpoint "
          f"difference {max(devs):.2%} (median {statistics.median(devs):.2%}); s/epoch B/A median "
          f"{statistics.median(speed):.2f} ({min(speed):.2f}-{max(speed):.2f})")
    missing = sorted(set(A) ^ set(B))
    if missing:
        print(f"in one store only: {', '.join(missing)}")


if __name__ == "__main__":
    main()

"""The command: pick the cases, run them against one stack, print the matrix, write JSON.

``--quick`` runs the CI-sized cases (one SIGKILL, poison on the jobs and classify
queues, every hostile file, a 5xx callback); the default adds SIGTERM, two
workers on one job, RabbitMQ restarts and a 10 s S3 outage; ``--long`` adds the
60 s and 10-minute S3 outages. ``--only`` runs the named cases whatever their
tier (``baseline`` always runs first: the healthy reference for the times to finish).
Exit status 0 when every row passed.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from scripts.faults.cases import CASES, RSS_BOUND_MB, Row, Suite, clean_starts
from scripts.faults.stack import Stack


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.faults", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the CI-sized cases only")
    parser.add_argument("--long", action="store_true", help="add the 60 s and 10 min S3 outages")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="CASE",
        help=f"run this case (repeatable): {', '.join(c.name for c in CASES)}",
    )
    parser.add_argument("--sigkill-runs", type=int, default=20, help="SIGKILL runs (default 20)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the SIGKILL delays")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    parser.add_argument(
        "--shared-broker",
        action="store_true",
        help="use the RabbitMQ on 127.0.0.1:5672 (skips the broker-fault cases)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="logs and data (default: tmp)")
    return parser.parse_args(argv)


def print_row(row: Row) -> None:
    finish = f"{row.finish_s:8.1f}" if row.finish_s is not None else "       -"
    print(
        f"{row.case:<30} {'pass' if row.passed else 'FAIL':<5} {finish} s "
        f"{row.peak_rss_mb:6.0f} MB  {row.note}",
        flush=True,
    )


def markdown(rows: list[Row]) -> str:
    """The matrix as a Markdown table, for docs/reliability.md."""
    lines = [
        "| case | result | time to finish (s) | peak RSS (MB) | note |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for row in rows:
        finish = f"{row.finish_s:.1f}" if row.finish_s is not None else "-"
        note = row.note.replace("|", "\\|")
        result = "pass" if row.passed else "**FAIL**"
        lines.append(f"| {row.case} | {result} | {finish} | {row.peak_rss_mb:.0f} | {note} |")
    return "\n".join(lines)


def _stop_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM, and SIGINT even where a shell started us in the background with SIGINT
    # ignored, unwind through Stack.close: workers, SeaweedFS and the private node stop.
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGINT, _stop_on_signal)
    logging.disable(logging.WARNING)  # boto and kombu retries while S3 or RabbitMQ are down
    wanted = set(args.only)
    unknown = wanted - {c.name for c in CASES}
    if unknown:
        print(f"unknown case(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    tiers = {"quick"} if args.quick else {"quick", "standard"} | ({"long"} if args.long else set())
    chosen = [c for c in CASES if (c.name in wanted if wanted else c.tier in tiers)]
    if args.shared_broker:
        chosen = [c for c in chosen if not c.broker_faults]
    if not any(c.name == "baseline" for c in chosen):
        chosen.insert(0, CASES[0])
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"cases: {', '.join(c.name for c in chosen)}; seed {seed}; logs in {workdir}")
    started = time.monotonic()
    with Stack.running(workdir, private_broker=not args.shared_broker) as stack:
        suite = Suite(stack, args.quick, random.Random(seed), args.sigkill_runs, printer=print_row)
        print(f"{'case':<30} {'':<5} {'finish':>8}   {'peak RSS':>9}  note")
        for case in chosen:
            case.run(suite)
        clean_starts(suite)
    rows = suite.rows
    failed = [r for r in rows if not r.passed]
    total_s = time.monotonic() - started
    print(
        f"\n{len(rows) - len(failed)}/{len(rows)} passed in {total_s:.0f} s; "
        f"RSS bound {RSS_BOUND_MB:.0f} MB\n"
    )
    print(markdown(rows))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "seed": seed,
                    "seconds": round(total_s),
                    "rss_bound_mb": RSS_BOUND_MB,
                    "rows": [asdict(r) for r in rows],
                },
                indent=2,
            )
        )
    return 1 if failed else 0

"""``python -m conformance.faults``: the soak from the command line.

    python -m conformance.faults --inner memory --seeds 0-49
    python -m conformance.faults --inner postgres --seeds 0-9 --dsn postgresql://postgres@127.0.0.1/db

Exit status 1 when any workflow was lost or wrong; every failing seed is printed
with the command that replays it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from .soak import TUNABLES, SeedReport, SoakConfig, soak


def parse_seeds(text: str) -> list[int]:
    """``0-49``, ``3,7,12``, ``0-9,40``."""
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, dash, last = part.partition("-")
        seeds.extend(range(int(first), int(last) + 1) if dash else [int(first)])
    return seeds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = SoakConfig()
    parser = argparse.ArgumentParser(prog="python -m conformance.faults", description=__doc__)
    parser.add_argument("--inner", default=defaults.inner, help="the wrapped backend")
    parser.add_argument("--seeds", default="0-19", help="e.g. 0-49 or 3,7,12")
    parser.add_argument("--dsn", help="for --inner postgres (default: a throw-away test database)")
    parser.add_argument("--time-limit", type=float, help="start no seed after this many seconds")
    parser.add_argument("--workers", default=f"{defaults.min_workers}-{defaults.max_workers}")
    parser.add_argument(
        "--shapes",
        default="",
        help="only these workflows: seq3,fanout,branches,counter,signalled,sleeper,parent",
    )
    parser.add_argument("--quiet", action="store_true", help="no exports or fault logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every injected fault")
    for name in TUNABLES:
        default = getattr(defaults, name)
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=type(default), default=default, dest=name
        )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR)
    low, _, high = args.workers.partition("-")
    config = SoakConfig(
        inner=args.inner,
        inner_options=None if args.dsn is None else {"dsn": args.dsn, "drop_on_close": True},
        budget=args.budget,
        p_crash=args.p_crash,
        p_lose_before=args.p_lose_before,
        p_lose_after=args.p_lose_after,
        p_lose_wait=args.p_lose_wait,
        p_wake=args.p_wake,
        kill_rate=args.kill_rate,
        min_workers=int(low),
        max_workers=int(high or low),
        lease=args.lease,
        poll_interval=args.poll_interval,
        deadline=args.deadline,
        shapes=args.shapes,
    )

    def progress(seed: SeedReport) -> None:
        state = "ok" if seed.ok else f"FAILED (lost {len(seed.lost)}, wrong {len(seed.wrong)})"
        faults = sum(seed.faults.values())
        print(f"seed {seed.seed}: {state}, {faults} faults, {seed.seconds:.1f} s", flush=True)

    report = asyncio.run(
        soak(parse_seeds(args.seeds), config, time_limit=args.time_limit, progress=progress)
    )
    print(report.summary(details=not args.quiet))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Latency of payment-strategy's ``evaluate`` through the client SDK, on a running stack.

    .venv/bin/python loadtest/payment_latency.py --requests 400 --concurrency 4 \\
        --banks 20 --indicators 10

The service must be deployed (``ha-serving deploy examples/payment_strategy/
payment_strategy.yaml --cluster b``); its proxies are read from the stack's discovery
table, as a client would. ``--concurrency`` client threads share one ``Client`` and issue
``--requests`` calls in total, after ``--warmup`` calls that are not counted; each request
asks for another minute, so no two consecutive answers are equal. Prints p50/p90/p99/max
latency, throughput and errors by status; exits 1 if any call failed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import infra
from ha_serving import Settings
from ha_serving.client import CallError, Client
from ha_serving.store import Store


def _request(index: int, banks: int, indicators: int) -> dict[str, object]:
    names = [f"ind-{k}" for k in range(indicators)]
    minute = f"2024-05-01T{12 + index // 60 % 12:02d}:{index % 60:02d}"
    return {"time": minute, "banks": {f"bank-{b}": names for b in range(banks)}}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def run(args: argparse.Namespace) -> dict[str, object]:
    run_dir = (args.run_dir or Settings.from_env().stack.run_dir).resolve()
    topo = infra.load(run_dir)
    if topo is None:
        raise SystemExit(f"error: no stack is up in {run_dir}")
    with Store.connect(topo.db.ref()) as store:
        addresses = [e.address for e in store.list_endpoints(args.service)]
    if not addresses:
        raise SystemExit(f"error: {args.service} has no endpoint in {run_dir}: deploy it first")

    latencies: list[float] = []
    codes: Counter[str] = Counter()
    lock = threading.Lock()
    counter = itertools.count(args.warmup)  # request indexes below it are the warm-up's
    total = args.warmup + args.requests

    with Client(addresses, timeout_s=args.timeout, tls=topo.client_tls()) as client:

        def worker() -> None:
            while (i := next(counter)) < total:
                payload = _request(i, args.banks, args.indicators)
                started = time.perf_counter()
                try:
                    client.call(args.service, "evaluate", payload)
                    code = "OK"
                except CallError as exc:
                    code = exc.code
                elapsed = time.perf_counter() - started
                with lock:
                    codes[code] += 1
                    if code == "OK":
                        latencies.append(elapsed)

        for i in range(args.warmup):  # serially, before the clock starts
            client.call(args.service, "evaluate", _request(i, args.banks, args.indicators))
        threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started

    latencies.sort()
    ms = [x * 1000 for x in latencies]
    return {
        "service": args.service,
        "banks": args.banks,
        "indicators": args.indicators,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "proxies": len(addresses),
        "ok": codes["OK"],
        "errors": {k: v for k, v in codes.items() if k != "OK"},
        "p50_ms": round(percentile(ms, 50), 1),
        "p90_ms": round(percentile(ms, 90), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "max_ms": round(ms[-1], 1) if ms else math.nan,
        "throughput_rps": round(codes["OK"] / wall, 1),
        "seconds": round(wall, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, help="stack directory (default: .run)")
    parser.add_argument("--service", default="payment-strategy")
    parser.add_argument("--requests", type=int, default=400, help="measured calls in total")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads")
    parser.add_argument("--banks", type=int, default=20)
    parser.add_argument("--indicators", type=int, default=10, help="per bank")
    parser.add_argument("--warmup", type=int, default=10, help="uncounted calls first")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline per call (s)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        sys.stdout.write(
            f"{result['service']}.evaluate: {args.banks} banks x {args.indicators} indicators, "
            f"{args.requests} requests, concurrency {args.concurrency}, "
            f"{result['proxies']} proxies\n"
            f"  ok {result['ok']}  errors {result['errors'] or 0}\n"
            f"  latency ms: p50 {result['p50_ms']}  p90 {result['p90_ms']}  "
            f"p99 {result['p99_ms']}  max {result['max_ms']}\n"
            f"  throughput: {result['throughput_rps']} req/s over {result['seconds']} s\n"
        )
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Run both simulators for manual testing:  python -m tests.sim  (from the repo root).

Starts a HuntressSimulator loaded with generated events, organizations, agents
and incident reports, and an IntakeSink, prints their URLs and credentials,
and serves until Ctrl-C (then prints what the sink received).
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

from . import fixtures
from .huntress_sim import HuntressSimulator
from .intake_sink import IntakeSink


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=2000, help="SIEM events to generate (default 2000)")
    ap.add_argument("--minutes", type=float, default=15, help="spread events over the last N minutes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--orgs", type=int, default=5)
    ap.add_argument("--agents", type=int, default=60)
    ap.add_argument("--incidents", type=int, default=25)
    ap.add_argument("--huntress-port", type=int, default=0, help="fixed port for the Huntress simulator")
    ap.add_argument("--intake-port", type=int, default=0, help="fixed port for the intake sink")
    ap.add_argument("--rate-limit", type=int, default=60)
    ap.add_argument("--page-size", type=int, default=200)
    ap.add_argument("--api-key", default="demo-key")
    ap.add_argument("--secret-key", default="demo-secret")
    ap.add_argument("--dd-api-key", default="dd-demo-key")
    ap.add_argument("--live", type=float, default=0.0,
                    help="also add N new events per second, each visible after --indexing-delay")
    ap.add_argument("--indexing-delay", type=float, default=60.0)
    ap.add_argument("--stats-refused", action="store_true",
                    help="answer 422 to SIEM queries with STATS, as an API that does not allow them")
    ap.add_argument("--time-filters-refused", action="store_true",
                    help="answer 422 to SIEM queries with a WHERE on @timestamp")
    ap.add_argument("--verbose", action="store_true", help="log every HTTP request")
    args = ap.parse_args(argv)

    now = datetime.now(timezone.utc)
    orgs = fixtures.organizations(args.orgs, seed=args.seed)
    ags = fixtures.agents(args.agents, orgs, seed=args.seed, now=now)
    incs = fixtures.incident_reports(args.incidents, orgs, ags, seed=args.seed, now=now)
    rows = fixtures.siem_events(args.events, now - timedelta(minutes=args.minutes), now,
                                seed=args.seed, org_ids=[o["id"] for o in orgs])

    sim = HuntressSimulator(api_key=args.api_key, secret_key=args.secret_key,
                            rate_limit=args.rate_limit, page_size=args.page_size,
                            port=args.huntress_port)
    sink = IntakeSink(api_key=args.dd_api_key, port=args.intake_port)
    sim.verbose = sink.verbose = args.verbose
    sim.stats_refused = args.stats_refused
    sim.time_filters_refused = args.time_filters_refused
    sim.set_account(fixtures.account())
    sim.set_organizations(orgs)
    sim.set_agents(ags)
    sim.set_incident_reports(incs)
    sim.set_signals(fixtures.signals(20, orgs, ags, seed=args.seed, now=now))
    sim.add_events(rows)
    sim.start()
    sink.start()

    print(f"Huntress simulator : {sim.url}")
    print(f"  api key / secret : {sim.api_key} / {sim.secret_key}")
    print(f"  data             : {sim.event_count} events over the last {args.minutes:g} min, "
          f"{len(orgs)} orgs, {len(ags)} agents, {len(incs)} incident reports")
    print(f"  rate limit       : {sim.rate_limit} requests / {sim.rate_window_seconds:g} s, page size {sim.page_size}")
    print(f"  SIEM switches    : STATS {'refused' if sim.stats_refused else 'served'}, "
          f"WHERE on @timestamp {'refused' if sim.time_filters_refused else 'served'}")
    print(f"Logs intake sink   : {sink.url}")
    print(f"  DD-API-KEY       : {sink.api_key}")
    print()
    print("Instance config for conf.d/huntress.d/conf.yaml:")
    print(f"""  - huntress_api_key: {sim.api_key}
    huntress_secret_key: {sim.secret_key}
    huntress_base_url: {sim.url}
    logs_intake_url: {sink.url}
    dd_api_key: {sink.api_key}
    collection_delay_seconds: 0
    log_queries:
      - name: all
        esql_query: "FROM logs | KEEP *"
""")
    print("Ctrl-C to stop.", flush=True)

    stop = threading.Event()

    def live():
        rng = random.Random(args.seed + 1)
        tick = 0
        while not stop.wait(1.0):
            tick += 1
            n = int(args.live) + (1 if rng.random() < args.live - int(args.live) else 0)
            if n <= 0:
                continue
            t = datetime.now(timezone.utc)
            new = fixtures.siem_events(n, t - timedelta(seconds=1), t, seed=args.seed * 100000 + tick,
                                       org_ids=[o["id"] for o in orgs])
            sim.add_events(new, visible_at=time.time() + args.indexing_delay)

    if args.live > 0:
        threading.Thread(target=live, daemon=True).start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        sim.stop()
        sink.stop()
        dup = sum(1 for _, c in sink.uuids().items() if c > 1)
        print(f"\nHuntress requests: {sim.stats['total']} (429s: {sim.stats['throttled']})")
        print(f"Sink: {len(sink.requests)} requests, {len(sink.logs)} logs stored, "
              f"{len(sink.uuids())} distinct uuids, {dup} duplicated, "
              f"{sink.dropped_stale} dropped as stale, {sink.truncated} truncated")
        print("Sink statuses:", dict(Counter(r["status"] for r in sink.requests)))


if __name__ == "__main__":
    main()

"""``tests/lab/lab``: up | down | status | load | seed."""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from . import LabError, realkong
from .kong import declarative_format
from .kongdeb import build_deb
from .lab import Lab, UpOptions, lab_all_up
from .load import LoadGenerator, write_summary
from .paths import ECHO_HOST, ECHO_PORT, FRONTEND_HOST, FRONTEND_PORT
from .seed import generate

EXIT_DOWN = 3


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lab",
        description="The kong lab: real (or emulated) Kong on real PostgreSQL, HAProxy and NGINX, on loopback.",
    )
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="runtime state directory (default tests/lab/run, or $KONG_LAB_RUN_DIR)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start PostgreSQL, echo, X nodes and the LB; print the inventory path")
    up.add_argument("--x-version", default="3.4.2", help="Kong version of the running X nodes (3.4.2)")
    up.add_argument("--y-version", default="3.9.1", help="Kong version installed for Y nodes (3.9.1)")
    up.add_argument("--kong", default="auto", choices=["auto", "real", "emulated"],
                    help="real Kong (installed, or built from the realkong kit), the emulator, or auto: "
                         "real when every version can be had, else the emulator (auto)")
    up.add_argument("--kong-install", action="append", default=[], metavar="DIR",
                    help="an installed Kong (DIR/bin/kong, Kong's package layout) to use for its "
                         "version; repeatable")
    up.add_argument("--x-nodes", type=int, default=3, help="number of X nodes, 127.0.1.N (3)")
    up.add_argument("--y-nodes", type=int, default=3, help="number of Y nodes, 127.0.2.N (3)")
    up.add_argument("--mode", default="traditional", choices=["traditional", "dbless", "hybrid"])
    up.add_argument("--cp-version", default=None, help="hybrid: control plane version (default: Y version)")
    up.add_argument("--lb", default="haproxy", choices=["haproxy", "nginx"])
    up.add_argument("--connection", default="local", choices=["local", "ssh"],
                    help="local: every host is this machine (ansible_connection: local); ssh: Ansible reaches "
                         "the node and LB hosts through the lab's own sshd as the user kong, who runs Kong (local)")
    up.add_argument("--y-install", default="lab", choices=["lab", "package"],
                    help="lab: the lab installs Y (a real Kong build); package: Y is left to the collection's package "
                         "method, served as a .deb from the lab's apt repository (needs --connection ssh, root) (lab)")
    up.add_argument("--seed-size", type=int, default=50, help="about how many entities to seed (50)")
    up.add_argument("--db-update-frequency", type=float, default=1.0,
                    help="Kong db_update_frequency of the nodes, seconds (1)")

    sub.add_parser("down", help="stop everything the lab started (by pid) and remove its state")

    kong = sub.add_parser("kong", help="real Kong: list where each version comes from, or build it")
    kong_sub = kong.add_subparsers(dest="kong_command", required=True, metavar="ACTION")
    kl = kong_sub.add_parser("list", help="each version: installed, built, buildable or missing, and why")
    kl.add_argument("--kong-install", action="append", default=[], metavar="DIR")
    kl.add_argument("--json", action="store_true")
    kb = kong_sub.add_parser("build", help="build versions from the kit into the cache (once; default: all)")
    kb.add_argument("versions", nargs="*", help="versions to build (default: every version the kit has)")
    kb.add_argument("--if-kit", action="store_true",
                    help="without a kit, say so and exit 0 (real-Kong tests then skip, or fail under CI=true)")

    kp = kong_sub.add_parser(
        "package", help="make the .deb of versions from the kit (once; default: all), as `lab up --y-install package` serves them")
    kp.add_argument("versions", nargs="*", help="versions to package (default: every version the kit has)")
    kp.add_argument("--if-kit", action="store_true", help="without a kit, say so and exit 0")

    st = sub.add_parser("status", help="show what runs; exit 0 if all up, 3 otherwise")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    load = sub.add_parser("load", help="send steady traffic to the LB frontend; write a JSON summary")
    load.add_argument("--duration", type=float, default=20.0, help="seconds (20)")
    load.add_argument("--rate", type=float, default=None,
                      help="total requests per second (default 100 unless only --concurrency is given)")
    load.add_argument("--concurrency", type=int, default=None,
                      help="keep-alive connections/worker threads; alone: unpaced closed loop")
    load.add_argument("--output", type=Path, default=None, help="summary file (default run/load.json)")
    load.add_argument("--url", default=None, help="frontend URL (default: the lab's LB frontend)")
    load.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, seconds (10)")
    load.add_argument("--max-failures", type=int, default=None,
                      help="exit 1 when more requests than this failed (default: never)")

    seed = sub.add_parser("seed", help="write a seed declarative config file")
    seed.add_argument("--size", type=int, default=50)
    seed.add_argument("--format-version", default=None, help="declarative _format_version (3.0)")
    seed.add_argument("--kong-version", default="3.9.1", help="pick the format for this Kong version")
    seed.add_argument("--output", type=Path, required=True)
    return parser


def _cmd_up(lab: Lab, args: argparse.Namespace) -> int:
    opts = UpOptions(
        x_version=args.x_version, y_version=args.y_version, x_nodes=args.x_nodes,
        y_nodes=args.y_nodes, mode=args.mode, cp_version=args.cp_version, lb=args.lb,
        seed_size=args.seed_size, db_update_frequency=args.db_update_frequency,
        kong=args.kong, kong_install=tuple(args.kong_install), connection=args.connection,
        y_install=args.y_install,
    )

    def _term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _term)
    try:
        path = lab.up(opts)
    finally:
        signal.signal(signal.SIGTERM, old)
    print(path)
    return 0


def _cmd_down(lab: Lab, args: argparse.Namespace) -> int:
    if not lab.run_dir.exists():
        print("lab: nothing to stop (no run directory)", file=sys.stderr)
        return 0
    lab.down()
    print("lab: down", file=sys.stderr)
    return 0


def _cmd_status(lab: Lab, args: argparse.Namespace) -> int:
    data, comps = lab.status()
    up = lab_all_up(data, comps)
    if args.json:
        print(json.dumps({
            "up": up,
            "run_dir": str(lab.run_dir),
            "status": data.get("status") if data else "down",
            "options": data.get("options") if data else None,
            "frontend_url": data.get("frontend_url") if data else None,
            "inventory": data.get("inventory") if data else None,
            "kong": data.get("kong") if data else None,
            "components": [c.__dict__ for c in comps],
        }, indent=2))
        return 0 if up else EXIT_DOWN
    if data is None:
        print(f"lab: down (no state in {lab.run_dir})")
        if lab.run_dir.exists():
            print(f"lab: {lab.run_dir} exists without lab.json (an interrupted lab?); "
                  "`tests/lab/lab down` stops what its pid files name and removes it")
        return EXIT_DOWN
    o = data.get("options", {})
    print(f"lab: {'up' if up else 'NOT fully up'} (state {data.get('status')}; {o.get('mode')}, "
          f"{o.get('lb')}, X {o.get('x_version')} x{o.get('x_nodes')}, "
          f"Y {o.get('y_version')} x{o.get('y_nodes')}) run dir {lab.run_dir}")
    width = max([len(c.name) for c in comps] + [9])
    print(f"{'component':<{width}}  {'pid':>7}  {'state':<6}  address / notes")
    for c in comps:
        pid = str(c.pid) if c.pid else "-"
        state = "alive" if c.alive else ("-" if c.kind == "kong-y" else "DEAD")
        print(f"{c.name:<{width}}  {pid:>7}  {state:<6}  {c.address}{'  (' + c.note + ')' if c.note else ''}")
    kong = data.get("kong") or {}
    if kong:
        where = ", ".join(f"{v} {i.get('source')} {i.get('root')}" for v, i in sorted(kong.get("versions", {}).items()))
        print(f"kong: {kong.get('provider')} ({where})")
    if data.get("frontend_url"):
        print(f"frontend: {data['frontend_url']}")
    if data.get("inventory"):
        print(f"inventory: {data['inventory']}")
    return 0 if up else EXIT_DOWN


def _cmd_load(lab: Lab, args: argparse.Namespace) -> int:
    state = lab.state()
    targets: list[dict[str, Any]] | None = None
    url = args.url
    if url is None:
        if state is None or not state.data.get("frontend_url"):
            url = f"http://{FRONTEND_HOST}:{FRONTEND_PORT}"
            print(f"lab: no lab state in {lab.run_dir}; sending to {url}", file=sys.stderr)
        else:
            url = state.data["frontend_url"]
    if state is not None and url == state.data.get("frontend_url"):
        targets = state.data.get("seed", {}).get("load_targets")
    rate = args.rate
    concurrency = args.concurrency
    if rate is None and concurrency is None:
        rate = 100.0
    if rate is not None and rate <= 0:
        rate = None
    if concurrency is None:
        concurrency = max(4, min(64, math.ceil((rate or 100.0) / 50.0)))
    output = args.output or lab.paths.load_output
    gen = LoadGenerator(url, targets, duration=args.duration, rate=rate, concurrency=concurrency,
                        timeout=args.timeout)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    pace = f"rate {rate:g}/s" if rate else "unpaced"
    print(f"lab: load on {url} for {args.duration:g}s ({pace}, {concurrency} keep-alive connections)",
          file=sys.stderr)
    gen.start()
    gen.wait(stop)
    summary = gen.summary()
    if stop.is_set():
        summary["interrupted"] = True
    write_summary(summary, output)
    versions = ", ".join(f"{v}={n}" for v, n in summary["by_version"].items()) or "-"
    lat = summary["latency_ms"] or {}
    print(f"requests {summary['requests']} in {summary['duration_seconds']:.1f}s: ok {summary['ok']}, "
          f"failed {summary['failed']}, stale keep-alive retries {summary['stale_keepalive_retries']}")
    if summary["failed"]:
        print(f"failed by reason: {json.dumps(summary['failed_by_reason'])}")
    print(f"by Kong version: {versions}")
    if lat:
        print(f"latency ms: p50 {lat['p50']} p95 {lat['p95']} p99 {lat['p99']} max {lat['max']}")
    print(f"longest failure window: {summary['longest_failure_window_seconds']:.3f}s")
    print(output)
    if args.max_failures is not None and summary["failed"] > args.max_failures:
        return 1
    return 0


def _kit_for(args: argparse.Namespace, what: str) -> Path | None:
    """The realkong kit to build or package from; without one, None under --if-kit (said), else an error."""
    kit = realkong.kit_dir()
    if kit is None and args.if_kit:
        print(f"lab: no realkong kit ($KONG_LAB_REALKONG_KIT, default ../shared/realkong): nothing to {what}; "
              "tests that need it use an installed Kong or are skipped", file=sys.stderr)
    elif kit is None:
        raise realkong.RealKongMissing(f"no realkong kit to {what} from ($KONG_LAB_REALKONG_KIT, default "
                                       "../shared/realkong beside the checkout)")
    return kit


def _cmd_kong(lab: Lab, args: argparse.Namespace) -> int:
    if args.kong_command in ("build", "package"):
        kit = _kit_for(args, args.kong_command)
        for version in (args.versions or realkong.kit_versions(kit)) if kit else []:
            made = realkong.build(version, kit).executable if args.kong_command == "build" else build_deb(version, kit)
            print(f"{version} {made}")
        return 0
    kit = realkong.kit_dir()
    versions = set(realkong.kit_versions(kit) if kit else [])
    versions |= set(realkong.installed_versions(args.kong_install))
    rows = []
    for version in sorted(versions, key=lambda v: tuple(int(p) for p in v.split("."))):
        ok, why = realkong.available(version, args.kong_install)
        rows.append({"version": version, "available": ok, "how": why})
    if args.json:
        print(json.dumps({"kit": str(kit) if kit else None, "cache": str(realkong.cache_dir()),
                          "versions": rows}, indent=2))
        return 0
    print(f"kit: {kit or 'none'}; cache: {realkong.cache_dir()}")
    for row in rows:
        print(f"{row['version']:<8} {'yes' if row['available'] else 'no ':<3}  {row['how']}")
    if not rows:
        print("no real Kong: install Kong and pass --kong-install DIR, or provide the realkong kit")
    return 0


def _cmd_seed(lab: Lab, args: argparse.Namespace) -> int:
    fmt = args.format_version or declarative_format(args.kong_version)
    seed = generate(args.size, fmt, ECHO_HOST, ECHO_PORT)
    seed.write(args.output)
    print(f"lab: {seed.total} entities ({json.dumps(seed.counts)}) in format {fmt}", file=sys.stderr)
    print(args.output)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    lab = Lab(args.run_dir)
    handlers = {"up": _cmd_up, "down": _cmd_down, "status": _cmd_status, "load": _cmd_load,
                "seed": _cmd_seed, "kong": _cmd_kong}
    try:
        return handlers[args.command](lab, args)
    except LabError as exc:
        print(f"lab {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lab {args.command}: interrupted", file=sys.stderr)
        return 130

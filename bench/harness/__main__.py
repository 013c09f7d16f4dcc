#!/usr/bin/env python3
"""mailflow's benchmark harness (see bench/README.md; started by bench/run).

The same `smtp-source` workloads run, one after the other in one run, against:
  ceiling        smtp-source -> smtp-sink (the generator's and the loopback's limit)
  postfix-relay  a private Postfix instance relaying to smtp-sink
  postfix-local  the same Postfix delivering to a Maildir (virtual(8))
  mailflow       Front End -> Transport -> Mailbox Delivery -> mailbox database
  mailflow-relay mailflow relaying to smtp-sink: a custom receive connector for
                 127.0.0.1 into Transport, out through a send connector whose smart
                 host is the sink (probed first: measured when the probe arrives)
Each run measures accepted msg/s (generator wall time), delivered msg/s (until the last
delivery is observed), p50/p99 latency from end of DATA to delivery, CPU seconds per
1,000 messages of the server's processes, and their peak memory. The report (Markdown)
and a chart go to the output folder.

Only the Python standard library is needed; matplotlib (Debian's python3-matplotlib,
installed by bench/run) draws the chart when it is importable.
"""

import argparse
import bisect
import calendar
import csv
import datetime
import glob
import json
import math
import os
import platform
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from .common import *  # noqa: F401,F403
from .procs import *  # noqa: F401,F403
from .generator import *  # noqa: F401,F403
from .systems import *  # noqa: F401,F403
from .runs import *  # noqa: F401,F403
from .report import *  # noqa: F401,F403


def give_back(outdir, paths):
    """Under sudo, the output belongs to the user who ran bench/run, not to root (a
    root-owned target/bench-smoke would stop their `cargo clean`)."""
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if os.getuid() != 0 or not uid or not gid:
        return
    for p in [outdir, *paths]:
        try:
            os.chown(p, int(uid), int(gid))
        except OSError:
            pass


def main():
    ap = argparse.ArgumentParser(description="mailflow benchmark harness (see bench/README.md)")
    ap.add_argument("--smoke", action="store_true", help="tiny counts, a few seconds, for CI")
    ap.add_argument("--mailflow", required=True, help="the release binary")
    ap.add_argument("--out", help="output folder (default bench/results, or target/bench-smoke with --smoke)")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--systems", help="comma-separated subset of: " + ", ".join(SYSTEM_KEYS))
    ap.add_argument("--workloads", help="regular expression on workload names, e.g. '4 KiB, 20 sess'")
    ap.add_argument("--wait-quiet", type=float, default=None,
                    help="seconds to wait for an idle machine before starting (default 300, smoke 0)")
    ap.add_argument("--skip", default="", help="comma-separated subset of: idle, paced, backlog, profile")
    args = ap.parse_args()
    plan = PLANS["smoke" if args.smoke else "full"]
    limit = args.wait_quiet if args.wait_quiet is not None else (0 if args.smoke else 300)
    if limit:
        log(f"waiting up to {limit:.0f} s for the machine to be idle")
    quiet, waited = wait_quiet(limit)
    started = time.time()
    deadline = started + plan.max_minutes * 60
    outdir = args.out or os.path.join(REPO, "target/bench-smoke" if args.smoke else "bench/results")
    os.makedirs(outdir, exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    info = machine_info()
    date = datetime.datetime.now().strftime("%Y-%m-%d")
    stem = f"{date}-{info['host']}" if not args.smoke else "smoke"
    workdir = tempfile.mkdtemp(prefix="mailflow-bench-")
    os.chmod(workdir, 0o755)
    log(f"mode {plan.name}; work folder {workdir}; output {outdir}")
    started_objs = []

    def cleanup(*_):
        for o in reversed(started_objs):
            try:
                t = time.time()
                o.stop()
                if time.time() - t > 2:
                    log(f"stopping {type(o).__name__} took {time.time() - t:.1f} s")
            except Exception as e:  # keep stopping the others
                print(f"stopping {o}: {e}", file=sys.stderr)
        started_objs.clear()

    def on_signal(signum, _):
        cleanup()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ctx = {"info": info, "plan": plan, "date": date, "runs": [], "workloads": [], "quiet": (quiet, waited, limit)}
    try:
        sink = Sink(free_ports(1)[0], workdir, "sink")
        started_objs.append(sink)
        mf_sink = Sink(free_ports(1)[0], workdir, "sink-mailflow")
        started_objs.append(mf_sink)
        pf = Postfix(workdir, free_ports(1)[0], sink.port)
        started_objs.append(pf)
        mf = Mailflow(args.mailflow, workdir, mf_sink.port)
        started_objs.append(mf)
        ctx["postfix_version"] = pf.version
        ctx["postfix_settings"] = pf.settings
        ctx["mailflow_version"] = mf.version.replace("mailflow ", "")
        mf_sys = MailflowInbound(mf)
        mf_relay = MailflowRelay(mf, mf_sink)
        ctx["mf_relay_available"] = mf_relay.available
        ctx["mf_relay_reason"] = mf_relay.unavailable_reason
        log(f"mailflow relay: {'available' if mf_relay.available else 'not measured: ' + mf_relay.unavailable_reason}")
        systems = [Ceiling(sink), PostfixRelay(pf, sink), PostfixLocal(pf), mf_sys]
        if mf_relay.available:
            systems.append(mf_relay)
        if args.systems:
            wanted = args.systems.split(",")
            systems = [s for s in systems if s.key in wanted]
        skip = set(args.skip.split(",")) - {""}
        for s in systems:  # warm-up: process pools, page cache, database files
            s.begin()
            gen = run_generator(s.port(), plan.warmup, 20, 4096, 1, f"user@{s.domain}", plan.gen_timeout)
            last, _ = s.wait_delivered(plan.warmup, plan.warmup, time.time() + plan.deliver_timeout)
            if not gen.ok or last is None:
                raise RuntimeError(f"warm-up of {s.key} failed: {gen.error or 'not delivered'}")
        skipped = []
        for size in plan.sizes:
            for sessions in plan.sessions:
                for rcpts in plan.rcpts:
                    wl = workload_name(size, sessions, rcpts)
                    if args.workloads and not re.search(args.workloads, wl):
                        continue
                    if time.time() > deadline:
                        skipped.append(wl)
                        continue
                    ctx["workloads"].append(wl)
                    n = plan.counts[(size, sessions, rcpts)]
                    for s in systems:
                        ctx["runs"].append(measure(s, n, sessions, size, rcpts, plan))
        # The target workload again, interleaved across systems, so that one disturbed run
        # does not decide a target: the targets use the median.
        wl = workload_name(4096, 20, 1)
        if wl in ctx["workloads"]:
            for k in range(2, plan.repeats + 1):
                if time.time() > deadline:
                    skipped.append(f"repeat {k} of {wl}")
                    continue
                for s in systems:
                    ctx["runs"].append(measure(s, plan.counts[(4096, 20, 1)], 20, 4096, 1, plan, workload=f"{wl} (repeat {k})"))
        mf_peak = max(
            [r.delivered_rate for r in ctx["runs"] if r.system == "mailflow" and r.size == 4096 and r.rcpts == 1 and r.delivered_rate] or [0]
        )
        if "paced" in skip:
            pass
        elif mf_peak and time.time() < deadline:
            ctx["paced_runs"] = []
            for k in range(plan.repeats):
                if time.time() > deadline:
                    skipped.append(f"paced latency run {k + 1}")
                    continue
                run = paced_latency(mf_sys, mf_peak, plan)
                ctx["paced_runs"].append(run)
                ctx["runs"].append(run)
        else:
            skipped.append("paced latency")
        if "backlog" in skip:
            pass
        elif time.time() < deadline:
            flow = measure(mf_sys, plan.backlog, 20, 4096, 1, plan, workload=f"{plan.backlog:,} msgs through an empty queue")
            ctx["runs"].append(flow)
            ctx["backlog"] = backlog(mf, mf_sys, plan, flow)
        else:
            skipped.append("backlog")
        if plan.profile_messages and not args.no_profile and "profile" not in skip:
            if time.time() < deadline:
                ctx["profile"] = profile(mf_sys, plan, outdir, stem, workdir)
            else:
                skipped.append("profile")
        # Last, on a restarted mailflow: sessions the server cannot take (past its
        # connection limit) would otherwise wait in the backlog during other runs, and
        # a fresh process shows what the idle sessions themselves cost.
        if "idle" in skip:
            pass
        elif time.time() < deadline:
            mf.restart()
            ctx["idle"] = idle_sessions(mf, mf_sys, plan.idle, plan)
        else:
            skipped.append("idle sessions")
        ctx["skipped"] = skipped
    finally:
        cleanup()
        if sys.exc_info()[0] is not None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    ctx["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    ctx["elapsed"] = time.time() - started
    ctx["targets"] = evaluate_targets(ctx)
    chart = os.path.join(outdir, f"{stem}.png")
    if draw_chart(chart, ctx["runs"], plan):
        ctx["chart"] = os.path.basename(chart)
    report = os.path.join(outdir, f"{stem}.md")
    write_report(report, ctx)
    written = [report, chart, os.path.join(outdir, f"{stem}-flamegraph.svg")]
    if not args.smoke:
        shutil.copyfile(report, os.path.join(outdir, "latest.md"))
        written.append(os.path.join(outdir, "latest.md"))
    give_back(outdir, written)
    # Only a complete run (every system, workload and special run, results where the
    # README points) replaces the README's figures: a partial one is for development.
    if not args.smoke and not (args.systems or args.workloads or args.skip or args.no_profile or args.out):
        update_readme(ctx)
    log(f"report: {report}")
    failed = [r for r in ctx["runs"] if r.accepted_rate is None or r.delivered_rate is None]
    for r in failed:
        log(f"FAILED RUN {r.system} {r.workload}: {r.note}")
    if not ctx["mf_relay_available"]:
        # Outbound delivery exists: a probe that fails is a broken harness or server.
        log(f"FAILED: mailflow-relay was not measured: {ctx['mf_relay_reason']}")
        failed.append(None)
    print()
    for t in ctx["targets"]:
        print(f"  {t['met']:>9}  {t['target']}: {t['measured']} ({t['ratio']})")
    if not args.keep:
        log("removing the work folder")
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

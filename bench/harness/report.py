"""The report: the Markdown file, the targets' verdicts, the chart and README's performance block."""

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
from .runs import *  # noqa: F401,F403


# ------------------------------------------------------------------------ report


def machine_info():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = proc_field("/proc/meminfo", "MemTotal", missing=None)
    fs = subprocess.run(["df", "-T", tempfile.gettempdir()], capture_output=True, text=True).stdout.splitlines()[-1].split()
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "crates"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gib": mem / 1024 / 1024 if mem else None,
        "kernel": platform.release(),
        "fs": f"{fs[1]} on {fs[0]}" if len(fs) > 1 else "?",
        "commit": commit + (" (crates/ modified)" if dirty else ""),
        "host": socket.gethostname(),
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fr(v):
    return "–" if v is None else f"{v:.2f}×"


def report_header(w, ctx):
    """The title, the machine, and how to read the figures."""
    info = ctx["info"]
    plan = ctx["plan"]
    w(f"# mailflow benchmark — {ctx['date']} on {info['host']}")
    w("")
    w(f"Mode **{plan.name}** (`bench/run{' --smoke' if plan.name == 'smoke' else ''}`), "
      f"{ctx['elapsed'] / 60:.1f} minutes. Machine: **{info['cpu']}, {info['cores']} cores**, "
      f"{info['mem_gib']:.0f} GiB, Linux {info['kernel']}, work folder on {info['fs']}. "
      f"mailflow {ctx['mailflow_version']} at commit {info['commit']} (release build); Postfix {ctx['postfix_version']}; "
      f"generator `smtp-source` and sink `smtp-sink` from Debian's postfix package. "
      f"Load average before the run: {' '.join(info['loadavg'])}; after: {' '.join(ctx['loadavg_end'])}.")
    w("")
    quiet, waited, limit = ctx["quiet"]
    if limit and not quiet:
        w(f"**The machine was busy when the run started** (other processes kept over 15% of its CPUs "
          f"busy for the {limit:.0f} s the harness waited): the figures are disturbed; compare `other CPU`.")
        w("")
    w("Generator, servers and sink share the same cores. In the detail table, `other CPU` is the "
      "machine's busy time during a run not spent by the server, the generator or the sink: the "
      "harness itself, softirq work the kernel did not charge to those processes, and anything else "
      "running (`irq CPU`, the interrupt and softirq time, is shown for reference; tick accounting "
      "makes both good to about ±0.5 s). A run where `other CPU` exceeds 10% of the machine is "
      "marked *disturbed* in the notes.")
    w("")
    if ctx.get("skipped"):
        w(f"**Skipped (time budget of {plan.max_minutes} minutes reached):** {', '.join(ctx['skipped'])}")
        w("")


def report_targets(w, ctx):
    """The targets of issue 7 and the runs their medians come from."""
    plan = ctx["plan"]
    runs = ctx["runs"]
    w("## Targets (issue 7)")
    w("")
    if plan.name == "smoke":
        w("*Smoke run: the counts are far too small for these figures to mean anything; the verdicts "
          "are printed only so that every part of the report is exercised.*")
        w("")
    w("| target | measured | ratio | met? |")
    w("|---|---|---|---|")
    for t in ctx["targets"]:
        w(f"| {t['target']} | {t['measured']} | {t['ratio']} | {t['met']} |")
    w("")
    med = target_medians(runs)
    if med:
        w(f"Runs of the target workload ({workload_name(4096, 20, 1)}), interleaved across systems; "
          f"the targets use the medians:")
        w("")
        w("| system | accepted msg/s, each run | median | delivered msg/s, each run | median |")
        w("|---|---|--:|---|--:|")
        for key, m in med.items():
            w(f"| {key} | {', '.join(fmt(r.accepted_rate) + ('*' if r.disturbed else '') for r in m.runs)} | "
              f"{fmt(m.accepted_rate)} | {', '.join(fmt(r.delivered_rate) for r in m.runs)} | {fmt(m.delivered_rate)} |")
        w("")
        w("\\* disturbed: other processes used over 10% of the machine during that run.")
        w("")


def report_main_table(w, ctx):
    """Throughput, latency, CPU and memory of every measured run."""
    runs = ctx["runs"]
    w("## Throughput, latency, CPU and memory")
    w("")
    w("accepted = messages / generator wall time; delivered = messages / (last delivery − generator start); "
      "latency = end of DATA to delivery (mailflow: Transport's RECEIVE to DELIVER in the tracking logs; "
      "Postfix: its `delay=`, from MAIL FROM, so it includes the DATA transfer); "
      "CPU = server processes' user+system seconds per 1,000 messages (Postfix: master and every child, "
      "exited ones included; ceiling: smtp-sink); memory = peak of the summed PSS of the server's processes "
      "(sampled every 0.25 s, every second for a process tree; for mailflow, one process, also the kernel's peak RSS).")
    w("")
    w("| workload | system | msgs | accepted msg/s | delivered msg/s | p50 ms | p99 ms | CPU s/1k msgs | peak mem MiB | notes |")
    w("|---|---|--:|--:|--:|--:|--:|--:|--:|---|")
    for r in runs:
        if r.workload.startswith(("paced", "profiled")):
            continue
        mem = fmt(r.peak_pss_mib, 1)
        if r.kernel_peak_mib:
            mem += f" (RSS {r.kernel_peak_mib:.1f})"
        elif r.procs > 1:
            mem += f" ({r.procs} procs)"
        w(f"| {r.workload} | {r.system} | {r.messages} | {fmt(r.accepted_rate)} | {fmt(r.delivered_rate)} | "
          f"{fmt(r.p50_ms, 1)} | {fmt(r.p99_ms, 1)} | {fmt(r.cpu_per_1000, 2)} | {mem} | {r.note} |")
    w("")
    if not ctx["mf_relay_available"]:
        w(f"**mailflow relay → smtp-sink: not measured.** The probe message failed: {ctx['mf_relay_reason']}. "
          "The harness probes it at every run and measures it only when the probe message reaches the sink.")
        w("")


def report_ratios(w, ctx):
    """mailflow against Postfix and the ceiling, and the relays against each other."""
    runs = ctx["runs"]
    by = {(r.workload, r.system): r for r in runs}
    w("## Ratios")
    w("")
    w("Postfix accept = the better of its two configurations (relay, local); delivered compares "
      "mailflow's delivery into the mailbox database with Postfix's Maildir delivery.")
    w("")
    w("| workload | mailflow/Postfix accepted | mailflow/ceiling accepted | mailflow/Postfix-local delivered | mailflow/Postfix-local CPU per msg |")
    w("|---|--:|--:|--:|--:|")
    for wl in ctx["workloads"]:
        mf, c = by.get((wl, "mailflow")), by.get((wl, "ceiling"))
        pr, pl = by.get((wl, "postfix-relay")), by.get((wl, "postfix-local"))
        if not mf:
            continue
        pf_acc = max([x.accepted_rate for x in (pr, pl) if x and x.accepted_rate] or [0]) or None
        w(f"| {wl} | {fr(ratio(mf.accepted_rate, pf_acc))} | {fr(ratio(mf.accepted_rate, c and c.accepted_rate))} | "
          f"{fr(ratio(mf.delivered_rate, pl and pl.delivered_rate))} | {fr(ratio(mf.cpu_per_1000, pl and pl.cpu_per_1000))} |")
    w("")
    relay_rows = [(wl, by.get((wl, "mailflow-relay")), by.get((wl, "postfix-relay"))) for wl in ctx["workloads"]]
    relay_rows = [(wl, m, p) for wl, m, p in relay_rows if m]
    if relay_rows:
        w("Relaying to smtp-sink: mailflow (custom receive connector → Transport's queue → send "
          "connector to the smart host) against Postfix (smtpd → queue → smtp to the relayhost).")
        w("")
        w("| workload | mailflow-relay/Postfix-relay accepted | mailflow-relay/Postfix-relay delivered | mailflow-relay/Postfix-relay CPU per msg |")
        w("|---|--:|--:|--:|")
        for wl, m, p in relay_rows:
            w(f"| {wl} | {fr(ratio(m.accepted_rate, p and p.accepted_rate))} | {fr(ratio(m.delivered_rate, p and p.delivered_rate))} | "
              f"{fr(ratio(m.cpu_per_1000, p and p.cpu_per_1000))} |")
        w("")
    if ctx.get("chart"):
        w(f"![throughput against concurrency]({ctx['chart']})")
        w("")


def report_paced(w, ctx):
    """Latency at half of mailflow's peak rate."""
    paced = ctx.get("paced_runs") or []
    p = paced[0] if paced else None
    w("## Latency at half of mailflow's peak rate")
    w("")
    if p:
        w(f"Peak = mailflow's best delivered rate among the 4 KiB, 1-recipient runs. Offered load: "
          f"{p.sessions} sessions each sending one message a second (`smtp-source -w 1`), split over "
          f"staggered generators; {p.messages} messages.")
        w("")
        w("| target rate | offered rate, steady (10th–90th percentile of arrivals) | accepted rate over the whole run | delivered | p50 ms | p99 ms | CPU s/1k msgs |")
        w("|--:|--:|--:|--:|--:|--:|--:|")
        for p in paced:
            w(f"| {fmt(p.extra.get('target_rate'))} | {fmt(p.extra.get('steady_rate'))} | {fmt(p.accepted_rate)} | {p.delivered}/{p.messages} | "
              f"{fmt(p.p50_ms, 1)} | {fmt(p.p99_ms, 1)} | {fmt(p.cpu_per_1000, 2)}{' (*disturbed*)' if p.disturbed else ''} |")
    else:
        w("not run")
    w("")


def report_backlog(w, ctx):
    """Draining a suspended queue."""
    b = ctx.get("backlog")
    w("## Backlog")
    w("")
    if b:
        w(f"The mailbox delivery queue (next hop DB01) is suspended (`mailflow queue suspend DB01`), "
          f"N messages (4 KiB, 20 sessions) are queued, then `queue resume DB01` releases them; drain rate = "
          f"N / (resume → last DELIVER). Reference: a short backlog of {b['small']['depth'] if b.get('small') else '?'} "
          f"messages drained the same way, and the same N flowing through an empty queue (delivered rate).")
        w("")
        w("| run | queued (queue depth) | accepted msg/s | drain msg/s | CPU s/1k msgs (drain) | RSS while queued MiB | peak RSS MiB |")
        w("|---|--:|--:|--:|--:|--:|--:|")
        for label in ("small", "big"):
            x = b.get(label)
            if x:
                w(f"| {label} backlog | {x['depth']} | {fmt(x['accepted_rate'])} | {fmt(x['drain_rate'])} | "
                  f"{x['cpu_per_1000']:.2f} | {x['rss_queued_mib']:.1f} | {x['kernel_peak_mib']:.1f} |")
        f = b.get("flow")
        if f:
            w(f"| same N through an empty queue | {f.messages} | {fmt(f.accepted_rate)} | "
              f"{fmt(f.delivered_rate)} (delivered) | {fmt(f.cpu_per_1000, 2)} (whole pipeline) | – | {fmt(f.kernel_peak_mib, 1)} |")
        w("")
        sm, bg = b.get("small"), b.get("big")
        if sm and bg and bg["depth"] > sm["depth"]:
            per = (bg["rss_queued_mib"] - sm["rss_queued_mib"]) * 1024 / (bg["depth"] - sm["depth"])
            w(f"RSS per queued 4 KiB message: {per:.1f} KiB (RSS while queued, big minus small "
              f"backlog, over the difference in depth).")
            w("")
    else:
        w("not run")
        w("")


def report_idle(w, ctx):
    """Idle sessions held open on the Front End."""
    i = ctx.get("idle")
    w("## Idle sessions")
    w("")
    if i:
        per = None
        if i["bannered"]:
            per = (i["rss_with_kib"] - i["rss_before_kib"]) / i["bannered"]
        w(f"{i['wanted']:,} TCP connections opened to the Front End (`ulimit -n` {i['nofile']}); each reads the "
          f"220 banner and stays silent.")
        w("")
        w("| sessions with a banner | still waiting (kernel backlog) | failed | RSS before MiB | RSS with them MiB | KiB per session | dropped by server | new client served (20 msgs) |")
        w("|--:|--:|--:|--:|--:|--:|--:|---|")
        w(f"| {i['bannered']:,} | {i['waiting']:,} | {i['failed']} | {i['rss_before_kib'] / 1024:.1f} | "
          f"{i['rss_with_kib'] / 1024:.1f} | {fmt(per, 1)} | {i['dropped']} | "
          f"{'yes' if i['probe_accepted'] and i['probe_delivered'] == 20 else 'NO'}: accepted={i['probe_accepted']}, "
          f"delivered {i['probe_delivered']}/20 {i['probe_error']} |")
        w("")
        if i.get("capped") is not None:
            w(f"**Only {i['capped']:,} connections were opened**: `ulimit -n` is {i['nofile']} and could not be raised "
              f"(the harness keeps 200 descriptors for itself).")
            w("")
        w(f"Default Frontend runs with MaxInboundConnection {MAX_INBOUND_FRONTEND:,} (Exchange's default, "
          f"5,000, would refuse the rest with 421 4.3.2), the server's other receive connectors with "
          f"{MAX_INBOUND} and the relay connector with {MAX_INBOUND_RELAY:,}, so that the sum fits what mailflow "
          f"leaves for sessions of the open-files limit; no per-source limit on Default Frontend (every "
          f"generator connects from 127.0.0.1).")
        w("")
        if i["waiting"] and per is not None:
            w(f"**The server stopped accepting after {i['bannered']:,} sessions**: the rest of the connections "
              f"waited in the kernel's listen backlog without a banner. At the measured {per:.1f} KiB per session, "
              f"{i['wanted']:,} sessions would need about "
              f"{(i['rss_before_kib'] + per * i['wanted']) / 1024:.0f} MiB of RSS.")
            w("")
        w("Postfix is not run here: it serves each session with its own smtpd process, at most "
          "`default_process_limit` (300 in this run) at once.")
    else:
        w("not run")
    w("")


def report_profile(w, ctx):
    """The perf profile of mailflow."""
    prof = ctx.get("profile")
    w("## Profile (mailflow, 4 KiB, 20 sessions, 1 recipient)")
    w("")
    if prof and not prof.get("error"):
        r = prof["run"]
        w(f"`perf record -F 499 --call-graph dwarf` on the mailflow process during {r.messages} messages "
          f"(accepted {fmt(r.accepted_rate)}/s under the profiler; not used for the figures above).")
        if prof.get("svg"):
            w(f"Flamegraph: [{prof['svg']}]({prof['svg']}).")
        w("")
        w("Top frames by self time:")
        w("")
        w("| self % | | symbol |")
        w("|--:|---|---|")
        for pct, kind, sym in prof.get("self", []):
            w(f"| {pct:.2f} | {'kernel' if kind == 'k' else 'user'} | `{sym[:160]}` |")
        w("")
        w("mailflow's functions by inclusive time (the function and what it calls):")
        w("")
        w("| incl. % | self % | function |")
        w("|--:|--:|---|")
        for inc, slf, sym in prof.get("mailflow", []):
            w(f"| {inc:.2f} | {slf:.2f} | `{sym[:160]}` |")
        w("")
        w("System calls by inclusive time:")
        w("")
        w("| incl. % | system call |")
        w("|--:|---|")
        for inc, _, sym in prof.get("syscalls", []):
            w(f"| {inc:.2f} | `{sym.replace('__x64_sys_', '')}` |")
        w("")
        w("Percentages are of all samples of the mailflow process (every thread); in a VM without a "
          "hardware PMU perf samples on a timer, so kernel self time piles up where interrupts are "
          "re-enabled (`finish_task_switch`, `_raw_spin_unlock_irqrestore`): read those as context "
          "switches and wake-ups.")
    elif prof:
        w(f"not available: {prof['error']}")
    else:
        w("not run")
    w("")


def report_details(w, ctx):
    """Per-run detail and the Postfix configuration."""
    runs = ctx["runs"]
    w("## Detail")
    w("")
    w("| workload | system | wall s | delivered | generator CPU s | irq CPU s | other CPU s | peak RSS sum MiB | processes | latency source |")
    w("|---|---|--:|--:|--:|--:|--:|--:|--:|---|")
    for r in runs:
        w(f"| {r.workload} | {r.system} | {fmt(r.wall, 2)} | {r.delivered} | {fmt(r.gen_cpu, 2)} | {fmt(r.irq_cpu, 2)} | {fmt(r.other_cpu, 2)} | "
          f"{fmt(r.peak_rss_mib, 1)} | {r.procs} | {r.latency_note} |")
    w("")
    w("### Postfix configuration")
    w("")
    w("A private instance (`postfix -c <work>/postfix/etc start`): main.cf")
    w("")
    w("```")
    for k, v in ctx["postfix_settings"].items():
        w(f"{k} = {v}")
    w("```")
    w("")
    w("and master.cf: the upstream default services with chroot off, smtpd on 127.0.0.1:<high port>. "
      "Everything else is Postfix's default, including the fsync of the queue file before the 250 reply.")
    w("")


def write_report(path, ctx):
    """The Markdown report of a run: one function per section, in order."""
    L = []
    w = L.append
    report_header(w, ctx)
    report_targets(w, ctx)
    report_main_table(w, ctx)
    report_ratios(w, ctx)
    report_paced(w, ctx)
    report_backlog(w, ctx)
    report_idle(w, ctx)
    report_profile(w, ctx)
    report_details(w, ctx)
    with open(path, "w") as f:
        f.write("\n".join(L))


@dataclass
class Median:
    """The median of a system's repeated runs of the target workload."""

    accepted_rate: float
    delivered_rate: float
    runs: list


def median(values):
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def target_medians(runs):
    wl = workload_name(4096, 20, 1)
    out = {}
    for key in SYSTEM_KEYS:
        rs = [r for r in runs if r.system == key and (r.workload == wl or r.workload.startswith(wl + " (repeat"))]
        if rs:
            out[key] = Median(median(r.accepted_rate for r in rs), median(r.delivered_rate for r in rs), rs)
    return out


def evaluate_targets(ctx):
    med = target_medians(ctx["runs"])
    mf, c = med.get("mailflow"), med.get("ceiling")
    pr, pl = med.get("postfix-relay"), med.get("postfix-local")
    T = []

    def add(target, measured, rat, ok):
        T.append({"target": target, "measured": measured, "ratio": rat,
                  "met": "–" if ok is None else ("**yes**" if ok else "**no**")})

    pf_acc = max([x.accepted_rate for x in (pr, pl) if x and x.accepted_rate] or [0]) or None
    r1 = ratio(mf and mf.accepted_rate, pf_acc)
    n = len(mf.runs) if mf else 0
    add(f"accept rate, 4 KiB, 20 sessions ≥ 2× Postfix (medians of {n} runs)",
        f"mailflow {fmt(mf and mf.accepted_rate)}/s, Postfix {fmt(pf_acc)}/s", fr(r1), None if r1 is None else r1 >= 2)
    r2 = ratio(mf and mf.accepted_rate, c and c.accepted_rate)
    add(f"accept rate, 4 KiB, 20 sessions ≥ 70% of the smtp-sink ceiling (medians of {n} runs)",
        f"mailflow {fmt(mf and mf.accepted_rate)}/s, ceiling {fmt(c and c.accepted_rate)}/s",
        "–" if r2 is None else f"{r2 * 100:.0f}%", None if r2 is None else r2 >= 0.7)
    r3 = ratio(mf and mf.delivered_rate, pl and pl.delivered_rate)
    add(f"end-to-end delivery into the mailbox database ≥ 2× Postfix local Maildir (4 KiB, 20 sessions, medians of {n} runs)",
        f"mailflow {fmt(mf and mf.delivered_rate)}/s, Postfix {fmt(pl and pl.delivered_rate)}/s", fr(r3),
        None if r3 is None else r3 >= 2)
    paced = [p for p in ctx.get("paced_runs") or [] if p.p99_ms is not None]
    if paced:
        p99 = median(p.p99_ms for p in paced)
        p = paced[0]
        add("p99 end-to-end latency < 50 ms at half of mailflow's peak rate",
            f"median p99 {p99:.1f} ms of {len(paced)} runs ({', '.join(f'{x.p99_ms:.0f}' for x in paced)} ms) at "
            f"{fmt(median(x.extra.get('steady_rate') for x in paced))}/s offered (peak {fmt(p.extra.get('target_rate', 0) * 2)}/s)",
            f"{p99 / 50:.2f}× the limit", p99 < 50)
    else:
        add("p99 end-to-end latency < 50 ms at half of mailflow's peak rate", "not measured", "–", None)
    i = ctx.get("idle")
    if i:
        rss = i["rss_with_kib"] / 1024
        ok = i["bannered"] >= i["wanted"] and rss < 200 and i["probe_accepted"] and i["probe_delivered"] == 20 and not i["dropped"]
        add(f"{i['wanted']:,} idle sessions held with RSS < 200 MiB, every other session still served",
            f"{i['bannered']:,} held, RSS {rss:.1f} MiB, new client served: "
            f"{'yes' if i['probe_accepted'] and i['probe_delivered'] == 20 else 'no'}",
            f"{i['bannered'] / i['wanted'] * 100:.0f}% held; {rss / 200 * 100:.0f}% of the RSS budget", ok)
    b = ctx.get("backlog")
    if b and b.get("big") and b["big"]["drain_rate"]:
        flow = b["flow"].delivered_rate if b.get("flow") else None
        rr = ratio(b["big"]["drain_rate"], flow)
        rs = ratio(b["big"]["drain_rate"], b.get("small", {}).get("drain_rate"))
        add(f"{b['n']:,}-message backlog drains ≥ 90% of the rate of an empty queue",
            f"drain {fmt(b['big']['drain_rate'])}/s; same N through an empty queue {fmt(flow)}/s; "
            f"short backlog drain {fmt(b.get('small', {}).get('drain_rate'))}/s",
            f"{fr(rr)} (vs empty queue), {fr(rs)} (vs short backlog)", None if rr is None else rr >= 0.9)
    return T


def draw_chart(path, runs, plan):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    by = {(r.workload, r.system): r for r in runs}
    systems = [
        ("ceiling", "ceiling (smtp-source → smtp-sink)", "black"),
        ("postfix-relay", "Postfix relay → smtp-sink", "tab:blue"),
        ("postfix-local", "Postfix → Maildir", "tab:green"),
        ("mailflow", "mailflow → mailbox database", "tab:red"),
        ("mailflow-relay", "mailflow relay → smtp-sink", "tab:orange"),
    ]
    fig, axes = plt.subplots(len(plan.sizes), len(plan.rcpts), figsize=(12, 9), squeeze=False)
    for i, size in enumerate(plan.sizes):
        for j, rc in enumerate(plan.rcpts):
            ax = axes[i][j]
            for key, label, color in systems:
                for kind, style in (("accepted_rate", "-"), ("delivered_rate", "--")):
                    if key == "ceiling" and kind == "delivered_rate":
                        continue
                    xs, ys = [], []
                    for s in plan.sessions:
                        r = by.get((workload_name(size, s, rc), key))
                        v = getattr(r, kind) if r else None
                        if v:
                            xs.append(s)
                            ys.append(v)
                    if xs:
                        ax.plot(xs, ys, style, marker="o", color=color,
                                label=f"{label} ({'accepted' if kind == 'accepted_rate' else 'delivered'})")
            ax.set_xscale("log")
            ax.set_yscale("log")
            label_fmt = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}")
            ax.yaxis.set_major_formatter(label_fmt)
            ax.yaxis.set_minor_formatter(label_fmt)
            ax.tick_params(axis="y", which="minor", labelsize=7)
            ax.set_xticks(plan.sessions)
            ax.set_xticklabels([str(s) for s in plan.sessions])
            ax.set_xlabel("concurrent SMTP sessions")
            ax.set_ylabel("messages/s")
            ax.set_title(f"{size // 1024} KiB, {rc} recipient{'s' if rc > 1 else ''}")
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    fig.suptitle("Throughput against concurrency (solid: accepted, dashed: delivered end to end)")
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    fig.savefig(path, dpi=100)
    return True


# -------------------------------------------------------------------------- main


README_START = "<!-- bench:performance:start (bench/run rewrites this block after each complete run) -->"
README_END = "<!-- bench:performance:end -->"


def performance_block(ctx):
    """The README's Performance figures: the targets table of this run and the command
    and machine that produced it."""
    info = ctx["info"]
    runs = [r for r in ctx["runs"] if not r.workload.startswith("profiled")]
    disturbed = sum(1 for r in runs if r.disturbed)
    L = [
        f"The latest complete run: `bench/run` on {ctx['date']}, {ctx['elapsed'] / 60:.1f} minutes on "
        f"{info['cpu']}, {info['cores']} cores, {info['mem_gib']:.0f} GiB (mailflow at commit {info['commit']}, "
        f"Postfix {ctx['postfix_version']}; load average {info['loadavg'][0]} at the start; "
        f"{disturbed} of {len(runs)} runs flagged disturbed). Full report, chart and profile: "
        f"[bench/results/latest.md](bench/results/latest.md).",
        "",
        "| target | measured | ratio | met? |",
        "|---|---|---|---|",
    ]
    for t in ctx["targets"]:
        L.append(f"| {t['target']} | {t['measured']} | {t['ratio']} | {t['met']} |")
    return "\n".join(L)


def update_readme(ctx):
    """Replaces the README's Performance block (between its markers) with this run's."""
    path = os.path.join(REPO, "README.md")
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return
    a, b = text.find(README_START), text.find(README_END)
    if a < 0 or b < a:
        log("README.md has no Performance block markers: not updated")
        return
    text = text[: a + len(README_START)] + "\n" + performance_block(ctx) + "\n" + text[b:]
    with open(path, "w") as f:  # rewritten in place: the file keeps its owner
        f.write(text)
    log("README.md: Performance block updated")

"""The runs: one measured workload, paced latency, backlog, idle sessions and the profile."""

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


# --------------------------------------------------------------------------- runs


@dataclass
class Run:
    workload: str
    system: str
    size: int
    sessions: int
    rcpts: int
    messages: int
    accepted_rate: float = None
    delivered_rate: float = None
    delivered: int = 0
    p50_ms: float = None
    p99_ms: float = None
    cpu_per_1000: float = None
    peak_rss_mib: float = None
    peak_pss_mib: float = None
    kernel_peak_mib: float = None
    procs: int = 0
    gen_cpu: float = None
    other_cpu: float = None
    irq_cpu: float = None
    disturbed: float = 0.0
    wall: float = None
    note: str = ""
    latency_note: str = ""
    extra: dict = field(default_factory=dict)


def workload_name(size, sessions, rcpts):
    return f"{size // 1024} KiB, {sessions} sess, {rcpts} rcpt"


def measure(system, messages, sessions, size, rcpts, plan, workload=None, gen_extra=(), generators=1, stagger=0.0):
    """One run: generator, then wait for the last delivery. `generators` > 1 starts
    that many smtp-source processes `stagger` seconds apart (the paced run)."""
    wl = workload or workload_name(size, sessions, rcpts)
    run = Run(wl, system.key, size, sessions, rcpts, messages)
    to = f"user@{system.domain}"
    recipients = messages * rcpts
    system.begin()
    system.reset_peak()
    sampler = MemorySampler(system.pid(), system.single_process)
    sink = system.sink_pid()
    cpu0 = tree_cpu_seconds(system.pid(), system.single_process)
    sink0 = tree_cpu_seconds(sink, True) if sink else 0.0
    busy0, irq0 = machine_busy_seconds(split=True)
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    sampler.start()
    if generators == 1:
        gen = run_generator(system.port(), messages, sessions, size, rcpts, to, plan.gen_timeout, gen_extra)
    else:
        gen = run_staggered(system.port(), messages, sessions, size, rcpts, to, plan.gen_timeout, gen_extra, generators, stagger)
    if not gen.ok:
        run.note = gen.error
    deadline = gen.end + plan.deliver_timeout
    last, delivered = system.wait_delivered(messages, recipients, deadline)
    cpu1 = tree_cpu_seconds(system.pid(), system.single_process)
    sink1 = tree_cpu_seconds(sink, True) if sink else 0.0
    busy1, irq1 = machine_busy_seconds(split=True)
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    sampler.stop()
    run.wall = gen.end - gen.start
    # Every smtp-source process of the run, and nothing else, exits in this window.
    run.gen_cpu = (children1.ru_utime - children0.ru_utime) + (children1.ru_stime - children0.ru_stime)
    run.irq_cpu = irq1 - irq0
    run.delivered = delivered
    if gen.ok:
        run.accepted_rate = messages / run.wall
    if last is not None:
        run.delivered_rate = messages / (last - gen.start)
    else:
        run.note = (run.note + "; " if run.note else "") + (
            f"delivered {delivered} of {messages} within {plan.deliver_timeout:.0f} s after the generator ended"
        )
    run.cpu_per_1000 = (cpu1 - cpu0) * 1000 / messages
    run.other_cpu = (busy1 - busy0) - (cpu1 - cpu0) - (sink1 - sink0) - run.gen_cpu
    share = run.other_cpu / max(0.1, (time.time() - gen.start) * os.cpu_count())
    if share > 0.10:
        run.disturbed = share
        run.note = (run.note + "; " if run.note else "") + f"disturbed: other CPU {share * 100:.0f}% of the machine"
    run.peak_rss_mib = sampler.peak_rss / 1024
    run.peak_pss_mib = sampler.peak_pss / 1024
    run.procs = sampler.peak_procs
    k = system.kernel_peak_kib()
    if k:
        run.kernel_peak_mib = k / 1024
    lat, note = system.latencies()
    run.latency_note = note
    if lat:
        run.p50_ms = percentile(lat, 50) * 1000
        run.p99_ms = percentile(lat, 99) * 1000
    log(
        f"{system.key:14} {wl:26} n={messages:<6} accepted {fmt(run.accepted_rate)}/s "
        f"delivered {fmt(run.delivered_rate)}/s p50 {fmt(run.p50_ms, 1)} p99 {fmt(run.p99_ms, 1)} ms "
        f"cpu/1k {fmt(run.cpu_per_1000, 2)} s mem {fmt(run.peak_pss_mib, 1)} MiB {run.note}"
    )
    return run


def run_staggered(port, messages, sessions, size, rcpts, to, timeout, extra, generators, stagger):
    """Several smtp-source processes started `stagger` s apart so that sessions paced
    with -w 1 do not all arrive in the same instant every second."""
    per = [messages // generators + (1 if i < messages % generators else 0) for i in range(generators)]
    sess = [sessions // generators + (1 if i < sessions % generators else 0) for i in range(generators)]
    results = [None] * generators
    threads = []
    start = time.time()
    for i in range(generators):
        def go(i=i):
            results[i] = run_generator(port, per[i], sess[i], size, rcpts, to, timeout, extra)

        t = threading.Thread(target=go)
        t.start()
        threads.append(t)
        time.sleep(stagger)
    for t in threads:
        t.join()
    bad = [r.error for r in results if not r.ok]
    end = max(r.end for r in results)
    return GenResult(not bad, start, end, sum(r.cpu for r in results), "; ".join(bad[:2]))


def fmt(v, digits=0):
    if v is None:
        return "–"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


# ------------------------------------------------------------------ special runs


def paced_latency(mf_sys, peak, plan):
    """Latency at half of mailflow's peak delivered rate: sessions that each send one
    message a second (smtp-source -w 1), spread over staggered generators."""
    target = max(1, peak / 2)
    sessions = max(1, int(round(target)))
    messages = sessions * plan.paced_seconds
    generators = min(20, sessions)
    run = measure(
        mf_sys, messages, sessions, 4096, 1, plan,
        workload=f"paced {target:,.0f} msg/s (half of peak {peak:,.0f})",
        gen_extra=("-w", "1"), generators=generators, stagger=1.0 / generators,
    )
    run.extra["target_rate"] = target
    # The offered rate once every generator runs: arrivals between the 10th and 90th
    # percentile, without the ramp at the start and the tail at the end.
    times = sorted(getattr(mf_sys, "received", {}).values())
    if len(times) >= 20:
        a, b = times[len(times) // 10], times[len(times) * 9 // 10]
        if b > a:
            run.extra["steady_rate"] = (len(times) * 9 // 10 - len(times) // 10) / (b - a)
    return run


def backlog(mf, mf_sys, plan, flow_reference):
    """Messages queued while the mailbox delivery queue is suspended (its next hop held
    back), then released: the drain rate of a long queue against a short one and
    against the same number of messages flowing through an empty queue."""
    out = {"n": plan.backlog, "small": plan.backlog_small, "flow": flow_reference}
    for label, n in (("small", plan.backlog_small), ("big", plan.backlog)):
        mf.cli("queue", "suspend", "DB01")
        mf_sys.begin()
        gen = run_generator(mf_sys.port(), n, 20, 4096, 1, f"user@{DOMAIN}", plan.gen_timeout * max(1, n / 20000))
        depth = sum(q.get("MessageCount", 0) for q in mf.queues() if q.get("NextHopDomain") == "DB01")
        mf_sys.read_delivers()
        leaked = len(mf_sys.delivered)
        rss_queued = status_kib(mf_sys.pid(), "VmRSS")
        cpu0 = tree_cpu_seconds(mf_sys.pid(), True)
        mf_sys.reset_peak()
        t0 = time.time()
        mf.cli("queue", "resume", "DB01")
        last, delivered = mf_sys.wait_delivered(n, n, t0 + plan.deliver_timeout * max(1, n / 20000))
        cpu1 = tree_cpu_seconds(mf_sys.pid(), True)
        res = {
            "accepted_rate": n / (gen.end - gen.start) if gen.ok else None,
            "gen_error": gen.error,
            "depth": depth,
            "delivered_while_suspended": leaked,
            "delivered": delivered,
            "drain_rate": n / (last - t0) if last else None,
            "cpu_per_1000": (cpu1 - cpu0) * 1000 / n,
            "kernel_peak_mib": (mf_sys.kernel_peak_kib() or 0) / 1024,
            "rss_queued_mib": rss_queued / 1024,
        }
        out[label] = res
        log(f"backlog {label}: {n} queued (depth {depth}), drained at {fmt(res['drain_rate'])}/s, cpu/1k {res['cpu_per_1000']:.2f} s")
    return out


def idle_sessions(mf, mf_sys, count, plan):
    """Opens `count` SMTP sessions to the Front End that stay silent after the banner,
    measures the server's RSS, and checks that a message still goes through."""
    pid = mf_sys.pid()
    port = mf_sys.port()
    res = {"wanted": count}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    res["nofile"] = soft
    if soft < count + 200:
        count = max(0, soft - 200)
        res["capped"] = count
    time.sleep(0.5)
    res["rss_before_kib"] = status_kib(pid, "VmRSS")
    sel = selectors.DefaultSelector()
    socks, bannered, pending, failed = [], 0, 0, 0
    last_progress = time.time()
    t0 = time.time()
    while bannered + pending < count or pending:
        while pending < 200 and bannered + pending < count:
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            sel.register(s, selectors.EVENT_READ, b"")
            socks.append(s)
            pending += 1
        for key, _ in sel.select(0.2):
            s = key.fileobj
            try:
                data = key.data + s.recv(512)
            except OSError:
                data = None
            if not data:
                sel.unregister(s)
                s.close()  # a refused session must not hold a descriptor
                pending -= 1
                failed += 1
                continue
            if b"\r\n" in data:
                sel.unregister(s)
                pending -= 1
                if data.startswith(b"220"):
                    bannered += 1
                else:
                    s.close()  # 421 4.3.2: the connector's cap
                    failed += 1
                last_progress = time.time()
            else:
                sel.modify(s, selectors.EVENT_READ, data)
        if time.time() - last_progress > 5:
            break  # the rest wait in the kernel's backlog: the server stopped accepting
        if failed >= 200:
            break  # the server refuses more (its connection cap): stop asking
    res["open_seconds"] = time.time() - t0
    res["bannered"] = bannered
    res["waiting"] = pending
    res["failed"] = failed
    time.sleep(1)
    res["rss_with_kib"] = status_kib(pid, "VmRSS")
    res["hwm_kib"] = status_kib(pid, "VmHWM")
    # Is a new client still served while they are held?
    mf_sys.begin()
    gen = run_generator(port, 20, 5, 4096, 1, f"user@{DOMAIN}", 15)
    last, delivered = mf_sys.wait_delivered(20, 20, time.time() + 10)
    res["probe_accepted"] = gen.ok
    res["probe_error"] = gen.error
    res["probe_delivered"] = delivered
    # Did the held sessions stay open (the server sends nothing to a silent client
    # before its inactivity timeout)?
    dropped = 0
    probe_sel = selectors.DefaultSelector()
    for s in socks:
        try:
            probe_sel.register(s, selectors.EVENT_READ)
        except (ValueError, KeyError):
            pass
    for key, _ in probe_sel.select(0.5):
        dropped += 1
    res["dropped"] = dropped
    for s in socks:
        s.close()
    log(
        f"idle: {bannered} of {count} sessions got a banner ({pending} waiting), RSS "
        f"{res['rss_before_kib'] / 1024:.1f} -> {res['rss_with_kib'] / 1024:.1f} MiB; probe "
        f"accepted={gen.ok} delivered={delivered}/20"
    )
    return res


def profile(mf_sys, plan, outdir, stem, workdir):
    """perf record (DWARF call graphs) of mailflow under the 20-session 4 KiB load;
    folded with inferno into a flamegraph SVG."""
    res = {}
    perf = shutil.which("perf")
    if not perf:
        res["error"] = "perf is not installed"
        return res
    collapse = shutil.which("inferno-collapse-perf") or os.path.expanduser("~/.cargo/bin/inferno-collapse-perf")
    flame = shutil.which("inferno-flamegraph") or os.path.expanduser("~/.cargo/bin/inferno-flamegraph")
    data = os.path.join(workdir, "perf.data")
    rec = subprocess.Popen(
        [perf, "record", "-F", "499", "--call-graph", "dwarf,32768", "-p", str(mf_sys.pid()), "-o", data],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    time.sleep(1)
    run = measure(mf_sys, plan.profile_messages, 20, 4096, 1, plan, workload="profiled: 4 KiB, 20 sess, 1 rcpt")
    rec.send_signal(signal.SIGINT)
    try:
        _, err = rec.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        rec.kill()
        _, err = rec.communicate()
    res["run"] = run
    if rec.returncode not in (0, -2, 130) or not os.path.exists(data):
        res["error"] = f"perf record failed: {err.decode()[-400:]}"
        return res
    report = subprocess.run(
        [perf, "report", "-i", data, "--no-children", "--stdio", "--sort", "symbol", "--percent-limit", "0.7", "-g", "none"],
        capture_output=True, text=True,
    ).stdout
    res["self"] = parse_perf_report(report)[:20]
    report = subprocess.run(
        [perf, "report", "-i", data, "--children", "--stdio", "--sort", "symbol", "--percent-limit", "1.5", "-g", "none"],
        capture_output=True, text=True,
    ).stdout
    inclusive, seen = parse_perf_report(report, children=True), set()
    # mailflow's own functions (one row per name), and where the kernel time goes by
    # system call: the generic thread, runtime and unwinding frames say nothing.
    res["mailflow"] = [r for r in inclusive if re.match(r"<?mailflow", r[2]) and not (r[2] in seen or seen.add(r[2]))][:25]
    res["syscalls"] = [r for r in inclusive if r[2].startswith("__x64_sys_")][:12]
    if os.path.exists(collapse) and os.path.exists(flame):
        svg = os.path.join(outdir, f"{stem}-flamegraph.svg")
        script = subprocess.Popen([perf, "script", "-i", data], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        folded = subprocess.run([collapse], stdin=script.stdout, capture_output=True)
        script.wait()
        with open(svg, "wb") as f:
            subprocess.run(
                [flame, "--title", "mailflow: 4 KiB, 20 sessions, 1 recipient (perf, DWARF call graphs)"],
                input=folded.stdout, stdout=f,
            )
        res["svg"] = os.path.basename(svg)
    else:
        res["svg_error"] = "inferno is not installed (cargo install inferno)"
    return res


def parse_perf_report(text, children=False):
    rows = []
    for line in text.splitlines():
        m = re.match(r"\s*([0-9.]+)%\s+(?:([0-9.]+)%\s+)?\[([.k])\]\s+(.*)", line)
        if not m:
            continue
        sym = re.split(r"\s{2,}", m.group(4).strip())[0]
        if children:
            rows.append((float(m.group(1)), float(m.group(2) or 0), sym))
        else:
            rows.append((float(m.group(1)), m.group(3), sym))
    return rows

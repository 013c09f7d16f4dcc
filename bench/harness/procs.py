"""/proc helpers: CPU seconds and memory of process trees, free ports, the tracking-log tail."""

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


# ------------------------------------------------------------------- /proc helpers


def read_stat(pid):
    """(ppid, cpu ticks of the process and its reaped children) or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2 :].split()
    # fields after comm: state ppid ... utime(14) stime(15) cutime(16) cstime(17)
    return int(rest[1]), sum(int(x) for x in rest[11:15])


def process_tree(root):
    """The root and all its live descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = read_stat(entry)
            if st:
                children.setdefault(st[0], []).append(int(entry))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_cpu_seconds(root, single):
    """CPU seconds of a server: its process, its live descendants, and (through each
    parent's cutime/cstime) every descendant that already exited and was reaped. The
    sum only grows, so a difference between two readings is the CPU used between them,
    short-lived Postfix processes included."""
    pids = [root] if single else process_tree(root)
    ticks = 0
    for p in pids:
        st = read_stat(p)
        if st:
            ticks += st[1]
    return ticks / CLK_TCK


def machine_busy_seconds(split=False):
    """The machine's busy CPU seconds since boot; with split, (process time, interrupt
    time): loopback TCP is largely processed in softirq, which the kernel accounts to no
    process."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    busy = (sum(v[:8]) - v[3] - v[4]) / CLK_TCK
    if not split:
        return busy
    irq = (v[5] + v[6]) / CLK_TCK
    return busy - irq, irq


def wait_quiet(limit_seconds):
    """Waits until the machine has been nearly idle (under 15% of its CPUs busy) for 5
    seconds in a row, at most limit_seconds. Returns (quiet?, seconds waited)."""
    start = time.time()
    quiet_since = None
    last = machine_busy_seconds()
    while time.time() - start < limit_seconds:
        time.sleep(1)
        now = machine_busy_seconds()
        busy, last = (now - last) / os.cpu_count(), now
        if busy < 0.15:
            quiet_since = quiet_since or time.time()
            if time.time() - quiet_since >= 5:
                return True, time.time() - start
        else:
            quiet_since = None
    return limit_seconds == 0, time.time() - start


def proc_field(path, key, missing=0):
    """The number after `key:` in a /proc file of `Key: number [kB]` lines (status,
    smaps_rollup, meminfo); `missing` when the file or the key is not there (a process
    that has exited)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return missing


def status_kib(pid, key):
    return proc_field(f"/proc/{pid}/status", key)


def pss_kib(pid):
    return proc_field(f"/proc/{pid}/smaps_rollup", "Pss")


class MemorySampler(threading.Thread):
    """Samples the summed RSS and PSS of a server's processes and keeps the peaks:
    every 0.25 s for one process, every second for a process tree (finding a tree scans
    all of /proc and PSS walks each process's page tables: sampling Postfix's hundreds
    of processes more often would take CPU from the server being measured). PSS (proportional set size) shares each shared page among the processes
    that map it, so for a multi-process server like Postfix it is the memory the
    server really uses; for a single process RSS and PSS differ only by shared
    libraries."""

    def __init__(self, root, single):
        super().__init__(daemon=True)
        self.root, self.single = root, single
        self.peak_rss = self.peak_pss = 0
        self.peak_procs = 0
        self._done = threading.Event()

    def sample(self):
        pids = [self.root] if self.single else process_tree(self.root)
        rss = sum(status_kib(p, "VmRSS") for p in pids)
        pss = sum(pss_kib(p) for p in pids)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_procs = max(self.peak_procs, len(pids))

    def run(self):
        while not self._done.is_set():
            self.sample()
            self._done.wait(0.25 if self.single else 1.0)

    def stop(self):
        self._done.set()
        self.join()
        self.sample()


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def wait_port(port, deadline, what):
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.settimeout(2)
                if s.recv(512).startswith(b"220"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer on 127.0.0.1:{port}")


class LogTail:
    """Complete lines appended to the files matching a glob since mark(), across
    rotation (mailflow starts a new tracking log file every hour)."""

    def __init__(self, pattern):
        self.pattern = pattern
        self.offsets = {}
        self.partial = {}

    def mark(self):
        self.offsets = {f: os.path.getsize(f) for f in glob.glob(self.pattern)}
        self.partial = {}

    def read(self):
        lines = []
        for f in sorted(glob.glob(self.pattern)):
            off = self.offsets.get(f, 0)
            try:
                size = os.path.getsize(f)
            except OSError:
                continue
            if size <= off:
                continue
            with open(f, "rb") as fh:
                fh.seek(off)
                data = fh.read(size - off)
            self.offsets[f] = off + len(data)
            data = self.partial.pop(f, b"") + data
            parts = data.split(b"\n")
            if parts[-1]:
                self.partial[f] = parts[-1]
            lines.extend(p.decode("utf-8", "replace") for p in parts[:-1] if p)
        return lines


_minute_cache = {}


def parse_iso_ms(s):
    """'2026-11-24T15:51:30.231Z' -> epoch seconds (fast: tracking logs are long)."""
    base = _minute_cache.get(s[:16])
    if base is None:
        base = calendar.timegm(time.strptime(s[:16], "%Y-%m-%dT%H:%M"))
        _minute_cache[s[:16]] = base
    return base + float(s[17:-1])


def percentile(values, p):
    """Nearest-rank percentile."""
    if not values:
        return None
    v = sorted(values)
    return v[max(0, min(len(v) - 1, math.ceil(p / 100 * len(v)) - 1))]

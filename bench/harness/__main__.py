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

SYSTEM_KEYS = ["ceiling", "postfix-relay", "postfix-local", "mailflow", "mailflow-relay"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
DOMAIN = "bench.test"  # the mail domain of both mailflow and Postfix's Maildir delivery
RELAY_DOMAIN = "relay.test"  # not local anywhere: relayed to smtp-sink
SENDER = "bench@source.test"
HELO = "source.test"
SERVER = "MBX1"
MAX_RCPTS = 10
MAX_INBOUND = 20_000  # mailflow's max_inbound_connections: above the idle test's 10,000


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- plans


@dataclass
class Plan:
    """Counts for one mode. Full counts are sized so the whole run stays under ~20
    minutes on a 2-core machine (see bench/README.md)."""

    name: str
    sizes: list
    sessions: list
    rcpts: list
    counts: dict  # (size, sessions, rcpts) -> messages
    warmup: int
    paced_seconds: int
    backlog: int
    backlog_small: int
    idle: int
    profile_messages: int
    gen_timeout: float  # one generator run
    deliver_timeout: float  # waiting for the last delivery after the generator ends
    max_minutes: float  # the whole run; later steps are skipped past it
    repeats: int  # runs of the target workload (4 KiB, 20 sessions) and of the paced run


def full_counts():
    counts = {}
    for size in (4096, 102400):
        for s in (1, 20, 200):
            for r in (1, 10):
                n = {1: 1000, 20: 8000, 200: 8000}[s]
                if size > 4096:
                    n //= 4
                if r > 1:
                    n //= 2
                counts[(size, s, r)] = n
    return counts


def smoke_counts():
    counts = {}
    for size in (4096, 102400):
        for s in (1, 20, 200):
            for r in (1, 10):
                counts[(size, s, r)] = {1: 10, 20: 40, 200: 200}[s]
    return counts


PLANS = {
    "full": Plan(
        "full",
        [4096, 102400],
        [1, 20, 200],
        [1, 10],
        full_counts(),
        warmup=500,
        paced_seconds=10,
        backlog=100_000,
        backlog_small=5_000,
        idle=10_000,
        profile_messages=12_000,
        gen_timeout=240,
        deliver_timeout=120,
        max_minutes=24,
        repeats=3,
    ),
    "smoke": Plan(
        "smoke",
        [4096, 102400],
        [1, 20, 200],
        [1, 10],
        smoke_counts(),
        warmup=20,
        paced_seconds=2,
        backlog=300,
        backlog_small=100,
        idle=300,
        profile_messages=0,
        gen_timeout=30,
        deliver_timeout=20,
        max_minutes=3,
        repeats=2,
    ),
}


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


def status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


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


# ------------------------------------------------------------------------- systems


class Sink:
    """smtp-sink with its running counter read live: the time the counter reaches a
    value is when the last message of a run arrived."""

    def __init__(self, port, workdir, name):
        self.port = port
        self.proc = subprocess.Popen(
            ["smtp-sink", "-c", "-u", "nobody", "-m", "1024", f"127.0.0.1:{port}", "1024"],
            stdout=subprocess.PIPE,
            stderr=open(os.path.join(workdir, f"{name}.err"), "wb"),
        )
        self.history_t, self.history_n = [], []
        self.count = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        wait_port(port, time.time() + 10, "smtp-sink")

    def _read(self):
        fd = self.proc.stdout.fileno()
        rest = b""
        while True:
            b = os.read(fd, 65536)
            if not b:
                return
            now = time.time()
            rest += b
            m = None
            for m in re.finditer(rb"mesg=(\d+)", rest):
                pass
            if m:
                n = int(m.group(1))
                with self.lock:
                    if n > self.count:
                        self.count = n
                        self.history_t.append(now)
                        self.history_n.append(n)
                rest = rest[m.end() :]

    def time_reached(self, n):
        with self.lock:
            i = bisect.bisect_left(self.history_n, n)
            return self.history_t[i] if i < len(self.history_t) else None

    def stop(self):
        stop_proc(self.proc)


def stop_proc(proc, sig=signal.SIGTERM, wait=10):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class System:
    key = ""
    label = ""
    single_process = True
    domain = DOMAIN
    available = True
    unavailable_reason = ""

    def pid(self):
        raise NotImplementedError

    def begin(self):
        """Marks where this run's deliveries start."""

    def wait_delivered(self, messages, recipients, deadline):
        """-> (time of the last delivery or None, messages delivered)"""
        raise NotImplementedError

    def latencies(self):
        """-> (list of seconds, or None, note)"""
        return None, "n/a"

    def reset_peak(self):
        pass

    def kernel_peak_kib(self):
        return None

    def sink_pid(self):
        """An smtp-sink that is the next hop (not the server): its CPU is not 'other'."""
        return None


class Ceiling(System):
    key = "ceiling"
    label = "ceiling (smtp-sink)"
    domain = RELAY_DOMAIN

    def __init__(self, sink):
        self.sink = sink

    def port(self):
        return self.sink.port

    def pid(self):
        return self.sink.proc.pid

    def begin(self):
        self.base = self.sink.count

    def wait_delivered(self, messages, recipients, deadline):
        target = self.base + messages
        while time.time() < deadline and self.sink.count < target:
            time.sleep(0.02)
        return self.sink.time_reached(target), self.sink.count - self.base

    def latencies(self):
        return None, "the sink is the delivery"


class Postfix:
    """A private Postfix instance: its own configuration and queue folders under the
    work folder, listening on 127.0.0.1 only on a high port; the system's Postfix
    configuration and port 25 are not touched. Defaults are kept (the queue file is
    fsync'd before the 250 reply, in_flow_delay, destination concurrency 20) except
    where listed in the report: no chroot (the private queue folder has no chroot
    environment), logging to a file, process limit 300 so 200 sessions are served."""

    def __init__(self, workdir, smtpd_port, sink_port):
        self.dir = os.path.join(workdir, "postfix")
        self.etc = os.path.join(self.dir, "etc")
        self.spool = os.path.join(self.dir, "spool")
        self.data = os.path.join(self.dir, "data")
        self.vmail = os.path.join(self.dir, "vmail")
        self.maillog = os.path.join(self.dir, "maillog")
        self.port = smtpd_port
        for d in (self.etc, self.spool, self.data, self.vmail):
            os.makedirs(d, exist_ok=True)
        os.chmod(self.dir, 0o755)
        nobody = int(subprocess.check_output(["id", "-u", "nobody"]).strip())
        nogroup = int(subprocess.check_output(["id", "-g", "nobody"]).strip())
        postfix_uid = int(subprocess.check_output(["id", "-u", "postfix"]).strip())
        os.chown(self.vmail, nobody, nogroup)
        os.chown(self.data, postfix_uid, -1)
        self.settings = {
            "compatibility_level": "3.6",
            "queue_directory": self.spool,
            "data_directory": self.data,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix.bench.test",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relayhost": f"[127.0.0.1]:{sink_port}",
            "virtual_mailbox_domains": DOMAIN,
            "virtual_mailbox_base": self.vmail,
            "virtual_mailbox_maps": f"texthash:{self.etc}/vmailbox",
            "virtual_uid_maps": f"static:{nobody}",
            "virtual_gid_maps": f"static:{nogroup}",
            "maillog_file": self.maillog,
            "maillog_file_prefixes": self.dir,
            # Delays logged to the microsecond instead of 10 ms: logging only.
            "delay_logging_resolution_limit": "6",
            "default_process_limit": "300",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
        }
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            for k, v in self.settings.items():
                f.write(f"{k} = {v}\n")
        with open(os.path.join(self.etc, "vmailbox"), "w") as f:
            for a in recipient_addresses(DOMAIN):
                f.write(f"{a} {a.split('@')[0]}/\n")
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(POSTFIX_MASTER_CF.format(port=smtpd_port))
        self.postfix("check")
        self.postfix("start")
        deadline = time.time() + 20
        pidfile = os.path.join(self.spool, "pid", "master.pid")
        while time.time() < deadline and not os.path.exists(pidfile):
            time.sleep(0.1)
        wait_port(smtpd_port, deadline, "Postfix")
        with open(pidfile) as f:
            self.master = int(f.read().strip())
        self.version = subprocess.run(
            ["postconf", "-h", "mail_version"], capture_output=True, text=True
        ).stdout.strip()

    def postfix(self, *args):
        # Postfix reports errors only to its log unless stderr is a terminal.
        r = subprocess.run(["postfix", "-c", self.etc, *args], capture_output=True, text=True)
        if r.returncode != 0:
            tail = ""
            if os.path.exists(self.maillog):
                with open(self.maillog) as f:
                    tail = "".join(f.readlines()[-10:])
            raise RuntimeError(f"postfix {' '.join(args)} failed:\n{r.stderr}{tail}")

    def stop(self):
        subprocess.run(["postfix", "-c", self.etc, "stop"], capture_output=True)
        deadline = time.time() + 15
        while time.time() < deadline and read_stat(self.master):
            time.sleep(0.1)
        if read_stat(self.master):
            subprocess.run(["postfix", "-c", self.etc, "abort"], capture_output=True)


# The upstream default master.cf services, chroot off, smtpd on a loopback high port.
POSTFIX_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixSystem(System):
    single_process = False

    def __init__(self, pf):
        self.pf = pf
        self.tail = LogTail(pf.maillog)
        self.sent = []  # (queue id, delay seconds)

    def port(self):
        return self.pf.port

    def pid(self):
        return self.pf.master

    def begin(self):
        self.tail.mark()
        self.sent = []

    def _read_log(self, relay_pattern):
        for line in self.tail.read():
            if "status=sent" in line and relay_pattern in line:
                m = re.search(r": ([0-9A-F]+): to=.* delay=([0-9.]+),", line)
                if m:
                    self.sent.append((m.group(1), float(m.group(2))))

    def latencies(self):
        per_msg = {}
        for qid, delay in self.sent:
            per_msg[qid] = max(delay, per_msg.get(qid, 0.0))
        return list(per_msg.values()), (
            "Postfix's delay= per message, from MAIL FROM (its arrival time) to "
            "delivery: it includes the DATA transfer"
        )


class PostfixRelay(PostfixSystem):
    key = "postfix-relay"
    label = "Postfix relay -> smtp-sink"
    domain = RELAY_DOMAIN

    def __init__(self, pf, sink):
        super().__init__(pf)
        self.sink = sink

    def sink_pid(self):
        return self.sink.proc.pid

    def begin(self):
        super().begin()
        self.base = self.sink.count

    def wait_delivered(self, messages, recipients, deadline):
        target = self.base + messages
        while time.time() < deadline and self.sink.count < target:
            time.sleep(0.02)
        # postlogd writes asynchronously: give the last lines a moment.
        log_deadline = min(deadline, time.time() + 5)
        while True:
            self._read_log(f"127.0.0.1]:{self.sink.port}")
            if len(self.sent) >= recipients or time.time() > log_deadline:
                break
            time.sleep(0.05)
        return self.sink.time_reached(target), self.sink.count - self.base


class PostfixLocal(PostfixSystem):
    key = "postfix-local"
    label = "Postfix local Maildir"

    def new_dirs(self):
        return [os.path.join(self.pf.vmail, a.split("@")[0], "new") for a in recipient_addresses(DOMAIN)]

    def files(self):
        """(files in the Maildirs' new/ folders, mtime of the newest of those folders)"""
        count, last = 0, None
        for d in self.new_dirs():
            if os.path.isdir(d):
                count += len(os.listdir(d))
                last = max(last or 0.0, os.stat(d).st_mtime_ns / 1e9)
        return count, last

    def begin(self):
        super().begin()
        self.files0 = self.files()[0]

    def wait_delivered(self, messages, recipients, deadline):
        # Postfix logs each delivery; the last file linked into a Maildir's new/ sets
        # that folder's mtime, which is the time of the last delivery.
        while time.time() < deadline:
            self._read_log("relay=virtual")
            if len(self.sent) >= recipients:
                break
            time.sleep(0.02)
        count, last = self.files()
        new = count - self.files0
        per_message = max(1, recipients // max(1, messages))
        if new < recipients:
            return None, new // per_message
        return last, messages


class Mailflow:
    """One mailflow server made by `mailflow init`, with its ports moved to free high
    ports, a send connector whose smart host is an smtp-sink, and a custom receive
    connector that lets 127.0.0.1 relay (DESIGN §2's "Relay MBX1") for the relay
    workload."""

    def __init__(self, binary, workdir, sink_port):
        self.binary = binary
        self.dir = os.path.join(workdir, "mailflow")
        args = [binary, "init", "--domain", DOMAIN, "--server", SERVER, "--dir", self.dir]
        for a in recipient_addresses(DOMAIN):
            args += ["--mailbox", a]
        run_checked(args)
        self.config = os.path.join(self.dir, "mailflow.toml")
        names = ["frontend", "client_frontend", "client_proxy", "outbound_proxy", "transport", "mailbox_delivery", "admin"]
        ports = free_ports(len(names) + 1)
        self.ports = dict(zip(names, ports))
        self.relay_port = ports[-1]
        with open(self.config) as f:
            text = f.read()
        for k, v in self.ports.items():
            text, n = re.subn(rf"(?m)^{k} = \d+$", f"{k} = {v}", text)
            if n != 1:
                raise RuntimeError(f"mailflow init wrote no `{k} =` port line")
        # The smart host as an IP literal, as Postfix's relayhost: no DNS lookup.
        text, n = re.subn(r"(?m)^smart_hosts = \[\]$", f'smart_hosts = ["[127.0.0.1]:{sink_port}"]', text)
        if n != 1:
            raise RuntimeError("mailflow init wrote no `smart_hosts = []` send connector line")
        # MaxInboundConnection (default 5,000, Exchange's) raised so the idle-session
        # test's 10,000 connections are all served; an administrator's setting.
        # Every benchmark client connects from 127.0.0.1: no per-source limit on the
        # Front End (Exchange's 20 would refuse the load's own concurrency).
        text, n = re.subn(
            r'(?m)^(data_dir = "data/[^"]+")$',
            rf"\1\nmax_inbound_connections = {MAX_INBOUND}\n"
            r'connector_limits.frontend = { max_inbound_connection_per_source = "unlimited", max_inbound_connection_percentage_per_source = 100 }',
            text,
        )
        if n != 1:
            raise RuntimeError("mailflow init wrote no `data_dir =` line in its [[servers]] table")
        text += f"""
[[receive_connectors]]
name = "Relay {SERVER}"
server = "{SERVER}"
service = "transport"
bind = "127.0.0.1:{self.relay_port}"
remote_ranges = ["127.0.0.0/8"]
permissions = ["anonymous", "relay"]
max_inbound_connection_per_source = "unlimited"
max_inbound_connection_percentage_per_source = 100
"""
        with open(self.config, "w") as f:
            f.write(text)
        self.data = os.path.join(self.dir, "data", SERVER)
        self.log = open(os.path.join(workdir, "mailflow-serve.log"), "wb")
        self.start()
        self.version = run_checked([binary, "--version"]).strip()

    def start(self):
        env = dict(os.environ, MAILFLOW_LOG="warn")
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--config", self.config], stdout=self.log, stderr=self.log, env=env
        )
        wait_port(self.ports["frontend"], time.time() + 30, "mailflow Front End")

    def restart(self):
        """A fresh process on the same data: memory the allocator kept from earlier runs
        does not hide what a new load costs."""
        self.stop()
        self.start()

    def cli(self, *args):
        return run_checked([self.binary, "--config", self.config, *args])

    def queues(self):
        return json.loads(self.cli("--json", "queue", "list"))

    def stop(self):
        stop_proc(self.proc)


def run_checked(args, timeout=60):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


class MailflowInbound(System):
    key = "mailflow"
    label = "mailflow :25 -> mailbox database"

    def __init__(self, mf):
        self.mf = mf
        tracking = os.path.join(mf.data, "Logs", "MessageTracking")
        # MSGTRK<yyyymmddhh>-N.LOG is Transport's log, MSGTRKMD* Mailbox Delivery's.
        self.hub = LogTail(os.path.join(tracking, "MSGTRK2*.LOG"))
        self.md = LogTail(os.path.join(tracking, "MSGTRKMD*.LOG"))

    def port(self):
        return self.mf.ports["frontend"]

    def pid(self):
        return self.mf.proc.pid

    def begin(self):
        self.hub.mark()
        self.md.mark()
        self.delivered = {}  # network-message-id -> last DELIVER time
        self.delivered_rcpts = 0

    def reset_peak(self):
        # Writing 5 to clear_refs resets the kernel's peak RSS (VmHWM) of the process.
        try:
            with open(f"/proc/{self.pid()}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    def kernel_peak_kib(self):
        return status_kib(self.pid(), "VmHWM")

    def read_delivers(self):
        for row in csv.reader(self.md.read()):
            if len(row) > 12 and row[8] == "DELIVER":
                t = parse_iso_ms(row[0])
                nmid = row[11]
                if t > self.delivered.get(nmid, 0.0):
                    self.delivered[nmid] = t
                self.delivered_rcpts += len([a for a in row[12].split(";") if a])

    def wait_delivered(self, messages, recipients, deadline):
        while time.time() < deadline:
            self.read_delivers()
            if self.delivered_rcpts >= recipients:
                break
            time.sleep(0.05)
        if self.delivered_rcpts < recipients:
            return None, len(self.delivered)
        return max(self.delivered.values()), len(self.delivered)

    def latencies(self):
        received = {}
        for row in csv.reader(self.hub.read()):
            if len(row) > 12 and row[8] == "RECEIVE" and row[7] == "SMTP":
                received.setdefault(row[11], parse_iso_ms(row[0]))
        self.received = received
        lat = [t - received[n] for n, t in self.delivered.items() if n in received]
        return lat, "Transport's RECEIVE (message durable in its queue) to the last DELIVER, from the tracking logs (1 ms resolution)"


class MailflowRelay(MailflowInbound):
    key = "mailflow-relay"
    label = "mailflow relay -> smtp-sink"
    domain = RELAY_DOMAIN

    def __init__(self, mf, sink):
        super().__init__(mf)
        self.sink = sink
        self.available, self.unavailable_reason = self.probe()

    def port(self):
        return self.mf.relay_port

    def sink_pid(self):
        return self.sink.proc.pid

    def probe(self):
        """Sends one message through the relay receive connector to a domain only the
        send connector routes (its smart host is the sink) and waits for it there."""
        try:
            wait_port(self.port(), time.time() + 2, "relay receive connector")
        except RuntimeError:
            return False, f"the custom receive connector `Relay {SERVER}` (anonymous relay from 127.0.0.1) is not listening"
        before = self.sink.count
        gen = run_generator(self.port(), 1, 1, 200, 1, f"probe@{RELAY_DOMAIN}", 15)
        if not gen.ok:
            return False, f"the relay connector did not accept the probe message: {gen.error}"
        deadline = time.time() + 5
        while time.time() < deadline:
            if self.sink.count > before:
                return True, ""
            time.sleep(0.1)
        errors = [q.get("LastError") for q in self.mf.queues() if q.get("LastError")]
        why = errors[0] if errors else "no message reached the sink within 5 s"
        return False, f"the probe message did not reach the sink through the send connector ({why})"

    def begin(self):
        super().begin()
        self.base = self.sink.count
        self.sent = {}  # network-message-id -> last SEND time through the send connector
        self.received_rows = {}  # network-message-id -> RECEIVE time

    def read_sends(self):
        """SEND events of Transport toward the smart host (the relay domain's
        recipients; Mailbox Delivery's hops carry the organisation's own)."""
        received = self.received_rows
        for row in csv.reader(self.hub.read()):
            if len(row) <= 12:
                continue
            if row[8] == "RECEIVE" and row[7] == "SMTP":
                received.setdefault(row[11], parse_iso_ms(row[0]))
            elif row[8] == "SEND" and row[7] == "SMTP" and row[12].endswith("@" + RELAY_DOMAIN):
                t = parse_iso_ms(row[0])
                if t > self.sent.get(row[11], 0.0):
                    self.sent[row[11]] = t

    def wait_delivered(self, messages, recipients, deadline):
        target = self.base + messages
        while time.time() < deadline and self.sink.count < target:
            time.sleep(0.02)
        # The tracking log's SEND lines follow the sink's 250: give the last ones a moment.
        log_deadline = min(deadline, time.time() + 5)
        while True:
            self.read_sends()
            if len(self.sent) >= messages or time.time() > log_deadline:
                break
            time.sleep(0.05)
        return self.sink.time_reached(target), self.sink.count - self.base

    def latencies(self):
        received = self.received = self.received_rows
        lat = [t - received[n] for n, t in self.sent.items() if n in received]
        return lat, "Transport's RECEIVE (message durable in its queue) to its SEND through the send connector (the sink's 250), from the tracking log (1 ms resolution)"


def recipient_addresses(domain):
    """smtp-source -r N -t user@D sends to user@D, 2user@D, ..., Nuser@D."""
    return [f"user@{domain}"] + [f"{i}user@{domain}" for i in range(2, MAX_RCPTS + 1)]


# ---------------------------------------------------------------------- generator


@dataclass
class GenResult:
    ok: bool
    start: float
    end: float
    cpu: float
    error: str = ""


def run_generator(port, messages, sessions, size, rcpts, to, timeout, extra=()):
    """One smtp-source run; the same command for every system but the port and the
    recipient's domain. Without -d each message has its own SMTP session, as most
    internet mail does."""
    cmd = [
        "smtp-source",
        "-s", str(max(1, min(sessions, messages))),
        "-m", str(messages),
        "-l", str(size),
        "-r", str(rcpts),
        "-f", SENDER,
        "-t", to,
        "-M", HELO,
        *extra,
        f"127.0.0.1:{port}",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        return GenResult(False, start, time.time(), 0.0, f"smtp-source still running after {timeout:.0f} s")
    end = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    err = err.decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        return GenResult(False, start, end, cpu, f"smtp-source exited {proc.returncode}: {err[-300:]}")
    return GenResult(True, start, end, cpu)


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
                pending -= 1
                failed += 1
                continue
            if b"\r\n" in data:
                sel.unregister(s)
                pending -= 1
                if data.startswith(b"220"):
                    bannered += 1
                else:
                    failed += 1
                last_progress = time.time()
            else:
                sel.modify(s, selectors.EVENT_READ, data)
        if time.time() - last_progress > 5:
            break  # the rest wait in the kernel's backlog: the server stopped accepting
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


# ------------------------------------------------------------------------ report


def machine_info():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = status_like("/proc/meminfo", "MemTotal")
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


def status_like(path, key):
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fr(v):
    return "–" if v is None else f"{v:.2f}×"


def write_report(path, ctx):
    info, plan, runs = ctx["info"], ctx["plan"], ctx["runs"]
    by = {(r.workload, r.system): r for r in runs}
    L = []
    w = L.append
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

    # Targets.
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

    # Main table.
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

    # Ratios.
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

    # Paced.
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

    # Backlog.
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

    # Idle.
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
        w(f"mailflow runs with `max_inbound_connections = {MAX_INBOUND}` (MaxInboundConnection of each "
          f"receive connector; Exchange's default, 5,000, would refuse the rest with 421 4.3.2) and no "
          f"per-source limit on Default Frontend (every generator connects from 127.0.0.1).")
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

    # Profile.
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

    # Details.
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

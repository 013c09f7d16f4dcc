"""The systems under test: the sink, the ceiling, Postfix (relay, local) and mailflow (inbound, relay)."""

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
        # MaxInboundConnection (default 5,000, Exchange's) raised on Default Frontend so
        # the idle-session test's 10,000 connections are all served, lowered on the
        # others so the sum fits the open-files limit (common.py); an administrator's
        # settings.
        # Every benchmark client connects from 127.0.0.1: no per-source limit on the
        # Front End (Exchange's 20 would refuse the load's own concurrency).
        text, n = re.subn(
            r'(?m)^(data_dir = "data/[^"]+")$',
            rf"\1\nmax_inbound_connections = {MAX_INBOUND}\n"
            r"connector_limits.frontend = { "
            rf"max_inbound_connection = {MAX_INBOUND_FRONTEND}, "
            r'max_inbound_connection_per_source = "unlimited", max_inbound_connection_percentage_per_source = 100 }',
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
max_inbound_connection = {MAX_INBOUND_RELAY}
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

"""The harness's constants, its log, and the plans: the counts of a full and a smoke run."""

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
# mailflow's MaxInboundConnection: Default Frontend above the idle test's 10,000; every
# other receive connector of the server (each serves at most the 200-session workloads
# and their proxied sessions) and the relay connector lower, so that the sum stays within
# what mailflow leaves for sessions of a 20,000 open-files limit (three quarters, 15,000),
# past which it lowers every cap in proportion.
MAX_INBOUND_FRONTEND = 11_500
MAX_INBOUND = 400
MAX_INBOUND_RELAY = 1_000


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


SIZES = [4096, 102400]
SESSIONS = [1, 20, 200]
RCPTS = [1, 10]


def plan_counts(per_sessions, scaled):
    """Messages per (size, sessions, rcpts): `per_sessions[sessions]`; when `scaled` (a
    full run), a quarter of it for 100 KiB messages and half of that for 10 recipients,
    so each run takes about as long."""
    counts = {}
    for size in SIZES:
        for s in SESSIONS:
            for r in RCPTS:
                n = per_sessions[s]
                if scaled and size > 4096:
                    n //= 4
                if scaled and r > 1:
                    n //= 2
                counts[(size, s, r)] = n
    return counts


PLANS = {
    "full": Plan(
        "full",
        SIZES,
        SESSIONS,
        RCPTS,
        plan_counts({1: 1000, 20: 8000, 200: 8000}, scaled=True),
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
        SIZES,
        SESSIONS,
        RCPTS,
        plan_counts({1: 10, 20: 40, 200: 200}, scaled=False),
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

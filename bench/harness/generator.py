"""The load generator: smtp-source runs and their recipients."""

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

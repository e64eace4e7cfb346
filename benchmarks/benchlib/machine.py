"""
What a benchmark ran on and at which commit, recorded with every result: the
machine is shared, so the load average before and after is part of a figure.
"""

import datetime
import os
import platform
import subprocess

from benchlib.processes import ROOT


def machine(mode, argv=None):
    """The commit, CPU, load, versions and command line of this run."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def git(*args):
        try:
            return subprocess.run(["git"] + list(args), cwd=ROOT, capture_output=True,
                                  text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    import grpc
    return {"commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "cpu": model, "cores": os.cpu_count(), "load_before": os.getloadavg(),
            "python": platform.python_version(), "grpcio": grpc.__version__,
            "kernel": platform.release(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "mode": mode,
            "command": " ".join(["python", "benchmarks/run.py"] + (argv or ["--%s" % (mode,)]))}

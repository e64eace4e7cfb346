"""
What a log line costs through C{snstwist.core.logs.SharedLogFile} (the file
every process of a VM appends to, rotated at 1 MB by its real size): N
writes of a typical 116-byte line from one process, in microseconds a line.

Usage: python benchmarks/logwrites.py [-n 50000]

A measurement, not a test: it is not run by trial or CI.
"""

import argparse
import os
import shutil
import tempfile
import time

from snstwist.core.logs import SharedLogFile

LINE = ("2026-11-30T21:54:27.926625+0000 [vm1 master pid=18171"
        " snstwist.buddy.supervisor#info] spawned spare, pid 18202\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=50000)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="sns-logwrites-")
    try:
        log = SharedLogFile.fromFullPath(os.path.join(work, "server.log"))
        began = time.perf_counter()
        for _ in range(args.n):
            log.write(LINE)
        took = time.perf_counter() - began
        rotated = [name for name in os.listdir(work) if name.startswith("server.log.")]
        print("%.2f us a line (%d lines, %d rotations); load %.2f %.2f %.2f"
              % (took / args.n * 1e6, args.n, len(rotated), *os.getloadavg()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

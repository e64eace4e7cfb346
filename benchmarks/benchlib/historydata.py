"""
The data of C{history.py}: an import file of N posts (C{dataset.py}),
imported once per N (C{sns-admin import}, kept in WORK/imported-N), and a
copy of that import in each VM's data directory: the same file gives every
VM the same data.
"""

import json
import os
import shutil
import subprocess
import time

from benchlib.processes import PY, ROOT


def imported(work, posts, say):
    """WORK/imported-N, made first if missing; with what the import said, or None."""
    os.makedirs(work, exist_ok=True)
    pristine = os.path.join(work, "imported-%d" % (posts,))
    if os.path.exists(pristine):
        return pristine, None
    source = os.path.join(work, "posts-%d.jsonl" % (posts,))
    if not os.path.exists(source):
        say("writing %s" % (source,))
        with open(source + ".tmp", "w") as f:
            subprocess.run([PY, os.path.join(ROOT, "benchmarks", "dataset.py"),
                            "--posts", str(posts)], stdout=f, check=True)
        os.rename(source + ".tmp", source)
    started = time.monotonic()
    out = subprocess.run([PY, "-m", "snstwist.commands.admin", "import", "--data",
                          pristine + ".tmp", source],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    os.rename(pristine + ".tmp", pristine)
    said = out.stderr.strip()
    say(said)
    return pristine, {"seconds": round(time.monotonic() - started, 1), "said": said}


def copyTo(pristine, data):
    """A fresh copy of C{pristine} at C{data}; how many bytes it holds."""
    shutil.rmtree(os.path.dirname(data), ignore_errors=True)
    shutil.copytree(pristine, data)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(data) for f in fs)


def saveResults(results, work, n, out=None):
    """Write C{results} as JSON to C{out}, by default WORK/results-N.json, and say where."""
    out = out or os.path.join(work, "results-%d.json" % (n,))
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print("results in", out)

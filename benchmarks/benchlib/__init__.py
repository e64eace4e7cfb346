"""
The pieces the benchmark programs of this folder share: the processes they
start and measure, the local cluster and how to reach it, statistics, the
phases of C{run.py}, and the report.

Each program (C{run.py}, C{failover.py}, C{memory.py}, C{history.py}) is a
script run from this folder (C{python benchmarks/run.py}), so this package
is imported as C{benchlib}; nothing here is a program of its own, and
nothing in snstwist imports it.
"""

"""
snstwist's test suite, run with ``trial --reactor=asyncio tests``.

Hypothesis runs a deterministic profile by default (CI stays fast and never
flaky); set SNS_HYPOTHESIS_PROFILE=thorough for a longer random search.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=60,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "thorough", deadline=None, max_examples=2000,
    suppress_health_check=[HealthCheck.too_slow])
# The mutation run (scripts/mutants.py) runs the unit tests once per mutant.
settings.register_profile(
    "mutants", derandomize=True, deadline=None, max_examples=10,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("SNS_HYPOTHESIS_PROFILE", "ci"))

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

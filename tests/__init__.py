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


def _testCertificates():
    """
    One CA and certificate for the whole run, in $SNS_TLS_*: every router,
    server, sns-cluster and client the tests start uses TLS with them, as
    this process's own channels and servers do (grpcbridge's default).
    """
    if os.environ.get("SNS_TLS_CA"):
        return
    import tempfile

    from snstwist.rpc.certs import ensureClusterCerts
    ca, cert, key = ensureClusterCerts(tempfile.mkdtemp(prefix="snstwist-test-tls-"))
    os.environ.update(SNS_TLS_CA=ca, SNS_TLS_CERT=cert, SNS_TLS_KEY=key)


_testCertificates()

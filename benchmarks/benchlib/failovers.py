"""
Phase 3 of C{benchmarks/run.py}: failover, N times: SIGKILL of a client's
master1 until its next post and LIST succeed, until the promoted slave
answers a Login and until the VM is a pair again; then SIGKILL of the slave
until its replacement is registered.

Takes the run (C{run.py}'s C{Bench}) and a started L{benchlib.cluster.Cluster}.
"""

import functools
import os
import signal
import time

from benchlib.cluster import until
from benchlib.processes import loadgen, stopEach
from benchlib.stats import ms, pct


def failover(bench, cluster):
    from snstwist.rpc import sns_pb2 as pb
    cfg = bench.cfg
    client = loadgen(bench.name("failover-client"), "failover", bench.logdir,
                     "--router", cluster.router, "--user", "fo_client")
    where = client.expect("where", 60)
    phase0 = time.time()
    runs = []
    for i in range(cfg["failovers"]):
        until("a healthy cluster", cluster.healthy, timeout=60, interval=0.05)
        client.send("where")
        where = client.expect("where", 30)
        victimVm = where["vm"]
        victim = [s for s in cluster.servers(victimVm, pb.MASTER)
                  if s.address == where["address"]]
        if not victim:
            raise RuntimeError("the client's master1 %s is not a master in Status"
                               % (where["address"],))
        victim = victim[0]
        oldSlave = cluster.servers(victimVm, pb.SLAVE)[0]
        client.send("kill %d" % (victim.pid,))

        tLogin = until("the promoted master of %s to answer" % (victimVm,),
                       functools.partial(promotedAnswers, cluster, victimVm, victim.pid))
        tPair = until("a new slave of %s" % (victimVm,),
                      functools.partial(newSlave, cluster, victimVm,
                                        (victim.pid, oldSlave.pid)))
        report = client.expect("failover", 60)
        t0 = report["t0"]
        run = {"vm": victimVm, "killed_master": victim.pid, "t_kill": t0 - phase0,
               "client_post_ms": ms(report.get("post")),
               "client_list_ms": ms(report.get("list")),
               "post_copies": report.get("copies"),
               "client_moved_to": report.get("after"),
               "promoted_login_ms": round((tLogin - t0) * 1000, 1),
               "pair_again_ms": round((tPair - t0) * 1000, 1)}
        for k in ("post_error", "list_error"):
            if k in report:
                run[k] = report[k]
        # Then the slave of the VM just repaired (its master's supervisor
        # has not restarted anything yet: no restart-intensity limit).
        until("a healthy cluster", cluster.healthy, timeout=60, interval=0.05)
        slave = cluster.servers(victimVm, pb.SLAVE)[0]
        t1 = time.time()
        os.kill(slave.pid, signal.SIGKILL)
        tRep = until("a replacement slave of %s" % (victimVm,),
                     functools.partial(newSlave, cluster, victimVm, (slave.pid,)))
        run.update(t_slave_kill=t1 - phase0, killed_slave=slave.pid,
                   slave_replaced_ms=round((tRep - t1) * 1000, 1))
        runs.append(run)
        bench.say("failover %d/%d on %s: client post %s ms (copies %s), list %s ms;"
                  " promoted answers Login %s ms; pair again %s ms; slave replaced %s ms"
                  % (i + 1, cfg["failovers"], victimVm, run["client_post_ms"],
                     run["post_copies"], run["client_list_ms"], run["promoted_login_ms"],
                     run["pair_again_ms"], run["slave_replaced_ms"]))
    stopEach([client])

    def stat(key):
        values = [r[key] for r in runs if r.get(key) is not None]
        return {"n": len(values), "p50": pct(values, 50), "p99": pct(values, 99),
                "max": max(values) if values else None,
                "failed": len(runs) - len(values)}

    return {"runs": runs, "client_post_ms": stat("client_post_ms"),
            "client_list_ms": stat("client_list_ms"),
            "promoted_login_ms": stat("promoted_login_ms"),
            "pair_again_ms": stat("pair_again_ms"),
            "slave_replaced_ms": stat("slave_replaced_ms")}


def promotedAnswers(cluster, vm, deadPid):
    """The time when a master of C{vm} other than C{deadPid} answers a Login, or None."""
    from snstwist.rpc import sns_pb2 as pb
    for m in cluster.servers(vm, pb.MASTER):
        if m.pid != deadPid:
            try:
                cluster.login(m.address)
            except Exception:
                return None
            return time.time()
    return None


def newSlave(cluster, vm, oldPids):
    """The time when a slave of C{vm} not in C{oldPids} is registered, or None."""
    from snstwist.rpc import sns_pb2 as pb
    if [s for s in cluster.servers(vm, pb.SLAVE) if s.pid not in oldPids]:
        return time.time()
    return None

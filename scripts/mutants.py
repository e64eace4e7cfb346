"""
Mutation testing of the modules where a bug loses data or lets someone in.

    python scripts/mutants.py [--jobs 2] [--sample 1.0] [--only MODULE]
                              [--tree DIR] [--out mutants.jsonl] [--resume]

(or ``tox -e mutants``, which runs it under ``nice -n 10``).  Not run by CI.

A mutant is one small, plausible bug put into one module: a comparison
moved across its boundary (``<`` to ``<=``, ``==`` to ``!=``, ``in`` to
``not in``), ``and``/``or`` swapped, a ``not`` dropped, an integer one
bigger, a float (a timeout, an interval) doubled, ``True``/``False``
swapped, ``+``/``-`` or ``*``/``/`` swapped, the condition of an ``if`` (or
a conditional expression) made always true or always false (a ``while``:
always false), or one statement (a call, or an assignment to an attribute
or an item) removed.  Each mutant is written into
a private copy of the tree and the module's fast unit tests are run against
it (trial, stopping at the first failure); the mutant is killed when they
fail or hang (past a time limit), and survives when they pass.

Not mutated: docstrings, log calls, the arguments of a ``raise`` (they only
word the error) and string formatting; and, in server.py and client.py, the
functions outside the scope named below (process wiring and gRPC plumbing,
which only the integration tests reach).  The operators and the scope are
this file's, so that a run today and a run next month count the same
things.  ``--sample F`` keeps a deterministic fraction F of each module's
mutants (the ones whose hash is smallest), for a quicker run.

Each mutated module is the module's source parsed and printed back
(``ast.unparse``) with one change; the unmutated printout is run first as a
control, and a module whose control fails is reported and skipped.
"""

import argparse
import ast
import concurrent.futures
import copy
import hashlib
import importlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# module -> (its fast unit test modules, most specific first; the functions
# and classes mutated, or None for the whole module).  Test modules missing
# from the tree measured are left out (so that an older tree can be
# measured with the same mutants).
TARGETS = {
    "snstwist/core/model.py": (["tests.test_model", "tests.test_state", "tests.test_store",
                           "tests.test_replication", "tests.test_server"], None),
    "snstwist/core/limits.py": (["tests.test_limits", "tests.test_model", "tests.test_state",
                            "tests.test_store", "tests.test_replication",
                            "tests.test_server"], None),
    "snstwist/rpc/auth.py": (["tests.test_auth", "tests.test_server", "tests.test_router"], None),
    "snstwist/core/state.py": (["tests.test_state", "tests.test_read_marks",
                           "tests.test_replication", "tests.test_convergence"], None),
    "snstwist/core/follows.py": (["tests.test_follows", "tests.test_state"], None),
    "snstwist/core/registers.py": (["tests.test_follows", "tests.test_state"], None),
    "snstwist/router.py": (["tests.test_router", "tests.test_timeouts"], None),
    "snstwist/buddy/role.py": (["tests.test_buddy"], None),
    "snstwist/buddy/supervisor.py": (["tests.test_buddy"], None),
    "snstwist/buddy/link.py": (["tests.test_buddy", "tests.test_timeouts"], None),
    "snstwist/buddy/processes.py": (["tests.test_buddy"], None),
    "snstwist/rpc/heartbeat.py": (["tests.test_heartbeat", "tests.test_timeouts",
                               "tests.test_buddy"], None),
    "snstwist/core/node.py": (["tests.test_replication", "tests.test_read_marks",
                               "tests.test_promotion", "tests.test_convergence",
                               "tests.test_server"], None),
    "snstwist/server/peers.py": (["tests.test_replication", "tests.test_peers",
                                  "tests.test_timeouts", "tests.test_convergence"], None),
    "snstwist/server/replication.py": (["tests.test_replication", "tests.test_peers",
                                        "tests.test_timeouts", "tests.test_convergence"], None),
    "snstwist/storage/store.py": (["tests.test_store", "tests.test_store_fsync",
                           "tests.test_promotion", "tests.test_compare",
                           "tests.test_admin_durability", "tests.test_admin.ExportImportTests",
                           "tests.test_admin.BackupTests"], None),
    "snstwist/server/sessions.py": (["tests.test_sessions", "tests.test_read_marks",
                              "tests.test_timeouts"], None),
    "snstwist/commands/compare.py": (["tests.test_compare"], {"differences"}),
    "snstwist/server/admission.py": (["tests.test_server", "tests.test_auth",
                                      "tests.test_model", "tests.test_promotion"], None),
    "snstwist/server/api.py": (["tests.test_server", "tests.test_auth", "tests.test_model",
                                "tests.test_promotion"], None),
    "snstwist/server/internal.py": (["tests.test_auth", "tests.test_promotion"], None),
    "snstwist/server/routerlink.py": (["tests.test_peers"], {
        "peersOf", "RouterLinks.membershipChanged"}),
    "snstwist/server/buddylink.py": (["tests.test_promotion", "tests.test_auth"], {
        "MasterEnd.slaveHello", "MasterEnd.durable"}),
    "snstwist/server/buddyfeed.py": (["tests.test_promotion", "tests.test_auth"], {
        "BuddyFeed"}),
    "snstwist/server/lifecycle.py": (["tests.test_server", "tests.test_promotion"], {
        "takeLock", "Lifecycle.serveAsMaster", "Lifecycle.standBy", "Lifecycle.takeOver",
        "Lifecycle.shutdown", "Lifecycle.masterStopping"}),
    "snstwist/client/client.py": (["tests.test_client", "tests.test_client_failover",
                                   "tests.test_timeouts", "tests.test_cli"], {
        "Client._sessionLost", "Client._call", "Client._gaveUp", "Client.timeline"}),
    "snstwist/client/masters.py": (["tests.test_client", "tests.test_client_failover",
                                    "tests.test_client_masters"], None),
    "snstwist/client/timeline.py": (["tests.test_client", "tests.test_client_failover",
                                     "tests.test_timeouts"], None),
}

_COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
            ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In,
            ast.Is: ast.IsNot, ast.IsNot: ast.Is}
_BINARY = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
           ast.FloorDiv: ast.Mult}
_SYMBOL = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
           ast.NotEq: "!=", ast.In: "in", ast.NotIn: "not in", ast.Is: "is",
           ast.IsNot: "is not", ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/",
           ast.FloorDiv: "//", ast.And: "and", ast.Or: "or"}


class Site:
    """One place a mutation applies: a path to a node, and what to do to it."""

    def __init__(self, path, kind, line, scope, describe):
        self.path = path
        self.kind = kind
        self.line = line
        self.scope = scope
        self.describe = describe


def _isLogCall(node):
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "log")


def _isDocstring(node):
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str))


def _children(node):
    for field, value in ast.iter_fields(node):
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, ast.AST):
                    yield (field, i), item
        elif isinstance(value, ast.AST):
            yield (field, None), value


def sites(tree, wanted=None):
    """Every mutation site of C{tree} within the scopes C{wanted} (None: all)."""
    found = []

    def inScope(scope):
        if wanted is None:
            return True
        return any(scope == w or scope.startswith(w + ".") for w in wanted)

    def visit(node, path, scope):
        if _isDocstring(node) or _isLogCall(node) or isinstance(node, ast.JoinedStr):
            return
        if isinstance(node, ast.Raise):
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            scope = node.name if not scope else scope + "." + node.name
        line = getattr(node, "lineno", None)
        if inScope(scope) and line is not None:
            _sitesOf(node, path, line, scope, found)
        for step, child in _children(node):
            visit(child, path + [step], scope)

    visit(tree, [], "")
    return found


def _sitesOf(node, path, line, scope, found):
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in _COMPARE:
                found.append(Site(path, ("compare", i), line, scope, "%s -> %s" % (
                    _SYMBOL[type(op)], _SYMBOL[_COMPARE[type(op)]])))
    elif isinstance(node, ast.BoolOp):
        other = ast.Or if isinstance(node.op, ast.And) else ast.And
        found.append(Site(path, ("boolop",), line, scope, "%s -> %s" % (
            _SYMBOL[type(node.op)], _SYMBOL[other])))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        found.append(Site(path, ("dropnot",), line, scope, "not x -> x"))
    elif isinstance(node, ast.Constant) and type(node.value) is bool:
        found.append(Site(path, ("bool",), line, scope, "%s -> %s" % (
            node.value, not node.value)))
    elif isinstance(node, ast.Constant) and type(node.value) is int:
        found.append(Site(path, ("int",), line, scope, "%d -> %d" % (
            node.value, node.value + 1)))
    elif isinstance(node, ast.Constant) and type(node.value) is float:
        found.append(Site(path, ("float",), line, scope, "%r -> %r" % (
            node.value, node.value * 2 or 1.0)))
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        found.append(Site(path, ("binop",), line, scope, "%s -> %s" % (
            _SYMBOL[type(node.op)], _SYMBOL[_BINARY[type(node.op)]])))
    elif isinstance(node, ast.AugAssign) and type(node.op) in (ast.Add, ast.Sub):
        found.append(Site(path, ("binop",), line, scope, "%s= -> %s=" % (
            _SYMBOL[type(node.op)], _SYMBOL[_BINARY[type(node.op)]])))
    elif isinstance(node, (ast.If, ast.IfExp, ast.While)):
        for value in (True, False):
            if not (isinstance(node, ast.While) and value):
                found.append(Site(path, ("condition", value), line, scope,
                                  "condition -> %s" % (value,)))
    if _deletable(node):
        found.append(Site(path, ("delete",), line, scope, "statement removed"))


def _deletable(node):
    if isinstance(node, ast.Expr):
        return isinstance(node.value, (ast.Call, ast.Await)) and not _isLogCall(node.value)
    if isinstance(node, (ast.Assign, ast.AugAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return all(isinstance(t, (ast.Attribute, ast.Subscript)) for t in targets)
    return False


def _locate(tree, path):
    parent, step, node = None, None, tree
    for step in path:
        parent = node
        field, i = step
        node = getattr(parent, field) if i is None else getattr(parent, field)[i]
    return parent, step, node


def mutate(tree, site):
    """A copy of C{tree} with C{site}'s mutation applied."""
    tree = copy.deepcopy(tree)
    parent, step, node = _locate(tree, site.path)
    kind = site.kind[0]
    if kind == "compare":
        i = site.kind[1]
        node.ops[i] = _COMPARE[type(node.ops[i])]()
    elif kind == "boolop":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif kind == "dropnot":
        _replace(parent, step, node.operand)
    elif kind == "bool":
        node.value = not node.value
    elif kind == "int":
        node.value += 1
    elif kind == "float":
        node.value = node.value * 2 or 1.0
    elif kind == "binop":
        node.op = _BINARY[type(node.op)]()
    elif kind == "condition":
        node.test = ast.Constant(site.kind[1])
    elif kind == "delete":
        _replace(parent, step, ast.Pass())
    return ast.fix_missing_locations(tree)


def _replace(parent, step, new):
    field, i = step
    if i is None:
        setattr(parent, field, new)
    else:
        getattr(parent, field)[i] = new


def mutantId(module, site, node, seen):
    """
    A name for the mutant that survives unrelated edits: the scope, the
    mutation, the text of the node mutated, and which occurrence of that
    text in the scope it is (not the line, so that sampling and before/after
    comparisons pick the same mutants when other code moves).
    """
    key = (site.scope, site.kind, ast.unparse(node))
    seen[key] = seen.get(key, 0) + 1
    return "%s:%s:%s:%s#%d" % (module, site.scope or "<module>", ":".join(map(str, site.kind)),
                               hashlib.sha1(key[2].encode()).hexdigest()[:10], seen[key])


# -- running

def _copyTree(source, dest):
    for name in ("snstwist", "tests", "twisted"):
        shutil.copytree(os.path.join(source, name), os.path.join(dest, name),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "_trial_temp*"))


# What every test run imports, imported once per worker: each run is a fork
# of the worker (which has imported neither snstwist nor the tests), so it
# costs the tests and not the start of an interpreter.  No reactor is
# installed before the fork: trial installs the asyncio one in the child.
_PRELOAD = ("twisted.scripts.trial", "twisted.trial.unittest", "twisted.internet.defer",
            "twisted.internet.task", "twisted.internet.asyncioreactor",
            "twisted.application.service", "twisted.logger", "grpc", "grpc.aio",
            "grpc_health.v1.health", "google.protobuf.message", "hypothesis",
            "hypothesis.stateful", "attrs", "automat", "sqlite3", "json")


def _runTests(workdir, tests, timeout):
    """Run trial on C{tests} in a fork of this worker; (outcome, seconds)."""
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: run the tests and exit with trial's status
        code = 70
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.environ.update(GRPC_VERBOSITY="ERROR", SNS_HYPOTHESIS_PROFILE="mutants")
            sys.argv = ["trial", "--reactor=asyncio", "-x", "--temp-directory",
                        os.path.join(workdir, "_trial_temp")] + tests
            from twisted.scripts.trial import run
            run()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            os._exit(code)
    deadline = started + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout", time.monotonic() - started
        time.sleep(0.02)
    outcome = "passed" if os.waitstatus_to_exitcode(status) == 0 else "failed"
    return outcome, time.monotonic() - started


_worker = {}


def _initWorker(source, workdirs):
    workdir = workdirs.get()
    _copyTree(source, workdir)
    _worker["dir"] = workdir
    os.chdir(workdir)
    sys.path.insert(0, workdir)
    sys.dont_write_bytecode = True
    for name in _PRELOAD:
        importlib.import_module(name)
    assert "twisted.internet.reactor" not in sys.modules


def _job(module, source, tests, timeout, mutantId):
    """Write C{source} as C{module} in this worker's tree and run C{tests}."""
    workdir = _worker["dir"]
    path = os.path.join(workdir, module)
    with open(path, "rb") as f:
        original = f.read()
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(source)
        outcome, seconds = _runTests(workdir, tests, timeout)
    finally:
        with open(path, "wb") as f:
            f.write(original)
    return mutantId, outcome, seconds


def _testModuleExists(tree, name):
    """Is there a module for the test name C{name} (tests.mod, tests.mod.Class)?"""
    parts = name.split(".")
    return any(os.path.exists(os.path.join(tree, *parts[:n]) + ".py")
               for n in range(2, len(parts) + 1))


def plan(tree, sample, only):
    """{module: (tests, [(mutant id, site, mutated source)])} for C{tree}."""
    out = {}
    for module, (tests, scope) in TARGETS.items():
        if only and module not in only:
            continue
        tests = [t for t in tests if _testModuleExists(tree, t)]
        with open(os.path.join(tree, module), encoding="utf-8") as f:
            parsed = ast.parse(f.read())
        mutants = []
        seen = {}
        for site in sites(parsed, scope):
            ident = mutantId(module, site, _locate(parsed, site.path)[2], seen)
            mutants.append((hashlib.sha1(ident.encode()).hexdigest(), ident, site))
        mutants.sort()
        keep = len(mutants) if sample >= 1 else int(round(len(mutants) * sample))
        out[module] = (tests, parsed, [(ident, site) for _, ident, site in mutants[:keep]],
                       len(mutants))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--sample", type=float, default=1.0)
    parser.add_argument("--only", action="append", help="a module path, e.g. snstwist/rpc/auth.py")
    parser.add_argument("--tree", default=ROOT, help="the source tree to measure")
    parser.add_argument("--out", default="mutants.jsonl",
                        help="every outcome, one JSON line each, written as they come")
    parser.add_argument("--resume", action="store_true",
                        help="keep the outcomes already in --out and run only the rest")
    parser.add_argument("--rerun-survivors", action="store_true",
                        help="with --resume: run the survivors again (after adding tests)")
    parser.add_argument("--list", action="store_true", help="only list the mutants")
    parser.add_argument("--report-only", action="store_true",
                        help="with --resume: report on the outcomes in --out, run nothing")
    args = parser.parse_args(argv)

    work = plan(args.tree, args.sample, args.only)
    if args.list:
        for _tests, _parsed, mutants, _total in work.values():
            for ident, site in mutants:
                print(ident, site.describe)
        return 0

    results = {}
    if args.resume and os.path.exists(args.out):
        with open(args.out) as f:
            for line in f:
                record = json.loads(line)
                if args.rerun_survivors and record["outcome"] == "passed":
                    results.pop(record["id"], None)
                else:
                    results[record["id"]] = record
    else:
        open(args.out, "w").close()
    started = time.monotonic()
    if not args.report_only:
        temp = tempfile.mkdtemp(prefix="sns-mutants-")
        try:
            _run(work, args, temp, results)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    return report(results, work, args, time.monotonic() - started)


def _record(args, results, ident, site, module, outcome, seconds):
    record = {"id": ident, "module": module, "line": site.line, "scope": site.scope,
              "mutation": site.describe, "outcome": outcome, "seconds": round(seconds, 2)}
    results[ident] = record
    with open(args.out, "a") as f:
        f.write(json.dumps(record) + "\n")


def _run(work, args, temp, results):
    import multiprocessing
    manager = multiprocessing.Manager()
    queue = manager.Queue()
    for i in range(args.jobs):
        os.mkdir(os.path.join(temp, "w%d" % i))
        queue.put(os.path.join(temp, "w%d" % i))
    started = time.monotonic()
    with concurrent.futures.ProcessPoolExecutor(
            args.jobs, initializer=_initWorker, initargs=(args.tree, queue)) as pool:
        controls = {}
        for module, (tests, parsed, mutants, _total) in work.items():
            if not tests:
                print("%s: no unit tests in this tree: every mutant survives" % (module,))
            if any(ident not in results for ident, _ in mutants):
                controls[module] = pool.submit(
                    _job, module, ast.unparse(parsed), tests, 900, module + ":control")
        limits = {}
        for module, future in controls.items():
            _, outcome, seconds = future.result()
            if work[module][0] and outcome != "passed":
                print("%s: its tests fail without any mutant (%s): skipped"
                      % (module, outcome), flush=True)
                continue
            limits[module] = 3 * seconds + 15
            print("%s: %d mutants (of %d), tests %s take %.1fs" % (
                module, len(work[module][2]), work[module][3],
                " ".join(work[module][0]) or "(none)", seconds), flush=True)
        # Run in the order of the sampling hash, across modules: a run
        # stopped early (and resumed with --resume, perhaps with a smaller
        # --sample) has done the mutants a smaller sample keeps.
        todo = []
        for module in limits:
            tests, parsed, mutants, _total = work[module]
            for ident, site in mutants:
                if ident in results:
                    continue
                if not tests:
                    _record(args, results, ident, site, module, "passed", 0.0)
                    continue
                todo.append((hashlib.sha1(ident.encode()).hexdigest(), module, ident, site))
        futures = {}
        for _hash, module, ident, site in sorted(todo, key=lambda q: q[0]):
            tests, parsed, _mutants, _total = work[module]
            source = ast.unparse(mutate(parsed, site))
            futures[pool.submit(_job, module, source, tests, limits[module], ident)] = (
                site, module)
        done = 0
        for future in concurrent.futures.as_completed(futures):
            site, module = futures[future]
            ident, outcome, seconds = future.result()
            _record(args, results, ident, site, module, outcome, seconds)
            done += 1
            if done % 25 == 0:
                print("  %d/%d mutants run, %.0fs" % (
                    done, len(futures), time.monotonic() - started), flush=True)


def report(results, work, args, seconds):
    lines = _sourceLines(args.tree, work)
    total = killed = 0
    print()
    print("module                     mutants  killed  score")
    mine = {}
    for module, (_tests, _parsed, mutants, _total) in work.items():
        mine[module] = [results[ident] for ident, _ in mutants if ident in results]
        k = sum(1 for r in mine[module] if r["outcome"] != "passed")
        total += len(mine[module])
        killed += k
        if mine[module]:
            print("%-26s %7d %7d  %5.1f%%" % (module, len(mine[module]), k,
                                             100.0 * k / len(mine[module])))
    print("%-26s %7d %7d  %5.1f%%" % ("all", total, killed,
                                     100.0 * killed / total if total else 0))
    missing = sum(len(mutants) for _t, _p, mutants, _n in work.values()) - total
    if missing:
        print("(%d mutants of the sample not run yet)" % (missing,))
    print("(%.0f s, %d jobs, sample %.2f)" % (seconds, args.jobs, args.sample))
    print("\nsurvivors:")
    for module, records in mine.items():
        for r in sorted(records, key=lambda r: (r["line"], r["id"])):
            if r["outcome"] == "passed":
                print("  %s:%d %s: %s    | %s" % (
                    module, r["line"], r["scope"] or "<module>", r["mutation"],
                    lines[module][r["line"] - 1].strip()))
    return 0


def _sourceLines(tree, work):
    out = {}
    for module in work:
        with open(os.path.join(tree, module), encoding="utf-8") as f:
            out[module] = f.read().splitlines()
    return out


if __name__ == "__main__":
    sys.exit(main())

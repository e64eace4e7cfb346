"""
Which modules a program loads: the layering of the package, checked in a
fresh interpreter (this one has imported everything already).

A client program must not load the server side (the buddy supervisor, the
server, the store, the local cluster): it would pay for their imports at
every start, and a change there could break the client.
"""

import ast
import os
import sys

from twisted.internet import utils
from twisted.trial.unittest import SynchronousTestCase, TestCase

import snstwist.commands.commandline

# snstwist is a namespace package (no __init__): its directory is two up
# from that of one of its modules.
PACKAGE = os.path.dirname(os.path.dirname(snstwist.commands.commandline.__file__))

# What a client-side program may never load.
SERVER_SIDE = ("snstwist.buddy", "snstwist.server", "snstwist.storage", "snstwist.router",
               "snstwist.testbed", "snstwist.commands.cluster", "snstwist.commands.tap")


def serverSide(modules):
    """The modules of C{modules} that belong to the server side."""
    return {m for m in modules
            if any(m == p or m.startswith(p + ".") for p in SERVER_SIDE)}

_LOADED = """
import sys
{}
print("\\n".join(sorted(m for m in sys.modules
                       if m.startswith(("snstwist", "prometheus_client")))))
"""


async def loadedBy(code):
    """The snstwist and prometheus-client modules that running C{code} loads."""
    from twisted.internet import reactor
    out, err, status = await utils.getProcessOutputAndValue(
        sys.executable, ["-c", _LOADED.format(code)], env=dict(os.environ), reactor=reactor)
    if status != 0:
        raise AssertionError("the child failed (%d): %s" % (status, err.decode()))
    return set(out.decode().split())


class ClientSideTests(TestCase):
    async def test_sns_client_loads_no_server_code(self):
        """
        sns-client, up to the point where its reactor runs (module, options
        parsed, the runner of command-line programs), loads no server-side
        module.
        """
        loaded = await loadedBy(
            "import os, snstwist.commands.cli, snstwist.commands.commandline\n"
            "os.environ['SNS_PASSWORD'] = 'a password'\n"
            "snstwist.commands.cli.Options().parseOptions(['-r', '127.0.0.1:3410', '-u', 'alice'])")
        self.assertIn("snstwist.client.client", loaded)
        self.assertEqual(serverSide(loaded), set())

    async def test_operator_views_load_no_server_code(self):
        """sns-status and sns-compare are clients too."""
        loaded = await loadedBy("import snstwist.commands.status, snstwist.commands.compare")
        self.assertIn("snstwist.commands.status", loaded)
        self.assertEqual(serverSide(loaded), set())


# What a server process has no use for until later, or ever: the router,
# the web, the client, the test bed, the operators' import and export.
NOT_FOR_A_SERVER = ("snstwist.router", "snstwist.web", "snstwist.client", "snstwist.testbed",
                    "snstwist.storage.admin", "snstwist.storage.importer",
                    "snstwist.storage.bulk", "snstwist.commands.admin",
                    # Loaded only with --metrics.
                    "prometheus_client")


class ServerSideTests(TestCase):
    async def test_a_server_loads_only_what_it_serves_with(self):
        """
        A server process (its twistd plugin's module and its service)
        imports no router, web, client, test bed or bulk-load code, nor
        prometheus-client without --metrics: every import is paid for at
        each start and each new standby.
        """
        loaded = await loadedBy("import snstwist.commands.tap, snstwist.server.service")
        self.assertIn("snstwist.server.service", loaded)
        self.assertEqual({m for m in loaded if any(m == p or m.startswith(p + ".")
                                                   for p in NOT_FOR_A_SERVER)}, set())


def importGraph(root, base):
    """
    {module: the package's modules it imports}, read from the source of the
    package C{base} in the directory C{root}, counting imports inside
    functions too: a cycle through a deferred import is still a cycle.
    """
    paths = {}
    for directory, _, names in os.walk(root):
        for name in names:
            if name.endswith(".py"):
                parts = os.path.relpath(os.path.join(directory, name), root)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts.pop()
                paths[".".join([base] + parts)] = os.path.join(directory, name)
    graph = {}
    for module, path in paths.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        isPackage = path.endswith("__init__.py")
        here = module if isPackage else module.rpartition(".")[0]
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                source = node.module or ""
                if node.level:
                    anchor = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                    source = anchor + ("." + source if source else "")
                for alias in node.names:
                    name = source + "." + alias.name
                    deps.add(name if name in paths else source)
        graph[module] = {d for d in deps if d in paths and d != module}
    return graph


def importers(root, base, top):
    """The modules of the package C{base} (in C{root}) that import C{top} or a submodule."""
    found = set()
    for directory, _, names in os.walk(root):
        for name in names:
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    imported = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    imported = [node.module or ""]
                else:
                    continue
                if any(n == top or n.startswith(top + ".") for n in imported):
                    parts = os.path.relpath(path, root)[:-3].split(os.sep)
                    found.add(".".join([base] + parts))
    return found


def cycles(graph):
    """The strongly connected components of more than one module."""
    order, low, stack, onStack, found = {}, {}, [], set(), []

    def visit(v):
        order[v] = low[v] = len(order)
        stack.append(v)
        onStack.add(v)
        for w in graph[v]:
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in onStack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            component = set()
            while True:
                w = stack.pop()
                onStack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in order:
            visit(v)
    return found


class ImportCycleTests(SynchronousTestCase):
    def test_cycles_are_found(self):
        """The check itself: a cycle through any number of modules is reported."""
        graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
        self.assertEqual(cycles(graph), [["a", "b", "c"]])
        self.assertEqual(cycles({"a": {"b"}, "b": set()}), [])

    def test_the_package_has_no_import_cycle(self):
        """
        No module of snstwist imports, even from inside a function, a module
        that imports it back (tap imports cluster; cluster never imports tap).
        """
        graph = importGraph(PACKAGE, "snstwist")
        self.assertIn("snstwist.commands.commandline", graph["snstwist.commands.cluster"])
        self.assertEqual(cycles(graph), [])


class GrpcBoundaryTests(SynchronousTestCase):
    def test_only_the_bridge_imports_grpc(self):
        """
        grpc is imported by the modules of the grpcbridge package and the
        generated stubs only: the rest of the package sees Deferreds, domain
        values and L{errors.RemoteError}.
        """
        found = importers(PACKAGE, "snstwist", "grpc")
        self.assertIn("snstwist.rpc.grpcbridge.channels", found)
        self.assertEqual({m for m in found if not m.startswith("snstwist.rpc.grpcbridge.")},
                         {"snstwist.rpc.sns_pb2_grpc"})


class SizeTests(SynchronousTestCase):
    """
    The layout's budget (docs/design.md, the module map): no module over 400
    lines and no class over 250, generated code aside.  A piece that outgrows
    it has taken a second job; split it by job rather than raise the limit.
    """

    MAX_MODULE = 400
    MAX_CLASS = 250

    def measure(self):
        scripts = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "scripts")
        sys.path.insert(0, scripts)
        try:
            import sizes
        finally:
            sys.path.remove(scripts)
        return sizes.measure(PACKAGE)

    def test_the_measure_counts_the_package(self):
        """The check itself: it finds the modules and classes it judges."""
        modules, classes = self.measure()
        self.assertIn("snstwist/core/node.py", {where for _, where in modules})
        self.assertIn("snstwist/core/node.py:Node", {where for _, _, where in classes})
        self.assertNotIn("snstwist/rpc/sns_pb2.py", {where for _, where in modules})

    def test_no_module_or_class_is_over_its_budget(self):
        modules, classes = self.measure()
        over = ["%s: %d lines" % (where, n) for n, where in modules if n > self.MAX_MODULE]
        over += ["%s: %d lines" % (where, n) for n, _, where in classes if n > self.MAX_CLASS]
        self.assertEqual(over, [])

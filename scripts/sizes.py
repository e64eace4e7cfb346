"""
How big the modules and classes of snstwist are, in lines, read with ast.

    python scripts/sizes.py [--top N] [--max-module LINES] [--max-class LINES] [PACKAGE_DIR]

Prints every module (generated protobuf code aside) and the N largest
classes, largest first.  With --max-module or --max-class it exits 1 when
something is bigger, naming it: a check for the layout goal of issue 11
(no module over ~400 lines, no class over ~250).
"""

import argparse
import ast
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def measure(root):
    """([(lines, module path)], [(lines, methods, "path:Class")]) under C{root}."""
    base = os.path.dirname(root)
    modules, classes = [], []
    for directory, _, names in os.walk(root):
        for name in sorted(names):
            if not name.endswith(".py") or "_pb2" in name:
                continue
            path = os.path.join(directory, name)
            with open(path, encoding="utf-8") as f:
                source = f.read()
            where = os.path.relpath(path, base)
            modules.append((source.count("\n"), where))
            for node in ast.walk(ast.parse(source, path)):
                if isinstance(node, ast.ClassDef):
                    methods = sum(isinstance(b, (ast.FunctionDef, ast.AsyncFunctionDef))
                                  for b in node.body)
                    classes.append((node.end_lineno - node.lineno + 1, methods,
                                    "%s:%s" % (where, node.name)))
    return sorted(modules, reverse=True), sorted(classes, reverse=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("root", nargs="?", default=os.path.join(os.path.dirname(HERE), "snstwist"))
    parser.add_argument("--top", type=int, default=10, help="how many classes to list")
    parser.add_argument("--max-module", type=int, help="fail above this many lines")
    parser.add_argument("--max-class", type=int, help="fail above this many lines")
    args = parser.parse_args(argv)
    modules, classes = measure(os.path.abspath(args.root))
    print("modules (lines):")
    for lines, where in modules:
        print("  %5d  %s" % (lines, where))
    print("the %d largest classes:" % (args.top,))
    for lines, methods, where in classes[:args.top]:
        print("  %5d lines %3d methods  %s" % (lines, methods, where))
    over = []
    if args.max_module is not None:
        over += ["%s: %d lines" % (w, n) for n, w in modules if n > args.max_module]
    if args.max_class is not None:
        over += ["%s: %d lines" % (w, n) for n, _, w in classes if n > args.max_class]
    for line in over:
        print("too big: " + line)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())

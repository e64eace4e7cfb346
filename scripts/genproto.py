"""Regenerate snstwist/rpc/sns_pb2.py and snstwist/rpc/sns_pb2_grpc.py from proto/.

The proto tree mirrors the package path (proto/snstwist/rpc/sns.proto), so protoc
writes ``from snstwist.rpc import sns_pb2`` and the generated code imports cleanly
inside the package.  tests/test_proto.py runs the same generation into a
temporary directory and fails when the committed files are stale.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO = os.path.join("snstwist", "rpc", "sns.proto")


def generate(outdir):
    import grpc_tools
    from grpc_tools import protoc

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = [
        "protoc",
        "-I" + os.path.join(ROOT, "proto"),
        "-I" + include,
        "--python_out=" + outdir,
        "--grpc_python_out=" + outdir,
        os.path.join(ROOT, "proto", PROTO),
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit("protoc failed with exit code %d" % (code,))


if __name__ == "__main__":
    generate(sys.argv[1] if len(sys.argv) > 1 else ROOT)

"""The generated protobuf code is what scripts/genproto.py makes from proto/."""

import os
import sys
import tempfile

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERATED = ("sns_pb2.py", "sns_pb2_grpc.py")


class GeneratedCodeTests(unittest.TestCase):
    def test_generated_code_matches_proto(self):
        """
        Regenerating from proto/snstwist/rpc/sns.proto gives byte-identical files
        to the committed ones; if not, run: python scripts/genproto.py
        """
        sys.path.insert(0, os.path.join(ROOT, "scripts"))
        try:
            import genproto
        finally:
            sys.path.pop(0)
        with tempfile.TemporaryDirectory() as out:
            genproto.generate(out)
            for name in GENERATED:
                with open(os.path.join(out, "snstwist", "rpc", name), "rb") as f:
                    fresh = f.read()
                with open(os.path.join(ROOT, "snstwist", "rpc", name), "rb") as f:
                    committed = f.read()
                self.assertEqual(
                    fresh, committed,
                    "snstwist/rpc/%s is stale: run python scripts/genproto.py" % (name,))

    def test_seed_rpc_names_are_kept(self):
        """The six RPC names of the seed document are in the wire contract."""
        from snstwist.rpc import sns_pb2

        methods = {m.name for s in sns_pb2.DESCRIPTOR.services_by_name.values()
                   for m in s.methods}
        for name in ("Onetime_c_to_r", "Bidirectional_r_and_s", "BuddyConnection",
                     "Bidirectional_s_and_c", "BroadcastPosts", "Onetime_s_to_buddy"):
            self.assertIn(name, methods)

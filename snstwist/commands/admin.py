"""
C{sns-admin}: an operator's copies of a VM's data directory.

    sns-admin export --data DIR [--out FILE]
    sns-admin import --data DIR FILE [--origin NAME]
    sns-admin backup --data DIR --to DEST
    sns-admin certs --dir DIR [--name NAME] [--host HOST]...

C{export} writes the users, follows and posts of a data directory as JSON
lines (the format is L{admin.EXPORT_FORMAT}), streamed in constant memory.
C{import} fills a new, empty data directory from such lines (bulk load, or a
restore).  C{backup} copies the data directory of a running VM into a new
directory, consistently, without stopping it: the copy is a data directory a
server can start on.  The disk work itself is in L{store}.  C{certs} makes
the cluster's CA (once) and a certificate signed by it (L{certs}).
"""

import hashlib
import os
import sys
import time

from twisted.python import usage

from snstwist.core import errors
from snstwist.storage import admin, importer, importlines


class ExportOptions(usage.Options):
    synopsis = "--data DIR [--out FILE]"
    optParameters = [
        ["data", "d", None, "the data directory to export"],
        ["out", "o", "-", "where to write the lines (default: stdout)"],
    ]

    def postOptions(self):
        if not self["data"]:
            raise usage.UsageError("--data is required")


class ImportOptions(usage.Options):
    synopsis = "--data DIR FILE"
    optParameters = [
        ["data", "d", None, "the new (empty) data directory to fill"],
        ["origin", None, None,
         "origin of the ids made up for lines without one (default: import-<hash of FILE>)"],
    ]

    def parseArgs(self, file):
        self["file"] = file

    def postOptions(self):
        if not self["data"]:
            raise usage.UsageError("--data is required")


class BackupOptions(usage.Options):
    synopsis = "--data DIR --to DEST"
    optParameters = [
        ["data", "d", None, "the data directory of the (running) VM"],
        ["to", "t", None, "the new directory to copy it into"],
    ]

    def postOptions(self):
        if not self["data"] or not self["to"]:
            raise usage.UsageError("--data and --to are required")


class CertsOptions(usage.Options):
    synopsis = "--dir DIR [--name NAME] [--host HOST]..."
    longdesc = ("Make the cluster's CA in DIR (ca.pem, ca.key) unless it is there, and a"
                " certificate for one host of the cluster signed by it (NAME.pem, NAME.key)."
                " Give every router and server of the host --tls-cert NAME.pem --tls-key"
                " NAME.key --tls-ca ca.pem, and clients --tls-ca ca.pem.  Keep ca.key off"
                " the cluster's hosts.")
    optParameters = [
        ["dir", "d", None, "directory of the CA and the certificates"],
        ["name", "n", "node", "file name of the certificate and key"],
    ]

    def __init__(self):
        usage.Options.__init__(self)
        self["hosts"] = []

    def opt_host(self, host):
        """
        a host name or address of the process, put in the certificate for
        other TLS tools (repeat for several); the cluster's channels check
        the cluster's name, which every certificate carries
        """
        self["hosts"].append(host)

    def postOptions(self):
        from snstwist.core.limits import USERNAME
        if not self["dir"]:
            raise usage.UsageError("--dir is required")
        if not USERNAME.match(self["name"]):
            raise usage.UsageError("--name is 1-32 of A-Z a-z 0-9 _ . -")


class Options(usage.Options):
    synopsis = "export|import|backup|certs [options]"
    longdesc = "Export, import and back up the data directory of an snstwist VM.\n\n" + \
        admin.EXPORT_FORMAT
    subCommands = [
        ["export", None, ExportOptions, "write users, follows and posts as JSON lines"],
        ["import", None, ImportOptions, "fill an empty data directory from JSON lines"],
        ["backup", None, BackupOptions, "copy a running VM's data directory consistently"],
        ["certs", None, CertsOptions, "make the cluster's CA and a certificate for a host"],
    ]

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("say export, import, backup or certs")


def fileOrigin(path):
    """A made-up origin that is the same for the same file on every VM."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(chunk)
    return "import-" + digest.hexdigest()[:12]


def export(config, stdout):
    out = stdout if config["out"] == "-" else open(config["out"], "wb")
    try:
        out.writelines(admin.exportLines(config["data"]))
    finally:
        if out is not stdout:
            out.close()


def import_(config, stderr):
    origin = config["origin"] or fileOrigin(config["file"])
    started = time.monotonic()
    with open(config["file"], "rb") as f:
        counts = importer.Importer(config["data"], origin, now_us=int(time.time() * 1e6)).run(
            importlines.fileLines(f))
    seconds = time.monotonic() - started
    lines = sum(counts.values())
    stderr.write("imported %d users, %d follows, %d posts into %s in %.1f s (%d lines/s)\n"
                 % (counts["user"], counts["follow"], counts["post"], config["data"],
                    seconds, lines / seconds if seconds else 0))


def backup(config, stderr):
    files, size = admin.backup(config["data"], config["to"])
    stderr.write("backed up %s into %s: %d post files, %d bytes of posts\n"
                 % (config["data"], config["to"], files, size))


def makeCerts(config, stdout):
    from snstwist.rpc import certs
    directory = config["dir"]
    ca = os.path.join(directory, "ca.pem")
    if not os.path.exists(ca):
        certs.makeCA(directory)
        stdout.write(b"made the cluster's CA: %s (keep ca.key secret)\n" % (ca.encode(),))
    cert, key = certs.makeNode(directory, config["name"], config["hosts"])
    stdout.write(b"made %s and %s: --tls-cert %s --tls-key %s --tls-ca %s\n"
                 % tuple(p.encode() for p in (cert, key, cert, key, ca)))


def main(argv=None, stdout=None, stderr=None):
    stdout = stdout or sys.stdout.buffer
    stderr = stderr or sys.stderr
    config = Options()
    try:
        config.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        stderr.write("%s\nsns-admin: %s\n" % (config, e))
        return 2
    sub = config.subOptions
    try:
        if config.subCommand == "export":
            export(sub, stdout)
        elif config.subCommand == "import":
            import_(sub, stderr)
        elif config.subCommand == "certs":
            makeCerts(sub, stdout)
        else:
            backup(sub, stderr)
    except BrokenPipeError:
        # export | head: the reader has what it wanted.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (errors.SNSError, OSError) as e:
        stderr.write("sns-admin %s: %s\n" % (config.subCommand,
                                             getattr(e, "message", None) or e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

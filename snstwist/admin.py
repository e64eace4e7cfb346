"""
C{sns-admin}: an operator's copies of a VM's data directory.

    sns-admin export --data DIR [--out FILE]
    sns-admin import --data DIR FILE [--origin NAME]
    sns-admin backup --data DIR --to DEST

C{export} writes the users, follows and posts of a data directory as JSON
lines (the format is L{store.EXPORT_FORMAT}), streamed in constant memory.
C{import} fills a new, empty data directory from such lines (bulk load, or a
restore).  C{backup} copies the data directory of a running VM into a new
directory, consistently, without stopping it: the copy is a data directory a
server can start on.  The disk work itself is in L{store}.
"""

import hashlib
import os
import sys
import time

from twisted.python import usage

from snstwist import errors, store


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


class Options(usage.Options):
    synopsis = "export|import|backup [options]"
    longdesc = "Export, import and back up the data directory of an snstwist VM.\n\n" + \
        store.EXPORT_FORMAT
    subCommands = [
        ["export", None, ExportOptions, "write users, follows and posts as JSON lines"],
        ["import", None, ImportOptions, "fill an empty data directory from JSON lines"],
        ["backup", None, BackupOptions, "copy a running VM's data directory consistently"],
    ]

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("say export, import or backup")


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
        out.writelines(store.exportLines(config["data"]))
    finally:
        if out is not stdout:
            out.close()


def import_(config, stderr):
    origin = config["origin"] or fileOrigin(config["file"])
    started = time.monotonic()
    with open(config["file"], "rb") as f:
        counts = store.Importer(config["data"], origin, now_us=int(time.time() * 1e6)).run(f)
    seconds = time.monotonic() - started
    lines = sum(counts.values())
    stderr.write("imported %d users, %d follows, %d posts into %s in %.1f s (%d lines/s)\n"
                 % (counts["user"], counts["follow"], counts["post"], config["data"],
                    seconds, lines / seconds if seconds else 0))


def backup(config, stderr):
    files, size = store.backup(config["data"], config["to"])
    stderr.write("backed up %s into %s: %d post files, %d bytes of posts\n"
                 % (config["data"], config["to"], files, size))


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

"""
The reading of an import file (L{importer}): its lines, bounded, a batch at
a time.  Memory holds a batch and one line more, whatever the file: a line
longer than L{MAX_IMPORT_LINE_BYTES} is refused by its number, never read
whole (a file without a newline in gigabytes, /dev/zero).
"""

import json

from snstwist.core.limits import MAX_IMPORT_LINE_BYTES
from snstwist.storage.admin import BadLine

# Lines parsed at once, and the bytes of them (a batch ends at the line
# that reaches it): a batch of long lines is cut short.
PARSE_LINES = 5000
PARSE_BYTES = 8 << 20


def fileLines(f):
    """The lines of the binary file C{f}, none read further than one byte past the bound."""
    return iter(lambda: f.readline(MAX_IMPORT_LINE_BYTES + 1), b"")


def batches(lines):
    """
    (number of the first line, [line]) of C{lines}, L{PARSE_LINES} lines,
    or L{PARSE_BYTES}, at a time.  A line longer than L{MAX_IMPORT_LINE_BYTES}
    ends the lines: it is the last of its batch as the L{BadLine} it is, so
    that a bad line before it is named first.
    """
    batch, first, held = [], 1, 0
    for lineno, line in enumerate(lines, 1):
        if len(line) > MAX_IMPORT_LINE_BYTES:
            batch.append(BadLine(lineno, "longer than %d bytes, the most a line may be"
                                 % (MAX_IMPORT_LINE_BYTES,)))
            yield first, batch
            return
        batch.append(line)
        held += len(line)
        if len(batch) == PARSE_LINES or held >= PARSE_BYTES:
            yield first, batch
            first += len(batch)
            batch, held = [], 0
    if batch:
        yield first, batch


def parsed(first, lines):
    """
    The JSON values of C{lines} (a batch), the first numbered C{first}: one
    C{json.loads} for the batch when it can, and line by line to find which
    line is bad (a L{BadLine} in its place) when it can not.
    """
    records = None
    try:
        texts = [line.decode("utf-8") for line in lines]
        records = json.loads("[" + ",".join(texts) + "]")
    except (ValueError, AttributeError):  # (AttributeError: a line too long, L{batches})
        pass
    if records is None or len(records) != len(lines):
        # One is not a JSON object of its own: find which, line by line.
        records = [_parse(first + i, line) for i, line in enumerate(lines)]
    return records


def _parse(lineno, line):
    """The JSON value of one line, or the L{BadLine} it is."""
    if isinstance(line, BadLine):
        return line
    try:
        return json.loads(line)
    except ValueError as e:
        return BadLine(lineno, "not JSON (%s)" % (getattr(e, "msg", e),))

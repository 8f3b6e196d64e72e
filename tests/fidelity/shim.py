"""``python shim.py SAMPLE [--replace OLD NEW]...``: run an SDK sample as ``__main__``.

The sample's source is read, each ``OLD`` text is replaced by ``NEW`` (the endpoint a client is
built with, an image URL), and the result runs with the sample's own file name, so tracebacks
point at the real file. Each replacement must match at least once, otherwise the run stops with
exit code 97 before any sample code runs: a sample that changed upstream is reported, never
silently run unmodified. What was replaced is printed to stderr for the suite's report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NOT_FOUND = 97


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("sample", type=Path)
    parser.add_argument("--replace", nargs=2, action="append", default=[],
                        metavar=("OLD", "NEW"))
    args = parser.parse_args(argv)
    source = args.sample.read_text(encoding="utf-8")
    for old, new in args.replace:
        count = source.count(old)
        if count == 0:
            print(f"fidelity-shim: {old!r} not found in {args.sample.name}", file=sys.stderr)
            return NOT_FOUND
        source = source.replace(old, new)
        print(f"fidelity-shim replaced {count} x {old}", file=sys.stderr)
    sys.argv = [str(args.sample)]
    sys.path.insert(0, str(args.sample.parent))
    code = compile(source, str(args.sample), "exec")
    exec(code, {"__name__": "__main__", "__file__": str(args.sample)})  # noqa: S102 - the sample
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

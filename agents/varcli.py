"""``ekiden-var``: set a run variable from inside a job, by printing the marked line the manager reads.

    ekiden-var set ROWS 42        # prints "::ekiden-var ROWS=42" on stdout

The line goes to the job's standard output, which the executor captures and reports when the job ends;
the manager then sets the variable for the units after the job (see ``schemas.variables``). Also runnable
as ``python -m agents.varcli set NAME VALUE`` where the console script is not on the PATH.
"""

import argparse
import sys

from schemas.variables import var_line


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``ekiden-var`` console script; exit 2 on a bad name or value."""
    parser = argparse.ArgumentParser(prog="ekiden-var", description="set a run variable for the units after this job")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("set", help="set NAME to VALUE (one line on stdout)")
    s.add_argument("name")
    s.add_argument("value")
    args = parser.parse_args(argv)
    try:
        line = var_line(args.name, args.value)
    except ValueError as exc:
        sys.stderr.write(f"ekiden-var: {exc}\n")
        sys.exit(2)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

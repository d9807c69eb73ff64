"""`python -m tally.ops ...` is the `tally` command (the stack spawns its processes so)."""

from tally.ops.cli import main

main()

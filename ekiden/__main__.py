"""``python -m ekiden``: the same as the ``ekiden`` command."""

from ekiden.cli import main

main()

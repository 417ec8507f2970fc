"""`python -m edgewise.cli`: the `edgewise` command."""

from edgewise.cli import main

main()

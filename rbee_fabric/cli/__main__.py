"""`python -m rbee_fabric.cli` is `rbee`."""

from rbee_fabric.entry import main

main()

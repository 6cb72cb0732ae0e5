"""`python -m rbee_fabric.cli` is `rbee`."""

from rbee_fabric.cli.app import app

app(prog_name="rbee")

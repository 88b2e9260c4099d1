"""``python -m tokenhub`` is the ``tokenhub`` command."""

from tokenhub.cli import run

run()

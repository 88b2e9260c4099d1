"""``python -m tokenhub`` is the ``tokenhub`` command."""

from tokenhub.cli import main

raise SystemExit(main())

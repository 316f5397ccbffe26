"""``python -m edge.cli``: the ``forewarn`` command (the package moved it from edge/cli.py)."""

from edge.cli import main

raise SystemExit(main())

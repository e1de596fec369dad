"""``python -m envrunner``: the command line."""

from envrunner._cli import main

raise SystemExit(main())

"""`python -m inspector.cli`, the same as `python -m inspector` and the `inspector` script."""

from inspector.cli import main

raise SystemExit(main())

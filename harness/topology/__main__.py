"""`python -m harness.topology up|down|show|verify` (ci/rxe-setup.sh)."""

from harness.topology.command_line import main

raise SystemExit(main())

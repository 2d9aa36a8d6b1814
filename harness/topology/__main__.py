from harness.topology import main

raise SystemExit(main())

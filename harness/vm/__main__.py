from harness.vm import main

raise SystemExit(main())

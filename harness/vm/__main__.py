from harness.vm.command_line import main

raise SystemExit(main())

from scripts.faults.run import main

raise SystemExit(main())

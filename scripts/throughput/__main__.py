from scripts.throughput.run import main

raise SystemExit(main())

from edge_inspector.cli import main

raise SystemExit(main())

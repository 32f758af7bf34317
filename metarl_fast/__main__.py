from metarl_fast.cli import main

raise SystemExit(main())

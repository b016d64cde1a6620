from kubetune.cli.main import main

raise SystemExit(main())

from productflo.cli import main

raise SystemExit(main())

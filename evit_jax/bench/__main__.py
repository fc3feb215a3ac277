from evit_jax.bench.cli import main

raise SystemExit(main())

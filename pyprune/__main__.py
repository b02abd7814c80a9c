"""`python -m pyprune ...` runs the command line."""
from .cli import main

raise SystemExit(main())

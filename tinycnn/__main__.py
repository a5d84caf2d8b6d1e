"""`python -m tinycnn ...` runs the tinycnn command (tinycnn.cli)."""
import sys

from tinycnn.cli import main

sys.exit(main())

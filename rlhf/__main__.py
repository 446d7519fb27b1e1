"""`python -m rlhf ...` (what `accelerate launch -m rlhf ...` runs)."""

import sys

from rlhf.cli import main

sys.exit(main())

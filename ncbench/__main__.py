"""``python -m ncbench`` is the ``ncbench`` command."""

import sys

from ncbench.cli import main

sys.exit(main())

"""``python -m torch_dedup.cli``: the same as the ``torch-dedup`` console script."""

import sys

from . import main

sys.exit(main())

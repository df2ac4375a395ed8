"""``python -m shards``: build frame-indexed WebDataset shards."""

import sys

from shards.cli import main

sys.exit(main())

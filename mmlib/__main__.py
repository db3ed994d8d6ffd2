"""``python -m mmlib``: the mmlib command line (:mod:`mmlib.cli`)."""

import sys

from mmlib.cli import main

if __name__ == "__main__":
    sys.exit(main())

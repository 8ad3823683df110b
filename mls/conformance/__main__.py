"""``python -m mls.conformance``: see :mod:`mls.conformance.cli`."""

import sys

from mls.conformance.cli import main

sys.exit(main())

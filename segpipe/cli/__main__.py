"""``python -m segpipe.cli``: the ``segpipe`` command."""

import sys

from segpipe.cli import main

sys.exit(main())

"""``python -m ringfl`` is the ``ringfl`` command."""

import sys

from ringfl.cli import main

sys.exit(main())

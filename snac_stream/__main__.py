"""``python -m snac_stream ARGS`` is ``snac-stream ARGS``."""

import sys

from snac_stream.cli.main import main

sys.exit(main())

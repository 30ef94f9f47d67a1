"""Live mic-to-codes: the tokens of every SNAC level appearing at their own rates.

    python demos/mic_to_codes.py [--model M] [--input FILE] [--seconds S]

Same as ``snac-stream mic``; without a microphone pass ``--input FILE``.
"""

import sys

from snac_stream.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["mic", *sys.argv[1:]]))

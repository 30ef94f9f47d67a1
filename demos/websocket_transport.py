"""WebSocket audio transport, end to end on one machine: a relay server on loopback, a
sender streaming codes in real time (microphone, or the embedded sample), a listener
decoding them (speaker and/or WAV), and the measured latency and bitrate.

    python demos/websocket_transport.py [--model M] [--seconds S] [--input FILE]

Same as ``snac-stream demo``. To run the parts on different machines instead::

    snac-stream serve --host 0.0.0.0 --port 8765 --token SECRET
    snac-stream listen --url ws://HOST:8765/rooms/talk --token SECRET --speaker
    snac-stream send   --url ws://HOST:8765/rooms/talk --token SECRET --mic
"""

import sys

from snac_stream.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))

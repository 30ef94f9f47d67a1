"""Subcommands of the ``snac-stream`` CLI (see :mod:`snac_stream.cli`)."""

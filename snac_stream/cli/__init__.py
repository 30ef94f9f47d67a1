"""The ``snac-stream`` command (:mod:`.main`), its subcommands (:mod:`.commands`), the demo and live views."""

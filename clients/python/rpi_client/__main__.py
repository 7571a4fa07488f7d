"""``python -m clients.python.rpi_client``: the ``rpi-inspect`` command."""

import sys

from clients.python.rpi_client.cli import main

sys.exit(main())

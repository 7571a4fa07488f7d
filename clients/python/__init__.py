"""The Python client library and command-line tool (package ``rpi_client``)."""

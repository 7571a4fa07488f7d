"""Test support: helpers and fixtures the tests share. Nothing in the runtime packages imports
this package, so none of it ships in the service images."""

"""Clients of the reverse-pickup inspection platform."""

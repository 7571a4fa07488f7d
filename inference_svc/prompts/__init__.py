"""Bundled prompt templates (Jinja2 data files, each with a version header)."""

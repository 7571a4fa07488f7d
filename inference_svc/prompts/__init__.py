"""Bundled prompt templates (Jinja2 data files). Each starts with a header of ``key: value``
lines: its version and the output limits of the strings it asks the model to write."""

"""Versioned SQL migrations (``NNNN_name.sql``) and the runner that applies them at start."""

from persistence_svc.migrations.runner import Migration, MigrationError, apply_migrations, load

__all__ = ["Migration", "MigrationError", "apply_migrations", "load"]

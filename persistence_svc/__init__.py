"""Persistence service: the only writer to Postgres. Records inspection events idempotently and
serves them back over gRPC (rpi.persistence.v1.PersistenceService)."""

"""The connection type the repository's queries run on, and which database errors mean what."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

DbConnection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

# Errors after which the connection (or the server) is gone: retry on a fresh connection, and
# report UNAVAILABLE if that keeps failing.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.CannotConnectNowError,
    # Reconnecting to a database that was dropped or whose credentials changed: an operator has
    # to act, and until then callers must keep their events and retry.
    asyncpg.exceptions.InvalidCatalogNameError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    # A backend terminated while its connection sat idle in the pool can leave asyncpg's
    # protocol in a state it reports as "another operation is in progress".
    asyncpg.exceptions.InternalClientError,
)
# Errors a plain re-run of the transaction resolves.
CONFLICT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)
# Errors caused by the data of one event: retrying the batch cannot help.
DATA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.IntegrityConstraintViolationError,
)


def is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, CONNECTION_ERRORS):
        return True
    # asyncpg reports use of a connection that died in between as a bare InterfaceError.
    return isinstance(exc, asyncpg.exceptions.InterfaceError) and "closed" in str(exc)

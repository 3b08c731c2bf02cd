"""Edge SDK: the seed's session API over request-reply on Kafka.

One :class:`EdgeClient` per edge process (one producer, one reply consumer,
one HTTP pool for worker queries); :func:`create_session` gives the seed's
``Session`` on top of it. See docs/migration.md for the mapping from the old
``StateBackend`` API.
"""

from streams.edge.client import EdgeClient, UpstreamError, percentile
from streams.edge.queries import (
    AuthError,
    BudgetStatus,
    EdgeConfig,
    EdgeError,
    FrequencyStatus,
    StateBackendError,
    StateUnavailableError,
    UnknownCampaignError,
    WorkerQueries,
    default_instance_id,
)
from streams.edge.session import (
    DAILY_PREFIX,
    HOURLY_PREFIX,
    Session,
    SessionClosedError,
    SessionContext,
    create_session,
    parse_cap_key,
    retry_with_backoff,
)

__all__ = [
    "DAILY_PREFIX",
    "HOURLY_PREFIX",
    "AuthError",
    "BudgetStatus",
    "EdgeClient",
    "EdgeConfig",
    "EdgeError",
    "FrequencyStatus",
    "Session",
    "SessionClosedError",
    "SessionContext",
    "StateBackendError",
    "StateUnavailableError",
    "UnknownCampaignError",
    "UpstreamError",
    "WorkerQueries",
    "create_session",
    "default_instance_id",
    "parse_cap_key",
    "percentile",
    "retry_with_backoff",
]

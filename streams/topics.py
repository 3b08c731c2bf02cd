"""Topic names of the xsp topology, derived from one prefix.

Pure: no Faust import. ``streams.app`` declares them on the Faust app with
partition counts and cleanup policies; CLI commands and tests use the same
names from here, so there is one spelling of every topic.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TopicNames"]


@dataclass(frozen=True, slots=True)
class TopicNames:
    """The full name of every topic for one deployment (one ``XSP_TOPIC_PREFIX``)."""

    ad_requests: str
    budget_requests: str
    ad_responses: str
    spend: str
    campaigns: str
    campaign_status: str
    dlq: str

    @classmethod
    def from_prefix(cls, prefix: str) -> TopicNames:
        """Names as ``<prefix><stage>``, e.g. ``xsp.ad-requests`` for the prefix ``xsp.``."""
        return cls(
            ad_requests=f"{prefix}ad-requests",
            budget_requests=f"{prefix}budget-requests",
            ad_responses=f"{prefix}ad-responses",
            spend=f"{prefix}spend",
            campaigns=f"{prefix}campaigns",
            campaign_status=f"{prefix}campaign-status",
            dlq=f"{prefix}dlq",
        )

    def all(self) -> list[str]:
        """Every topic name, in topology order."""
        return [
            self.ad_requests,
            self.budget_requests,
            self.ad_responses,
            self.spend,
            self.campaigns,
            self.campaign_status,
            self.dlq,
        ]

    def compacted(self) -> set[str]:
        """Topics that keep only the latest value per key (configuration, not events)."""
        return {self.campaigns, self.campaign_status}

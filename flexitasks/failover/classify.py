"""The failover side's name for the SDK mapping, which lives beside the adapters
(``flexitasks.providers.classify``) so that providers/ never imports failover/."""

from flexitasks.providers.classify import classify, error_event, parse_retry_after, retry_after_from

__all__ = ["classify", "error_event", "parse_retry_after", "retry_after_from"]

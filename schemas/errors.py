"""The project's exception hierarchy: one root, so callers can catch everything of ours in one place."""

from __future__ import annotations


class HrmcondError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(HrmcondError):
    """A configuration file, key, type or value is wrong; the message names the key and the fix."""


class TickDecodeError(HrmcondError):
    """A tick message cannot be accepted. ``reason`` is a short stable code for metrics and dead letters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class TickFileError(HrmcondError, ValueError):
    """A tick, reference or vendor file cannot be read; the message names the file, row, column and value."""


class DeliveryError(HrmcondError):
    """Kafka did not acknowledge a produced record (wraps librdkafka's error code and description)."""

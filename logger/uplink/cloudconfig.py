"""Configuration from the cloud: poll ``GetConfiguration``, validate, apply, keep the last good.

Each poll sends the version the logger runs; the receiver answers with its current version and,
only when it differs, the document. A new document is validated *as a whole against the local
file* (:meth:`logger.config.CloudLayerStore.offer`: schema, bounds, the file's buses, and no key
outside the cloud's fields - security settings cannot be reached this way) before anything is
written. A valid one is saved atomically and handed to ``apply`` (the daemon's poller switches
between ticks; the buffer is untouched, so nothing buffered is lost). An invalid one changes
nothing: the last good layer keeps running, the refusal is logged once per version and carried
in the next ``ReportStatus`` (``ConfigProblem``), and the same version is not re-validated at
every poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from logger import contract
from logger.config.cloud import CloudLayerStore
from logger.config.load import ConfigError, Problem, parse_cloud_layer
from logger.config.model import Config
from logger.uplink.pusher import ReceiverCaller
from logger.uplink.reports import config_version_number

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConfigOutcome:
    """What one poll did: ``unchanged``, ``none`` (no layer set), ``applied`` or
    ``refused`` (with ``problem``)."""

    action: str
    version: int
    problem: str = ""


class CloudConfigFollower:
    """Follows the receiver's configuration for this logger (see the module doc).

    ``load_base`` reads the local file (blocking; run on a worker thread), ``running`` returns
    the configuration in force, ``apply`` switches to a merged one (called on the caller's
    loop).
    """

    def __init__(
        self,
        caller: ReceiverCaller,
        layers: CloudLayerStore,
        load_base: Callable[[], Config],
        running: Callable[[], Config],
        apply: Callable[[Config], None],
    ) -> None:
        self.caller = caller
        self.layers = layers
        self.load_base = load_base
        self.running = running
        self.apply = apply
        self.refused_version = 0
        self.problem = ""
        self.last: ConfigOutcome | None = None

    @property
    def running_version(self) -> int:
        return config_version_number(self.running().cloud_version)

    async def poll(self) -> ConfigOutcome:
        """One GetConfiguration round trip. Raises :class:`UplinkError` on transport errors."""
        running = self.running_version
        result = await self.caller.call(contract.GET_CONFIGURATION, running)
        if not isinstance(result, list | tuple) or len(result) != 2:
            raise ValueError(f"GetConfiguration answered {result!r}; expected (Version, text)")
        version, document = int(result[0]), str(result[1] or "")
        if version == 0:
            outcome = ConfigOutcome("none", 0)
        elif version == running or not document:
            outcome = ConfigOutcome("unchanged", running)
        elif version == self.refused_version:
            outcome = ConfigOutcome("refused", version, self.problem)
        else:
            outcome = await self._offer(version, document)
        if version == running and self.refused_version:
            self.refused_version, self.problem = 0, ""  # the operator went back to a good one
        self.last = outcome
        return outcome

    async def _offer(self, version: int, document: str) -> ConfigOutcome:
        def validate_and_save() -> Config:
            layer: dict[str, Any] = parse_cloud_layer(document)
            if config_version_number(str(layer.get("version"))) != version:
                message = (
                    f"the document says version {layer.get('version')!r}, the receiver "
                    f"announced {version}"
                )
                raise ConfigError([Problem("cloud layer", "version", message)], "cloud layer")
            return self.layers.offer(self.load_base(), layer)

        try:
            merged = await asyncio.to_thread(validate_and_save)
        except ConfigError as exc:
            self.refused_version = version
            self.problem = f"version {version} refused: {exc}"[:1024]
            _LOGGER.error(
                "cloud configuration version %d refused; still running version %d:\n%s",
                version,
                self.running_version,
                exc,
            )
            return ConfigOutcome("refused", version, self.problem)
        self.apply(merged)
        self.refused_version, self.problem = 0, ""
        _LOGGER.info(
            "cloud configuration version %d applied: %d meters",
            version,
            sum(1 for m in merged.meters if m.enabled),
        )
        return ConfigOutcome("applied", version)


__all__ = ["CloudConfigFollower", "ConfigOutcome"]

"""The cloud layer on disk: the last good one is kept, a bad one never replaces it.

The uplink fetches the operator's layer (``GetConfiguration``) and hands it to
:meth:`CloudLayerStore.offer`. It is validated against the local file *before* anything is
written; only a valid layer is saved (atomically: temporary file, fsync, rename, fsync of the
directory) and returned as the configuration to run. An invalid one raises
:class:`~logger.config.load.ConfigError` with every reason, so the uplink can report them
upstream, and the daemon keeps running the last good layer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from logger.config.load import ConfigError, apply_cloud_layer, parse_cloud_layer
from logger.config.model import Config
from logger.fileio import replace_file

_LOGGER = logging.getLogger(__name__)


class CloudLayerStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, base: Config) -> Config:
        """The file's configuration with the last good cloud layer, if any.

        A saved layer that no longer fits the local file (e.g. the installer removed a bus it
        uses) is not applied: the file's own meters run, and the problem is logged.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return base
        except OSError as exc:
            _LOGGER.error("cannot read the saved cloud layer %s: %s", self.path, exc)
            return base
        try:
            return apply_cloud_layer(base, parse_cloud_layer(data))
        except ConfigError as exc:
            _LOGGER.error(
                "saved cloud layer %s does not fit the local configuration; running "
                "the file's meters:\n%s",
                self.path,
                exc,
            )
            return base

    def saved(self) -> dict[str, Any] | None:
        try:
            return parse_cloud_layer(self.path.read_bytes())
        except (OSError, ConfigError):
            return None

    def offer(self, base: Config, layer: Mapping[str, Any]) -> Config:
        """Validate ``layer`` against ``base``; save it and return the merged configuration,
        or raise :class:`ConfigError` and leave the last good layer untouched."""
        merged = apply_cloud_layer(base, layer)
        current = self.saved()
        if current is not None and current == dict(layer):
            return merged
        self._write(json.dumps(layer, indent=2, sort_keys=True).encode() + b"\n")
        _LOGGER.info("cloud layer version %s saved to %s", merged.cloud_version, self.path)
        return merged

    def _write(self, data: bytes) -> None:
        """Save durably: a power cut must bring back the last good layer, not an empty file."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        replace_file(self.path, data, 0o600)

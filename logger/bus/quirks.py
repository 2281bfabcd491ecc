"""Per-meter (and per-bus) quirks as named options, never as branches on a manufacturer code.

Written in configuration as a table (``quirks = {pause_after_nke = 20, echo = true}``) or on the
command line as ``--quirk echo --quirk pause_after_nke=20``.

=================  ======  ========================================================================
name               type    effect
=================  ======  ========================================================================
echo               bool    the level converter echoes our request: wait for the echo before the
                           answer timeout starts (echo frames are always discarded)
pause_after_nke    float   seconds between SND_NKE and the first REQ_UD2 (old Kamstrup: 10-40 s)
no_reset           bool    do not send SND_NKE before reading (meters that restart on it)
max_telegrams      int     upper bound of a multi-telegram read-out (default 16)
retries            int     retries of a request that got no or a broken answer (default: bus's)
timeout            float   answer timeout in seconds (default: derived from the baud rate)
fallback_baudrate  int     the meter falls back to this rate after idling: if it does not answer
                           at the bus rate, read it at this one (and say so)
any_address        bool    accept an RSP_UD whose address field is not the meter's own
=================  ======  ========================================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from logger.bus.errors import QuirkError

BAUD_RATES = (300, 600, 1200, 2400, 4800, 9600, 19200, 38400)


@dataclass(frozen=True)
class Quirks:
    echo: bool = False
    pause_after_nke: float = 0.0
    no_reset: bool = False
    max_telegrams: int = 16
    retries: int | None = None
    timeout: float | None = None
    fallback_baudrate: int | None = None
    any_address: bool = False

    def __post_init__(self) -> None:
        if self.pause_after_nke < 0 or self.pause_after_nke > 120:
            raise QuirkError(f"pause_after_nke={self.pause_after_nke}: must be 0-120 seconds")
        if not 1 <= self.max_telegrams <= 255:
            raise QuirkError(f"max_telegrams={self.max_telegrams}: must be 1-255")
        if self.retries is not None and not 0 <= self.retries <= 10:
            raise QuirkError(f"retries={self.retries}: must be 0-10")
        if self.timeout is not None and not 0.01 <= self.timeout <= 10:
            raise QuirkError(f"timeout={self.timeout}: must be 0.01-10 seconds")
        if self.fallback_baudrate is not None and self.fallback_baudrate not in BAUD_RATES:
            raise QuirkError(f"fallback_baudrate={self.fallback_baudrate}: not one of {BAUD_RATES}")

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> Quirks:
        """From a configuration table; unknown names and wrong types are errors."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, value in options.items():
            if name not in known:
                raise QuirkError(f"unknown quirk {name!r} (known: {', '.join(sorted(known))})")
            values[name] = _coerce(name, str(known[name].type), value)
        return cls(**values)

    @classmethod
    def parse(cls, items: Iterable[str]) -> Quirks:
        """From ``name`` / ``name=value`` strings (command line); commas also separate."""
        options: dict[str, Any] = {}
        for item in items:
            for part in item.split(","):
                part = part.strip()
                if not part:
                    continue
                name, sep, value = part.partition("=")
                options[name.strip()] = value.strip() if sep else True
        return cls.from_mapping(options)

    def merged(self, other: Quirks) -> Quirks:
        """``other``'s non-default options over these (bus quirks, then meter quirks)."""
        default = Quirks()
        changes = {
            f.name: getattr(other, f.name)
            for f in fields(other)
            if getattr(other, f.name) != getattr(default, f.name)
        }
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        default = Quirks()
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        }


def _coerce(name: str, type_text: str, value: Any) -> Any:
    try:
        if type_text.startswith("bool"):
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if value is None and "None" in type_text:
            return None
        if isinstance(value, bool):
            raise ValueError(value)
        if type_text.startswith("int"):
            return int(value)
        if type_text.startswith("float"):
            return float(value)
    except (TypeError, ValueError):
        raise QuirkError(f"quirk {name}: {value!r} is not a valid {type_text}") from None
    return value

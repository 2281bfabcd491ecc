"""M-Bus codec (EN 13757-2 link layer, EN 13757-3 application layer), sans-I/O.

Standard library only and MicroPython-clean: this package (with ``logger/__init__.py``) can be
copied onto a MicroPython device alone. ``decode(data)`` returns plain JSON-ready values;
``logger.mbus.xml.telegram_xml(data)`` renders libmbus's XML for the same frame.
"""

from logger.mbus.decoder import decode  # noqa: F401
from logger.mbus.errors import (  # noqa: F401
    ChecksumError,
    DecodeError,
    FrameError,
    IncompleteFrame,
    MBusError,
    ProtocolError,
    TruncatedRecord,
    UnsupportedCI,
    UsageError,
)

"""mbus-ua-logger: the field device program (``mbus-logger``).

This module imports nothing: the codec in ``logger.mbus`` must be copyable onto a
MicroPython device together with this file alone.
"""

__version__ = "0.1.0"

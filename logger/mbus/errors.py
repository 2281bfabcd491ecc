"""The codec's exceptions: every decoding failure is one of these.

Each error names the byte offset (from the start of the frame or stream) where the problem was
found and what was expected there, so a technician can find the byte in a hex dump. Anything
other than an ``MBusError`` escaping the codec is a bug.

MicroPython-clean: plain classes, ``super().__init__`` only.
"""


class MBusError(Exception):
    """Base class of every error the codec raises."""

    def __init__(
        self, message: str, offset: "int | None" = None, expected: "str | None" = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.expected = expected

    def __str__(self) -> str:
        text = self.message
        if self.offset is not None:
            text = text + " at byte " + str(self.offset)
        if self.expected is not None:
            text = text + " (expected " + str(self.expected) + ")"
        return text


class FrameError(MBusError):
    """The link layer is broken: start/stop byte, length fields, checksum."""


class ChecksumError(FrameError):
    """The frame checksum does not match its contents."""


class IncompleteFrame(FrameError):
    """The frame ends before its length fields say it should (truncated)."""


class DecodeError(MBusError):
    """The application layer is malformed: header, records, data."""


class TruncatedRecord(DecodeError):
    """A record's data runs past the end of the telegram."""


class UnsupportedCI(DecodeError):
    """The CI field names an application layer this codec does not decode."""


class ProtocolError(MBusError):
    """A peer broke the request/response rules (master and slave state machines)."""


class UsageError(MBusError):
    """The caller asked the codec for something invalid (a local mistake, not the peer's)."""

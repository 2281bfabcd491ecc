"""The M-Bus slave (a meter), sans-I/O: the same link layer as the master, in the other role.

A :class:`Slave` takes each request frame seen on the bus (:meth:`Slave.handle`) and returns the
bytes it answers with, or None when it stays silent. Its behaviour is one table,
:data:`TRANSITIONS`: ``(state, event) -> (state, action)`` where the state says whether it is
selected by secondary address and the event classifies the request by what it is and to whom it
is addressed. Side effects that are not about selection (FCB bookkeeping, which telegram comes
next, address and baud-rate changes) happen in :meth:`Slave.handle` after the lookup.

Multi-telegram meters follow the FCB rules of EN 13757-2: after SND_NKE or a select the first
REQ_UD2 gets the first telegram; a REQ_UD2 with the FCB toggled gets the next one (after the
last, the first again); the same FCB again gets a repeat of the previous telegram, which is how a
master recovers a lost answer.

The meter simulator (``hil/``) runs this class on a virtual serial line; tests connect it back
to back with :class:`logger.mbus.master.MasterLink`. MicroPython-clean.
"""

from logger.mbus import frames
from logger.mbus.errors import FrameError, UsageError
from logger.mbus.master import more_records_follow

DESELECTED = 0
SELECTED = 1
STATE_NAMES = ("DESELECTED", "SELECTED")

# Events: what a request is and whether it is addressed to this slave.
E_NKE = 0  # SND_NKE to our primary address (or 254)
E_NKE_NET = 1  # SND_NKE to 253 (the selected slave)
E_NKE_ALL = 2  # SND_NKE broadcast (255)
E_SELECT_MATCH = 3  # secondary select whose mask matches us
E_SELECT_OTHER = 4  # secondary select for someone else
E_REQ = 5  # REQ_UD2 to our primary address (or 254)
E_REQ_NET = 6  # REQ_UD2 to 253
E_UD = 7  # SND_UD (or REQ_UD1) to our primary address (or 254)
E_UD_NET = 8  # SND_UD (or REQ_UD1) to 253
E_UD_ALL = 9  # SND_UD broadcast (255)
E_FOREIGN = 10  # for another slave, or not a request at all
EVENT_NAMES = (
    "NKE",
    "NKE_NET",
    "NKE_ALL",
    "SELECT_MATCH",
    "SELECT_OTHER",
    "REQ",
    "REQ_NET",
    "UD",
    "UD_NET",
    "UD_ALL",
    "FOREIGN",
)

SILENT = 0
REPLY_ACK = 1
REPLY_RSP = 2

D = DESELECTED
S = SELECTED
# Total: every (state, event) pair has an entry (a hypothesis test checks it).
TRANSITIONS = {
    (D, E_NKE): (D, REPLY_ACK),
    (S, E_NKE): (S, REPLY_ACK),
    (D, E_NKE_NET): (D, SILENT),
    (S, E_NKE_NET): (D, REPLY_ACK),  # SND_NKE to 253 ends the selection
    (D, E_NKE_ALL): (D, SILENT),
    (S, E_NKE_ALL): (D, SILENT),
    (D, E_SELECT_MATCH): (S, REPLY_ACK),
    (S, E_SELECT_MATCH): (S, REPLY_ACK),
    (D, E_SELECT_OTHER): (D, SILENT),
    (S, E_SELECT_OTHER): (D, SILENT),  # selecting another address deselects us
    (D, E_REQ): (D, REPLY_RSP),
    (S, E_REQ): (S, REPLY_RSP),
    (D, E_REQ_NET): (D, SILENT),
    (S, E_REQ_NET): (S, REPLY_RSP),
    (D, E_UD): (D, REPLY_ACK),
    (S, E_UD): (S, REPLY_ACK),
    (D, E_UD_NET): (D, SILENT),
    (S, E_UD_NET): (S, REPLY_ACK),
    (D, E_UD_ALL): (D, SILENT),
    (S, E_UD_ALL): (S, SILENT),
    (D, E_FOREIGN): (D, SILENT),
    (S, E_FOREIGN): (S, SILENT),
}
del D, S


def transition(state: int, event: int) -> tuple[int, int]:
    return TRANSITIONS[(state, event)]


class Slave:
    """One meter: primary address, secondary address and the telegrams it serves.

    ``telegrams`` is a list of ``(ci, data)`` pairs (the user data after the CI byte) served in
    turn; a caller may replace it between requests (synthetic meters whose values change).
    ``secondary`` defaults to the identification block of the first telegram's long header.
    ``baudrate`` changes when the master switches it (CI 0xB8-0xBF) after the E5 went out;
    ``pending_baudrate`` holds the new rate until the caller has sent that E5.
    """

    __slots__ = (
        "_last_fcb",
        "_sent",
        "address",
        "baudrate",
        "index",
        "last_event",
        "pending_baudrate",
        "secondary",
        "state",
        "telegrams",
    )

    def __init__(
        self,
        address: int,
        telegrams: "list[tuple[int, bytes]]",
        secondary: str | None = None,
        baudrate: int = 2400,
    ) -> None:
        frames._check_address(address, allow_special=False)
        if not telegrams:
            raise UsageError("a slave needs at least one telegram")
        self.address = address
        self.telegrams = list(telegrams)
        if secondary is None:
            ci, data = self.telegrams[0]
            if ci not in (0x72, 0x76) or len(data) < 8:
                raise UsageError("no long header in the first telegram: give a secondary address")
            secondary = frames.secondary_from_bytes(data[:8])
        frames.secondary_mask_bytes(secondary)  # validates
        self.secondary = secondary.upper()
        self.state = DESELECTED
        self.baudrate = baudrate
        self.pending_baudrate: int | None = None
        self.index = 0
        self.last_event = E_FOREIGN
        self._last_fcb = False
        self._sent = False

    @classmethod
    def from_frames(
        cls,
        address: int,
        frame_bytes: "list[bytes]",
        secondary: str | None = None,
        baudrate: int = 2400,
    ) -> "Slave":
        """A slave serving these RSP_UD frames (as read from real meters) at ``address``."""
        telegrams = []
        for raw in frame_bytes:
            frame = frames.parse_frame(bytes(raw))
            if frame.kind != frames.LONG:
                raise UsageError("a telegram must be a long frame, got %r" % (frame,))
            telegrams.append((int(frame.ci or 0), bytes(frame.data)))
        return cls(address, telegrams, secondary, baudrate)

    def classify(self, frame: frames.Frame) -> int:
        """The event a request frame is for this slave."""
        a = -1 if frame.a is None else frame.a
        c = 0 if frame.c is None else frame.c
        if frame.kind == frames.SHORT:
            function = c & 0x4F
            if function == frames.C_SND_NKE:
                return self._by_address(a, E_NKE, E_NKE_NET, E_NKE_ALL)
            if function == 0x4B:
                return self._by_address(a, E_REQ, E_REQ_NET, E_FOREIGN)
            if function == 0x4A:
                return self._by_address(a, E_UD, E_UD_NET, E_FOREIGN)
            return E_FOREIGN
        if frame.kind in (frames.LONG, frames.CONTROL) and (c & 0x4F) == 0x43:
            if frame.ci == frames.CI_SELECT and a == frames.ADDR_SELECTED:
                if len(frame.data) >= 8:
                    mask = frames.secondary_from_bytes(frame.data[:8])
                    if frames.mask_matches(mask, self.secondary):
                        return E_SELECT_MATCH
                return E_SELECT_OTHER
            return self._by_address(a, E_UD, E_UD_NET, E_UD_ALL)
        return E_FOREIGN

    def _by_address(self, a: int, mine: int, net: int, broadcast: int) -> int:
        if a == self.address or a == frames.ADDR_TEST:
            return mine
        if a == frames.ADDR_SELECTED:
            return net
        if a == frames.ADDR_BROADCAST:
            return broadcast
        return E_FOREIGN

    def handle(self, frame: frames.Frame) -> bytes | None:
        """Process one request frame; return the answer bytes or None (silence)."""
        event = self.classify(frame)
        self.last_event = event
        self.state, action = transition(self.state, event)
        if event in (E_NKE, E_NKE_NET, E_NKE_ALL, E_SELECT_MATCH):
            self._reset_fcb()
        if action == SILENT:
            return None
        if action == REPLY_RSP:
            return self._respond(0 if frame.c is None else frame.c)
        if frame.kind != frames.SHORT:
            self._apply(frame)
        return frames.ack()

    def after_ack_sent(self) -> None:
        """The E5 is on the wire: now a pending baud-rate change takes effect."""
        if self.pending_baudrate is not None:
            self.baudrate = self.pending_baudrate
            self.pending_baudrate = None

    def _reset_fcb(self) -> None:
        self._sent = False
        self._last_fcb = False
        self.index = 0

    def _respond(self, c: int) -> bytes:
        fcv = bool(c & frames.C_FCV)
        fcb = bool(c & frames.C_FCB)
        if self._sent and fcv and fcb != self._last_fcb:
            ci, data = self.telegrams[self.index % len(self.telegrams)]
            if more_records_follow(ci, data) and self.index + 1 < len(self.telegrams):
                self.index += 1
            else:
                self.index = 0
        # else: first request after a reset, a repeat (same FCB) or FCV=0: same telegram.
        if fcv:
            self._last_fcb = fcb
        self._sent = True
        ci, data = self.telegrams[self.index % len(self.telegrams)]
        return frames.rsp_ud(self.address, ci, data)

    def _apply(self, frame: frames.Frame) -> None:
        ci = 0 if frame.ci is None else frame.ci
        if ci == frames.CI_APPLICATION_RESET:
            self._reset_fcb()
        elif ci == frames.CI_DATA_SEND and bytes(frame.data[:2]) == b"\x01\x7a":
            if len(frame.data) >= 3 and frame.data[2] <= frames.ADDR_MAX_PRIMARY:
                self.address = frame.data[2]
        else:
            rate = frames.baudrate_from_ci(ci)
            if rate is not None:
                self.pending_baudrate = rate


def superpose(answers: "list[bytes]") -> bytes | None:
    """What the master receives when several slaves answer at once.

    A slave sends a 0 bit by drawing extra current, so when two transmit together a 0 from
    either wins: the bytes combine with AND. Identical answers (two E5) are indistinguishable
    from one. Different frames never line up bit for bit on a real bus (each meter has its own
    response delay), so they always arrive broken: should the AND happen to form a valid frame
    (two headers differing in one nibble, B and F), one byte is corrupted as the skew would.
    """
    if not answers:
        return None
    out = bytearray(answers[0])
    differ = False
    for other in answers[1:]:
        if bytes(other) != bytes(answers[0]):
            differ = True
        if len(other) > len(out):
            out.extend(other[len(out) :])
        for i in range(min(len(out), len(other))):
            out[i] &= other[i]
    if differ:
        try:
            frames.parse_frame(bytes(out))
        except FrameError:
            return bytes(out)
        out[len(out) // 2] ^= 0xFF
    return bytes(out)


class Segment:
    """Several slaves on one bus segment: every request reaches all of them.

    :meth:`receive_data` takes the bytes the master sent and returns the answers the bus
    carries back, one per request (``None`` for silence), collisions included.
    """

    __slots__ = ("_scanner", "slaves")

    def __init__(self, slaves: "list[Slave]") -> None:
        self.slaves = list(slaves)
        self._scanner = frames.FrameScanner(accept_ack=False)

    def handle(self, frame: frames.Frame) -> bytes | None:
        answers = []
        for slave in self.slaves:
            answer = slave.handle(frame)
            if answer is not None:
                answers.append(answer)
        for slave in self.slaves:
            slave.after_ack_sent()
        return superpose(answers)

    def receive_data(self, data: bytes) -> "list[bytes | None]":
        self._scanner.feed(data)
        out: list[bytes | None] = []
        while True:
            frame = self._scanner.next_frame()
            if frame is None:
                return out
            out.append(self.handle(frame))

"""Bus scans as master procedures (sans-I/O): primary 0-250 and the secondary wildcard scan.

Secondary scan
--------------
A wildcard select (``F`` nibbles) makes every matching meter answer. One clean E5 followed by a
valid RSP_UD to address 253 means exactly one meter matched; garbage (two meters answering at
once) or an E5 followed by a garbled RSP_UD means several did — a collision — and the mask is
refined by fixing one more nibble to each possible digit. Two E5 sent at the same time look like
one valid E5 on the wire, which is why a probe always reads the RSP_UD before calling it single.

What is different from libmbus (which tries ``0-9`` left to right in every position):

* Positions are refined least significant identification digit first (digit 8, then 7, ...;
  :data:`POSITION_ORDER`). Meters installed together have consecutive serial numbers, i.e.
  shared *prefixes*: refining the last digit first separates them in one step instead of
  walking the shared prefix. A mask with two or more known meters under it is split without
  being probed (it can only collide).
* Manufacturer, version and medium nibbles are hex: ``0-E`` are tried (``0-7`` for the first
  manufacturer nibble, 15-bit code). ``F`` cannot be selected as a digit (it is the wildcard),
  so after the digits of a hex position have been tried the scan also refines the *other*
  positions with that nibble left at ``F``; a meter with ``F`` there is found that way. This
  "F branch" is only reached when several meters share all eight identification digits.
* Identification digits are BCD by the standard: ``0-9``. A meter with a hex digit in its
  identification number is still found unless it collides with another meter on that digit;
  ``hex_ids=True`` tries ``0-E`` there too (and the F rule), at 5 more selects per level.

``selects`` counts the select requests sent: the figure the benchmark compares with libmbus.
"""

from logger.mbus import frames
from logger.mbus.master import (
    ACK,
    EXPECT_ACK,
    EXPECT_RSP,
    NO_ANSWER,
    RSP,
    Answer,
    Ping,
    Procedure,
    Request,
    secondary_of,
)

# Refinement order of the 16 mask positions (IIIIIIII MMMM VV DD): the low identification
# digits first (consecutive serial numbers split there), then the version (meters that share
# an identification number most often differ in it), the high identification digits, the
# manufacturer and last the medium.
POSITION_ORDER = (7, 6, 5, 4, 13, 12, 3, 2, 1, 0, 11, 10, 9, 8, 15, 14)
_BCD = "0123456789"
_HEX = "0123456789ABCDE"


def position_digits(position: int, hex_ids: bool = False) -> tuple[str, bool]:
    """The digits a scan tries at a mask position, and whether ``F`` is a possible value.

    ``hex_ids`` also tries A-E in the identification number (meters that break the BCD rule).
    """
    if position < 8:
        return (_HEX, True) if hex_ids else (_BCD, False)
    if position == 8:
        return "01234567", False  # first nibble of a 15-bit manufacturer code
    return _HEX, True


def _set(mask: str, position: int, digit: str) -> str:
    return mask[:position] + digit + mask[position + 1 :]


class PrimaryScan(Procedure):
    """Ping every address in ``addresses``; ``found`` lists ``(address, frame, error)``."""

    __slots__ = ("_i", "_ping", "addresses", "found", "retries")

    def __init__(self, addresses: "list[int] | None" = None, retries: int = 1) -> None:
        Procedure.__init__(self)
        self.addresses = list(
            range(0, frames.ADDR_MAX_PRIMARY + 1) if addresses is None else addresses
        )
        self.retries = retries
        self.found: list[tuple[int, frames.Frame | None, str | None]] = []
        self._i = 0
        self._ping: Ping | None = None

    def _next(self) -> Request | None:
        while True:
            if self._ping is None:
                if self._i >= len(self.addresses):
                    return None
                self._ping = Ping(self.addresses[self._i], self.retries)
                self._i += 1
            ping = self._ping
            request = ping.next_request()
            if request is not None:
                return request
            if ping.found:
                self.found.append((ping.address, ping.frame, ping.error))
            self._ping = None

    def _answer(self, request: Request, answer: Answer) -> None:
        assert self._ping is not None
        self._ping.on_answer(answer)


# Probe outcomes.
NOTHING = 0
SINGLE = 1
COLLISION = 2

# Work items of the scan's stack.
_PROBE = 0  # select a mask (and read the single answer)
_REFINE = 1  # split a colliding mask on its next free position
_CHECK_F = 2  # after the digits of a hex position: is a meter with F there hiding?
_TWIN = 3  # probe the known meter's address with F at the position (see _check_f)

ALL_FIXED = 0xFFFF


class SecondaryScan(Procedure):
    """Find every meter matching ``mask`` (default: all) by wildcard selects.

    ``found`` maps each secondary address to its RSP_UD frame, or to None for a meter that
    was *deduced* (it has ``F`` in a hex nibble and shares every other digit with one other
    meter, so no select can address it alone; see :meth:`_check_f`). ``duplicates`` lists
    masks where meters still collided with every position fixed (identical secondary
    addresses); ``probes`` records ``(mask, outcome)`` in order, for tests and diagnostics.

    Limits: a meter with ``F`` in a hex nibble that shares all other fifteen digits with two or
    more other meters cannot be told apart from them by any select (its collision is explained
    by theirs). The scan stops at the same rule earlier: when it refines position p of a mask
    under which two or more meters are already known, a meter with ``F`` at p is only found if
    it differs from them in a position refined before p. Searching that case exhaustively
    costs about fifteen selects per remaining position and level; it is left out on purpose.
    """

    __slots__ = (
        "_fixed",
        "_kind",
        "_mask",
        "_parent",
        "_stack",
        "_step",
        "_tries",
        "duplicates",
        "found",
        "hex_ids",
        "mask",
        "probes",
        "retries",
        "selects",
    )

    def __init__(
        self, mask: str = "FFFFFFFFFFFFFFFF", retries: int = 1, hex_ids: bool = False
    ) -> None:
        Procedure.__init__(self)
        frames.secondary_mask_bytes(mask)  # validates
        mask = mask.upper()
        self.mask = mask
        self.found: dict[str, frames.Frame | None] = {}
        self.duplicates: list[str] = []
        self.probes: list[tuple[str, int]] = []
        self.selects = 0
        self.retries = retries
        self.hex_ids = hex_ids
        fixed = 0
        for i in range(16):
            if mask[i] != "F":
                fixed |= 1 << i
        self._stack: list[tuple[int, str, int, str]] = [(_PROBE, mask, fixed, "")]
        self._mask: str | None = None
        self._kind = _PROBE
        self._fixed = 0
        self._parent = ""
        self._step = 0
        self._tries = 0

    def known(self, mask: str) -> list[str]:
        """Meters found so far that ``mask`` selects."""
        return [a for a in self.found if frames.mask_matches(mask, a)]

    def _next(self) -> Request | None:
        if self._mask is not None:
            return self._request()
        while self._stack:
            kind, mask, fixed, parent = self._stack.pop()
            if kind == _REFINE:
                self._refine(mask, fixed)
                continue
            if kind == _CHECK_F:
                self._check_f(mask, fixed, int(parent))
                continue
            if kind == _PROBE and len(self.known(mask)) >= 2:
                # Two known meters answer this mask: a select can only collide. Split it.
                self.probes.append((mask, COLLISION))
                self._refine(mask, fixed)
                continue
            self._kind = kind
            self._mask = mask
            self._fixed = fixed
            self._parent = parent
            self._step = 0
            self._tries = 0
            return self._request()
        return None

    def _request(self) -> Request:
        mask = str(self._mask)
        if self._step == 0:
            self.selects += 1
            return Request(frames.select_secondary(mask), EXPECT_ACK, "select " + mask)
        return Request(
            frames.req_ud2(frames.ADDR_SELECTED, fcb=True), EXPECT_RSP, "REQ_UD2 " + mask
        )

    def _answer(self, request: Request, answer: Answer) -> None:
        if self._step == 0:
            if answer.kind == NO_ANSWER:
                self._outcome(NOTHING, None)
            elif answer.kind == ACK:
                self._step = 1
            else:
                self._outcome(COLLISION, None)
            return
        if answer.kind == RSP:
            self._outcome(SINGLE, answer.frame)
        elif answer.kind == NO_ANSWER and self._tries < self.retries:
            self._tries += 1  # the selected meter's answer may have been lost: ask again
        else:
            self._outcome(COLLISION, None)

    def _outcome(self, outcome: int, frame: "frames.Frame | None") -> None:
        mask, fixed, kind = str(self._mask), self._fixed, self._kind
        self._mask = None
        self.probes.append((mask, outcome))
        if outcome == SINGLE and frame is not None:
            address = secondary_of(frame)
            if address is None:
                # Answers without a long header: name it by the mask it answered.
                address = mask
            self.found[address] = frame
        if kind == _TWIN:
            if outcome == COLLISION:
                # The known meter and one with F there, identical elsewhere.
                self.found.setdefault(mask, None)
            else:
                self._stack.append((_REFINE, self._parent, fixed, ""))
            return
        if outcome == COLLISION:
            self._refine(mask, fixed)

    def _refine(self, mask: str, fixed: int) -> None:
        """Queue the probes that split a colliding ``mask`` on its next free position."""
        for position in POSITION_ORDER:
            if not fixed & (1 << position):
                break
        else:
            if not self.known(mask):
                self.duplicates.append(mask)
            return
        digits, f_possible = position_digits(position, self.hex_ids)
        now_fixed = fixed | (1 << position)
        if f_possible:
            # Popped after the digits' subtrees are done.
            self._stack.append((_CHECK_F, mask, fixed, str(position)))
        for digit in reversed(digits):
            self._stack.append((_PROBE, _set(mask, position, digit), now_fixed, ""))

    def _check_f(self, mask: str, fixed: int, position: int) -> None:
        """``mask`` collided and every digit 0-E at ``position`` has been tried.

        With two or more known meters (or identical ones) under ``mask`` the collision is
        explained: stop. With
        none, every meter under it has F at ``position``: keep refining the other positions.
        With exactly one, something else answered too and has F here: first try the known
        meter's own address with F at ``position`` (one select finds a "twin" that differs only
        there, which no select can address alone, so it is recorded as deduced); otherwise
        refine the other positions.
        """
        known = self.known(mask)
        now_fixed = fixed | (1 << position)
        same = [d for d in self.duplicates if frames.mask_matches(mask, d)]
        if len(known) + 2 * len(same) >= 2:
            return
        if now_fixed == ALL_FIXED:
            if known:
                self.found.setdefault(mask, None)
            else:
                self.duplicates.append(mask)
            return
        if not known:
            self._stack.append((_REFINE, mask, now_fixed, ""))
            return
        twin = _set(known[0], position, "F")
        self._stack.append((_TWIN, twin, now_fixed, mask))


__all__ = [
    "ACK",
    "COLLISION",
    "NOTHING",
    "POSITION_ORDER",
    "SINGLE",
    "PrimaryScan",
    "SecondaryScan",
    "position_digits",
]

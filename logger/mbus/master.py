"""The M-Bus master, sans-I/O: one link state machine and the procedures built on it.

Two layers, both free of I/O and of any clock (h11's shape):

* :class:`MasterLink` is the link layer's request/response rule as a table of
  ``(state, event) -> state`` (:data:`TRANSITIONS`). A request is sent only when the link is
  idle (M-Bus is half duplex: never pipeline), received bytes are turned into one
  :class:`Answer` (ACK, RSP_UD, or INVALID with the reason), and "nothing arrived in time" comes
  in from the caller as :meth:`MasterLink.timeout`. Echoes of our own request (level converters
  that echo) are dropped here, because a slave never sends a frame identical to a request.
* Procedures (:class:`ReadOut`, :class:`Ping`, :class:`Command`) say which request comes next
  from the answers so far: link reset, secondary select, REQ_UD2 with FCB toggling while the
  meter announces more telegrams (DIF 0x1F), retries with the *same* FCB so that a meter whose
  answer was lost repeats it. A transport runs any procedure with the same few lines::

      link = MasterLink()
      while True:
          request = procedure.next_request()
          if request is None:
              break
          write(link.send(request))
          answer = NEED_DATA
          while answer is NEED_DATA:
              chunk = read_until_deadline()
              answer = link.receive_data(chunk) if chunk else link.timeout()
          procedure.on_answer(answer)

MicroPython-clean: integer constants, plain classes with ``__slots__``, no typing imports.
"""

from logger.mbus import frames
from logger.mbus.errors import FrameError, ProtocolError, UsageError

# -- link states and events ----------------------------------------------------------------

IDLE = 0  # nothing outstanding: the master may send
WAIT_ACK = 1  # sent a request a slave confirms with E5 (SND_NKE, SND_UD)
WAIT_RSP = 2  # sent REQ_UD2/REQ_UD1: a slave answers with RSP_UD
STATE_NAMES = ("IDLE", "WAIT_ACK", "WAIT_RSP")

SEND_CONFIRM = 0  # request answered by a single character E5
SEND_REQUEST = 1  # request answered by RSP_UD
SEND_NOREPLY = 2  # broadcast (address 255): nobody answers
RECV_ACK = 3
RECV_RSP = 4
RECV_INVALID = 5  # bytes that are no acceptable answer: noise, collision, bad checksum
TIMEOUT = 6  # the caller's deadline passed with no complete answer
EVENT_NAMES = (
    "SEND_CONFIRM",
    "SEND_REQUEST",
    "SEND_NOREPLY",
    "RECV_ACK",
    "RECV_RSP",
    "RECV_INVALID",
    "TIMEOUT",
)

# Every legal pair. Anything else is a ProtocolError: a local one for a send while busy, a
# remote one for bytes nobody asked for.
TRANSITIONS = {
    (IDLE, SEND_CONFIRM): WAIT_ACK,
    (IDLE, SEND_REQUEST): WAIT_RSP,
    (IDLE, SEND_NOREPLY): IDLE,
    (WAIT_ACK, RECV_ACK): IDLE,
    (WAIT_ACK, RECV_INVALID): IDLE,
    (WAIT_ACK, TIMEOUT): IDLE,
    (WAIT_RSP, RECV_RSP): IDLE,
    (WAIT_RSP, RECV_INVALID): IDLE,
    (WAIT_RSP, TIMEOUT): IDLE,
}

# What a request expects back (Request.expect).
EXPECT_ACK = SEND_CONFIRM
EXPECT_RSP = SEND_REQUEST
EXPECT_NONE = SEND_NOREPLY

# Answer kinds.
ACK = RECV_ACK
RSP = RECV_RSP
INVALID = RECV_INVALID
NO_ANSWER = TIMEOUT
ANSWER_NAMES = {ACK: "ack", RSP: "rsp_ud", INVALID: "invalid", NO_ANSWER: "no answer"}

NEED_DATA = None


def transition(state: int, event: int) -> int:
    """The table lookup; raises :class:`ProtocolError` for a pair the protocol forbids."""
    new = TRANSITIONS.get((state, event))
    if new is None:
        raise ProtocolError(
            "%s not allowed in state %s" % (EVENT_NAMES[event], STATE_NAMES[state]),
            None,
            "one of " + ", ".join(EVENT_NAMES[e] for (s, e) in sorted(TRANSITIONS) if s == state),
        )
    return new


class Request:
    """One request of a procedure: the bytes, what answer they expect, and a pause before.

    ``pause`` (seconds) is a delay the procedure asks for before sending, e.g. a meter's quirk
    "pause after SND_NKE"; the transport sleeps, the core never does. ``label`` names the
    request in error messages ("REQ_UD2 FCB=1").
    """

    __slots__ = ("data", "expect", "label", "pause")

    def __init__(self, data: bytes, expect: int, label: str, pause: float = 0.0) -> None:
        self.data = data
        self.expect = expect
        self.label = label
        self.pause = pause

    def __repr__(self) -> str:
        return "Request(%s)" % self.label


class Answer:
    """What came back for one request: ``kind`` (ACK, RSP, INVALID, NO_ANSWER), the frame,
    the raw bytes that formed it, a human reason for INVALID, and how many noise bytes were
    skipped before a valid frame."""

    __slots__ = ("frame", "kind", "noise", "raw", "reason")

    def __init__(
        self,
        kind: int,
        frame: "frames.Frame | None" = None,
        raw: bytes = b"",
        reason: str = "",
        noise: int = 0,
    ) -> None:
        self.kind = kind
        self.frame = frame
        self.raw = raw
        self.reason = reason
        self.noise = noise

    def __repr__(self) -> str:
        text = "Answer(" + ANSWER_NAMES[self.kind]
        if self.reason:
            text += ": " + self.reason
        return text + ")"


def _is_rsp_ud(frame: frames.Frame) -> bool:
    c = frame.c
    return frame.kind == frames.LONG and c is not None and (c & 0x4F) == frames.C_RSP_UD


class MasterLink:
    """The link-layer state machine of the master (see :data:`TRANSITIONS`)."""

    __slots__ = ("_buf", "_echo_done", "_expect", "_request", "_scanner", "state")

    def __init__(self) -> None:
        self.state = IDLE
        self._request = b""
        self._expect = EXPECT_NONE
        self._buf = bytearray()
        self._scanner = frames.FrameScanner()
        self._echo_done = False

    def send(self, request: Request) -> bytes:
        """Bytes to put on the wire for ``request``; the link then waits for its answer."""
        self.state = transition(self.state, request.expect)
        self._request = bytes(request.data)
        self._expect = request.expect
        self._buf = bytearray()
        self._scanner = frames.FrameScanner()
        self._echo_done = False
        return self._request

    def receive_data(self, data: bytes) -> "Answer | None":
        """Feed received bytes: an :class:`Answer` once one is complete, else NEED_DATA."""
        if self.state == IDLE:
            if data:
                raise ProtocolError("%d bytes received with no request outstanding" % len(data))
            return NEED_DATA
        self._buf.extend(data)
        self._scanner.feed(data)
        while True:
            frame = self._scanner.next_frame()
            if frame is None:
                break
            if not self._echo_done and frame.kind != frames.ACK:
                if frame.encode() == self._request:
                    # The level converter echoed our request: not an answer.
                    self._echo_done = True
                    continue
            return self._finish(frame)
        if self._expect == EXPECT_ACK and self._buf and self._scanner.skipped:
            # A confirmation is one byte; anything else where E5 belonged is a collision.
            return self._invalid("expected E5, got %s" % _hex(self._buf[:16]))
        reason = self._complete_but_broken()
        if reason:
            return self._invalid(reason)
        return NEED_DATA

    def timeout(self) -> Answer:
        """The caller's deadline passed: the answer is missing or incomplete."""
        if self.state == IDLE:
            raise ProtocolError("timeout with no request outstanding")
        data = self._unanswered_bytes()
        if not data:
            self.state = transition(self.state, TIMEOUT)
            return Answer(NO_ANSWER)
        return self._invalid(_diagnose(data))

    # -- helpers ---------------------------------------------------------------------------

    def _finish(self, frame: frames.Frame) -> Answer:
        noise = self._scanner.skipped
        if self._expect == EXPECT_ACK:
            if frame.kind == frames.ACK:
                if noise:
                    return self._invalid("E5 after %d bytes of noise (collision)" % noise)
                self.state = transition(self.state, RECV_ACK)
                return Answer(ACK, frame, b"\xe5")
            return self._invalid("expected E5, got a %s frame" % frames.KIND_NAMES[frame.kind])
        if _is_rsp_ud(frame):
            self.state = transition(self.state, RECV_RSP)
            return Answer(RSP, frame, frame.encode(), "", noise)
        return self._invalid(
            "expected RSP_UD, got %s"
            % (
                frames.KIND_NAMES[frame.kind]
                if frame.c is None
                else "%s C=%02X" % (frames.KIND_NAMES[frame.kind], frame.c)
            )
        )

    def _invalid(self, reason: str) -> Answer:
        self.state = transition(self.state, RECV_INVALID)
        return Answer(INVALID, None, bytes(self._buf), reason)

    def _unanswered_bytes(self) -> bytes:
        data = bytes(self._buf)
        i = data.find(self._request)
        if i < 0 or (i and not self._echo_done):
            # Only a leading echo (or one already recognised as a whole frame) is ours.
            return data
        return data[:i] + data[i + len(self._request) :]

    def _complete_but_broken(self) -> str:
        """A long frame whose length fields say it is complete but that failed to parse
        (checksum, stop byte): report it now instead of waiting for the deadline."""
        data = self._unanswered_bytes()
        i = data.find(b"\x68")
        if i < 0 or len(data) < i + 4:
            return ""
        length = data[i + 1]
        if data[i + 2] != length or data[i + 3] != 0x68 or len(data) < i + length + 6:
            return ""
        return _diagnose(data[i:])


def _hex(data: bytes | bytearray) -> str:
    return " ".join("%02X" % b for b in data)


def _diagnose(data: bytes) -> str:
    """One line saying what is wrong with bytes that did not form an answer."""
    start = 0
    while start < len(data) and data[start] not in (0x68, 0x10, 0xE5):
        start += 1
    if start == len(data):
        return "garbage (%d bytes: %s)" % (len(data), _hex(data[:16]))
    prefix = " after %d bytes of noise" % start if start else ""
    try:
        frames.parse_frame(data[start:], strict_end=False)
    except FrameError as exc:
        return str(exc) + prefix
    return "unexpected bytes%s: %s" % (prefix, _hex(data[:16]))


# -- "more records follow" -----------------------------------------------------------------

_FIXED_LEN = (0, 1, 2, 3, 4, 4, 6, 8, 0, 1, 2, 3, 4, -1, 6, -2)
_HEADER_LEN = {0x72: 12, 0x76: 12, 0x7A: 4, 0x78: 0, 0x79: 0, 0x7B: 4, 0x7C: 12, 0x7D: 12}


def _lvar_len(lv: int, offset: int) -> int:
    if lv <= 0xBF:
        return lv
    if lv <= 0xCF:
        return lv - 0xC0
    if lv <= 0xDF:
        return lv - 0xD0
    if lv <= 0xEF:
        return lv - 0xE0
    if lv <= 0xF4:
        return 4 * (lv - 0xEC)
    if lv == 0xF5:
        return 48
    if lv == 0xF6:
        return 64
    raise FrameError("reserved LVAR %02X" % lv, offset, "00-F6")


def more_records_follow(ci: int | None, data: bytes) -> bool:
    """Does this RSP_UD user data end with DIF 0x1F (the meter has another telegram)?

    Walks the record structure (DIF/DIFE, VIF/VIFE, plain-text VIF, LVAR) without decoding
    values, so the master needs nothing from the application-layer decoder. A telegram whose
    records cannot be walked answers False: the read-out stops instead of looping.
    """
    if ci is None:
        return False
    i = _HEADER_LEN.get(ci)
    if i is None:
        return False
    n = len(data)
    try:
        while i < n:
            dif = data[i]
            i += 1
            if dif == 0x2F:  # idle filler
                continue
            if dif & 0x0F == 0x0F:
                # 0x0F/0x1F: manufacturer data to the end; 0x1F adds "more follows".
                return dif == 0x1F
            b = dif
            count = 0
            while b & 0x80:
                b = data[i]
                i += 1
                count += 1
                if count > 10:
                    return False
            vif = data[i]
            i += 1
            if vif & 0x7F == 0x7C:
                i += 1 + data[i]
            b = vif
            count = 0
            while b & 0x80:
                b = data[i]
                i += 1
                count += 1
                if count > 11:
                    return False
            size = _FIXED_LEN[dif & 0x0F]
            if size == -1:
                size = _lvar_len(data[i], i)
                i += 1
            i += size
    except (IndexError, FrameError):
        return False
    return False


def secondary_of(frame: "frames.Frame | None") -> str | None:
    """The 16-digit secondary address in an RSP_UD with a long header, or None."""
    if frame is None or frame.ci not in (0x72, 0x76) or len(frame.data) < 8:
        return None
    return frames.secondary_from_bytes(frame.data[:8])


# -- procedures ----------------------------------------------------------------------------


class Procedure:
    """Base of the master's procedures: ``next_request()`` / ``on_answer()`` until done.

    ``error`` is None on success or one line naming the request that failed and why;
    ``exchanges`` counts request/answer pairs (for the efficiency figures).
    """

    __slots__ = ("_pending", "done", "error", "exchanges")

    def __init__(self) -> None:
        self.error: str | None = None
        self.done = False
        self.exchanges = 0
        self._pending: Request | None = None

    def next_request(self) -> Request | None:
        if self.done:
            return None
        if self._pending is None:
            self._pending = self._next()
            if self._pending is None:
                self.done = True
        return self._pending

    def on_answer(self, answer: Answer) -> None:
        if self._pending is None:
            raise UsageError("on_answer() without a request from next_request()")
        request = self._pending
        self._pending = None
        self.exchanges += 1
        self._answer(request, answer)

    def fail(self, message: str) -> None:
        self.error = message
        self.done = True

    def _next(self) -> Request | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _answer(self, request: Request, answer: Answer) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _what(answer: Answer) -> str:
    if answer.kind == NO_ANSWER:
        return "no answer"
    return answer.reason or ANSWER_NAMES[answer.kind]


class ReadOut(Procedure):
    """Complete read-out of one meter, by primary address or by secondary select.

    Sequence: SND_NKE (unless ``reset`` is False) or, by secondary address, a select (CI 0x52,
    which also resets the meter's FCB), an optional pause (quirk), then REQ_UD2 with FCB=1,
    0, 1, ... while each telegram ends with DIF 0x1F, at most ``max_telegrams``. Every
    request is retried up to ``retries`` times; a REQ_UD2 retry keeps the FCB, so a meter
    whose answer was lost repeats that telegram instead of skipping to the next one.
    ``telegrams`` holds the frames received (full bytes), ``complete`` says the last one did
    not announce more. Without a reset the meter still holds the FCB of the previous read-out:
    ``first_fcb`` must then be the opposite of :attr:`last_fcb` of that read-out, or the meter
    would repeat its last telegram.
    """

    __slots__ = (
        "_fcb",
        "_step",
        "_tries",
        "address",
        "attempts",
        "check_address",
        "complete",
        "max_telegrams",
        "pause_after_reset",
        "reset",
        "retries",
        "secondary",
        "telegrams",
    )

    STEP_RESET = 0
    STEP_SELECT = 1
    STEP_REQUEST = 2

    def __init__(
        self,
        address: int | None = None,
        secondary: str | None = None,
        reset: bool = True,
        retries: int = 3,
        max_telegrams: int = 16,
        pause_after_reset: float = 0.0,
        check_address: bool = True,
        first_fcb: bool = True,
    ) -> None:
        Procedure.__init__(self)
        if (address is None) == (secondary is None):
            raise UsageError("give either a primary address or a secondary address")
        if address is not None:
            frames._check_address(address)
        else:
            secondary = str(secondary).upper()
            frames.secondary_mask_bytes(secondary)  # validates
        if max_telegrams < 1:
            raise UsageError("max_telegrams must be at least 1")
        self.address = address
        self.secondary = secondary
        self.reset = reset
        self.retries = retries
        self.max_telegrams = max_telegrams
        self.pause_after_reset = pause_after_reset
        self.check_address = check_address
        self.telegrams: list[bytes] = []
        self.complete = False
        self.attempts = 0
        self._fcb = first_fcb
        self._tries = 0
        if reset and address is not None:
            self._step = self.STEP_RESET
        elif secondary is not None:
            self._step = self.STEP_SELECT
        else:
            self._step = self.STEP_REQUEST

    @property
    def last_fcb(self) -> bool:
        """The FCB of the last REQ_UD2 answered (the meter's FCB state after this read-out)."""
        return self._fcb

    def _address_ok(self, frame: "frames.Frame | None") -> bool:
        # A late answer of another meter must not pass as this one's (primary reads only).
        if not self.check_address or self.address is None or frame is None:
            return True
        return self.address > frames.ADDR_MAX_PRIMARY or frame.a == self.address

    def _address_reason(self, answer: Answer) -> str:
        a = answer.frame.a if answer.frame is not None else None
        return "answer from address %s, not %s" % (a, self.address)

    def name(self) -> str:
        if self.address is not None:
            return "address %d" % self.address
        return "secondary %s" % self.secondary

    def _next(self) -> Request | None:
        step = self._step
        if step == self.STEP_RESET:
            return Request(frames.snd_nke(int(self.address or 0)), EXPECT_ACK, "SND_NKE")
        if step == self.STEP_SELECT:
            return Request(frames.select_secondary(str(self.secondary)), EXPECT_ACK, "select")
        address = frames.ADDR_SELECTED if self.address is None else self.address
        label = "REQ_UD2 FCB=%d" % (1 if self._fcb else 0)
        # The quirk pause sits between the reset (SND_NKE or select) and the first REQ_UD2.
        pause = 0.0
        if not self.telegrams and not self._tries and (self.reset or self.secondary):
            pause = self.pause_after_reset
        return Request(frames.req_ud2(address, fcb=self._fcb), EXPECT_RSP, label, pause)

    def _answer(self, request: Request, answer: Answer) -> None:
        self.attempts += 1
        ok = answer.kind == (RSP if request.expect == EXPECT_RSP else ACK)
        if ok and answer.kind == RSP and not self._address_ok(answer.frame):
            ok = False
            answer = Answer(INVALID, answer.frame, answer.raw, self._address_reason(answer))
        if not ok:
            self._tries += 1
            if self._tries > self.retries:
                self.fail(
                    "%s: %s after %d attempts (%s)"
                    % (self.name(), request.label, self._tries, _what(answer))
                )
            return
        self._tries = 0
        if self._step == self.STEP_RESET:
            self._step = self.STEP_SELECT if self.secondary is not None else self.STEP_REQUEST
            return
        if self._step == self.STEP_SELECT:
            self._step = self.STEP_REQUEST
            return
        frame = answer.frame
        self.telegrams.append(answer.raw)
        if frame is None or not more_records_follow(frame.ci, frame.data):
            self.complete = True
            self.done = True
            return
        if len(self.telegrams) >= self.max_telegrams:
            self.fail(
                "%s: meter announces more telegrams after %d (max_telegrams)"
                % (self.name(), len(self.telegrams))
            )
            return
        self._fcb = not self._fcb


class Command(Procedure):
    """One confirmed request (SND_NKE, application reset, set address, baud rate switch...).

    ``expect`` EXPECT_ACK: the meter confirms with E5 (retried up to ``retries`` times);
    EXPECT_NONE: a broadcast nobody answers. ``answer`` keeps the last answer.
    """

    __slots__ = ("_tries", "answer", "data", "expect", "label", "retries")

    def __init__(self, data: bytes, label: str, expect: int = EXPECT_ACK, retries: int = 3) -> None:
        Procedure.__init__(self)
        self.data = bytes(data)
        self.label = label
        self.expect = expect
        self.retries = retries
        self.answer: Answer | None = None
        self._tries = 0

    def _next(self) -> Request | None:
        if self.answer is not None and (
            self.expect == EXPECT_NONE or self.answer.kind == ACK or self._tries > self.retries
        ):
            return None
        return Request(self.data, self.expect, self.label)

    def _answer(self, request: Request, answer: Answer) -> None:
        self.answer = answer
        if self.expect == EXPECT_NONE or answer.kind == ACK:
            self.done = True
            return
        self._tries += 1
        if self._tries > self.retries:
            self.fail("%s: %s after %d attempts" % (self.label, _what(answer), self._tries))


class Ping(Procedure):
    """Is anything at this primary address? SND_NKE, then (on E5) REQ_UD2 for its header.

    Used by the primary scan: no retries on silence (an empty address costs one timeout, the
    bound of a scan), one on a garbled answer. ``found`` is True when something answered;
    ``frame`` is its RSP_UD (None if it acknowledged but its data did not come); ``error``
    describes a garbled answer (two meters on one address, or a broken one).
    """

    __slots__ = ("_step", "_tries", "address", "found", "frame", "retries")

    def __init__(self, address: int, retries: int = 1) -> None:
        Procedure.__init__(self)
        frames._check_address(address)
        self.address = address
        self.found = False
        self.frame: frames.Frame | None = None
        self.retries = retries
        self._step = 0
        self._tries = 0

    def _next(self) -> Request | None:
        if self._step == 0:
            return Request(frames.snd_nke(self.address), EXPECT_ACK, "SND_NKE")
        return Request(frames.req_ud2(self.address, fcb=True), EXPECT_RSP, "REQ_UD2 FCB=1")

    def _answer(self, request: Request, answer: Answer) -> None:
        if answer.kind == NO_ANSWER and self._step == 0:
            self.done = True
            return
        self.found = True
        if answer.kind in (ACK, RSP):
            self._tries = 0
            if self._step == 0:
                self._step = 1
                return
            self.frame = answer.frame
            self.done = True
            return
        self._tries += 1
        if self._tries > self.retries:
            self.fail("address %d: %s: %s" % (self.address, request.label, _what(answer)))

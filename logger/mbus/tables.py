"""EN 13757-3 code tables as data: VIF (primary, 0xFD and 0xFB extensions), combinable VIFE,
medium, header status bits, application error codes.

Each VIF entry is ``(quantity, unit, multiplier, exponent, kind)``: the value in the SI-
normalised ``unit`` is ``raw * multiplier * 10**exponent`` (the multiplier carries minutes,
hours and days to seconds; it is 1 elsewhere). Units follow libmbus's normalised form
(``Wh``, ``J``, ``m^3``, ``kg``, ``s``, ``W``, ``J/h``, ``m^3/h``, ``°C``, ``K``, ``bar``,
``V``, ``A``) so that a value in our JSON and in ``.norm.xml`` agree. Tables are indexed by
the code without its extension bit: one tuple lookup per record, no branching.

MicroPython-clean: tuples and integers only.
"""

# Value kinds: how the data field of a record with this VIF is read.
NUMERIC = 0  # signed number, scaled
DATE = 1  # date (type G) when the data field is integer
DATETIME = 2  # date and time (types F, I, J by length) when the data field is integer
UNSIGNED = 3  # bit field or counter: unsigned, not scaled
MANUFACTURER = 4  # manufacturer specific: number as sent, flagged
UNKNOWN = 5  # reserved or unknown code: number as sent, flagged
TEXT_VIF = 6  # plain-text VIF: the unit is given by the meter as text

_S = (1, 60, 3600, 86400)  # seconds, minutes, hours, days


def _range(
    table: list, start: int, count: int, quantity: str, unit: str, exp0: int, kind: int = NUMERIC
) -> None:
    for n in range(count):
        table[start + n] = (quantity, unit, 1, exp0 + n, kind)


def _durations(table: list, start: int, quantity: str, units: tuple = _S) -> None:
    for n in range(len(units)):
        table[start + n] = (quantity, "s", units[n], 0, NUMERIC)


def _unknown(name: str) -> tuple:
    return (name, "", 1, 0, UNKNOWN)


def _primary() -> tuple:
    t = [_unknown("reserved")] * 128
    _range(t, 0x00, 8, "energy", "Wh", -3)
    _range(t, 0x08, 8, "energy", "J", 0)
    _range(t, 0x10, 8, "volume", "m^3", -6)
    _range(t, 0x18, 8, "mass", "kg", -3)
    _durations(t, 0x20, "on time")
    _durations(t, 0x24, "operating time")
    _range(t, 0x28, 8, "power", "W", -3)
    _range(t, 0x30, 8, "power", "J/h", 0)
    _range(t, 0x38, 8, "volume flow", "m^3/h", -6)
    _range(t, 0x40, 8, "volume flow", "m^3/min", -7)
    _range(t, 0x48, 8, "volume flow", "m^3/s", -9)
    _range(t, 0x50, 8, "mass flow", "kg/h", -3)
    _range(t, 0x58, 4, "flow temperature", "°C", -3)
    _range(t, 0x5C, 4, "return temperature", "°C", -3)
    _range(t, 0x60, 4, "temperature difference", "K", -3)
    _range(t, 0x64, 4, "external temperature", "°C", -3)
    _range(t, 0x68, 4, "pressure", "bar", -3)
    t[0x6C] = ("date", "", 1, 0, DATE)
    t[0x6D] = ("date and time", "", 1, 0, DATETIME)
    t[0x6E] = ("units for H.C.A.", "", 1, 0, NUMERIC)
    _durations(t, 0x70, "averaging duration")
    _durations(t, 0x74, "actuality duration")
    t[0x78] = ("fabrication number", "", 1, 0, NUMERIC)
    t[0x79] = ("enhanced identification", "", 1, 0, NUMERIC)
    t[0x7A] = ("bus address", "", 1, 0, NUMERIC)
    t[0x7C] = ("plain text", "", 1, 0, TEXT_VIF)
    t[0x7E] = ("any VIF", "", 1, 0, NUMERIC)
    t[0x7F] = ("manufacturer specific", "", 1, 0, MANUFACTURER)
    return tuple(t)


def _fd() -> tuple:
    t = [_unknown("reserved")] * 128
    _range(t, 0x00, 4, "credit", "currency units", -3)
    _range(t, 0x04, 4, "debit", "currency units", -3)
    names = (
        (0x08, "access number"),
        (0x09, "medium"),
        (0x0A, "manufacturer"),
        (0x0B, "parameter set identification"),
        (0x0C, "model / version"),
        (0x0D, "hardware version"),
        (0x0E, "firmware version"),
        (0x0F, "software version"),
        (0x10, "customer location"),
        (0x11, "customer"),
        (0x12, "access code user"),
        (0x13, "access code operator"),
        (0x14, "access code system operator"),
        (0x15, "access code developer"),
        (0x16, "password"),
        (0x1C, "baud rate"),
        (0x1D, "response delay time"),
        (0x1E, "retry"),
        (0x20, "first storage number for cyclic storage"),
        (0x21, "last storage number for cyclic storage"),
        (0x22, "size of storage block"),
        (0x3A, "dimensionless"),
        (0x60, "reset counter"),
        (0x61, "cumulation counter"),
        (0x62, "control signal"),
        (0x63, "day of week"),
        (0x64, "week number"),
        (0x65, "time point of day change"),
        (0x66, "state of parameter activation"),
        (0x67, "special supplier information"),
        (0x71, "RF level"),
        (0x75, "number of times the meter was stopped"),
    )
    for code, name in names:
        t[code] = (name, "", 1, 0, NUMERIC)
    for code, name in (
        (0x17, "error flags"),
        (0x18, "error mask"),
        (0x1A, "digital output"),
        (0x1B, "digital input"),
    ):
        t[code] = (name, "", 1, 0, UNSIGNED)
    t[0x1C] = ("baud rate", "Bd", 1, 0, NUMERIC)
    t[0x1D] = ("response delay time", "bit times", 1, 0, NUMERIC)
    t[0x71] = ("RF level", "dBm", 1, 0, NUMERIC)
    t[0x72] = ("daylight saving", "", 1, 0, UNSIGNED)  # type K: bit fields, kept as sent
    t[0x73] = ("listening window management", "", 1, 0, UNSIGNED)
    t[0x76] = ("manufacturer specific protocol data", "", 1, 0, UNSIGNED)
    _durations(t, 0x24, "storage interval")
    t[0x28] = ("storage interval", "month", 1, 0, NUMERIC)
    t[0x29] = ("storage interval", "year", 1, 0, NUMERIC)
    _durations(t, 0x2C, "duration since last readout")
    t[0x30] = ("start of tariff", "", 1, 0, DATETIME)
    for n in range(1, 4):
        t[0x30 + n] = ("duration of tariff", "s", _S[n], 0, NUMERIC)
    _durations(t, 0x34, "period of tariff")
    t[0x38] = ("period of tariff", "month", 1, 0, NUMERIC)
    t[0x39] = ("period of tariff", "year", 1, 0, NUMERIC)
    _range(t, 0x40, 16, "voltage", "V", -9)
    _range(t, 0x50, 16, "current", "A", -12)
    t[0x68] = ("duration since last cumulation", "s", 3600, 0, NUMERIC)
    t[0x69] = ("duration since last cumulation", "s", 86400, 0, NUMERIC)
    t[0x6A] = ("duration since last cumulation", "month", 1, 0, NUMERIC)
    t[0x6B] = ("duration since last cumulation", "year", 1, 0, NUMERIC)
    t[0x6C] = ("operating time battery", "s", 3600, 0, NUMERIC)
    t[0x6D] = ("operating time battery", "s", 86400, 0, NUMERIC)
    t[0x6E] = ("operating time battery", "month", 1, 0, NUMERIC)
    t[0x6F] = ("operating time battery", "year", 1, 0, NUMERIC)
    t[0x70] = ("date and time of battery change", "", 1, 0, DATETIME)
    t[0x74] = ("remaining battery life time", "s", 86400, 0, NUMERIC)
    return tuple(t)


def _fb() -> tuple:
    t = [_unknown("reserved")] * 128
    _range(t, 0x00, 2, "energy", "Wh", 5)
    _range(t, 0x02, 2, "reactive energy", "VARh", 3)
    _range(t, 0x08, 2, "energy", "J", 8)
    _range(t, 0x10, 2, "volume", "m^3", 2)
    _range(t, 0x18, 2, "mass", "kg", 5)
    _range(t, 0x1A, 2, "relative humidity", "%", -1)
    t[0x21] = ("volume", "feet^3", 1, -1, NUMERIC)
    _range(t, 0x22, 2, "volume", "american gallon", -1)
    t[0x24] = ("volume flow", "american gallon/min", 1, -3, NUMERIC)
    t[0x25] = ("volume flow", "american gallon/min", 1, 0, NUMERIC)
    t[0x26] = ("volume flow", "american gallon/h", 1, 0, NUMERIC)
    _range(t, 0x28, 2, "power", "W", 5)
    t[0x2A] = ("phase U-U", "°", 1, -1, NUMERIC)
    t[0x2B] = ("phase U-I", "°", 1, -1, NUMERIC)
    _range(t, 0x2C, 4, "frequency", "Hz", -3)
    _range(t, 0x30, 2, "power", "J/h", 8)
    _range(t, 0x58, 4, "flow temperature", "°F", -3)
    _range(t, 0x5C, 4, "return temperature", "°F", -3)
    _range(t, 0x60, 4, "temperature difference", "°F", -3)
    _range(t, 0x64, 4, "external temperature", "°F", -3)
    _range(t, 0x70, 4, "cold / warm temperature limit", "°F", -3)
    _range(t, 0x74, 4, "cold / warm temperature limit", "°C", -3)
    _range(t, 0x78, 8, "cumulated count max power", "W", -3)
    return tuple(t)


PRIMARY_VIF = _primary()
FD_VIF = _fd()
FB_VIF = _fb()


def _combinable() -> tuple:
    """Combinable (orthogonal) VIFE codes: name, exponent shift, is-date, is-error."""
    t = [("reserved", 0)] * 128
    errors = {
        0x00: "none",
        0x01: "too many DIFEs",
        0x02: "storage number not implemented",
        0x03: "unit number not implemented",
        0x04: "tariff number not implemented",
        0x05: "function not implemented",
        0x06: "data class not implemented",
        0x07: "data size not implemented",
        0x0B: "too many VIFEs",
        0x0C: "illegal VIF-group",
        0x0D: "illegal VIF-exponent",
        0x0E: "VIF/DIF mismatch",
        0x0F: "unimplemented action",
        0x15: "no data available (undefined value)",
        0x16: "data overflow",
        0x17: "data underflow",
        0x18: "data error",
        0x1C: "premature end of record",
    }
    for code in range(0x20):
        t[code] = ("error: " + errors.get(code, "reserved"), 0)
    # EN 13757-3:2013 took the last three codes for data-content markers.
    t[0x1D] = ("standard conform data content", 0)
    t[0x1E] = ("compact profile with register numbers", 0)
    t[0x1F] = ("compact profile", 0)
    names = (
        "per second",
        "per minute",
        "per hour",
        "per day",
        "per week",
        "per month",
        "per year",
        "per revolution / measurement",
        "increment per input pulse on input 0",
        "increment per input pulse on input 1",
        "increment per output pulse on output 0",
        "increment per output pulse on output 1",
        "per litre",
        "per m^3",
        "per kg",
        "per K",
        "per kWh",
        "per GJ",
        "per kW",
        "per (K*l)",
        "per V",
        "per A",
        "multiplied by s",
        "multiplied by s/V",
        "multiplied by s/A",
        "start date(/time) of",
        "VIF contains uncorrected unit",
        "accumulation only if positive contributions",
        "accumulation of abs value only if negative contributions",
    )
    for i in range(len(names)):
        t[0x20 + i] = (names[i], 0)
    for u in (0, 1):
        limit = ("lower", "upper")[u]
        t[0x40 | (u << 3)] = (limit + " limit value", 0)
        t[0x41 | (u << 3)] = ("number of exceeds of " + limit + " limit", 0)
        for f in (0, 1):
            for b in (0, 1):
                t[0x42 | (u << 3) | (f << 2) | b] = (
                    "date(/time) of "
                    + ("begin", "end")[b]
                    + " of "
                    + ("first", "last")[f]
                    + " "
                    + limit
                    + " limit exceed",
                    0,
                )
        for f in (0, 1):
            for nn in range(4):
                t[0x50 | (u << 3) | (f << 2) | nn] = (
                    "duration of "
                    + ("first", "last")[f]
                    + " "
                    + limit
                    + " limit exceed ("
                    + ("s", "min", "h", "d")[nn]
                    + ")",
                    0,
                )
    for f in (0, 1):
        for nn in range(4):
            t[0x60 | (f << 2) | nn] = (
                "duration of " + ("first", "last")[f] + " (" + ("s", "min", "h", "d")[nn] + ")",
                0,
            )
        for b in (0, 1):
            t[0x6A | (f << 2) | b] = (
                "date(/time) of " + ("begin", "end")[b] + " of " + ("first", "last")[f],
                0,
            )
    for n in range(8):
        t[0x70 + n] = ("multiplicative correction 10^" + str(n - 6), n - 6)
    # E111 10nn: the record is an additive correction constant (an offset) in the unit of the
    # VIF x 10^(nn-3); the scale applies to the value like a multiplicative correction does.
    for n in range(4):
        t[0x78 + n] = ("additive correction constant 10^" + str(n - 3), n - 3)
    t[0x7D] = ("multiplicative correction 10^3", 3)
    t[0x7E] = ("future value", 0)
    t[0x7F] = ("manufacturer specific VIFEs follow", 0)
    return tuple(t)


COMBINABLE_VIFE = _combinable()
# Combinable VIFEs whose record carries a date/time rather than a number.
DATE_VIFES = frozenset(
    (0x39, 0x42, 0x43, 0x46, 0x47, 0x4A, 0x4B, 0x4E, 0x4F, 0x6A, 0x6B, 0x6E, 0x6F)
)

FUNCTIONS = ("instantaneous", "maximum", "minimum", "error")

MEDIUM = {
    0x00: "Other",
    0x01: "Oil",
    0x02: "Electricity",
    0x03: "Gas",
    0x04: "Heat (outlet)",
    0x05: "Steam",
    0x06: "Warm water (30-90 °C)",
    0x07: "Water",
    0x08: "Heat cost allocator",
    0x09: "Compressed air",
    0x0A: "Cooling load meter (outlet)",
    0x0B: "Cooling load meter (inlet)",
    0x0C: "Heat (inlet)",
    0x0D: "Heat / cooling load meter",
    0x0E: "Bus / system component",
    0x0F: "Unknown medium",
    0x10: "Irrigation water",
    0x11: "Water data logger",
    0x12: "Gas data logger",
    0x13: "Gas converter",
    0x14: "Calorific value",
    0x15: "Hot water (>= 90 °C)",
    0x16: "Cold water",
    0x17: "Dual register (hot/cold) water",
    0x18: "Pressure",
    0x19: "A/D converter",
    0x1A: "Smoke detector",
    0x1B: "Room sensor",
    0x1C: "Gas detector",
    0x20: "Breaker (electricity)",
    0x21: "Valve (gas or water)",
    0x25: "Customer unit (display)",
    0x28: "Waste water",
    0x29: "Garbage",
    0x2A: "Carbon dioxide",
    0x30: "Service tool",
    0x31: "Communication controller (gateway)",
    0x32: "Unidirectional repeater",
    0x33: "Bidirectional repeater",
    0x36: "Radio converter (system side)",
    0x37: "Radio converter (meter side)",
    0x38: "Wired adapter",
    0xFF: "Placeholder",
}

# Status byte of the header (EN 13757-3): bits 0-1 application state, then alarms.
STATUS_APPLICATION = (None, "application busy", "application error", "abnormal condition")
STATUS_BITS = (
    (0x04, "power low"),
    (0x08, "permanent error"),
    (0x10, "temporary error"),
    (0x20, "manufacturer specific 1"),
    (0x40, "manufacturer specific 2"),
    (0x80, "manufacturer specific 3"),
)

# CI 0x70 application error codes (EN 13757-3), with libmbus's texts.
APPLICATION_ERRORS = (
    "Unspecified error",
    "Unimplemented CI-Field",
    "Buffer too long, truncated",
    "Too many records",
    "Premature end of record",
    "More than 10 DIFE\u00b4s",
    "More than 10 VIFE\u00b4s",
    "Reserved",
    "Application busy",
    "Too many readouts",
)


def application_error_text(code: int) -> str:
    if 0 <= code < len(APPLICATION_ERRORS):
        return APPLICATION_ERRORS[code]
    return "Unknown error (0x%02X)" % code


# Fixed data structure (CI 0x73/0x77) counter units: (quantity, unit, exponent).
FIXED_UNITS = (
    ("time", "h,m,s", 0),
    ("date", "D,M,Y", 0),
    ("energy", "Wh", 0),
    ("energy", "Wh", 1),
    ("energy", "Wh", 2),
    ("energy", "Wh", 3),
    ("energy", "Wh", 4),
    ("energy", "Wh", 5),
    ("energy", "Wh", 6),
    ("energy", "Wh", 7),
    ("energy", "Wh", 8),
    ("energy", "J", 3),
    ("energy", "J", 4),
    ("energy", "J", 5),
    ("energy", "J", 6),
    ("energy", "J", 7),
    ("energy", "J", 8),
    ("energy", "J", 9),
    ("energy", "J", 10),
    ("energy", "J", 11),
    ("power", "W", 0),
    ("power", "W", 1),
    ("power", "W", 2),
    ("power", "W", 3),
    ("power", "W", 4),
    ("power", "W", 5),
    ("power", "W", 6),
    ("power", "W", 7),
    ("power", "W", 8),
    ("power", "J/h", 3),
    ("power", "J/h", 4),
    ("power", "J/h", 5),
    ("power", "J/h", 6),
    ("power", "J/h", 7),
    ("power", "J/h", 8),
    ("power", "J/h", 9),
    ("power", "J/h", 10),
    ("power", "J/h", 11),
    ("volume", "m^3", -6),
    ("volume", "m^3", -5),
    ("volume", "m^3", -4),
    ("volume", "m^3", -3),
    ("volume", "m^3", -2),
    ("volume", "m^3", -1),
    ("volume", "m^3", 0),
    ("volume", "m^3", 1),
    ("volume", "m^3", 2),
    ("volume flow", "m^3/h", -6),
    ("volume flow", "m^3/h", -5),
    ("volume flow", "m^3/h", -4),
    ("volume flow", "m^3/h", -3),
    ("volume flow", "m^3/h", -2),
    ("volume flow", "m^3/h", -1),
    ("volume flow", "m^3/h", 0),
    ("volume flow", "m^3/h", 1),
    ("volume flow", "m^3/h", 2),
    ("temperature", "°C", -3),
    ("units for H.C.A.", "", 0),
    ("reserved", "", 0),
    ("reserved", "", 0),
    ("reserved", "", 0),
    ("reserved", "", 0),
    ("same but historic", "", 0),
    ("without units", "", 0),
)
FIXED_MEDIUM = (
    "Other",
    "Oil",
    "Electricity",
    "Gas",
    "Heat",
    "Steam",
    "Hot water",
    "Water",
    "Heat cost allocator",
    "Reserved",
    "Gas mode 2",
    "Heat mode 2",
    "Hot water mode 2",
    "Water mode 2",
    "Heat cost allocator mode 2",
    "Reserved",
)

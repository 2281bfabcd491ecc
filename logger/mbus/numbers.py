"""Exact decimal helpers: a value is ``mantissa * 10**exponent`` with integer parts.

Meters send integers (or BCD) and a VIF that names a power of ten; normalising with binary
floats would print ``12.564999`` for ``12565 * 10**-3``. Keeping the integer pair and
formatting it as text is exact and cheap. The one binary float M-Bus carries (real32, data
field 0101) is turned into the shortest decimal that reads back as the same float32, using
integer arithmetic only so CPython and MicroPython agree digit for digit.

MicroPython-clean: integers and strings only, no ``decimal`` module.
"""

import struct

_HEX = "0123456789ABCDEF"
HEX2 = tuple(_HEX[b >> 4] + _HEX[b & 15] for b in range(256))


def hexstr(data: bytes | bytearray | list[int], sep: str = "") -> str:
    """Upper-case hex of ``data`` (bytes-like), optionally separated (``"00 01"``)."""
    return sep.join([HEX2[b] for b in data])


def dec_str(mantissa: int, exponent: int) -> str:
    """Exact decimal text of ``mantissa * 10**exponent`` without trailing fractional zeros.

    ``dec_str(12345, -1) == "1234.5"``, ``dec_str(1000, -3) == "1"``, ``dec_str(7, 2) == "700"``.
    """
    if exponent >= 0:
        if exponent == 0 or mantissa == 0:
            return str(mantissa)
        return str(mantissa * 10**exponent)
    neg = mantissa < 0
    digits = str(-mantissa if neg else mantissa)
    n = -exponent
    if len(digits) <= n:
        digits = "0" * (n - len(digits) + 1) + digits
    whole = digits[:-n]
    frac = digits[-n:].rstrip("0")
    text = whole + "." + frac if frac else whole
    if neg and text != "0":
        return "-" + text
    return text


def _pow10(n: int) -> int:
    return 10**n


def float32_decimal(raw: int) -> tuple[int, int] | None:
    """The shortest ``(mantissa, exponent)`` whose value rounds to the float32 ``raw``.

    ``raw`` is the 4 bytes as an unsigned little-endian integer. Returns ``None`` for NaN and
    infinities (which have no decimal value). The search tries 1..9 significant digits and
    checks each candidate against the float32's rounding interval with exact integer
    arithmetic; 9 digits always suffice for float32.
    """
    sign = -1 if raw >> 31 else 1
    biased = (raw >> 23) & 0xFF
    frac = raw & 0x7FFFFF
    if biased == 0xFF:
        return None
    if biased == 0:
        m = frac
        e = -149
    else:
        m = frac | 0x800000
        e = biased - 150
    if m == 0:
        return (0, 0)
    # value = m * 2**e; rounding interval = value +- half a unit in the last place (2**(e-1)).
    # Scale everything by 2**(1-e) (when e < 1) to integers: value2 = 2m, half = 1.
    # Work with numerator/denominator: v = num / den.
    if e >= 0:
        num = m << e
        den = 1
        half_num = 1 << e  # half ulp = 2**(e-1) -> as num/den with den=2
        half_den = 2
    else:
        num = m
        den = 1 << (-e)
        half_num = 1
        half_den = 2 << (-e)
    # Lower gap halves at a power of two (not for the smallest exponent).
    low_num = half_num
    low_den = half_den
    if frac == 0 and biased > 1:
        low_den = half_den * 2
    # Decimal exponent of the leading digit.
    digits = len(str(num // den)) if num >= den else 0
    if num < den:
        # count leading zeros after the point
        k = 0
        t = num * 10
        while t < den:
            t *= 10
            k += 1
        lead = -k - 1
    else:
        lead = digits - 1
    for p in range(1, 10):
        exp10 = lead - p + 1
        # candidate mantissa = round(v / 10**exp10)
        if exp10 >= 0:
            q_den = den * _pow10(exp10)
            q_num = num
        else:
            q_num = num * _pow10(-exp10)
            q_den = den
        cand = (2 * q_num + q_den) // (2 * q_den)
        # |cand*10**exp10 - v| against the gap on the relevant side
        if exp10 >= 0:
            c_num = cand * _pow10(exp10) * den
        else:
            c_num = cand * den
        # Compare c/scale with num/den where scale = 10**-exp10 for exp10<0
        if exp10 >= 0:
            diff_num = c_num - num  # over den
            diff_den = den
        else:
            diff_num = c_num - num * _pow10(-exp10)
            diff_den = den * _pow10(-exp10)
        if diff_num >= 0:
            g_num, g_den = half_num, half_den
        else:
            diff_num = -diff_num
            g_num, g_den = low_num, low_den
        if diff_num * g_den < g_num * diff_den:
            while cand and cand % 10 == 0:
                cand //= 10
                exp10 += 1
            return (sign * cand, exp10)
    return (sign * m, 0)  # not reached for finite float32


def float32_value(data: bytes) -> float:
    """The float32 of 4 little-endian bytes as a Python float (exact widening)."""
    return struct.unpack("<f", bytes(data))[0]

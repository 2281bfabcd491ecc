import re
from datetime import UTC, datetime

import pytest

from logger import contract


def _batch(n: int, start: int = 1) -> dict[str, list[object]]:
    now = datetime.now(UTC)
    return {
        "Sequence": list(range(start, start + n)),
        "Meter": ["m1"] * n,
        "Record": ["0413"] * n,
        "Value": ["12.5"] * n,
        "Unit": ["m^3"] * n,
        "Quantity": ["volume"] * n,
        "SourceTime": [None] * n,
        "LoggerTime": [now] * n,
        "Flags": [""] * n,
    }


def test_a_well_formed_batch_passes() -> None:
    assert contract.check_push_columns(_batch(3)) == 3


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b["Value"].pop(), "unequal length"),
        (lambda b: b["Sequence"].__setitem__(2, 1), "does not increase"),
        (lambda b: b["Sequence"].__setitem__(1, 1), "does not increase"),
        (lambda b: b.pop("Unit"), "missing column Unit"),
        (lambda b: b["Meter"].__setitem__(0, ""), "Meter[0] is empty"),
        (lambda b: b["Unit"].__setitem__(0, "x" * 300), "Unit[0]"),
        (lambda b: b["Value"].__setitem__(0, 12.5), "Value[0]"),
    ],
)
def test_malformed_batches_are_named(mutate, message) -> None:  # type: ignore[no-untyped-def]
    batch = _batch(3)
    mutate(batch)
    with pytest.raises(ValueError, match=re.escape(message)):
        contract.check_push_columns(batch)


def test_bounds() -> None:
    with pytest.raises(ValueError, match="empty batch"):
        contract.check_push_columns(_batch(0))
    with pytest.raises(ValueError, match="exceeds"):
        contract.check_push_columns(_batch(contract.MAX_BATCH + 1))


def test_every_method_is_declared_with_built_in_types() -> None:
    built_in = {
        "String",
        "UInt64",
        "UInt32",
        "Int32",
        "Double",
        "Boolean",
        "DateTime",
        "ByteString",
    }
    for inputs, outputs in contract.METHODS.values():
        for arg in (*inputs, *outputs):
            assert arg.type in built_in, arg


def test_the_transport_limit_holds_the_largest_batch_the_contract_allows() -> None:
    assert contract.push_readings_max_bytes() <= contract.MAX_MESSAGE_BYTES
    assert contract.MAX_CHUNK_COUNT * 65536 >= contract.MAX_MESSAGE_BYTES
    assert contract.MAX_MESSAGE_BYTES < 128 * 1024 * 1024  # still a bound worth the name

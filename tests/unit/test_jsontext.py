"""jsontext.encode and decode_stored: orjson's speed without orjson's leniency or its floats in
place of large integers."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from productflo.jsontext import decode_stored, encode, is_storable

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def test_encode_reads_back_as_the_same_value_whatever_it_holds() -> None:
    value = {"message": 'héllo ✓ \u2028 "quoted" \\', "n": [1, -2.5, None, True], "deep": {"a": {}}}
    assert json.loads(encode(value)) == value


def test_integers_past_64_bits_are_written_exactly_not_refused() -> None:
    """orjson refuses them; the standard library writes them, and jsonb stores them."""
    value = {"big": 2**80, "small": -(2**70)}
    assert json.loads(encode(value)) == value


@given(_JSON)
def test_stored_json_reads_back_as_the_standard_library_reads_it(value: object) -> None:
    """Whatever a jsonb column gives back (integers past 64 bits, floats, any text, escapes
    included), the fast path reads the same values, of the same types, as json.loads."""
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False)):
        decoded = decode_stored(text)
        assert decoded == json.loads(text)
        assert repr(decoded) == repr(json.loads(text))  # 2**70 stays an int, 1.0 a float


def test_a_large_integer_among_other_digits_stays_exact() -> None:
    """orjson alone would read these as floats: 1.2345678901234568e+29, -9.223372036854776e+18."""
    text = '{"big": 123456789012345678901234567890, "edge": -9223372036854775809, "n": 7}'
    assert decode_stored(text) == {
        "big": 123456789012345678901234567890,
        "edge": -9223372036854775809,
        "n": 7,
    }


def test_dates_are_refused_as_the_standard_library_refuses_them() -> None:
    with pytest.raises(TypeError):
        encode({"at": datetime.now(UTC)})


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_number_anywhere_is_not_storable(number: float) -> None:
    """orjson would write it as null: is_storable is what keeps it out of the log."""
    assert not is_storable({"a": [{"b": number}]})
    assert is_storable({"a": [{"b": 1.5}]})

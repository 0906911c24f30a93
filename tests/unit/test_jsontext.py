"""jsontext.encode: orjson's speed without orjson's leniency."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from productflo.jsontext import encode, is_storable


def test_encode_reads_back_as_the_same_value_whatever_it_holds() -> None:
    value = {"message": 'héllo ✓ \u2028 "quoted" \\', "n": [1, -2.5, None, True], "deep": {"a": {}}}
    assert json.loads(encode(value)) == value


def test_integers_past_64_bits_are_written_exactly_not_refused() -> None:
    """orjson refuses them; the standard library writes them, and jsonb stores them."""
    value = {"big": 2**80, "small": -(2**70)}
    assert json.loads(encode(value)) == value


def test_dates_are_refused_as_the_standard_library_refuses_them() -> None:
    with pytest.raises(TypeError):
        encode({"at": datetime.now(UTC)})


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_number_anywhere_is_not_storable(number: float) -> None:
    """orjson would write it as null: is_storable is what keeps it out of the log."""
    assert not is_storable({"a": [{"b": number}]})
    assert is_storable({"a": [{"b": 1.5}]})

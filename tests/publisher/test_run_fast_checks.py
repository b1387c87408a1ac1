"""The run's number checks decide plain ints and floats without pydantic (a publish-path
saving); they must agree with the contract's own field types on every value, edges included."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from shared.events import ExecutionFields
from shared.publisher.run import _CHECKED, _checked

VALUES: list[Any] = [
    0,
    1,
    2**62,
    2**62 + 1,
    -1,
    True,
    False,
    0.0,
    -0.0,
    0.01,
    1e12,
    math.nextafter(1e12, math.inf),
    -1e-300,
    math.inf,
    -math.inf,
    math.nan,
    5.0,
    5.5,
    "5",
    10**30,
]


def _contract(name: str, value: Any) -> tuple[bool, Any]:
    try:
        ExecutionFields.model_validate({"id": "x", "agent_name": "a", name: value})
    except ValidationError:
        return False, None
    return True, _CHECKED[name].validate_python(value)


@pytest.mark.parametrize("name", sorted(_CHECKED))
@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_a_number_is_taken_or_refused_as_the_contract_does(name: str, value: Any) -> None:
    accepted, expected = _contract(name, value)
    if not accepted:
        with pytest.raises(ValueError, match=f"Run.{name} = .* refused"):
            _checked(name, value)
        return
    got = _checked(name, value)
    assert got == expected
    assert type(got) is type(expected)

"""The default serializer: plain data by the C pickler, functions by value where they must be."""

from __future__ import annotations

import functools
import pickle

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from scoop_core.calls import Call
from scoop_core.serialization import PROTOCOL, CloudpickleSerializer

SERIALIZER = CloudpickleSerializer()

plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda inner: st.lists(inner) | st.tuples(inner, inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


def back(value):
    return SERIALIZER.loads(SERIALIZER.dumps(value))


@given(plain)
def test_plain_data_comes_back_equal_and_pickled_as_plain_pickle_does(value) -> None:
    frames = SERIALIZER.dumps(value)
    assert frames == [pickle.dumps(value, protocol=PROTOCOL)]
    assert SERIALIZER.loads(frames) == value


def test_a_call_of_an_importable_function_comes_back_and_runs() -> None:
    call = back(Call(functools.reduce, (max, [3, 9, 4]), {}))
    assert call.run() == 9


def test_lambdas_and_closures_travel_by_value() -> None:
    offset = 7

    def shifted(x):
        return x + offset

    assert back(Call(lambda x: x * 2, (21,), {})).run() == 42
    assert back(Call(shifted, (1,), {})).run() == 8
    assert back([functools.partial(shifted, 2)])[0]() == 9


def test_a_class_made_at_run_time_travels_by_value() -> None:
    made = type("Made", (), {"twice": lambda self, x: 2 * x})
    assert back(made()).twice(4) == 8


def test_arrays_travel_in_their_own_frames() -> None:
    array = np.arange(100_000, dtype=np.int64)
    frames = SERIALIZER.dumps({"a": array})
    assert len(frames) == 2 and memoryview(frames[1]).nbytes == array.nbytes
    assert np.array_equal(SERIALIZER.loads(frames)["a"], array)

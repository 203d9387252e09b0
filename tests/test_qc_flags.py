"""Winsor caps (fit on the rows given, clip with NaN kept) and flag rules (parser, precedence, missing values)."""

from __future__ import annotations

import numpy as np
import pytest

from scada_tcn.runtime.errors import InputError, SpecError
from scada_tcn.runtime.flags import compile_rules
from scada_tcn.runtime.qc import apply_winsor, fit_winsor_caps
from scada_tcn.runtime.spec import PipelineSpec
from tests.test_binning import CHANNELS, PW, WD, WS
from tests.test_binning import make_spec as make_binning_spec

NAN = np.nan


def make_spec(flag_rules: dict[str, str]) -> PipelineSpec:
    """The binning tests' spec with other flag rules."""
    return make_binning_spec(flag_names=list(flag_rules), flag_rules=dict(flag_rules))


# ---------------------------------------------------------------- winsor caps


def test_caps_are_fitted_only_from_the_rows_given():
    rng = np.random.default_rng(0)
    values = np.column_stack([rng.uniform(0, 10, 1000), rng.normal(0, 1, 1000), np.zeros((1000, 3))])
    values[600:, WS] = 1000.0  # "test" rows with extreme values
    values[rng.random(1000) < 0.1, PW] = NAN
    train = values[:600]
    caps = fit_winsor_caps(train, CHANNELS, {"wind_speed": (0.01, 0.99), "power": (0.05, 0.95)})
    assert set(caps) == {"wind_speed", "power"}
    assert caps["wind_speed"] == pytest.approx(tuple(np.quantile(train[:, WS], [0.01, 0.99])))
    assert caps["wind_speed"][1] < 10.0  # the extreme test rows did not leak in
    assert caps["power"] == pytest.approx(tuple(np.quantile(train[~np.isnan(train[:, PW]), PW], [0.05, 0.95])))
    assert all(isinstance(x, float) for lo_hi in caps.values() for x in lo_hi)
    all_rows = fit_winsor_caps(values, CHANNELS, {"wind_speed": (0.01, 0.99)})
    assert all_rows["wind_speed"][1] == 1000.0  # fitting on everything would have


def test_fit_refuses_empty_channels_unknown_names_and_bad_quantiles():
    values = np.array([[1.0, NAN, 0, 0, 0], [2.0, NAN, 0, 0, 0]])
    with pytest.raises(InputError, match="'power' has no present value"):
        fit_winsor_caps(values, CHANNELS, {"power": (0.01, 0.99)})
    with pytest.raises(SpecError, match="unknown channels \\['rotor'\\]"):
        fit_winsor_caps(values, CHANNELS, {"rotor": (0.01, 0.99)})
    with pytest.raises(SpecError, match="0 <= low <= high <= 1"):
        fit_winsor_caps(values, CHANNELS, {"wind_speed": (0.9, 0.1)})
    with pytest.raises(InputError, match="inf"):
        fit_winsor_caps(np.array([[np.inf, 0, 0, 0, 0]]), CHANNELS, {"wind_speed": (0.0, 1.0)})
    with pytest.raises(InputError, match=r"\(T, 5\)"):
        fit_winsor_caps(np.zeros((3, 4)), CHANNELS, {"wind_speed": (0.0, 1.0)})


def test_apply_winsor_clips_keeps_nan_and_returns_a_new_array():
    values = np.array([[-5.0, 100.0, 350.0, 0, 0], [3.0, NAN, 10.0, 0, 0], [50.0, -7.0, 1.0, 0, 0]])
    before = values.copy()
    out = apply_winsor(values, CHANNELS, {"wind_speed": (0.0, 25.0), "power": (-1.0, 50.0)})
    np.testing.assert_array_equal(out[:, WS], [0.0, 3.0, 25.0])
    np.testing.assert_array_equal(out[:, PW], [50.0, NAN, -1.0])
    np.testing.assert_array_equal(out[:, WD:], values[:, WD:])  # uncapped channels untouched
    np.testing.assert_array_equal(values, before)  # caller array not modified
    assert out is not values and out.dtype == np.float64
    with pytest.raises(SpecError, match="unknown channels"):
        apply_winsor(values, CHANNELS, {"rotor": (0.0, 1.0)})
    with pytest.raises(SpecError, match="low 2.0 must be <= high 1.0"):
        apply_winsor(values, CHANNELS, {"power": (2.0, 1.0)})


# ---------------------------------------------------------------- flags


def test_flag_rules_evaluate_per_row_in_flag_order():
    flags = compile_rules(
        make_spec({"curtailed": "power <= 0 and wind_speed > 4", "stopped": "status == 2 or status == 3"})
    )
    values = np.array(
        [
            [5.0, 0.0, 0, 0, 2],  # curtailed and stopped
            [3.0, -1.0, 0, 0, 3],  # low wind: not curtailed; stopped
            [6.0, 10.0, 0, 0, 1],  # neither
            [4.0, -1.0, 0, 0, 0],  # wind_speed > 4 is strict
        ]
    )
    out = flags.evaluate(values)
    assert out.dtype == np.float32 and out.shape == (4, 2)
    np.testing.assert_array_equal(out, [[1, 1], [0, 1], [0, 0], [0, 0]])
    np.testing.assert_array_equal(flags.evaluate(values[1:2]), [[0, 1]])  # one row works the same


def test_and_binds_tighter_than_or():
    flags = compile_rules(make_spec({"f": "status == 1 or power > 0 and wind_speed > 4"}))
    values = np.array(
        [
            [0.0, -1.0, 0, 0, 1],  # status == 1 alone: true only if `and` binds tighter
            [5.0, 1.0, 0, 0, 0],
            [0.0, 1.0, 0, 0, 0],
        ]
    )
    np.testing.assert_array_equal(flags.evaluate(values)[:, 0], [1, 1, 0])


def test_all_operators_and_bare_channel():
    rules = {
        "lt": "power < 1",
        "le": "power <= 1",
        "gt": "power > 1",
        "ge": "power >= 1",
        "eq": "power == 1",
        "ne": "power != 1",
        "bare": "status",
        "neg": "power >= -2.5e0",
    }
    flags = compile_rules(make_spec(rules))
    values = np.array([[0, 0.0, 0, 0, 0], [0, 1.0, 0, 0, 7], [0, 2.0, 0, 0, -1], [0, -3.0, 0, 0, 0]])
    np.testing.assert_array_equal(
        flags.evaluate(values),
        [[1, 1, 0, 0, 0, 1, 0, 1], [0, 1, 0, 1, 1, 0, 1, 1], [0, 0, 1, 1, 0, 1, 1, 1], [1, 1, 0, 0, 0, 1, 0, 0]],
    )


def test_a_clause_on_a_missing_value_is_false():
    flags = compile_rules(
        make_spec(
            {
                "ne": "power != 1",
                "bare": "status",
                "or": "power > 0 or status == 0",
                "and": "wind_speed >= 0 and power < 5",
            }
        )
    )
    values = np.array([[2.0, NAN, 0, 0, NAN], [NAN, 3.0, 0, 0, NAN]])
    np.testing.assert_array_equal(flags.evaluate(values), [[0, 0, 0, 0], [1, 0, 1, 0]])


def test_flags_compare_in_float64_whatever_the_input_dtype():
    flags = compile_rules(make_spec({"f": "power > 0.1"}))
    values = np.array([[0, 0.1, 0, 0, 0]], dtype=np.float32)  # float32(0.1) > 0.1 in float64
    assert flags.evaluate(values)[0, 0] == 1.0
    assert flags.evaluate(values.astype(np.float64))[0, 0] == 1.0


@pytest.mark.parametrize(
    "rule, message",
    [
        ("rotor > 1", "unknown channel 'rotor'"),
        ("power > ", "expected a number after '>'"),
        ("power >> 1", "expected a number after '>'"),
        ("power > 1.2.3", "bad number '1.2.3'"),
        ("power > 4and status", "bad token"),
        ("power > nan", "expected a number"),
        ("(power > 1)", "bad token"),
        ("power > 1 and", "expected a channel name, got 'end of rule'"),
        ("or power > 1", "expected a channel name, got 'or'"),
        ("power 3", "expected 'and', 'or' or end of rule"),
        ("power > 1 xor status", "expected 'and', 'or' or end of rule, got 'xor'"),
        ("__import__('os')", "bad token"),
        ("  ", "non-empty"),
    ],
)
def test_bad_rules_raise_spec_error_naming_rule_and_problem(rule, message):
    with pytest.raises(SpecError, match="flag 'bad'") as err:
        compile_rules(make_spec({"ok": "status", "bad": rule}))
    assert message in str(err.value)


def test_evaluate_refuses_wrong_shapes_and_does_not_mutate():
    flags = compile_rules(make_spec({"f": "status >= 2"}))
    with pytest.raises(InputError, match=r"\(T, 5\)"):
        flags.evaluate(np.zeros(5))
    with pytest.raises(InputError, match=r"\(T, 5\)"):
        flags.evaluate(np.zeros((2, 4)))
    values = np.array([[0, 0, 0, 0, NAN], [0, 0, 0, 0, 2.0]])
    before = values.copy()
    np.testing.assert_array_equal(flags.evaluate(values)[:, 0], [0, 1])
    np.testing.assert_array_equal(values, before)

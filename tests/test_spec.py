"""Spec strings and the Table I presets: parsing, errors, every preset builds and runs."""

import pytest
import torch

from dcgmm import DCGMM, PRESETS, ModelConfig
from dcgmm.errors import SpecError
from dcgmm.spec import build_layers, parse

EXPECTED_TOP = {"1L": (1, 1, 25), "2L-a": (1, 1, 36), "2L-b": (1, 1, 36), "2L-c": (1, 1, 36), "2L-d": (1, 1, 36),
                "2L-e": (1, 1, 36), "3L-a": (1, 1, 49), "3L-b": (1, 1, 25), "2L-c64": (1, 1, 36)}


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_and_runs(name):
    model = DCGMM.from_spec(name)
    assert model.layers[-1].out_shape == EXPECTED_TOP[name]
    x = torch.rand(3, 28, 28, 1)
    outputs = model(x)
    assert outputs[-1].shape == (3, *EXPECTED_TOP[name])
    lls = model.log_likelihoods(x)
    assert [ll.per_position.shape[1:] for ll in lls] == [model.layers[ll.layer].out_shape[:2] for ll in lls]
    assert all(torch.isfinite(torch.as_tensor(ll.per_image)).all() for ll in lls)


def test_spec_string_round_trip_and_case():
    spec = "F(8,8,2,2) G(25) F(11,11,1,1) G(36) C(10)"
    model = DCGMM.from_spec(spec)
    assert model.spec == spec
    assert DCGMM.from_spec("2l-c").spec == PRESETS["2L-c"]
    assert DCGMM.from_spec("2l-C64").spec == "F(8,8,2,2) G(64) F(11,11,1,1) G(36)"
    assert [str(s) for s in parse("f(3, 3, 1, 1)  g(4)  p(2,2)")] == ["F(3,3,1,1)", "G(4)", "P(2,2)"]


@pytest.mark.parametrize(
    "spec,message",
    [
        ("F(8,8,2) G(25)", "has 3 argument"),
        ("X(3) G(2)", "unknown layer type"),
        ("F(8,8,2,2) G(25", "cannot read"),
        ("", "unknown architecture"),
        ("F(a,b,1,1) G(2)", "must be integers"),
        ("C(10) G(25)", "must be the last layer"),
        ("F(28,28,1,1)", "no GMM layer"),
        ("F(30,30,1,1) G(2)", "larger than its 28x28 input"),
        ("F(8,8,2,2) G(0)", "must be positive"),
        ("F(8,8,2,2) + G(5)", "cannot read '\\+'"),
        ("2L-z", "unknown architecture"),
    ],
)
def test_malformed_specs_are_rejected_clearly(spec, message):
    with pytest.raises(SpecError, match=message):
        build_layers(spec, (28, 28, 1))


def test_non_square_and_colour_inputs():
    with pytest.warns(UserWarning, match="leaves some pixels uncovered"):
        model = DCGMM(ModelConfig("F(4,3,2,2) G(9) F(5,4,1,1) G(4)", (13, 11, 3)))
    assert [l.out_shape for l in model.layers] == [(5, 5, 36), (5, 5, 9), (1, 2, 180), (1, 2, 4)]
    assert model(torch.rand(2, 13, 11, 3))[-1].shape == (2, 1, 2, 4)


def test_the_papers_table_one_is_kept_apart_from_the_librarys_default():
    from dcgmm import TABLE_I
    from dcgmm.cli import DEFAULT_ARCH
    from dcgmm.experiments import ExperimentConfig
    assert list(TABLE_I) == ["1L", "2L-a", "2L-b", "2L-c", "2L-d", "2L-e", "3L-a", "3L-b"]
    assert DEFAULT_ARCH not in TABLE_I and PRESETS == {**TABLE_I, DEFAULT_ARCH: PRESETS[DEFAULT_ARCH]}
    assert ExperimentConfig().archs == list(TABLE_I)  # the paper's experiments run the paper's models

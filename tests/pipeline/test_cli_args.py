"""The shared argparse types accept what they promise and refuse the rest with a reason."""

from __future__ import annotations

import argparse

import pytest

from datadiet.pipeline.cli_args import fraction, non_negative_float, non_negative_int, positive_int


@pytest.mark.parametrize(("parse", "text", "value"), [
    (positive_int, "3", 3), (non_negative_int, "0", 0),
    (non_negative_float, "0.5", 0.5), (fraction, "1", 1.0), (fraction, "0.25", 0.25),
])
def test_accepts(parse, text, value) -> None:
    assert parse(text) == value


@pytest.mark.parametrize(("parse", "text", "says"), [
    (positive_int, "0", "at least 1"), (positive_int, "x", "whole number"),
    (non_negative_int, "-1", "at least 0"), (non_negative_int, "1.5", "whole number"),
    (non_negative_float, "nan", "at least 0"), (non_negative_float, "-2", "at least 0"),
    (fraction, "0", "in (0, 1]"), (fraction, "1.5", "in (0, 1]"), (fraction, "half", "a number"),
])
def test_refuses_with_the_rule(parse, text, says) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=rf"{says.replace('(', '[(]')}"):
        parse(text)

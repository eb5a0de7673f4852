"""Input scaling: one global shift/scale for one channel, per channel (or feature) otherwise, against closed forms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tricklab.tricks.scaling import Scaler, fit_scaler


def colour_images(n: int = 64) -> torch.Tensor:
    """uint8 (n, 3, 5, 6) images whose three channels have clearly different ranges and spreads."""
    g = torch.Generator().manual_seed(0)
    x = torch.stack(
        [
            torch.randint(0, 256, (n, 5, 6), generator=g),
            torch.randint(100, 140, (n, 5, 6), generator=g),
            torch.randint(7, 60, (n, 5, 6), generator=g),
        ],
        dim=1,
    )
    return x.to(torch.uint8)


def per_channel_numpy(x: torch.Tensor) -> np.ndarray:
    """(C, N·positions) float64: each row holds every value of one channel."""
    a = x.numpy().astype(np.float64)
    return np.moveaxis(a, 1, 0).reshape(a.shape[1], -1)


def test_standardize_fits_each_channel_of_colour_images_with_the_closed_form():
    x = colour_images()
    rows = per_channel_numpy(x)

    s = fit_scaler(x, "standardize")

    np.testing.assert_allclose(s.shift, rows.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(s.scale, rows.std(axis=1, ddof=1), rtol=1e-12)
    y = s.apply(x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    torch.testing.assert_close(y.double().mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.double().std(dim=(0, 2, 3)), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (rows.mean(axis=1), rows.std(axis=1, ddof=1)))
    torch.testing.assert_close(y, ((x.double() - mean) / std).float())


@pytest.mark.parametrize(
    ("kind", "low", "high"),
    [("minmax01", 0.0, 1.0), ("minmax11", -1.0, 1.0)],
)
def test_minmax_maps_each_channel_onto_the_range(kind, low, high):
    x = colour_images()
    rows = per_channel_numpy(x)
    lo, hi = rows.min(axis=1), rows.max(axis=1)

    s = fit_scaler(x, kind)

    shift, scale = (lo, hi - lo) if kind == "minmax01" else ((hi + lo) / 2, (hi - lo) / 2)
    np.testing.assert_allclose(s.shift, shift)
    np.testing.assert_allclose(s.scale, scale)
    y = s.apply(x)
    assert y.amin(dim=(0, 2, 3)).tolist() == [low] * 3
    assert y.amax(dim=(0, 2, 3)).tolist() == [high] * 3


def test_tabular_inputs_are_scaled_per_feature_and_a_constant_feature_is_not_divided_by_zero():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 4, generator=g) * torch.tensor([1.0, 10.0, 0.1, 1.0]) + torch.tensor([0.0, 5.0, -3.0, 0.0])
    x[:, 3] = 7.0  # constant on the training split

    for kind in ("standardize", "minmax01", "minmax11"):
        s = fit_scaler(x, kind)
        assert len(s.shift) == len(s.scale) == 4 and s.scale[3] == 1.0, (kind, s)
        y = s.apply(x)
        assert torch.isfinite(y).all(), kind
    s = fit_scaler(x, "standardize")
    np.testing.assert_allclose(s.shift[:3], x[:, :3].double().mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(s.scale[:3], x[:, :3].double().std(0).numpy(), rtol=1e-12)
    assert (s.apply(x)[:, 3] == 0).all()


def test_a_single_example_is_scaled_without_nan():
    s = fit_scaler(torch.randn(1, 3), "standardize")
    assert s.scale == (1.0, 1.0, 1.0)


def old_scaling(x: torch.Tensor, kind: str) -> tuple[float, float, torch.Tensor]:
    """The formula before per-channel scaling: one shift and scale for the whole input."""
    if kind == "standardize":
        shift, scale = float(x.double().mean()), float(x.double().std()) or 1.0
    elif kind == "minmax01":
        lo, hi = float(x.min()), float(x.max())
        shift, scale = lo, (hi - lo) or 1.0
    elif kind == "minmax11":
        lo, hi = float(x.min()), float(x.max())
        shift, scale = (hi + lo) / 2, ((hi - lo) / 2) or 1.0
    else:
        shift, scale = 0.0, 1.0
    return shift, scale, ((x.to(torch.float32) - shift) / scale).to(torch.float32)


@pytest.mark.parametrize("kind", ["none", "minmax01", "minmax11", "standardize"])
@pytest.mark.parametrize("shape", [(40, 1, 28, 28), (40, 1, 40), (40,)], ids=["mnist", "mnist1d", "flat"])
def test_single_channel_inputs_keep_one_global_scaling_bit_for_bit(kind, shape):
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, shape, generator=g).to(torch.uint8) if len(shape) == 4 else torch.randn(shape)

    s = fit_scaler(x, kind)

    shift, scale, y = old_scaling(x, kind)
    assert isinstance(s.shift, float) and isinstance(s.scale, float)
    assert (s.shift, s.scale) == (shift, scale)
    assert torch.equal(s.apply(x), y)


def test_scaler_json_round_trips_and_old_files_still_load():
    colour = fit_scaler(colour_images(), "standardize")
    grey = fit_scaler(torch.randn(10, 1, 4, 4), "minmax01")

    for s in (colour, grey):
        d = json.loads(json.dumps(s.to_dict()))
        assert set(d) == {"kind", "shift", "scale"}
        assert Scaler.from_dict(d) == s
    assert isinstance(colour.to_dict()["shift"], list) and len(colour.to_dict()["scale"]) == 3
    old = Scaler.from_dict({"kind": "standardize", "shift": 33.3, "scale": 78.6})  # a scaler.json of before
    assert old == Scaler("standardize", 33.3, 78.6)

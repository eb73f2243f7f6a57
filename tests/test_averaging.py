"""The shared EMA copy and gradient clipping of the diffusion methods."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adlab.models.averaging import ema_copy


def test_ema_copy_off_frozen_and_validated() -> None:
    net = nn.Linear(2, 2)
    assert ema_copy(net, 0.0, warmup=True) is None
    ema = ema_copy(net, 0.5, warmup=False)
    assert ema is not None and not any(p.requires_grad for p in ema.parameters())
    with torch.no_grad():
        net.weight.add_(1.0)
    before = ema.module.weight.clone()
    ema.update_parameters(net)  # the first update copies; the second averages with decay 0.5
    ema.update_parameters(net)
    torch.testing.assert_close(ema.module.weight, net.weight)
    assert not torch.equal(before, ema.module.weight)
    with pytest.raises(ValueError) as err:
        ema_copy(net, 1.0, warmup=True)
    assert str(err.value) == "ema_decay=1.0: expected 0 (off) or a decay in (0, 1)"

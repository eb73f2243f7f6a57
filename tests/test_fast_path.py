"""FastPath callback: channels_last / torch.compile keep the outputs, options are validated."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch

from adlab.callbacks.fast_path import FastPath
from adlab.models.autoencoder import AutoEncoder, AutoEncoderModule


def _trainer(device: str = "cpu", precision: str = "32-true") -> SimpleNamespace:
    return SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device(device)), precision=precision
    )


def _module() -> AutoEncoderModule:
    torch.manual_seed(0)
    net = AutoEncoder(widths=(8, 16), latent_channels=4)
    return AutoEncoderModule(net, functools.partial(torch.optim.Adam, lr=1e-3)).eval()


def _outputs(module: AutoEncoderModule, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval map and train-mode loss gradient of the first conv (forward + backward)."""
    with torch.no_grad():
        anomaly_map = module.predict_anomaly(x).anomaly_map
    module.train()
    module.zero_grad()
    torch.nn.functional.mse_loss(module.net(x), x).backward()
    grad = module.net.encoder[0][0].weight.grad.clone()
    module.eval()
    return anomaly_map, grad


def test_channels_last_keeps_outputs_and_state_dict_keys() -> None:
    x = torch.rand(2, 3, 16, 16)
    reference, fast = _module(), _module()
    FastPath(channels_last=True, compile=False).setup(_trainer(), fast, "fit")
    weight = fast.net.encoder[0][0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert fast.state_dict().keys() == reference.state_dict().keys()
    for a, b in zip(_outputs(reference, x), _outputs(fast, x), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_compile_keeps_outputs_and_state_dict_keys() -> None:
    """Eval forward only: one compiled graph keeps the test cheaper than fwd + bwd."""
    x = torch.rand(2, 3, 16, 16)
    reference, fast = _module(), _module()
    FastPath(channels_last=False, compile=True).setup(_trainer(), fast, "test")
    assert fast.state_dict().keys() == reference.state_dict().keys()
    with torch.no_grad():
        expected = reference.predict_anomaly(x).anomaly_map
        torch.testing.assert_close(
            fast.predict_anomaly(x).anomaly_map, expected, atol=1e-5, rtol=1e-4
        )


def test_auto_follows_the_method_and_setup_converts_once() -> None:
    module, callback = _module(), FastPath()
    expected = "channels_last" in AutoEncoderModule.fast_path_auto
    assert callback.enabled("channels_last", module) is expected
    assert callback.enabled("compile", module) is ("compile" in AutoEncoderModule.fast_path_auto)
    callback.setup(_trainer(), module, "fit")
    callback.setup(_trainer(), module, "test")
    assert (
        module.net.encoder[0][0].weight.is_contiguous(memory_format=torch.channels_last) is expected
    )


def test_bad_options_bf16_on_cpu_and_non_module_names_are_refused() -> None:
    with pytest.raises(ValueError, match="fast_path.compile must be true, false or auto"):
        FastPath(compile="fast")
    with pytest.raises(ValueError, match="bf16-mixed on a CPU"):
        FastPath().setup(_trainer(precision="bf16-mixed"), _module(), "fit")
    module = _module()
    module.fast_path_modules = ("ssim_window",)
    with pytest.raises(TypeError, match="names 'ssim_window', which is a int"):
        FastPath().setup(_trainer(), module, "fit")


def test_fused_optimizer_only_where_the_class_accepts_it() -> None:
    module = _module()
    FastPath._fuse_optimizer(module)
    assert module.optimizer_factory.keywords == {"lr": 1e-3, "fused": True}
    module.optimizer_factory = functools.partial(torch.optim.LBFGS, lr=1.0)
    FastPath._fuse_optimizer(module)
    assert module.optimizer_factory.keywords == {"lr": 1.0}

"""FastPath callback: channels_last / torch.compile keep the outputs, options are validated."""

from __future__ import annotations

import functools
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from adlab import host_memory
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
    with pytest.raises(ValueError, match="fast_path.reuse_host_memory must be true, false or auto"):
        FastPath(reuse_host_memory="yes")


def test_reuse_host_memory_off_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto skips a non-glibc process, true refuses it with the option to change."""
    monkeypatch.setattr(host_memory, "_mallopt", lambda: None)
    callback = FastPath(channels_last=False)
    callback.setup(_trainer(), _module(), "fit")
    assert not callback._keeping_memory
    with pytest.raises(RuntimeError, match="reuse_host_memory=false"):
        FastPath(channels_last=False, reuse_host_memory=True).setup(_trainer(), _module(), "fit")


FAULTS = """
import resource, torch
from adlab import host_memory

def faults(blocks=16):  # allocate, fill and free a 64 MiB tensor `blocks` times
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(blocks):
        torch.ones(16 * 2**20)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

default = faults()
host_memory.keep_freed_memory(True)
faults(6)  # the heap grows (one to three times: small Python objects land after a block)
print(default, faults())
"""


@pytest.mark.skipif(not host_memory.available(), reason="tunes glibc malloc (Linux)")
def test_reuse_host_memory_keeps_freed_blocks() -> None:
    """glibc maps every 64 MiB block afresh (16 Ki faults each with 4 KiB pages, 32 with 2 MiB
    ones); kept, the block is reused from the heap. A fresh process: this one's heap depends on
    the tests before."""
    out = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, check=True)
    default, kept = map(int, out.stdout.split())
    assert kept * 3 < default, (default, kept)


def test_reuse_host_memory_from_setup_to_teardown(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(host_memory, "_mallopt", lambda: lambda *call: calls.append(call) or 1)
    callback, module = FastPath(channels_last=False), _module()
    callback.setup(_trainer(), module, "fit")
    assert calls == list(host_memory.KEEP.items())
    for _ in range(2):  # the second teardown has nothing to restore
        callback.teardown(_trainer(), module, "fit")
    assert calls[2:] == list(host_memory.GLIBC_DEFAULTS.items())
    FastPath(channels_last=False, reuse_host_memory=False).setup(_trainer(), module, "fit")
    assert len(calls) == 4


def test_fused_optimizer_only_where_the_class_accepts_it() -> None:
    module = _module()
    FastPath._fuse_optimizer(module)
    assert module.optimizer_factory.keywords == {"lr": 1e-3, "fused": True}
    module.optimizer_factory = functools.partial(torch.optim.LBFGS, lr=1.0)
    FastPath._fuse_optimizer(module)
    assert module.optimizer_factory.keywords == {"lr": 1.0}

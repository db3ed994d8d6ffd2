"""Device names: parsed with an error naming the field, resolved against what this machine has."""

from __future__ import annotations

import pytest
import torch

from mmlib.core.devices import parse_device, resolve_device
from mmlib.core.errors import ConfigError


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu", 3.5, None, ""])
def test_parse_device_names_the_field(device):
    with pytest.raises(ConfigError, match="Profile.device must be"):
        parse_device(device, "Profile.device")


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps", torch.device("cpu")])
def test_parse_device_accepts_device_names(device):
    assert parse_device(device) == str(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_refuses_a_device_this_machine_lacks():
    with pytest.raises(ConfigError, match="EmbedConfig.device is 'cuda:0' but torch sees no CUDA device"):
        resolve_device("cuda:0", "EmbedConfig.device")
    assert resolve_device("cpu") == torch.device("cpu")

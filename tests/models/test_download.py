"""Weights fetching with the network unreachable: one attempt, one error line naming the file and the flag."""
import socket
import time
from urllib.parse import urlsplit

import pytest

from sportsnet.models.clip import load_clip
from sportsnet.models.download import WeightsUnavailable, fetch_hf_file, hf_endpoint, unreachable
from tests.support import clip_tiny

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@pytest.fixture
def no_network(monkeypatch):
    """Name lookups fail, as on a machine without a network; returns the list of hosts looked up."""
    looked_up = []

    def getaddrinfo(host, *args, **kwargs):
        looked_up.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # conftest sets it; here the network itself is gone
    for name in PROXY_VARIABLES:  # a developer's proxy would be what is looked up
        monkeypatch.delenv(name, raising=False)
    return looked_up


@clip_tiny.needs_open_clip
def test_an_unreachable_hub_costs_one_lookup_and_one_line(tmp_path, no_network):
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as info:
        load_clip("RN50", "openai", cache_dir=str(tmp_path))
    assert time.perf_counter() - t0 < 10  # huggingface_hub's own retries took about a minute
    hub = urlsplit(hf_endpoint()).hostname  # huggingface.co, or the HF_ENDPOINT mirror
    assert no_network == [hub]
    message = str(info.value)
    assert "\n" not in message and f"cannot resolve {hub}" in message
    assert "https://huggingface.co/timm/resnet50_clip.openai/resolve/main/open_clip_pytorch_model.bin" in message
    assert "--pretrained /path/to/that/file" in message


@clip_tiny.needs_open_clip
def test_hf_hub_offline_means_the_cache_or_nothing(tmp_path, no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match="HF_HUB_OFFLINE is set"):
        load_clip("RN50", "openai", cache_dir=str(tmp_path))
    assert no_network == []


def test_a_cached_file_is_used_without_the_network(tmp_path, no_network):
    snapshot = tmp_path / "models--org--tiny" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    (tmp_path / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "models--org--tiny" / "refs" / "main").write_text("0" * 40)
    path = fetch_hf_file("org/tiny", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"],
                         cache_dir=str(tmp_path), what="the tiny weights", manual="(manual)")
    assert path.endswith("open_clip_pytorch_model.bin") and no_network == []


def test_imagenet_weights_offline_fail_before_the_run_folder_exists(tmp_path, no_network, monkeypatch):
    from sportsnet.apps import train_vgg19

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(SystemExit) as info:
        train_vgg19.main(["--data", "synthetic", "--synthetic-root", str(tmp_path / "syn"),
                          "--out", str(tmp_path / "runs"), "--weights", "imagenet", "--width", "1.0", "--no-batch-norm",
                          "--no-progress", "--name", "offline"])
    message = str(info.value)
    assert message.startswith("error: the ImageNet weights of vgg19 are not on this machine, and cannot resolve "
                              "download.pytorch.org") and "\n" not in message
    assert "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth" in message
    assert f"put it at {tmp_path / 'torch' / 'hub' / 'checkpoints' / 'vgg19-dcbb9e9d.pth'}" in message
    assert "--weights /path/to/vgg19-dcbb9e9d.pth" in message
    assert no_network == ["download.pytorch.org"]
    assert not (tmp_path / "runs" / "offline").exists()


def test_reachability_is_one_bounded_attempt():
    with socket.socket() as server:  # a port that listens: reachable
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert unreachable(f"http://127.0.0.1:{server.getsockname()[1]}/x") is None
    with socket.socket() as closed:  # a port nobody listens on: refused at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    why = unreachable(f"http://127.0.0.1:{port}/x", timeout=2)
    assert why.startswith(f"cannot connect to 127.0.0.1:{port}")


def test_behind_a_proxy_the_proxy_is_what_must_answer(monkeypatch):
    for name in PROXY_VARIABLES + ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    message = unreachable("https://huggingface.co/x", timeout=2)
    assert message.startswith(f"cannot connect to the proxy 127.0.0.1:{port}")
    with socket.socket() as proxy:  # a proxy that answers: the site is taken as reachable through it
        proxy.bind(("127.0.0.1", 0))
        proxy.listen()
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.getsockname()[1]}")
        assert unreachable("https://huggingface.co/x") is None

"""sportsnet.models.clip: load_clip from tags, local files and 'none'; clear errors; preprocessing from the model."""
import pytest
import torch
from PIL import Image

from sportsnet.models.clip import _resolve_name, load_clip
from tests.support import clip_tiny
from tests.support.trees import write_malicious_pickle

clip_tiny.register()


@pytest.fixture(scope="module")
def bundle():
    torch.manual_seed(0)
    return load_clip("tiny-vit-test", "none")


@clip_tiny.needs_open_clip
def test_local_checkpoints_load_and_mismatches_are_named(bundle, tmp_path, caplog):
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in bundle.model.state_dict().items()}}, path)
    again = load_clip("tiny-vit-test", str(path))
    # A file cannot say whether it was trained with QuickGELU; a -quickgelu variant exists, so say so.
    assert "use tiny-vit-test-quickgelu" in caplog.text
    caplog.clear()
    load_clip("tiny-vit-test-quickgelu", str(path))
    assert "QuickGELU" not in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), bundle.model.state_dict().values()))
    with pytest.raises(ValueError, match="does not fit tiny-rn-test: .*shape mismatches|missing"):
        load_clip("tiny-rn-test", str(path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_clip("tiny-vit-test", str(tmp_path / "missing.pt"))


@clip_tiny.needs_open_clip
def test_offline_tags_and_bad_names_give_clear_errors(tmp_path):  # conftest sets HF_HUB_OFFLINE=1
    with pytest.raises(FileNotFoundError, match=r"HF_HUB_OFFLINE is set\. Download https://huggingface\.co/.*"
                                                r"open_clip_pytorch_model\.bin where there is a network and pass its "
                                                r"path: --pretrained"):
        load_clip("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="'bogus' is neither a pretrained tag of ViT-B-32"):
        load_clip("ViT-B-32", "bogus")
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Z-99'"):
        load_clip("ViT-Z-99", "none")


@clip_tiny.needs_open_clip
def test_openai_weights_get_the_quickgelu_architecture():
    import open_clip

    cfg = open_clip.get_pretrained_cfg("ViT-B-32", "openai")
    assert _resolve_name(open_clip, "ViT-B-32", cfg) == ("ViT-B-32-quickgelu", False)
    assert _resolve_name(open_clip, "ViT-B-32", open_clip.get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")) == \
        ("ViT-B-32", False)


@clip_tiny.needs_open_clip
def test_preprocessing_comes_from_the_model(bundle):
    assert bundle.image_size == 32 and bundle.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert bundle.interpolation.value == "bicubic"

    x = bundle.transforms(False)(Image.new("RGB", (80, 50), (255, 0, 0)))
    assert x.shape == (3, 32, 32)


@clip_tiny.needs_open_clip
def test_a_clip_weights_pickle_that_runs_code_is_refused(tmp_path):
    evil, marker = tmp_path / "open_clip_pytorch_model.bin", tmp_path / "pwned"
    write_malicious_pickle(evil, "x", marker, nest="state_dict")
    with pytest.raises(RuntimeError, match="refusing to load .*weights_only=True"):
        load_clip("tiny-vit-test", str(evil))
    assert not marker.exists()


def test_weights_files_that_do_not_load_say_why(tmp_path):
    from sportsnet.models.clip import read_weights_file
    from sportsnet.serialization import NotATorchFileError, WeightsFileError

    (tmp_path / "page.bin").write_text("<html>rate limited</html>")
    with pytest.raises(NotATorchFileError, match=r"weights file '.*page\.bin' is not a torch file"):
        read_weights_file(tmp_path / "page.bin")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(WeightsFileError, match=r"weights file '.*bad\.safetensors' is not a readable safetensors file"):
        read_weights_file(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_weights_file(tmp_path / "gone.safetensors")
    torch.save({"epoch": 3, "model": {"w": [1, 2]}}, tmp_path / "lists.pt")
    with pytest.raises(ValueError, match="does not hold a state dict of tensors"):
        read_weights_file(tmp_path / "lists.pt")
    torch.save({"arch": "x", "state_dict": {"module.w": torch.ones(2)}}, tmp_path / "ok.pt")
    state, meta = read_weights_file(tmp_path / "ok.pt")
    assert list(state) == ["w"] and meta == {"arch": "x"}

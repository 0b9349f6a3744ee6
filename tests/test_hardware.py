"""sportsnet.hardware: every default decided from the hardware's answer, for each answer."""
import json
import os
import platform
import subprocess
import sys

import pytest
import torch

from sportsnet.hardware import (
    ISA_OVERRIDES,
    CpuInfo,
    GpuInfo,
    choose_channels_last,
    choose_precision,
    describe,
    hardware_line,
    native_bf16,
    probe_cpu,
)

AVX2 = CpuInfo("AMD EPYC 7B12", "AVX2", native_bf16=False, bf16_probe="oneDNN and CPU flags", onednn=True, threads=2)
CASCADE_LAKE = CpuInfo("Intel Xeon", "AVX512", native_bf16=False, bf16_probe="oneDNN and CPU flags", onednn=True,
                       threads=2)
SAPPHIRE_RAPIDS = CpuInfo("Intel Xeon", "AVX512", native_bf16=True, bf16_probe="oneDNN and CPU flags", onednn=True,
                          threads=2)
NO_ONEDNN = CpuInfo("some CPU", "DEFAULT", native_bf16=False, bf16_probe="CPU flags", onednn=False, threads=4)
T4, V100, A100, H100 = (GpuInfo("Tesla T4", (7, 5)), GpuInfo("Tesla V100", (7, 0)), GpuInfo("A100", (8, 0)),
                        GpuInfo("H100", (9, 0)))
P100, GTX1080 = GpuInfo("Tesla P100", (6, 0)), GpuInfo("GeForce GTX 1080", (6, 1))


@pytest.mark.parametrize("onednn, instructions, expected", [
    (True, True, True),     # Sapphire Rapids, Zen 4: AVX512_BF16 / AMX, and oneDNN uses them
    (True, False, False),   # Skylake to Ice Lake: oneDNN's own probe says yes for any AVX-512, but it emulates
    (False, True, False),   # a bf16 CPU under ONEDNN_MAX_CPU_ISA=AVX2
    (False, False, False),  # AVX2-only
    (None, True, True),     # a torch without oneDNN: the CPU flags alone
    (True, None, False),    # nothing tells what the CPU has: fp32, the safe side
])
def test_native_bf16_needs_both_the_instructions_and_onednn(onednn, instructions, expected):
    assert native_bf16(onednn, instructions)[0] is expected


@pytest.mark.parametrize("cpu, expected", [(AVX2, "fp32"), (CASCADE_LAKE, "fp32"), (SAPPHIRE_RAPIDS, "bf16"),
                                          (NO_ONEDNN, "fp32")])
def test_auto_precision_on_a_cpu_is_bf16_only_where_it_is_native(cpu, expected):
    choice = choose_precision("auto", "cpu", cpu=cpu)
    assert choice.value == expected
    assert str(choice).startswith(f"precision auto -> {expected}: this CPU has ")
    assert cpu.isa in choice.reason


def test_the_log_line_says_what_and_why():
    assert str(choose_precision("auto", "cpu", cpu=AVX2)) == (
        "precision auto -> fp32: this CPU has no native bf16 (AVX2; emulated bf16 is several times slower than fp32)")


@pytest.mark.parametrize("gpu, expected", [(T4, "fp16"), (V100, "fp16"), (P100, "fp16"), (GTX1080, "fp32"),
                                          (A100, "bf16"), (H100, "bf16")])
def test_auto_precision_on_cuda_is_bf16_from_ampere_else_fp16_where_fast(gpu, expected):
    choice = choose_precision("auto", "cuda", gpu=gpu)
    assert choice.value == expected and gpu.sm in choice.reason
    assert ("gradient scaler" in choice.reason) == (expected == "fp16")


def test_an_explicit_precision_is_kept_and_a_slow_one_is_named():
    assert choose_precision("fp32", "cpu", cpu=SAPPHIRE_RAPIDS).value == "fp32"
    slow = choose_precision("bf16", "cpu", cpu=AVX2)
    assert slow.value == "bf16" and "emulated" in slow.reason and str(slow).startswith("precision requested -> bf16")
    assert "emulated" not in choose_precision("bf16", "cpu", cpu=SAPPHIRE_RAPIDS).reason
    assert "slow on this GPU" in choose_precision("bf16", "cuda", gpu=T4).reason
    assert "slow on this GPU" in choose_precision("fp16", "cuda", gpu=GTX1080).reason
    assert choose_precision("fp16", "cuda", gpu=A100).value == "fp16"
    with pytest.raises(ValueError, match=r"precision='float32' is not one of \('auto', 'fp32', 'bf16', 'fp16'\)"):
        choose_precision("float32", "cpu", cpu=AVX2)


def test_devices_without_a_rule_get_fp32_and_nchw():
    assert choose_precision("auto", "meta", cpu=AVX2).value == "fp32"
    assert choose_channels_last(None, "meta", cpu=AVX2).value is False


@pytest.mark.parametrize("device, hw, expected", [
    ("cpu", AVX2, True), ("cpu", SAPPHIRE_RAPIDS, True), ("cpu", NO_ONEDNN, False),
    ("cuda", T4, True), ("cuda", V100, True), ("cuda", H100, True), ("cuda", P100, False),
])
def test_auto_channels_last_follows_the_device_class(device, hw, expected):
    kw = {"cpu": hw} if device == "cpu" else {"gpu": hw}
    choice = choose_channels_last(None, device, **kw)
    assert choice.value is expected
    assert str(choice).startswith(f"channels-last auto -> {'on' if expected else 'off'}: ")


def test_explicit_channels_last_wins():
    assert choose_channels_last(False, "cpu", cpu=SAPPHIRE_RAPIDS).value is False
    assert choose_channels_last(True, "cuda", gpu=P100).value is True


def test_the_probe_agrees_with_torch_and_describe_records_it():
    cpu = probe_cpu()
    assert cpu.isa == torch.backends.cpu.get_cpu_capability()
    if torch.backends.mkldnn.is_available() and cpu.native_bf16:  # native implies oneDNN's own yes
        assert torch.ops.mkldnn._is_mkldnn_bf16_supported()
    info = describe("cpu")
    assert info["cpu"]["isa"] == cpu.isa and info["cpu"]["native_bf16"] == cpu.native_bf16 and info["cpu"]["model"]
    line = hardware_line(info)
    assert f"{cpu.isa}, native bf16 {'yes' if cpu.native_bf16 else 'no'}" in line
    gpu = {**info, "gpu": {"name": "NVIDIA H100", "capability": "9.0", "native_bf16": True}}
    assert hardware_line(gpu).startswith("NVIDIA H100 (compute capability 9.0); host CPU ")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the ISA caps are x86 ISA names")
def test_capping_the_isa_at_avx2_makes_auto_pick_fp32():
    """What an AVX2-only machine answers, on any x86 host: oneDNN's probe honours the cap."""
    code = ("import json; from sportsnet.hardware import choose_precision, describe; "
            "print(json.dumps([choose_precision('auto', 'cpu').value, describe('cpu')]))")
    env = {k: v for k, v in os.environ.items() if k not in ISA_OVERRIDES}
    env.update(ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    precision, info = json.loads(out)
    assert precision == "fp32" and info["cpu"]["native_bf16"] is False and info["cpu"]["isa"] == "AVX2"
    assert info["isa_overrides"] == {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    assert "(capped by ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2)" in hardware_line(info)


def test_each_decision_is_logged_once_per_process():
    code = ("import logging; logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s'); "
            "from sportsnet.hardware import resolve_channels_last, resolve_precision; "
            "[resolve_precision('auto', 'cpu') for _ in range(3)]; resolve_precision('fp32', 'cpu'); "
            "resolve_channels_last(None, 'cpu')")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    lines = [line for line in err.splitlines() if line.startswith("sportsnet.hardware: ")]
    assert [line.split(": ", 1)[1].split(" -> ")[0] for line in lines] == [
        "precision auto", "precision requested", "channels-last auto"], err


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the ISA caps are x86 ISA names")
def test_a_onednn_cap_below_bf16_means_no_native_bf16_even_where_onednn_says_yes():
    """Capped at AVX512_CORE, oneDNN's own probe still says yes on an AVX-512 CPU (it emulates bf16)."""
    code = "from sportsnet.hardware import probe_cpu; print(probe_cpu().native_bf16)"
    env = {k: v for k, v in os.environ.items() if k not in ISA_OVERRIDES}
    env["ONEDNN_MAX_CPU_ISA"] = "AVX512_CORE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_device_names_resolve_or_fail_in_one_line(monkeypatch):
    from sportsnet.apps.config import device_from_flag
    from sportsnet.hardware import pick_device

    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"device 'cuda:1' but CUDA is not available here"):
        pick_device("cuda:1")
    with pytest.raises(ValueError, match=r"device 'gpu' is not a device name \(expected cpu, cuda, cuda:N or auto\)"):
        pick_device("gpu")
    with pytest.raises(SystemExit, match=r"^error: --device: device 'gpu' is not a device name"):
        device_from_flag("gpu")

"""Unit tests of lmkit.env (chapter 0)."""

import random
import sys

import numpy as np
import pytest
import torch

from lmkit import env


def test_pick_device_prefers_explicit_choice():
    assert env.pick_device("cpu") == "cpu"
    assert env.pick_device("cuda:1") == "cuda:1"


def test_pick_device_order(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert env.pick_device() == "cpu"
    assert env.pick_device("auto") == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert env.pick_device() == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert env.pick_device() == "cuda"


def test_seed_everything_repeats_every_generator():
    def draw():
        return random.random(), float(np.random.rand()), torch.randn(3).tolist()

    assert env.seed_everything(123) == 123
    first = draw()
    env.seed_everything(123)
    assert draw() == first
    env.seed_everything(124)
    assert draw() != first


def test_seed_everything_known_values():
    # The numbers chapter 0 shows: stable across machines for a given torch version.
    env.seed_everything(0)
    assert [round(v, 4) for v in torch.randn(3).tolist()] == [1.5410, -0.2934, -2.1788]


def test_in_colab(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert env.in_colab() is False
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20260101")
    assert env.in_colab() is True


def test_report_prints_table_and_returns_rows():
    lines = []
    rows = env.report(print_fn=lines.append)
    assert rows and all(isinstance(r, env.Row) for r in rows)
    names = {r.name for r in rows}
    assert {"python", "torch", "device", "transformers", "offline encoder"} <= names
    assert len(lines) == 1
    table = lines[0].splitlines()
    assert len(table) == len(rows) + 1
    assert all(line.startswith(("[OK]", "[FAIL]")) for line in table[:-1])
    assert table[-1].endswith("FAIL")
    # In the project's own environment everything is installed.
    assert [r for r in rows if not r.ok] == []


def test_report_default_prints(capsys):
    env.report()
    out = capsys.readouterr().out
    assert "[OK]" in out and "torch" in out


def test_report_silent(capsys):
    rows = env.report(print_fn=None)
    assert rows
    assert capsys.readouterr().out == ""


def test_missing_package_is_a_failure():
    row = env._package_row("no_such_module_xyz", "no-such-dist", "nothing")
    assert row.ok is False and row.value == "missing"


def test_format_rows_alignment():
    text = env.format_rows([env.Row(True, "a", "1", "x"), env.Row(False, "long name", "22")])
    lines = text.splitlines()
    assert lines[0] == "[OK]   a          1   x"
    assert lines[1] == "[FAIL] long name  22"
    assert lines[2] == "1 OK, 1 FAIL"


@pytest.mark.parametrize(
    "text,expected", [("2.13.0+cpu", (2, 13)), ("2.2.0a0", (2, 2)), ("3.1", (3, 1))]
)
def test_version_tuple(text, expected):
    assert env._version_tuple(text) == expected


# --- the device and precision policy (chapters 0 and 10) ---------------------------------------

T4 = ("cuda", "Tesla T4", (7, 5))
A100 = ("cuda", "NVIDIA A100-SXM4-80GB", (8, 0))
H100 = ("cuda", "NVIDIA H100 80GB HBM3", (9, 0))
M2 = ("mps", "Apple M2", None)
CPU = ("cpu", "", None)


@pytest.mark.parametrize(
    "props, dtype, scaler, compiled, peak",
    [
        (T4, "float16", True, True, 65e12),  # no bf16 tensor cores: fp16 with a loss scaler
        (A100, "bfloat16", False, True, 312e12),
        (H100, "bfloat16", False, True, 989e12),
        (M2, "float32", False, False, None),
        (CPU, "float32", False, False, None),
    ],
    ids=["T4", "A100", "H100", "M2", "CPU"],
)
def test_policy_of_five_devices(props, dtype, scaler, compiled, peak):
    policy = env.device_policy(*props)
    assert (policy.dtype, policy.grad_scaler, policy.compile) == (dtype, scaler, compiled)
    assert policy.peak_flops == peak
    assert policy.device == props[0] and policy.kind == props[0]
    assert policy.notes == ()  # nothing asked for was refused
    assert policy.dtype in policy.describe()


def test_policy_refuses_what_triton_cannot_compile():
    # bf16 asked for on a T4: kept (it runs, slowly), but Triton cannot compile bf16 below sm_80
    t4 = env.device_policy(*T4, dtype="bfloat16", compile=True)
    assert (t4.dtype, t4.compile) == ("bfloat16", False)
    assert any("bf16" in n for n in t4.notes) and any(
        "torch.compile skipped" in n for n in t4.notes
    )
    # no Triton installed (Windows wheels, some builds): eager, with one note when it was asked for
    assert env.device_policy(*H100, triton=False).compile is False
    assert env.device_policy(*H100, triton=False).notes == ()
    assert len(env.device_policy(*H100, triton=False, compile=True).notes) == 1
    p100 = env.device_policy("cuda", "Tesla P100-PCIE-16GB", (6, 0), compile=True)
    assert p100.compile is False and "7.0" in p100.notes[0]
    assert env.device_policy(*H100, compile=False).compile is False


def test_policy_keeps_explicit_choices():
    assert env.device_policy(*CPU, dtype="bfloat16").dtype == "bfloat16"
    assert env.device_policy(*CPU, compile=True).compile is True  # inductor's C++ backend
    assert env.device_policy(*M2, compile=True).compile is True
    assert env.device_policy(*A100, dtype="float32").dtype == "float32"
    assert env.device_policy(*A100, dtype="float16").grad_scaler is True
    assert env.device_policy(*CPU, dtype="float16").notes  # fp16 needs CUDA's scaler
    assert env.device_policy(*H100, device="cuda:1").device == "cuda:1"


def test_policy_rejects_what_it_does_not_know():
    with pytest.raises(ValueError, match="kind"):
        env.device_policy("tpu")
    with pytest.raises(ValueError, match="dtype"):
        env.device_policy(*CPU, dtype="float8")
    with pytest.raises(ValueError, match="capability"):
        env.device_policy("cuda", "Tesla T4")


def test_peak_flops_matches_names_exactly():
    assert env.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert env.peak_flops("NVIDIA H100 PCIe") == 756e12  # not scored as an SXM card
    assert env.peak_flops("NVIDIA H200") == 989e12
    assert env.peak_flops("NVIDIA A100-SXM4-40GB") == env.peak_flops("NVIDIA A100 80GB PCIe")
    assert env.peak_flops("NVIDIA L4") == 121e12
    assert env.peak_flops("NVIDIA L40S") == 362e12  # not an "L4"
    assert env.peak_flops("Tesla T4") == 65e12 and env.GPU_SPECS["Tesla T4"].peak_dtype == "float16"
    assert env.peak_flops("Tesla V100-SXM2-16GB") == 125e12
    assert env.peak_flops("H100 PCIe") == 756e12  # a table label works too
    assert env.peak_flops("NVIDIA H100") is None  # a prefix of a name is not a name
    assert env.peak_flops("Some Future GPU") is None
    labels = {g.label for g in env.GPU_SPECS.values()}
    want = {"H100 SXM", "H100 PCIe", "H200", "A100 40GB", "A100 80GB", "L4", "L40S", "T4"}
    assert want <= labels and {"V100 SXM2", "V100 PCIe"} <= labels


def test_current_policy_reads_this_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert env.current_policy() == env.device_policy("cpu")
    assert env.current_policy("cpu", dtype="bfloat16").dtype == "bfloat16"
    with pytest.raises(ValueError, match="CUDA is not available"):
        env.current_policy("cuda")


def test_current_policy_of_a_simulated_t4(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (7, 5))
    policy = env.current_policy()
    assert (policy.device, policy.name, policy.dtype, policy.grad_scaler) == (
        "cuda",
        "Tesla T4",
        "float16",
        True,
    )
    assert env.current_policy("cuda:1").device == "cuda:1"


def test_synchronize_waits_for_any_cuda_or_mps_device(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append("mps"))
    env.synchronize("cpu")
    assert calls == []
    for device in ("cuda", "cuda:0", torch.device("cuda", 1), "mps"):
        env.synchronize(device)
    assert calls == ["cuda", "cuda:0", torch.device("cuda", 1), "mps"]

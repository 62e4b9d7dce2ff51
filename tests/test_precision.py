"""The `precision: auto` decision: a pure function of the detected capabilities.

bf16 only where the hardware computes it natively (a CPU with AVX512-BF16 or AMX-BF16, a
GPU with bf16); fp32 everywhere else (emulated bf16 is ~10x slower on an AVX2-only CPU).
No test here depends on the machine it runs on.
"""
import io

import pytest

from kuda_mmsa.training import precision
from kuda_mmsa.training.precision import Capabilities, choose

AVX2_ONLY = frozenset({"fpu", "sse2", "avx", "avx2", "fma"})
AVX512_NO_BF16 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}


def test_cpu_avx2_only_is_fp32():
    p, why = choose("auto", Capabilities("cpu", cpu_flags=AVX2_ONLY))
    assert p == "fp32"
    assert why.startswith("auto") and "emulated" in why


def test_cpu_avx512_without_bf16_is_fp32():
    assert choose("auto", Capabilities("cpu", cpu_flags=AVX512_NO_BF16))[0] == "fp32"


def test_cpu_no_flags_at_all_is_fp32():
    assert choose("auto", Capabilities("cpu"))[0] == "fp32"


def test_cpu_avx512_bf16_is_bf16():
    p, why = choose("auto", Capabilities("cpu", cpu_flags=AVX512_NO_BF16 | {"avx512_bf16"}))
    assert p == "bf16"
    assert "avx512_bf16" in why


def test_cpu_amx_bf16_only_is_bf16():
    p, why = choose("auto", Capabilities("cpu", cpu_flags=AVX2_ONLY | {"amx_bf16", "amx_tile"}))
    assert p == "bf16"
    assert "amx_bf16" in why and "avx512_bf16" not in why


def test_cpu_bf16_flags_with_torch_capped_below_avx512_is_fp32():
    # ATEN_CPU_CAPABILITY=avx2 (how bench_train --isa avx2 stands in for an AVX2-only CPU):
    # torch's kernels then emulate bf16 even though the CPU has it.
    caps = Capabilities("cpu", cpu_flags=AVX512_NO_BF16 | {"avx512_bf16"}, cpu_capability="AVX2")
    p, why = choose("auto", caps)
    assert p == "fp32" and "ATEN_CPU_CAPABILITY" in why
    uncapped = Capabilities("cpu", cpu_flags=AVX512_NO_BF16 | {"avx512_bf16"}, cpu_capability="AVX512")
    assert choose("auto", uncapped)[0] == "bf16"


def test_detect_reads_torchs_cpu_capability(monkeypatch):
    monkeypatch.setattr(precision.torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert precision.detect("cpu").cpu_capability == "AVX2"


def test_cpu_amx_tile_without_amx_bf16_is_fp32():
    # AMX-INT8 machines have amx_tile but not amx_bf16: bf16 is not native there.
    assert choose("auto", Capabilities("cpu", cpu_flags=AVX2_ONLY | {"amx_tile", "amx_int8"}))[0] == "fp32"


def test_cuda_with_bf16_is_bf16():
    p, why = choose("auto", Capabilities("cuda", cuda_bf16=True))
    assert p == "bf16" and "GPU" in why


def test_cuda_without_bf16_is_fp32():
    p, why = choose("auto", Capabilities("cuda", cuda_bf16=False))
    assert p == "fp32" and "GPU" in why


def test_cuda_ignores_cpu_flags():
    # the host CPU's flags say nothing about the GPU
    caps = Capabilities("cuda", cpu_flags=frozenset({"avx512_bf16", "amx_bf16"}), cuda_bf16=False)
    assert choose("auto", caps)[0] == "fp32"


def test_unknown_device_is_fp32():
    assert choose("auto", Capabilities("mps", cpu_flags=frozenset({"avx512_bf16"})))[0] == "fp32"


@pytest.mark.parametrize("requested", ["fp32", "bf16"])
@pytest.mark.parametrize(
    "caps",
    [
        Capabilities("cpu", cpu_flags=AVX2_ONLY),
        Capabilities("cpu", cpu_flags=AVX512_NO_BF16 | {"avx512_bf16"}),
        Capabilities("cpu", cpu_flags=AVX2_ONLY | {"amx_bf16"}),
        Capabilities("cuda", cuda_bf16=True),
        Capabilities("cuda", cuda_bf16=False),
    ],
    ids=["avx2", "avx512_bf16", "amx", "cuda_bf16", "cuda_no_bf16"],
)
def test_explicit_precision_is_kept(requested, caps):
    p, why = choose(requested, caps)
    assert p == requested
    assert requested in why and not why.startswith("auto")


def test_choose_is_pure():
    caps = Capabilities("cpu", cpu_flags=AVX2_ONLY | {"avx512_bf16"})
    assert choose("auto", caps) == choose("auto", caps)
    assert caps.cpu_flags == AVX2_ONLY | {"avx512_bf16"}  # not modified


# ---------------------------------------------------------------- reading /proc/cpuinfo
CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16 amx_bf16
bugs\t\t: sysret_ss_attrs

processor\t: 1
flags\t\t: fpu sse2 avx avx2 something_else
"""


def _fake_open(text, seen):
    def fake_open(path, *args, **kwargs):
        seen.append(path)
        return io.StringIO(text)

    return fake_open


def test_cpu_flags_reads_the_first_flags_line(monkeypatch):
    seen = []
    # cpu_flags() calls the builtin open by name: a module global of that name shadows it.
    monkeypatch.setattr(precision, "open", _fake_open(CPUINFO, seen), raising=False)
    flags = precision.cpu_flags()
    assert seen == ["/proc/cpuinfo"]
    assert flags == frozenset({"fpu", "sse2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"})
    assert "bugs" not in flags and "sysret_ss_attrs" not in flags


def test_cpu_flags_without_flags_line_is_empty(monkeypatch):
    monkeypatch.setattr(precision, "open", _fake_open("processor\t: 0\nmodel name\t: ARM\n", []), raising=False)
    assert precision.cpu_flags() == frozenset()


def test_cpu_flags_without_cpuinfo_is_empty(monkeypatch):
    def missing(path, *args, **kwargs):
        raise FileNotFoundError(path)

    monkeypatch.setattr(precision, "open", missing, raising=False)
    assert precision.cpu_flags() == frozenset()


def test_detect_cpu_uses_cpu_flags(monkeypatch):
    monkeypatch.setattr(precision, "open", _fake_open(CPUINFO, []), raising=False)
    caps = precision.detect("cpu")
    assert caps.device_type == "cpu" and "avx512_bf16" in caps.cpu_flags and not caps.cuda_bf16
    assert choose("auto", caps)[0] == "bf16"


def test_autocast_fp32_is_a_no_op_and_bf16_autocasts():
    import torch

    a = torch.ones(2, 2)
    with precision.autocast("cpu", "fp32"):
        assert (a @ a).dtype == torch.float32
    with precision.autocast("cpu", "bf16"):
        assert (a @ a).dtype == torch.bfloat16

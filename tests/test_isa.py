"""Every stage pins ATen's and oneDNN's CPU kernels to AVX2 (robust_abstain/__init__.py), so that
outputs do not depend on which x86 CPU ran them (bench/bench_isa.py measured the difference)."""
import os
import platform
import subprocess
import sys

import pytest

PROBE = ("import torch, robust_abstain, os; "
         "print(torch.backends.cpu.get_cpu_capability(), os.environ.get('DNNL_MAX_CPU_ISA'), "
         "os.environ.get('MKL_CBWR'))")


def _probe(**env) -> str:
    e = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA",
                                                           "MKL_CBWR", "RA_CPU_ISA")}
    e.update(env)
    return subprocess.run([sys.executable, "-c", PROBE], env=e, capture_output=True, text=True,
                          check=True).stdout.split()


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 only")
def test_stages_pin_the_cpu_kernels_to_avx2_after_torch_is_imported():
    assert _probe() == ["AVX2", "AVX2", "None"]


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 only")
def test_native_kernels_on_request():
    cap, isa, mkl = _probe(RA_CPU_ISA="native")
    assert isa == "None" and cap in ("DEFAULT", "AVX2", "AVX512", "ZVECTOR", "VSX", "SVE256")


def test_pinned_forward_pass_does_not_depend_on_the_batch_size():
    """Certification shards rely on it (certify.py); MKL's CBWR mode would break it."""
    code = ("import torch, robust_abstain\n"
            "from robust_abstain.models.nets import small_cnn\n"
            "torch.manual_seed(0); torch.set_num_threads(2)\n"
            "m = small_cnn(1, 10, 28, 16).eval(); x = torch.rand(1000, 1, 28, 28)\n"
            "with torch.no_grad():\n"
            "    a = m(x); b = torch.cat([m(x[i:i + 300]) for i in range(0, 1000, 300)])\n"
            "print(torch.equal(a, b))")
    e = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA",
                                                           "MKL_CBWR", "RA_CPU_ISA")}
    out = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"

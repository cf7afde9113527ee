"""robust-abstain: robust models that avoid robust inaccuracy.

Equations are numbered as in Merkli et al., "Avoiding Robust Misclassifications for Improved
Robustness without Accuracy Loss". Each lives in one place:
    (4) ERA, (5) TRADES, (18) DGA, MART ............ losses/adversarial.py
    (7) CRA, (8) L_noise, (9) certified radius CR .. losses/smoothing.py
    (10)/(14) S_ERI, (11) S_CRI, (13) S_SR .......... analysis/selectors.py (abstain models: analysis/abstain.py)
    (12) H = S F_robust + (1 - S) F_core ........... analysis/compose.py
    (17) APGD-conf objective ....................... attacks/apgd.py
    (1)/(2) R_nat, R_rob^acc, R_rob^-acc ........... analysis/metrics.py
    PREDICT / CERTIFY (Cohen et al.) .............. evaluation/smoothing.py
The README's "Library" section has the full table and how to add a loss, attack, dataset or selector.
"""

import os as _os

# Training stages run one process at 2 threads; the other stages one thread per process, their pieces
# of work spread over worker processes (robust_abstain.parallel). At 2 threads, OpenMP threads that
# spin while waiting (ACTIVE) make a training step of the default's small CNNs 1.5-2x faster than
# sleeping ones (PASSIVE), as long as no other busy process shares the cores (a one-thread stage never
# spins); with other busy processes they make small ops ~100x slower, so set OMP_WAIT_POLICY=PASSIVE
# then (the tests do). Scheduling only: the numbers are the same. Read when torch loads.
_os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

# The same numbers on every x86 CPU: ATen and oneDNN pick kernels by instruction set, and an AVX-512
# run differs from an AVX2 run (bench/bench_isa.py: 24 of 500 APGD verdicts moved after 10 training
# steps; deterministic when pinned; within about 1.15x the time, near the noise). So every stage pins
# both to AVX2, which every x86-64 CPU of the last decade has. They are read at the first kernel
# call, so this works after `import torch` as long as no tensor op ran before. MKL (nn.Linear's
# GEMM) is left alone: its reproducible mode MKL_CBWR=COMPATIBLE makes a forward pass depend on the
# batch size (measured), which certification's sharding relies on not doing. The thread count
# matters too: see robust_abstain.parallel (one thread). Override: RA_CPU_ISA=native (the CPU's best kernels).
if _os.environ.get("RA_CPU_ISA", "avx2") == "avx2":
    import platform as _platform
    if _platform.machine().lower() in ("x86_64", "amd64"):
        _os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
        _os.environ.setdefault("DNNL_MAX_CPU_ISA", "AVX2")

__version__ = "0.1.0"

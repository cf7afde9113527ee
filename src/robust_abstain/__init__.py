"""robust-abstain: robust models that avoid robust inaccuracy.

Equations are numbered as in Merkli et al., "Avoiding Robust Misclassifications for Improved
Robustness without Accuracy Loss". Each lives in one place:
    (4) ERA, (5) TRADES, (18) DGA, MART ............ losses.py
    (7) CRA, (8) L_noise, (9) certified radius CR .. losses.py
    (10)/(14) S_ERI, (11) S_CRI, (13) S_SR .......... selectors.py
    (12) H = S F_robust + (1 - S) F_core ........... compose.py
    (17) APGD-conf objective ....................... attacks/apgd.py
    (1)/(2) R_nat, R_rob^acc, R_rob^-acc ........... metrics.py
"""

import os as _os

# OpenMP threads that spin while waiting make small ops ~100x slower whenever another process
# shares the cores (measured on a 2-core machine). Must be set before torch is imported.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

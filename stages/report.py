"""Stage report: per-sample records in; Markdown tables, PNG figures and reports/metrics.json out.
Pure: nothing is attacked or certified here."""
import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from robust_abstain import stage
from robust_abstain.errors import DataError
from robust_abstain.io import save_json
from robust_abstain.params import count, non_negative, positive
from robust_abstain.report import ModelInfo, build_report


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"records {path} not found; run the stage that makes them (dvc repro)")
    return pd.read_csv(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", default="results")
    ap.add_argument("--out", default="reports")
    args = ap.parse_args()
    sweep, loss, cert_sweep, cert_loss, ev, ev_l2, rp = stage.params(
        "sweep", "loss", "cert_sweep", "cert_loss", "evaluate", "evaluate_l2", "report")
    res = Path(args.results)
    rec = lambda name: _read(res / "records" / f"{name}.csv")  # noqa: E731
    models = [ModelInfo("core", "std", None, "core", rec("core")),
              ModelInfo("base", "trades", None, "base", rec("base"))]
    models += [ModelInfo(k, e["name"], float(e["beta"]), "sweep", rec(k)) for k, e in sweep.items()]
    models.append(ModelInfo("headline", loss["name"], float(loss["beta"]), "headline", rec("headline")))
    cert = lambda name: _read(res / "certified" / f"{name}.csv")  # noqa: E731
    certified = [ModelInfo("noise_base", "noise", None, "base", cert("noise_base"))]
    certified += [ModelInfo(k, e["name"], float(e["beta"]), "sweep", cert(k)) for k, e in cert_sweep.items()]
    certified.append(ModelInfo("headline", cert_loss["name"], float(cert_loss["beta"]), "headline",
                               cert("headline")))
    adaptive = {m.name: _read(res / "adaptive" / f"{m.name}.csv") for m in models if m.role != "core"}
    n_taus = count(rp.get("taus", 34), "report.taus", min=2)
    metrics = build_report(models, args.out, positive(ev.get("eps"), "evaluate.eps"), certified=certified,
                           adaptive=adaptive, cert_eps=non_negative(ev_l2.get("eps"), "evaluate_l2.eps"),
                           certified_core=rec("core_l2"),
                           taus=np.linspace(0, 0.99, n_taus))
    synthetic = json.loads(_read_text(res / "synthetic.json"))
    metrics.update({f"synthetic/{split}/{m}/{k}": round(v, 4) for split, per_model in synthetic.items()
                    for m, d in per_model.items() for k, v in d.items()})
    save_json(metrics, Path(args.out) / "metrics.json")
    for k in ("core/nat_acc", "core/rob_acc", "headline/rob_acc", "headline/rob_inacc",
              "best_composition/nat_acc", "best_composition/rob_acc"):
        print(f"{k}: {metrics.get(k)}")


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path} not found; run `dvc repro synthetic`")
    return path.read_text()


if __name__ == "__main__":
    stage.run(main)

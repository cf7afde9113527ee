"""Stage report: per-sample records in; Markdown tables, PNG figures and reports/metrics.json out.
Pure: nothing is attacked or certified here."""
import argparse
import json
from pathlib import Path

import pandas as pd

from robust_abstain import stage
from robust_abstain.errors import DataError, ParamError
from robust_abstain.evaluation.empirical import EvaluateConfig, check_same_threat_model
from robust_abstain.io import save_json, save_text
from robust_abstain.params import count
from robust_abstain.report import ModelInfo, ReportParams, build_report, metrics_json
from robust_abstain.report.comparison import Baselines
from robust_abstain.report.claims import claims_markdown
from robust_abstain.report.models import rounded
from robust_abstain.report.strength import strength_md


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"records {path} not found; run the stage that makes them (dvc repro)")
    return pd.read_csv(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", default="results")
    ap.add_argument("--out", default="reports")
    args = ap.parse_args()
    sweep, loss, cert_sweep, cert_loss, ev, ev_l2, ev_strong, rp = stage.params(
        "sweep", "loss", "cert_sweep", "cert_loss", "evaluate", "evaluate_l2", "evaluate_strong", "report")
    rp = ReportParams.from_params(rp, "report")
    seeds = training_seeds(stage.load_params().get("seeds"))
    res = Path(args.results)
    rec = lambda name: _read(res / "records" / f"{name}.csv")  # noqa: E731
    val = lambda name: _read(res / "records" / "val" / f"{name}.csv")  # noqa: E731
    models = [ModelInfo("core", "std", None, "core", rec("core"), val("core")),
              ModelInfo("base", "trades", None, "base", rec("base"), val("base"))]
    models += [ModelInfo(k, e["name"], float(e["beta"]), "sweep", rec(k), val(k)) for k, e in sweep.items()]
    runs = [ModelInfo("headline", loss["name"], float(loss["beta"]), "headline", rec(f"headline/s{s}"),
                      val(f"headline/s{s}")) for s in seeds]
    models.append(runs[0])
    files = lambda m: f"headline/s{seeds[0]}" if m.role == "headline" else m.name  # noqa: E731  records name
    cert = lambda name: _read(res / "certified" / f"{name}.csv")  # noqa: E731
    certified = [ModelInfo("noise_base", "noise", None, "base", cert("noise_base"))]
    certified += [ModelInfo(k, e["name"], float(e["beta"]), "sweep", cert(k)) for k, e in cert_sweep.items()]
    certified.append(ModelInfo("headline", cert_loss["name"], float(cert_loss["beta"]), "headline",
                               cert("headline")))
    adaptive = {m.name: _read(res / "adaptive" / f"{m.name}.csv") for m in models
                if m.role not in ("core", "headline")}
    adaptive["headline"] = _read(res / "adaptive" / "headline" / f"s{seeds[0]}.csv")
    ev_cfg = EvaluateConfig.from_params(ev, "evaluate")
    strong_cfg = EvaluateConfig.from_params(ev_strong, "evaluate_strong")
    check_same_threat_model(strong_cfg, ev_cfg)
    eps = ev_cfg.eps
    cert_eps = EvaluateConfig.from_params(ev_l2, "evaluate_l2").eps
    robust_records = stage.load_params()["pipeline"]["baselines"]["records"]
    robust_name = next((m.name for m in models if m.role != "core" and files(m) == robust_records), None)
    if robust_name is None:
        raise DataError(f"pipeline.baselines names records {robust_records!r} of no robust model in the report")
    baselines = Baselines(robust_name, *(_read(res / "selection_net" / f"{f}.csv") for f in ("test", "val", "adaptive")),
                          *(_read(res / "mixing" / f"{f}.csv") for f in ("test", "val")))
    metrics = build_report(models, args.out, eps, certified=certified, adaptive=adaptive, cert_eps=cert_eps,
                           certified_core=rec("core_l2"),
                           taus=rp.tau_grid, max_nat_drop=rp.max_nat_drop, seed=rp.seed,
                           seed_runs=runs, seeds=seeds,
                           seed_adaptive=[_read(res / "adaptive" / "headline" / f"s{s}.csv") for s in seeds],
                           baselines=baselines)
    text, entries = strength_md({m.name: _read(res / "strength" / f"{files(m)}.csv") for m in models},
                                {m.name: json.loads(_read_text(res / "strength" / f"{files(m)}.json"))
                                 for m in models},
                                strong_cfg.eps, rp.seed)
    save_text(text, Path(args.out) / "strength.md")
    metrics = metrics_json({**metrics, **rounded(entries)}, json.loads(_read_text(res / "synthetic.json")))
    save_json(metrics, Path(args.out) / "metrics.json")
    save_text(claims_markdown(metrics, models, rp.warn_nat_drop), Path(args.out) / "claims.md")
    for k in ("core/nat_acc", "core/rob_acc", "headline/rob_acc", "headline/rob_inacc",
              "best_composition/nat_acc", "best_composition/rob_acc"):
        print(f"{k}: {metrics.get(k)}")


def training_seeds(value) -> list[int]:
    """The `seeds` param: a non-empty list of distinct training seeds (integers >= 0)."""
    if not isinstance(value, list) or not value:
        raise ParamError(f"seeds must be a non-empty list of training seeds, got {value!r}")
    seeds = [count(v, "seeds[]", min=0) for v in value]
    if len(set(seeds)) != len(seeds):
        raise ParamError(f"seeds must be distinct, got {value!r}")
    return seeds


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path} not found; run the stage that makes it (dvc repro)")
    return path.read_text()


if __name__ == "__main__":
    stage.run(main)

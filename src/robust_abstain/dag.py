"""The models each stage of dvc.yaml runs on, derived from a params file.

DVC's ``foreach`` runs over one mapping, so the ``pipeline`` section of a params file lists, per
stage, every model it covers: the reference models (core, robust base, noise base, fixed paths) and
those the params name (``sweep``, ``seeds`` of the headline run, ``cert_sweep``). A sweep entry
may start from another model than the robust base (``init: SECTION``, e.g. the MMA baseline from
the published MMA checkpoint): that model section is then trained or brought by ``train@SECTION``.
:func:`pipeline_section` derives that section; ``scripts/sync_pipeline.py`` writes it into a params
file after ``sweep``, ``seeds`` or ``cert_sweep`` change, and tests/test_dvc_yaml.py checks that
every params file holds the section its other sections imply."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from .errors import ParamError
from .params import section


def _finetune(section_name: str, loss: str, init: str, out: str, live: str, seed: Any = "default") -> dict:
    return {"section": section_name, "loss": loss, "seed": seed, "init": init, "out": out, "live": live}


def pipeline_section(params: dict) -> dict:
    """The ``pipeline`` section that ``params``'s ``sweep``, ``seeds`` and ``cert_sweep`` imply."""
    sweep, cert_sweep, seeds = section(params, "sweep"), section(params, "cert_sweep"), params.get("seeds", [0])
    inits = {k: e["init"] for k, e in sweep.items() if isinstance(e, dict) and "init" in e}
    finetune = {k: _finetune("finetune", f"sweep.{k}", f"models/{inits.get(k, 'base')}.pt",
                             f"models/finetune/{k}.pt", k) for k in sweep}
    finetune.update({f"headline-s{s}": _finetune("finetune", "loss", "models/base.pt",
                                                  f"models/finetune/headline/s{s}.pt", f"headline/s{s}", s)
                     for s in seeds})
    finetune.update({k: _finetune("cert_finetune", f"cert_sweep.{k}", "models/cert/noise_base.pt",
                                  f"models/cert/{k}.pt", k) for k in cert_sweep})
    finetune["cert_headline"] = _finetune("cert_finetune", "cert_loss", "models/cert/noise_base.pt",
                                          "models/cert/headline.pt", "cert_headline")
    robust = {"base": {"model": "models/base.pt", "records": "base"}}
    robust.update({k: {"model": v["out"], "records": str(PurePosixPath(v["out"]).relative_to("models/finetune")
                                                         .with_suffix(""))}
                   for k, v in finetune.items() if v["section"] == "finetune"})
    train = {"core": "models/core.pt", "base": "models/base.pt", "noise_base": "models/cert/noise_base.pt"}
    train.update({m: f"models/{m}.pt" for m in inits.values()})
    baselines = section(params, "baselines")
    if "robust" not in baselines:
        raise ParamError("baselines lacks ['robust'] (the robust model the baselines combine with the core)")
    baseline = baselines["robust"]
    if baseline not in robust:
        raise ParamError(f"baselines.robust must name a robust model of the pipeline, one of {sorted(robust)}, "
                         f"got {baseline!r}")
    return {"train": train,
            "finetune": finetune,
            "evaluate": {"core": {"model": "models/core.pt", "records": "core"}, **robust},
            "adaptive": robust,
            "baselines": robust[baseline],
            "certify": ["noise_base", "headline", *cert_sweep]}


def render(section_value: dict) -> str:
    """The section as params-file text (flow mappings, one model per line)."""
    def flow(v: Any) -> str:
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {flow(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(flow(x) for x in v) + "]"
        return str(v)
    lines = ["pipeline:                    # the models each stage runs on (dvc.yaml's foreach): derived from",
             "                             # sweep, seeds, cert_sweep by `python scripts/sync_pipeline.py`"]
    for stage, models in section_value.items():
        if isinstance(models, dict) and any(isinstance(v, dict) for v in models.values()):
            lines.append(f"  {stage}:")
            lines += [f"    {k}: {flow(v)}" for k, v in models.items()]
        else:
            lines.append(f"  {stage}: {flow(models)}")
    return "\n".join(lines) + "\n"

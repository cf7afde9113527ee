"""Write the ``pipeline`` section (the models dvc.yaml's stages run on) into a params file, derived
from its ``sweep``, ``seeds`` and ``cert_sweep`` (robust_abstain.dag). Run it after changing those.
Usage: python scripts/sync_pipeline.py [params.yaml ...]"""
import re
import sys
from pathlib import Path

from robust_abstain.dag import pipeline_section, render
from robust_abstain.params import load_params


def sync(path: Path) -> bool:
    text = path.read_text()
    new = render(pipeline_section(load_params(path)))
    m = re.search(r"^pipeline:.*?(?=^\S|\Z)", text, flags=re.S | re.M)
    out = text[:m.start()] + new + ("\n" if m.end() < len(text) else "") + text[m.end():].lstrip("\n") if m \
        else text.rstrip("\n") + "\n\n" + new
    if out != text:
        path.write_text(out)
    return out != text


if __name__ == "__main__":
    for p in sys.argv[1:] or ["params.yaml"]:
        print(f"{p}: {'updated' if sync(Path(p)) else 'up to date'}")

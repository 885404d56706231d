"""Copy the report of an experiment run into docs/results.md, below the hand-written commentary.

Keeps everything in docs/results.md above the line ``<!-- report -->`` and replaces what follows it with the
run's report.md (its headings one level down); the run's PNG figures go to docs/img/results/<stage>/ and the
links are rewritten; the run's CSV tables and numbers.json files go to docs/results/<stage>/.

Usage: python benchmarks/publish_results.py [--run runs/experiments] [--docs docs]
"""

import argparse
import re
import shutil
from pathlib import Path

from dcgmm.experiments import STAGES

MARKER = "<!-- report -->"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/experiments")
    parser.add_argument("--docs", default="docs")
    args = parser.parse_args()
    run, docs = Path(args.run), Path(args.docs)
    report = (run / "report.md").read_text()
    for stage in STAGES:
        if not (run / stage).is_dir():
            continue
        images, data = docs / "img" / "results" / stage, docs / "results" / stage
        for folder in (images, data):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        for file in (run / stage).iterdir():
            if file.suffix == ".png":
                shutil.copy2(file, images / file.name)
            elif file.suffix in (".csv", ".json"):
                shutil.copy2(file, data / file.name)
        report = report.replace(f"]({stage}/", f"](img/results/{stage}/")
    report = re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", report, flags=re.MULTILINE)
    target = docs / "results.md"
    head = target.read_text().split(MARKER)[0] if target.exists() else "# Results\n\n"
    target.write_text(head + MARKER + "\n\n" + report)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()

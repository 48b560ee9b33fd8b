"""Benchmark: wall time of `make demo`'s continuous-training story, split by stage (issue 6: under 5 minutes).

Runs the same story as `earshot demo` in a scratch workspace: baseline training, a good drop retrained, gated and
promoted, a shuffled-label drop refused. Run: `.venv/bin/python benchmarks/demo_story.py`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from featurize_drop import PROJECT, save_results
from rich.console import Console

from components.config import load_params
from pipelines.demo import run_demo, stage_table, story_table

TARGET_S = 300.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROJECT / "benchmarks" / "results.json")
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="earshot-demo-") as scratch:
        params = load_params(PROJECT / "params.yaml")
        params = params.model_copy(update={"demo": params.demo.model_copy(update={"workspace": Path(scratch)})})
        started = time.perf_counter()
        steps = run_demo(params)
        wall = time.perf_counter() - started
    console.print(story_table(steps))
    console.print(stage_table(steps))
    verdict = "meets" if wall <= TARGET_S else "misses"
    console.print(f"continuous-training story: {wall:.0f} s wall (target <= {TARGET_S:.0f} s): {verdict}; the rest "
                  "is preparing the workspace (git, dvc init) and the DVC push")
    save_results(args.out, "demo_story", {"wall_s": wall, "target_s": TARGET_S, "verdict": verdict,
                                          "steps": [{"step": s.step, "outcome": s.outcome, "seconds": s.seconds,
                                                     "stages": s.stages} for s in steps]})


if __name__ == "__main__":
    main()

"""Benchmark: featurize after a drop of ~10 % new files vs. featurize from scratch, measured in one run.

The content-hash clip cache should make a drop cost only its own files: the target ratio is <= 0.20.
Run: `.venv/bin/python benchmarks/featurize_drop.py [--speakers N]` (default params.yaml sizes).
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from components.config import Params
from components.corpus import synthesize_corpus
from components.dataset import index_speech_commands
from components.drops import write_drop
from components.ingest import ingest_drop, keyword_drops
from components.tracks.kws import track as kws

PROJECT = Path(__file__).resolve().parents[1]


def workspace_params(work: Path, speakers: int | None = None) -> Params:
    """params.yaml with every path moved under `work`, so a benchmark never touches the project's data or models.

    `speakers` overrides synthesis.speakers_per_domain, for a corpus small enough to time quickly.
    """
    settings = yaml.safe_load((PROJECT / "params.yaml").read_text())
    settings["paths"] = {k: str(work / v) for k, v in settings["paths"].items()}
    settings["synthesis"]["out_dir"] = str(work / "data/synth")
    if speakers is not None:
        settings["synthesis"]["speakers_per_domain"] = speakers
    settings["dataset"]["domains"] = {k: str(work / "data/synth/kws" / k) for k in settings["synthesis"]["domains"]}
    settings["ingest"] |= {"root": str(work / "data/domains"), "quarantine": str(work / "data/quarantine")}
    return Params.model_validate(settings)


def save_results(path: Path, name: str, figures: dict[str, object]) -> None:
    """Replace one benchmark's section of the results file, keeping the sections other benchmarks wrote."""
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[name] = figures
    path.write_text(json.dumps(results, indent=2) + "\n")


def median_seconds(fn, setup, repeats: int) -> float:
    """Median wall time of `fn` over `repeats` runs, each after `setup` restores the same starting state."""
    times = []
    for _ in range(repeats):
        setup()
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--share", type=float, default=0.10, help="size of the drop relative to the corpus")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case; the median is reported")
    parser.add_argument("--out", type=Path, default=PROJECT / "benchmarks" / "results.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="earshot-bench-"))
    params = workspace_params(work)
    synthesize_corpus(params)
    corpus_files = sum(len(index_speech_commands(p)[0]) for p in params.dataset.domains.values())
    words = len(params.dataset.words) + len(params.synthesis.unknown_words)
    speakers = max(1, round(corpus_files * args.share / words))
    drop = write_drop(params, "kitchen_caribbean", work / "drop", speakers=speakers, progress=False)

    # Featurize keeps two things between runs: the clip cache and the per-domain feature shards.
    kept = [params.paths.clip_cache, params.out.features]
    snapshot = work / "state-after-the-corpus"

    def restore(state: Path | None) -> None:
        for folder in kept:
            shutil.rmtree(folder, ignore_errors=True)
            if state:
                shutil.copytree(state / folder.name, folder)

    scratch = median_seconds(lambda: kws.featurize(params), lambda: restore(None), args.repeats)
    for folder in kept:
        shutil.copytree(folder, snapshot / folder.name)
    ingest_drop(keyword_drops(params), drop, "kitchen_caribbean", work / "docs", progress=False)
    after_drop = median_seconds(lambda: kws.featurize(params), lambda: restore(snapshot), args.repeats)
    drop_files = len(list((work / "data/domains/kitchen_caribbean").glob("*/*.wav")))

    table = Table(title=f"featurize: after a drop vs. from scratch (one run, median of {args.repeats})")
    for column in ("case", "files in corpus", "seconds", "ratio"):
        table.add_column(column, justify="right" if column != "case" else "left")
    table.add_row("from scratch", str(corpus_files), f"{scratch:.2f}", "1.00")
    table.add_row(f"after a drop of {drop_files} files ({drop_files / corpus_files:.0%})",
                  str(corpus_files + drop_files), f"{after_drop:.2f}", f"{after_drop / scratch:.2f}")
    Console().print(table)
    save_results(args.out, "featurize_drop", {"corpus_files": corpus_files, "drop_files": drop_files,
                                              "scratch_s": scratch, "after_drop_s": after_drop,
                                              "ratio": after_drop / scratch})


if __name__ == "__main__":
    main()

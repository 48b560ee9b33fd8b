"""Benchmark: leave-one-engine-out generalization of the default keyword model, against PocketSphinx, in one run.

Each synthesizer speaks its own corpus once; for each in turn the params.yaml model, once per front end (log-mels,
the frozen speech embedding), trains on the others' corpora and is tested on every core-word clip of the one left
out, which PocketSphinx (its own en-us model, a closed grammar over the same words) also hears.
Issue 23's targets: >= 90 % on every left-out engine and above PocketSphinx; INT8 latency per 1 s clip (front end
included) <= 1/20 of PocketSphinx's.
Run: `.venv/bin/python benchmarks/generalization.py [--speakers N] [--kokoro-speakers N]`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import get_args

import torch
from featurize_drop import PROJECT, save_results, workspace_params
from rich.console import Console
from speed import table

from components.config import Engine, FrontEndKind, Params
from components.corpus import synthesize_corpus
from components.dataset import KwsData, build_dataset
from components.evaluate import predict
from components.export import ParityError, export_models, front_end_latency_ms
from components.features import featurize, front_end
from components.sphinx import WordRecognizer
from components.tracks.kws import track as kws
from components.train import train_model

ENGINES: tuple[Engine, ...] = ("espeak", "piper", "kokoro")
TARGET_ACCURACY = 0.90
TARGET_LATENCY_RATIO = 1 / 20


def engine_corpus(work: Path, engine: Engine, speakers: int) -> Params:
    """params.yaml with every domain voiced by `engine` alone, synthesized under work/<engine>."""
    params = workspace_params(work / engine, speakers)
    domains = {name: recipe.model_copy(update={"engines": [engine]})
               for name, recipe in params.synthesis.domains.items()}
    params = params.model_copy(update={"synthesis": params.synthesis.model_copy(update={"domains": domains})})
    synthesize_corpus(params)
    return params


def without(work: Path, left_out: Engine, kind: FrontEndKind, corpora: dict[Engine, Params]) -> Params:
    """Settings that train with front end `kind` on every domain of every corpus but `left_out`'s, one dataset domain
    per (domain, engine)."""
    params = workspace_params(work / f"without_{left_out}_{kind}")
    domains = {f"{domain}_{engine}": folder for engine, source in corpora.items() if engine != left_out
               for domain, folder in source.dataset.domains.items()}
    return params.model_copy(update={"dataset": params.dataset.model_copy(update={"domains": domains}),
                                     "features": params.features.model_copy(update={"kind": kind})})


def left_out_clips(corpus: Params, trained: Params) -> KwsData:
    """Every core-word clip of a corpus, whatever its split, featurized as `trained` featurizes: the left-out test
    set, as PocketSphinx can hear it (it knows no `_silence_` or `_unknown_`)."""
    data = build_dataset(corpus.dataset, corpus.seed, progress=False, require_every_split=False)
    data = replace(data, mels=featurize(data.float_waves(), front_end(trained.features, trained.dataset.sample_rate)))
    words = corpus.dataset.words
    return data.where(torch.tensor([data.label_names[label] in words for label in data.labels.tolist()]))


def sphinx_accuracy(recognizer: WordRecognizer, test: KwsData) -> tuple[float, float]:
    """PocketSphinx's accuracy on `test` and its median milliseconds per clip."""
    hits, seconds = 0, []
    for wave, label in zip(test.float_waves().numpy(), test.labels.tolist(), strict=True):
        start = time.perf_counter()
        heard = recognizer.hear(wave)
        seconds.append(time.perf_counter() - start)
        hits += heard == test.label_names[label]
    return hits / len(test.labels), 1000 * statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", type=int, default=8, help="speakers per domain of each engine's corpus")
    parser.add_argument("--kokoro-speakers", type=int, default=4,
                        help="speakers per domain of Kokoro's corpus (about 1.5 s per word, 50x espeak-ng)")
    parser.add_argument("--out", type=Path, default=PROJECT / "benchmarks" / "results.json")
    args = parser.parse_args()
    started, console = time.perf_counter(), Console()
    rows, figures = [], {}
    with tempfile.TemporaryDirectory(prefix="earshot-generalization-") as scratch:
        work = Path(scratch)
        corpora = {engine: engine_corpus(work, engine, args.kokoro_speakers if engine == "kokoro" else args.speakers)
                   for engine in ENGINES}
        words = corpora["espeak"].dataset.words
        recognizer = WordRecognizer(words, corpora["espeak"].dataset.sample_rate)
        for left_out in ENGINES:
            peer = None
            for kind in get_args(FrontEndKind):
                params = without(work, left_out, kind, corpora)
                kws.featurize(params)
                data = KwsData.load(params.out.features)
                result = train_model(data, params)
                test = left_out_clips(corpora[left_out], params)
                # Both datasets name their classes alike; map the test labels onto the trained model's indices.
                labels = torch.tensor([data.label_names.index(test.label_names[i]) for i in test.labels.tolist()])
                accuracy = float((predict(result.model, test.mels) == labels).float().mean())
                if peer is None:
                    peer, peer_ms = sphinx_accuracy(recognizer, test)
                torch.set_num_threads(1)
                train = data.split("training")
                try:
                    report = export_models(result.model, train.mels[: params.export.calibration_clips], test.mels,
                                           labels, params.export, work / f"without_{left_out}_{kind}" / "export")
                except ParityError as err:
                    report = err.report
                int8 = report.variant("onnx_int8")
                ours_ms = int8.latency_ms_p50 + front_end_latency_ms(
                    front_end(params.features, params.dataset.sample_rate), test.float_waves()[:1],
                    params.export.latency_runs)
                torch.set_num_threads(params.train.threads)
                figures[f"{left_out}/{kind}"] = {
                    "clips": len(labels), "training_clips": len(train.labels), "accuracy": accuracy,
                    "int8_accuracy": int8.accuracy, "pocketsphinx": peer, "int8_ms": ours_ms,
                    "pocketsphinx_ms": peer_ms, "latency_ratio": ours_ms / peer_ms}
                meets = (min(int8.accuracy, accuracy) >= TARGET_ACCURACY and accuracy > peer
                         and ours_ms / peer_ms <= TARGET_LATENCY_RATIO)
                rows.append((left_out, kind, str(len(labels)), f"{accuracy:.1%}", f"{int8.accuracy:.1%}",
                             f"{peer:.1%}", f"{ours_ms:.2f} / {peer_ms:.1f} = {ours_ms / peer_ms:.3f}",
                             "meets" if meets else "misses"))
    console.print(table(
        f"leave-one-engine-out: trained on the other engines' corpora ({args.speakers} speakers per domain, Kokoro "
        f"{args.kokoro_speakers}), tested on every core-word clip of the one left out; latency per 1 s clip, 1 thread",
        ("left-out engine", "front end", "clips", "CNN", "CNN INT8", "PocketSphinx",
         "latency ms: INT8 / PocketSphinx", f"target >= {TARGET_ACCURACY:.0%}, > peer, <= 1/20"), rows))
    wall = time.perf_counter() - started
    console.print(f"generalization benchmark wall time: {wall:.0f} s")
    save_results(args.out, "generalization", {"speakers_per_domain": args.speakers,
                                              "kokoro_speakers_per_domain": args.kokoro_speakers,
                                              "left_out": figures, "wall_s": wall})


if __name__ == "__main__":
    main()

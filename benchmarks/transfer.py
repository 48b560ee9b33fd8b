"""Benchmark: custom keywords from 20 examples, transfer (frozen encoder + head) vs. the same network from scratch.

One run makes everything: the word corpus (the keywords left out), the encoder, the 20 examples of each new phrase as
three kinds of team would collect them, negatives (other words, running speech, noise) from other talkers in every
room, a held-out set of other talkers, an hour or more of keyword-free streams and streams with the phrases said in
them. Targets: transfer beats scratch by >= 10 accuracy points; <= 1 false accept per hour at >= 90 % recall.
Run: `.venv/bin/python benchmarks/transfer.py [--encoder FILE | --speakers 72 --epochs 20 --cache DIR] [--fa-hours 1]`.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from components.config import DomainRecipe, Model, load_params
from components.encoder import (
    EncoderSettings,
    WordEncoder,
    encoder_words,
    load_encoder,
    synthesize_word_corpus,
    train_encoder,
)
from components.errors import EarshotError
from components.keywords import (
    CurvePoint,
    EncoderTraining,
    KeywordClips,
    KeywordModel,
    KeywordSettings,
    Stream,
    accuracy,
    detection_curve,
    draw_talkers,
    join_clips,
    negative_streams,
    operating_point,
    phrase_clips,
    positive_streams,
    train_keyword_head,
)

PROJECT = Path(__file__).resolve().parents[1]
MARGIN_TARGET_POINTS, RECALL_TARGET = 10.0, 0.90
TRANSFER: dict[str, EncoderTraining] = {"transfer, frozen encoder": "frozen",
                                        "transfer, last block fine-tuned": "last_block"}
# Scratch trains the whole encoder from random weights and wants smaller steps than fine-tuning one block; it gets
# the best of these on the held-out set itself, which can only flatter it.
SCRATCH_LEARNING_RATES = (1e-4, 3e-4, 1e-3)
Recipes = dict[str, DomainRecipe]


@dataclass(frozen=True)
class Source:
    """Who said the 20 examples of each phrase: `talkers` x `takes`, in `domains` (None: every synthesis domain)."""

    name: str
    talkers: int
    takes: int
    domains: tuple[str, ...] | None = None


# From the most varied 20 examples to what a team recording itself gets: a few voices in the one room.
SOURCES = (Source("10 talkers x 2, every room", 10, 2), Source("4 talkers x 5, every room", 4, 5),
           Source("4 talkers x 5, one office", 4, 5, ("office_uk",)))


@dataclass(frozen=True)
class Architecture:
    n_mels: int
    model: Model
    dim: int


@dataclass(frozen=True)
class Row:
    source: str
    model: str
    train_accuracy: float
    held_out_accuracy: float
    curve: list[CurvePoint]

    @property
    def point(self) -> CurvePoint | None:
        try:
            return operating_point(self.curve, KeywordSettings.max_fa_per_hour)
        except EarshotError:
            return None


def pretrained_encoder(args: argparse.Namespace, recipes: Recipes,
                       console: Console) -> tuple[WordEncoder, Architecture, str]:
    """The encoder from --encoder, or trained here on the synthesized word corpus; its architecture (what scratch
    starts from, with random weights) and a line saying what it is."""
    if args.encoder:
        encoder, card = load_encoder(args.encoder)
        words, speakers, val = card["words"], card["speakers"], card["val_accuracy"]
        architecture = Architecture(card["features"]["n_mels"], Model(**card["model"]), card["dim"])
    else:
        settings = EncoderSettings(speakers=args.speakers, epochs=args.epochs)
        corpus = synthesize_word_corpus(settings, recipes, args.cache)
        result = train_encoder(corpus, settings, on_epoch=lambda m: console.print(
            f"encoder epoch {m['epoch']}: train {m['train_accuracy']:.1%}, held-out talkers {m['val_accuracy']:.1%}"))
        encoder, words, speakers, val = result.encoder, encoder_words(settings), settings.speakers, result.val_accuracy
        architecture = Architecture(settings.features.n_mels, settings.model, settings.dim)
    leaked = set(words) & {w for p in KeywordSettings.phrases for w in p.split()}
    if leaked:
        raise SystemExit(f"the encoder was trained on keyword words {sorted(leaked)}")
    about = (f"encoder: {len(words)} words x {speakers} talkers, held-out-talker word accuracy {val:.1%}; the "
             "keywords never in its vocabulary")
    return encoder, architecture, about


def train_and_score(encoder: WordEncoder, mode: EncoderTraining, train: KeywordClips, test: KeywordClips,
                    settings: KeywordSettings) -> tuple[KeywordModel, float, float]:
    """A keyword model trained on `train` from the same seed; its accuracy on `train` and on `test`."""
    torch.manual_seed(settings.seed)  # the head's (and scratch encoder's) initial weights
    model = KeywordModel(encoder, len(settings.labels), settings.hidden, settings.dropout, mode)
    train_keyword_head(model, train, settings)
    return model, accuracy(model, train, settings), accuracy(model, test, settings)


def benchmark_source(source: Source, recipes: Recipes, encoder: WordEncoder, architecture: Architecture,
                     negatives: KeywordClips, test: KeywordClips, streams: tuple[list[Stream], list[Stream]],
                     console: Console) -> list[Row]:
    """The frozen and fine-tuned transfer models and the best scratch model trained on `source`'s 20 examples."""
    kw = KeywordSettings()
    rooms = {name: recipes[name] for name in source.domains or recipes}
    talkers = draw_talkers(rooms, source.talkers, kw.seed, "phrases")
    takes = phrase_clips(kw, rooms, talkers, takes=source.takes, unknown=0, silence=0, group="phrases")
    train = join_clips(takes, negatives)
    rows = []
    for name, mode in TRANSFER.items():
        model, train_acc, test_acc = train_and_score(copy.deepcopy(encoder), mode, train, test, kw)
        rows.append(Row(source.name, name, train_acc, test_acc, detection_curve(model, *streams, kw)))
        console.print(f"{source.name}, {name}: held-out {test_acc:.1%}")
    scratch = []
    for rate in SCRATCH_LEARNING_RATES:
        torch.manual_seed(kw.seed)
        fresh = WordEncoder(architecture.n_mels, architecture.model, architecture.dim)
        scratch.append((rate, *train_and_score(fresh, "all", train, test, replace(kw, learning_rate=rate))))
        console.print(f"{source.name}, scratch at lr {rate:g}: held-out {scratch[-1][3]:.1%}")
    rate, model, train_acc, test_acc = max(scratch, key=lambda s: s[3])
    tried = ", ".join(f"{r:g}: {acc:.1%}" for r, _, _, acc in scratch)
    rows.append(Row(source.name, f"scratch, best lr {rate:g} (of {tried})", train_acc, test_acc,
                    detection_curve(model, *streams, kw)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", type=Path, default=None, help="a saved encoder (save_encoder) to use as is")
    parser.add_argument("--speakers", type=int, default=EncoderSettings.speakers, help="encoder corpus talkers")
    parser.add_argument("--epochs", type=int, default=EncoderSettings.epochs, help="encoder training epochs")
    parser.add_argument("--cache", type=Path, default=None, help="folder to keep the synthesized word corpus in")
    parser.add_argument("--fa-hours", type=float, default=1.0, help="hours of keyword-free audio")
    args = parser.parse_args()
    torch.set_num_threads(1)
    console, started = Console(width=160), time.perf_counter()
    kw, recipes = KeywordSettings(), load_params(PROJECT / "params.yaml").synthesis.domains
    encoder, architecture, about_encoder = pretrained_encoder(args, recipes, console)
    # The scarce part is the phrases; negatives cost nothing, so every source gets the same ones, from every room.
    negatives = phrase_clips(kw, recipes, draw_talkers(recipes, kw.train_speakers, kw.seed, "training"), takes=0,
                             unknown=kw.unknown_clips, silence=kw.silence_clips, group="training",
                             speech=kw.speech_clips)
    test_talkers = draw_talkers(recipes, kw.test_speakers, kw.seed, "testing")
    # Balanced: as many `_unknown_` (half words, half running speech) and `_silence_` clips as of each phrase.
    test = phrase_clips(kw, recipes, test_talkers, takes=1, unknown=kw.test_speakers // 2, silence=kw.test_speakers,
                        group="testing", speech=kw.test_speakers - kw.test_speakers // 2)
    streams = (negative_streams(kw, recipes, test_talkers, args.fa_hours * 3600),
               positive_streams(kw, recipes, test_talkers))
    rows = [row for source in SOURCES
            for row in benchmark_source(source, recipes, encoder, architecture, negatives, test, streams, console)]

    table = Table(title=f"custom keywords {list(kw.phrases)}, 20 examples each; held-out: {len(test.waves)} clips of "
                        f"{kw.test_speakers} other talkers in every room (phrases, _unknown_, _silence_ equally)")
    for column in ("20 examples from", "model", "train acc", "held-out acc", "vs scratch", "threshold", "FA/h",
                   "recall"):
        table.add_column(column, justify="left" if column in ("20 examples from", "model") else "right")
    for row in rows:
        scratch = next(r for r in rows if r.source == row.source and r.model.startswith("scratch"))
        point = row.point
        op = (f"{point.threshold:.5f}", f"{point.false_accepts_per_hour:.2f}", f"{point.recall:.1%}") if point \
            else ("-", f"> {kw.max_fa_per_hour:g}", "-")
        margin = "" if row is scratch else f"{(row.held_out_accuracy - scratch.held_out_accuracy) * 100:+.1f}"
        table.add_row(row.source, row.model, f"{row.train_accuracy:.1%}", f"{row.held_out_accuracy:.1%}", margin,
                      *op)
    console.print(table)
    fa_seconds = sum(s.audio.size for s in streams[0]) / kw.sample_rate
    console.print(f"{about_encoder}\nstreams: {fa_seconds / 3600:.2f} h keyword-free ({len(streams[0])} streams), "
                  f"{sum(len(s.keywords) for s in streams[1])} keywords said in {len(streams[1])} streams; "
                  f"operating point: best recall at <= {kw.max_fa_per_hour:g} FA/h\ntargets: transfer >= "
                  f"{MARGIN_TARGET_POINTS:g} points over scratch, recall >= {RECALL_TARGET:.0%} at the operating point")
    for row in rows:
        # The curve around the operating point (or its low-threshold end when none meets the budget).
        at = row.curve.index(row.point) if row.point else 0
        console.print(f"curve {row.source}, {row.model.split(' (')[0]}: " + ", ".join(
            f"t={p.threshold:.5f} FA/h={p.false_accepts_per_hour:.1f} recall={p.recall:.1%}"
            for p in row.curve[max(at - 3, 0) : at + 2]))
    console.print(f"wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

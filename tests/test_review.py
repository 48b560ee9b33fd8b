"""What a reviewer gets beside a training run: Data Docs of its data, its mistakes to hear, champion vs challenger."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from PIL import Image

from components.config import Ingest
from components.review import ReviewClip, pick_mistakes, plot_domain_comparison, write_review_clips
from components.validate import TRAINING_SUITE, document_training_data, training_facts
from tests.conftest import tone


@dataclass
class Clips:
    labels: torch.Tensor
    domains: torch.Tensor
    label_names: list[str]
    domain_names: list[str]
    sources: list[str]


def test_mistakes_come_from_every_domain_in_turn_and_follow_the_seed():
    # Domain 0 has eight mistakes, domain 1 two: a plain random sample would mostly hear domain 0.
    labels = torch.zeros(20, dtype=torch.long)
    domains = torch.tensor([0] * 10 + [1] * 10)
    predicted = torch.zeros(20, dtype=torch.long)
    predicted[[0, 1, 2, 3, 4, 5, 6, 7, 10, 11]] = 1
    clips = Clips(labels, domains, ["a", "b"], ["x", "y"], [f"{i}.wav" for i in range(20)])

    picked = pick_mistakes(predicted.tolist(), clips, seed=3, count=4)

    assert all(predicted[row] != labels[row] for row in picked)
    assert sorted(domains[picked].tolist()) == [0, 0, 1, 1]
    assert picked == pick_mistakes(predicted.tolist(), clips, seed=3, count=4)
    assert {tuple(pick_mistakes(predicted.tolist(), clips, seed=s, count=4)) for s in range(6)} != {tuple(picked)}
    assert pick_mistakes(labels.tolist(), clips, seed=3) == []


def test_review_clips_are_playable_audio_and_images(tmp_path: Path):
    wave = tone(440.0, 0.5)
    clip = ReviewClip(wave, 16000, torch.rand(40, 50), "yes", "no", "car", "data/yes/a_nohash_0.wav")
    sentence = ReviewClip(wave, 16000, torch.rand(40, 50), "turn the lights on", "turn the light", "hall", "x.flac")

    written = write_review_clips([clip, sentence], tmp_path)

    assert [p.name for p in written] == ["01_yes_as_no.wav", "01_yes_as_no.png", "02_turn-the-lights-on_as_turn-the-"
                                         "light.wav", "02_turn-the-lights-on_as_turn-the-light.png"]
    audio, rate = sf.read(written[0], dtype="float32")
    assert rate == 16000 and np.abs(audio - wave).max() < 1e-3
    assert Image.open(written[1]).size[0] > 300


def test_domain_chart_draws_both_models_or_the_challenger_alone(tmp_path: Path):
    both, alone = tmp_path / "both.png", tmp_path / "alone.png"
    plot_domain_comparison({"car": 0.9, "hall": 0.8}, {"car": 0.95, "hall": 0.7, "street": 0.6}, "accuracy",
                           "challenger vs champion v1", both)
    plot_domain_comparison({"car": 0.9}, None, "accuracy", "no champion yet", alone)
    colours = [{tuple(c) for c in np.asarray(Image.open(p).convert("RGB")).reshape(-1, 3)} for p in (both, alone)]
    blue, orange = (31, 119, 180), (255, 127, 14)  # matplotlib's tab:blue (champion) and tab:orange (challenger)
    assert blue in colours[0] and orange in colours[0]
    assert blue not in colours[1] and orange in colours[1]


def test_training_data_docs_show_what_the_model_learned_from(tmp_path: Path):
    folder = tmp_path / "data"
    folder.mkdir()
    rows = []
    for i, (label, level) in enumerate([("yes", 0.3), ("no", 0.3), ("no", 0.0003), ("_silence_", 0.0)]):
        sf.write(folder / f"{i}.wav", tone(300.0 + 100 * i, level=level), 16000)
        rows.append({"file": str(folder / f"{i}.wav"), "label": label, "domain": "lab", "split": "training"})
    rows.append(rows[0] | {"split": "validation"})  # the same file cut into clips of two splits is one file
    (folder / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    rows.append({"file": str(folder / "broken.wav"), "label": "yes", "domain": "lab", "split": "testing"})

    facts = training_facts(pd.DataFrame(rows), progress=False)
    failures = document_training_data(facts, Ingest(), ["yes", "no", "_silence_", "up"], {"_silence_"},
                                      tmp_path / "docs")

    assert len(facts) == 5 and facts["readable"].tolist() == [True, True, True, True, False]
    found = {(Path(f.file).name, f.expectation) for f in failures}
    # The quiet "no" is below the floor; silence is exempt; the broken file does not decode; "up" has no file.
    assert ("2.wav", "expect_column_values_to_be_between(rms_dbfs)") in found
    assert ("broken.wav", "expect_column_values_to_be_in_set(readable)") in found
    assert ("*", "expect_column_distinct_values_to_equal_set(label)") in found
    assert not any(name == "3.wav" for name, _ in found)
    index = tmp_path / "docs" / "index.html"
    assert index.is_file() and TRAINING_SUITE in index.read_text()

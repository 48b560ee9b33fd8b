"""The synthesized sound-event corpus: UrbanSound8K layout, classes, folds by source, byte-identical reruns, and
classes that a trivial classifier already tells apart."""

from __future__ import annotations

import csv
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from components.tracks.esc.corpus import (
    CLASSES,
    SOUND_MODELS,
    SoundDomain,
    band_pass,
    equitable_colouring,
    plan_sources,
    source_domains,
    synthesize_urbansound,
)
from components.tracks.esc.events import URBANSOUND8K_COLUMNS, SoundClip, folds_split, load_urbansound8k

RATE = 16000
CLIPS_PER_CLASS = 20
MAX_SLICES = 4
# A clean street and a reverberant babble hall heard through a narrow microphone: every rendering path but car noise.
DOMAINS = {
    "street": SoundDomain(noise="pink", snr_db=(10.0, 25.0)),
    "hall": SoundDomain(noise="babble", snr_db=(8.0, 20.0), rt60_s=(0.3, 0.6), band_hz=(200.0, 6000.0)),
}
pytestmark = pytest.mark.usefixtures("one_torch_thread")
URBANSOUND8K_CLASSES = ("air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling", "engine_idling",
                        "gun_shot", "jackhammer", "siren", "street_music")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[SoundClip]]:
    root = tmp_path_factory.mktemp("urbansound") / "UrbanSound8K"
    clips = synthesize_urbansound(root, clips_per_class=CLIPS_PER_CLASS, sample_rate=RATE, seed=11, domains=DOMAINS,
                                  max_slices_per_source=MAX_SLICES)
    return root, clips


def test_the_class_ids_are_urbansound8k_s() -> None:
    assert CLASSES == URBANSOUND8K_CLASSES


def test_writes_the_urbansound8k_layout_that_the_loader_reads(corpus: tuple[Path, list[SoundClip]]) -> None:
    root, clips = corpus
    assert load_urbansound8k(root) == clips
    with (root / "metadata" / "UrbanSound8K.csv").open(newline="") as file:
        rows = list(csv.reader(file))
    assert tuple(rows[0]) == URBANSOUND8K_COLUMNS
    assert [row[0] for row in rows[1:]] == sorted(row[0] for row in rows[1:])
    assert sorted(p.name for p in (root / "audio").iterdir()) == sorted(f"fold{k}" for k in range(1, 11))
    assert sum(1 for _ in (root / "audio").rglob("*.wav")) == len(clips) == CLIPS_PER_CLASS * len(CLASSES)
    for clip, row in zip(clips, rows[1:], strict=True):
        info = sf.info(clip.path)
        assert (info.samplerate, info.channels, info.subtype) == (RATE, 1, "PCM_16")
        assert 0 < info.frames <= 4 * RATE
        # start and end place the slice in its source recording and span exactly its audio.
        assert float(row[3]) - float(row[2]) == pytest.approx(info.frames / RATE, abs=1e-5)


def test_classes_saliences_and_file_names_are_as_in_urbansound8k(corpus: tuple[Path, list[SoundClip]]) -> None:
    _, clips = corpus
    assert Counter(c.label_name for c in clips) == {name: CLIPS_PER_CLASS for name in CLASSES}
    assert {(c.label, c.label_name) for c in clips} == set(enumerate(CLASSES))
    assert {c.salience for c in clips} == {1, 2}
    for clip in clips:
        match = re.fullmatch(r"(\d+)-(\d)-(\d+)-(\d+)\.wav", clip.path.name)
        assert match and (match[1], int(match[2])) == (clip.source, clip.label)
        assert clip.path.parent.name == f"fold{clip.fold}"


def test_folds_are_by_source_and_balanced(corpus: tuple[Path, list[SoundClip]]) -> None:
    _, clips = corpus
    folds_of, labels_of, slices_of = defaultdict(set), defaultdict(set), Counter()
    for clip in clips:
        folds_of[clip.source].add(clip.fold)
        labels_of[clip.source].add(clip.label)
        slices_of[clip.source] += 1
    assert all(len(folds) == 1 for folds in folds_of.values())
    assert all(len(labels) == 1 for labels in labels_of.values())
    assert max(slices_of.values()) <= MAX_SLICES and any(n > 1 for n in slices_of.values())
    per_fold = Counter(c.fold for c in clips)
    assert set(per_fold) == set(range(1, 11)) and max(per_fold.values()) - min(per_fold.values()) <= MAX_SLICES
    for fold in range(1, 11):
        train, test = folds_split(clips, fold)
        assert not {c.source for c in train} & {c.source for c in test}


def test_plan_keeps_sources_whole_and_every_class_in_every_fold() -> None:
    plans = plan_sources(clips_per_class=100, domains=["a", "b", "c"], max_slices_per_source=6, seed=5)
    assert len({p.fs_id for p in plans}) == len(plans)
    for class_id in range(len(CLASSES)):
        mine = [p for p in plans if p.class_id == class_id]
        assert sum(p.slices for p in mine) == 100 and all(1 <= p.slices <= 6 for p in mine)
        per_fold = Counter()
        for plan in mine:
            per_fold[plan.fold] += plan.slices
        assert len(per_fold) == 10 and max(per_fold.values()) - min(per_fold.values()) <= 6
        assert Counter(p.domain for p in mine).keys() == {"a", "b", "c"}


@pytest.mark.parametrize("seed", range(5))
def test_the_domain_colouring_evens_out_every_class_and_every_fold(seed: int) -> None:
    rng = np.random.default_rng(seed)
    edges = [(int(u), int(v)) for u, v in rng.integers(0, [10, 10], size=(300, 2))]
    start = [0] * len(edges)  # the worst start: every source of one domain
    colours = equitable_colouring(edges, start, 3)
    for side in (0, 1):
        counts = Counter((edge[side], colour) for edge, colour in zip(edges, colours, strict=True))
        for vertex in {edge[side] for edge in edges}:
            per_colour = [counts[vertex, c] for c in range(3)]
            assert max(per_colour) - min(per_colour) <= 1, (side, vertex, per_colour)
    assert equitable_colouring(edges, colours, 3) == colours  # an equitable colouring is kept as it is


def test_every_source_names_its_domain(corpus: tuple[Path, list[SoundClip]]) -> None:
    root, clips = corpus
    domains = source_domains(root)
    assert set(domains) == {c.source for c in clips}
    for name in CLASSES:
        assert {domains[c.source] for c in clips if c.label_name == name} == set(DOMAINS)


def test_same_seed_writes_the_same_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    def render(folder: str, seed: int) -> dict[str, bytes]:
        root = tmp_path / folder
        synthesize_urbansound(root, clips_per_class=2, sample_rate=RATE, seed=seed, domains=DOMAINS)
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    first = render("a", seed=3)
    (tmp_path / "a" / "stale.txt").write_text("left over from an earlier run")
    assert render("a", seed=3) == first  # rebuilt from scratch: the stale file is gone
    assert render("b", seed=3) == first
    assert render("c", seed=4) != first


def _mean_log_mel(clips: list[SoundClip]) -> np.ndarray:
    mel = torchaudio.transforms.MelSpectrogram(RATE, n_fft=512, hop_length=320, n_mels=40)
    feats = []
    for clip in clips:
        audio, _ = sf.read(clip.path, dtype="float32")
        log_mel = torch.log(mel(torch.from_numpy(audio)) + 1e-6)
        log_mel -= log_mel.max()  # clips are recorded at random gains; the level says nothing of the class
        feats.append(torch.cat([log_mel.mean(1), log_mel.std(1)]).numpy())
    return np.stack(feats)


def test_classes_differ_enough_for_a_nearest_centroid_classifier(corpus: tuple[Path, list[SoundClip]]) -> None:
    _, clips = corpus
    feats, labels = _mean_log_mel(clips), np.array([c.label for c in clips])
    folds = np.array([c.fold for c in clips])
    correct = 0
    for fold in range(1, 11):
        train, test = folds != fold, folds == fold
        mean, std = feats[train].mean(0), feats[train].std(0) + 1e-6
        centroids = np.stack([((feats[train] - mean) / std)[labels[train] == k].mean(0) for k in range(10)])
        distances = np.linalg.norm(((feats[test] - mean) / std)[:, None] - centroids[None], axis=-1)
        correct += int(np.sum(distances.argmin(1) == labels[test]))
    # Chance is 10 %; a classifier this crude only clears 45 % if each class has a sound of its own.
    assert correct / len(clips) > 0.45


@pytest.mark.parametrize("rate", [8000, 22050])
def test_every_sound_model_fills_short_and_long_clips(rate: int) -> None:
    rng = np.random.default_rng(0)
    for name, model in SOUND_MODELS.items():
        for seconds in (0.5, 4.0):
            audio = model(int(seconds * rate), rate, rng)
            assert audio.shape == (int(seconds * rate),), name
            assert np.all(np.isfinite(audio)) and np.sqrt(np.mean(audio**2)) > 0, name


def test_band_pass_keeps_the_band_and_cuts_outside_it() -> None:
    t = np.arange(RATE) / RATE
    # RMS after the filter has settled; a unit sine has RMS 0.71.
    level = {f: np.std(band_pass(np.sin(2 * np.pi * f * t), RATE, 300.0, 3400.0)[RATE // 10 :])
             for f in (50, 1000, 7000)}
    assert level[1000] > 0.65 and level[50] < 0.1 and level[7000] < 0.2


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="below 8000 Hz"):
        synthesize_urbansound(tmp_path, clips_per_class=1, sample_rate=4000, seed=0, domains=DOMAINS)
    with pytest.raises(ValueError, match="at least one domain"):
        synthesize_urbansound(tmp_path, clips_per_class=1, sample_rate=RATE, seed=0, domains={})

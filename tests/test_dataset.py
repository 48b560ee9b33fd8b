import numpy as np
import pytest
import soundfile as sf
import torch

from components.config import Dataset, Features
from components.dataset import (
    SPLITS,
    AudioError,
    ClipCache,
    KwsData,
    build_dataset,
    index_speech_commands,
    read_audio,
    which_set,
)
from components.evaluate import evaluate_predictions
from components.features import LogMel, featurize
from tests.conftest import tone, write_tree

WORDS = {"yes": 300.0, "no": 500.0, "up": 700.0, "bed": 900.0}
SPEAKERS = [f"{i:08x}" for i in range(0x1000, 0x1000 + 40)]


def dataset_cfg(root, **extra) -> Dataset:
    return Dataset(domains={"lab": root}, words=["yes", "no", "up"], **extra)


def test_which_set_matches_the_speech_commands_rule():
    # Values of the reference implementation (tensorflow/examples/speech_commands/input_data.py).
    assert which_set("yes/0a7c2a8d_nohash_0.wav", 10, 10) == which_set("no/0a7c2a8d_nohash_3.wav", 10, 10)
    splits = {which_set(f"x/{s}_nohash_0.wav", 10, 10) for s in SPEAKERS * 10}
    assert splits == set(SPLITS)
    assert which_set("x/abc_nohash_0.wav", 0, 0) == "training"
    assert which_set("x/abc_nohash_0.wav", 100, 0) == "validation"


def test_index_reads_splits_from_the_list_files_and_skips_non_audio(tmp_path):
    root = write_tree(tmp_path / "sc", WORDS, SPEAKERS)
    clips, backgrounds = index_speech_commands(root)
    assert len(clips) == len(WORDS) * len(SPEAKERS)
    assert [b.name for b in backgrounds] == ["white_noise.wav"]
    listed = set((root / "testing_list.txt").read_text().split())
    assert {f"{c.word}/{c.path.name}" for c in clips if c.split == "testing"} == listed
    by_speaker = {}
    for clip in clips:
        by_speaker.setdefault(clip.speaker, set()).add(clip.split)
    assert all(len(splits) == 1 for splits in by_speaker.values())


def test_build_dataset_gives_the_12_class_protocol_with_silence_and_sampled_unknown(tmp_path):
    root = write_tree(tmp_path / "sc", WORDS, SPEAKERS)
    cfg = dataset_cfg(root, silence_percentage=10.0, unknown_percentage=10.0)
    data = build_dataset(cfg, seed=7, validation_percentage=20, testing_percentage=20, progress=False)
    assert data.label_names == ["yes", "no", "up", "_silence_", "_unknown_"]
    assert data.waves.shape[1] == 16000 and data.waves.dtype == torch.int16
    core = int((data.labels < 3).sum())
    assert int((data.labels == 4).sum()) == pytest.approx(core * 0.1, abs=3)
    assert int((data.labels == 3).sum()) == pytest.approx(core * 0.1, abs=3)
    silence_sources = [s for s, label in zip(data.sources, data.labels.tolist(), strict=True) if label == 3]
    assert all("_background_noise_" in s and "@" in s for s in silence_sources)
    # Deterministic from the seed, and the content hash names the data.
    again = build_dataset(cfg, seed=7, validation_percentage=20, testing_percentage=20, progress=False)
    assert torch.equal(again.waves, data.waves) and again.version == data.version
    sf.write(root / "yes" / f"{SPEAKERS[0]}_nohash_0.wav", tone(301.0), 16000, subtype="PCM_16")
    changed = build_dataset(cfg, seed=7, validation_percentage=20, testing_percentage=20, progress=False)
    assert changed.version != data.version


def test_each_clip_carries_its_engine_from_speakers_csv_and_is_scored_by_it(tmp_path):
    root = write_tree(tmp_path / "sc", WORDS, SPEAKERS)
    rows = "".join(f"{s},{'piper' if i % 2 else 'espeak'},{{}},\n" for i, s in enumerate(SPEAKERS[:-1]))
    (root / "speakers.csv").write_text("speaker,engine,settings,rt60\n" + rows)  # the last speaker is not listed
    data = build_dataset(dataset_cfg(root), seed=3, validation_percentage=20, testing_percentage=20, progress=False)
    engine_of = {s: ("piper" if i % 2 else "espeak") for i, s in enumerate(SPEAKERS[:-1])}
    for source, engine in zip(data.sources, data.engines, strict=True):
        speaker = source.rsplit("/", 1)[-1].split("_nohash_")[0]
        assert engine == ("background" if "@" in source else engine_of.get(speaker, "recorded"))
    assert {"espeak", "piper", "recorded", "background"} == set(data.engines)
    test = data.split("testing")
    assert len(test.engines) == len(test.labels)
    # A model right on every espeak clip and wrong on every other: the per-source figures say exactly that.
    predicted = torch.where(torch.tensor([e == "espeak" for e in test.engines]), test.labels, (test.labels + 1) % 5)
    evaluation = evaluate_predictions(predicted, test, test.engines)
    assert evaluation.per_engine["espeak"] == 1.0
    assert all(v == 0.0 for e, v in evaluation.per_engine.items() if e != "espeak")
    assert "| voice source | accuracy |" in evaluation.to_markdown()


def test_features_file_round_trip_and_split(tmp_path):
    root = write_tree(tmp_path / "sc", WORDS, SPEAKERS)
    data = build_dataset(dataset_cfg(root), seed=1, validation_percentage=20, testing_percentage=20, progress=False)
    data.save(tmp_path / "f.pt")
    loaded = KwsData.load(tmp_path / "f.pt")
    test = loaded.split("testing")
    assert len(test.waves) == len(test.sources) == int((data.splits == 2).sum()) > 0
    assert torch.equal(loaded.waves, data.waves)


def test_read_audio_resamples_and_downmixes(tmp_path):
    stereo = np.stack([tone(440.0, rate=44100), tone(440.0, rate=44100)], axis=1)
    sf.write(tmp_path / "s.flac", stereo, 44100)
    wave, digest = read_audio(tmp_path / "s.flac", 16000)
    assert wave.ndim == 1 and abs(len(wave) - 16000) <= 1 and len(digest) == 64


@pytest.mark.parametrize("content", [b"", b"RIFF\x00\x00\x00\x00WAVEjunk", b"just some text, not audio"])
def test_unreadable_audio_is_one_line_naming_the_file(tmp_path, content):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(content)
    with pytest.raises(AudioError) as err:
        read_audio(bad, 16000)
    assert str(err.value).startswith(str(bad)) and "\n" not in str(err.value)


def test_empty_split_is_a_clear_error(tmp_path):
    root = write_tree(tmp_path / "sc", WORDS, SPEAKERS[:2])
    (root / "validation_list.txt").write_text("")
    with pytest.raises(AudioError, match="no validation clips"):
        build_dataset(dataset_cfg(root), seed=1, progress=False)


def test_clip_cache_decodes_and_featurizes_only_new_content(tmp_path):
    root = write_tree(tmp_path / "sc", WORDS, SPEAKERS)
    cfg, front_end = dataset_cfg(root), LogMel(Features(), 16000)

    def load(cache: ClipCache) -> KwsData:
        data = build_dataset(cfg, seed=1, validation_percentage=20, testing_percentage=20, progress=False, cache=cache)
        data.mels = cache.log_mels(data.waves, data.content, front_end)
        return data

    first = ClipCache(tmp_path / "clips", "k")
    data = load(first)
    assert first.added == len(data.labels) - int((data.labels == 3).sum())  # every clip but cut silence
    assert torch.allclose(data.mels, featurize(data.float_waves(), front_end))
    first.save()
    sf.write(root / "no" / f"{SPEAKERS[3]}_nohash_0.wav", tone(1234.5), 16000, subtype="PCM_16")
    second = ClipCache(tmp_path / "clips", "k")
    again = load(second)
    assert second.added == 1 and second.new_stats == {next(k for k in second.new_stats if "00001003" in k)}
    second.save()  # only the rewritten file was re-read, and only it goes into the new shard
    assert len(list((tmp_path / "clips").glob("k-*"))) == 2
    fresh = build_dataset(cfg, seed=1, validation_percentage=20, testing_percentage=20, progress=False)
    assert torch.equal(again.waves, fresh.waves) and again.version == fresh.version
    assert torch.allclose(again.mels, featurize(fresh.float_waves(), front_end))
    assert ClipCache(tmp_path / "clips", "other-settings").waves == {}

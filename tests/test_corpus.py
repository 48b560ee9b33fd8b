"""The synthesized corpus: Speech Commands v2 layout, exact splits, byte-identical reruns, clear config errors."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from components.acoustics import resample
from components.config import ConfigError, Params
from components.corpus import CLIP_CHECK_FILE, check_takes, plan_speakers, synthesize_corpus
from components.dataset import BACKGROUND_DIR, REJECTED_DIR, SPLIT_FILES, index_speech_commands, which_set
from components.speech import Speaker

CLIP_NAME = re.compile(r"^[0-9a-f]{8}_nohash_\d+\.wav$")
WORDS = ["yes", "no"]
UNKNOWN = ["tree"]
SPEAKERS = 4
TAKES = 2
DOMAINS = {
    "studio": {"voices": ["en-us"], "engines": ["espeak", "piper"], "noise": "none", "snr_db": [35.0, 45.0]},
    "office": {"voices": ["en-gb", "en-gb-x-rp"], "engines": ["kokoro", "espeak"], "noise": "babble",
               "snr_db": [10.0, 20.0], "rt60_s": [0.2, 0.5]},
    "car": {"voices": ["en-gb-scotland"], "noise": "car", "snr_db": [5.0, 15.0], "rt60_s": [0.05, 0.15]},
}


def small_params(out_dir: Path, seed: int = 7, domains: dict | None = None) -> Params:
    """Three domains x 4 speakers x 3 words x 2 takes: every code path, in seconds."""
    domains = domains or DOMAINS
    return Params.model_validate(
        {
            "seed": seed,
            "synthesis": {
                "out_dir": str(out_dir),
                "speakers_per_domain": SPEAKERS,
                "takes_per_word": TAKES,
                "background_seconds": 3,
                "unknown_words": UNKNOWN,
                "check_clips": True,
                "validation_percentage": 25.0,
                "testing_percentage": 25.0,
                "domains": domains,
            },
            "dataset": {"domains": {name: str(out_dir / "kws" / name) for name in domains}, "words": WORDS},
        }
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, dict[str, Path]]:
    params = small_params(tmp_path_factory.mktemp("synth"))
    return params, synthesize_corpus(params, progress=False)


def _rejected(root: Path) -> list[str]:
    return sorted(p.relative_to(root / REJECTED_DIR).as_posix() for p in (root / REJECTED_DIR).glob("*/*.wav"))


def _clips(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.wav") if p.parent.name != BACKGROUND_DIR)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_which_set_matches_hand_computed_hashes() -> None:
    # sha1("0ab3b47d") ends in ...00bafe83; its low 27 bits are 0xbafe83 = 12254851 -> 9.13 %.
    assert which_set("right/0ab3b47d_nohash_0.wav", 10.0, 10.0) == "validation"
    assert which_set("0ab3b47d_nohash_3.wav", 9.0, 10.0) == "testing"
    # sha1("bfd26d6b") -> 17032903 -> 12.69 %; sha1("0a7c2a8d") -> 76284507 -> 56.84 %.
    assert which_set("bfd26d6b_nohash_1.wav", 10.0, 10.0) == "testing"
    assert which_set("bfd26d6b_nohash_1.wav", 10.0, 2.0) == "training"
    assert which_set("/data/go/0a7c2a8d_nohash_0.wav", 10.0, 10.0) == "training"
    assert which_set("0a7c2a8d_nohash_0.wav", 50.0, 10.0) == "testing"


def test_tree_has_the_speech_commands_layout(corpus: tuple[Params, dict[str, Path]]) -> None:
    params, roots = corpus
    assert set(roots) == set(DOMAINS)
    for domain, root in roots.items():
        assert root == params.synth_root / domain
        folders = {p.name for p in root.iterdir() if p.is_dir()}
        assert folders == {*WORDS, *UNKNOWN, BACKGROUND_DIR, REJECTED_DIR}
        for word in [*WORDS, *UNKNOWN]:
            names = sorted(p.name for p in (root / word).iterdir())
            refused = [Path(rel).name for rel in _rejected(root) if rel.startswith(f"{word}/")]
            assert sorted(names + refused) == sorted({*names, *refused}) and len(names + refused) == SPEAKERS * TAKES
            assert all(CLIP_NAME.match(name) for name in names + refused)


def test_every_clip_is_one_second_16k_mono_pcm16_and_audible(corpus: tuple[Params, dict[str, Path]]) -> None:
    _, roots = corpus
    for root in roots.values():
        for rel in _clips(root):
            info = sf.info(root / rel)
            assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 16000, "PCM_16")
            audio, _ = sf.read(root / rel, dtype="float32")
            assert 0.05 < np.abs(audio).max() < 0.75
            # Never digital silence, not even the noiseless studio: a faint floor is always mixed in.
            assert np.count_nonzero(audio[:800]) > 400 or np.count_nonzero(audio[-800:]) > 400


def test_background_noise_files_cover_background_seconds(corpus: tuple[Params, dict[str, Path]]) -> None:
    params, roots = corpus
    for domain, root in roots.items():
        files = sorted((root / BACKGROUND_DIR).glob("*.wav"))
        infos = [sf.info(f) for f in files]
        assert all((i.samplerate, i.channels, i.subtype) == (16000, 1, "PCM_16") for i in infos)
        assert sum(i.frames for i in infos) == params.synthesis.background_seconds * 16000
        if DOMAINS[domain]["noise"] == "none":
            assert [f.name for f in files] == ["pink_noise.wav", "white_noise.wav"]
        else:
            assert len(files) == 3 and all(DOMAINS[domain]["noise"] in f.name for f in files)


def test_split_lists_follow_which_set_and_are_speaker_disjoint(corpus: tuple[Params, dict[str, Path]]) -> None:
    params, roots = corpus
    syn = params.synthesis
    for root in roots.values():
        clips = _clips(root)
        listed = {split: (root / name).read_text().splitlines() for split, name in SPLIT_FILES.items()}
        for split, lines in listed.items():
            assert lines == sorted(lines) and set(lines) <= set(clips)
            assert all(which_set(line, syn.validation_percentage, syn.testing_percentage) == split for line in lines)
        expected = {
            rel for rel in clips if which_set(rel, syn.validation_percentage, syn.testing_percentage) != "training"
        }
        assert set(listed["validation"]) | set(listed["testing"]) == expected
        training = set(clips) - expected
        speakers = {
            split: {Path(rel).name.split("_nohash_")[0] for rel in rels}
            for split, rels in [("training", training), *((s, set(r)) for s, r in listed.items())]
        }
        # 4 speakers at 25 / 25 %: exactly one validation, one testing and two training speakers.
        assert [len(speakers[s]) for s in ("validation", "testing", "training")] == [1, 1, 2]
        assert not (speakers["training"] & speakers["validation"] or speakers["training"] & speakers["testing"])
        assert not speakers["validation"] & speakers["testing"]


def test_speakers_csv_records_every_speaker_and_its_engine(corpus: tuple[Params, dict[str, Path]]) -> None:
    params, roots = corpus
    for domain, root in roots.items():
        with (root / "speakers.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert [r["speaker"] for r in rows] == [p.id for p in plan_speakers(params, domain)]
        speakers = {Path(rel).name.split("_nohash_")[0] for rel in _clips(root) + _rejected(root)}
        assert speakers == {r["speaker"] for r in rows}
        engines = DOMAINS[domain].get("engines", ["espeak"])
        assert sorted(r["engine"] for r in rows) == sorted(engines * (SPEAKERS // len(engines)))
        for row in rows:
            settings = json.loads(row["settings"])
            if row["engine"] == "espeak":
                assert settings["voice"] in DOMAINS[domain]["voices"] and settings["variant"]
                assert 130 <= int(settings["rate"]) <= 210 and 0 <= int(settings["pitch"]) <= 99
            rt60 = DOMAINS[domain].get("rt60_s")
            assert row["rt60"] == "" if rt60 is None else rt60[0] <= float(row["rt60"]) <= rt60[1]
        by_speaker = {r["speaker"]: r["engine"] for r in rows}
        clips, _ = index_speech_commands(root)
        assert all(clip.engine == by_speaker[clip.speaker] for clip in clips)


def test_the_clip_check_report_counts_each_engine_and_lists_no_rejected_clip(
    corpus: tuple[Params, dict[str, Path]],
) -> None:
    _, roots = corpus
    for domain, root in roots.items():
        report = json.loads((root / CLIP_CHECK_FILE).read_text())
        engines = DOMAINS[domain].get("engines", ["espeak"])
        per_word = SPEAKERS // len(engines) * TAKES * (len(WORDS) + len(UNKNOWN))
        assert report["per_engine"] == {e: {"checked": per_word, "dropped": report["per_engine"][e]["dropped"]}
                                        for e in engines}
        dropped = sorted(d["clip"] for d in report["dropped"])
        assert dropped == sorted(f"{REJECTED_DIR}/{rel}" for rel in _rejected(root))
        assert sum(e["dropped"] for e in report["per_engine"].values()) == len(dropped)
        listed = {line for name in SPLIT_FILES.values() for line in (root / name).read_text().splitlines()}
        assert not listed & set(_rejected(root))


def test_the_clip_check_drops_a_take_that_says_another_word(tmp_path: Path) -> None:
    params = small_params(tmp_path)
    voices = [Speaker("en-us", v, 170, 50) for v in ("m3", "f2", "m1", "f4")]
    takes = [(label, i) for i in range(len(voices)) for label in ("yes", "no")]
    # Every "no" take actually says "tree", another corpus word: a synthesizer slip the check must catch.
    said = [voices[i].say("tree" if label == "no" else label) for label, i in takes]
    words = [resample(audio, voices[0].sample_rate, 16000) for audio in said]
    rejected = check_takes(params, takes, words, "0000abcd")
    refused = {r.name for r in rejected if r.word == "no"}
    assert len(refused) == len(voices), rejected  # every mislabelled take
    assert sum(r.word == "yes" for r in rejected) <= 1, rejected  # at most one true take lost to the recognizer
    assert all("not 'no'" in r.reason for r in rejected if r.word == "no")


def test_same_params_give_identical_bytes_for_any_worker_count(
    corpus: tuple[Params, dict[str, Path]], tmp_path: Path
) -> None:
    params, roots = corpus
    again = small_params(tmp_path)
    stale = tmp_path / "kws" / "studio" / "stale.wav"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left over from an older run")
    rerun = synthesize_corpus(again, progress=False, workers=1)
    assert not stale.exists()
    for domain, root in roots.items():
        assert _tree_bytes(rerun[domain]) == _tree_bytes(root)


def test_another_seed_gives_other_speakers_and_audio(corpus: tuple[Params, dict[str, Path]], tmp_path: Path) -> None:
    params, roots = corpus
    other = synthesize_corpus(small_params(tmp_path, seed=8, domains={"car": DOMAINS["car"]}), progress=False)
    assert _clips(other["car"]) != _clips(roots["car"])
    first, second = sorted((other["car"] / "yes").iterdir())[0], sorted((roots["car"] / "yes").iterdir())[0]
    assert first.read_bytes() != second.read_bytes()


def test_unknown_voice_is_refused_naming_domain_and_voice(tmp_path: Path) -> None:
    bad = {"street": {"voices": ["en-us", "en-xx-martian"], "noise": "white"}}
    with pytest.raises(ConfigError, match=r"synthesis\.domains\.street\.voices: .*'en-xx-martian'") as err:
        synthesize_corpus(small_params(tmp_path, domains=bad), progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "kws" / "street").exists()

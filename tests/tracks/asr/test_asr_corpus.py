"""The synthesized speech-to-text corpus: LibriSpeech layout, one subset per speaker, byte-identical reruns."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from components.config import ConfigError, Params
from components.corpus import PEAK_DBFS
from components.grammar import all_sentences, vocabulary
from components.librispeech import index_librispeech
from components.speech import Speaker
from components.tracks.asr.corpus import PAD_S, plan_speakers, render_utterance, synthesize_asr_corpus
from tests.conftest import tiny_settings

SPEAKERS = 4
UTTERANCES = 3
# A clean domain and a reverberant babble one: every rendering path but car noise (covered in test_acoustics).
DOMAINS = ["studio_us", "office_uk"]
OFFICE = {"voices": ["en-gb", "en-gb-x-rp"], "noise": "babble", "snr_db": [10.0, 20.0], "rt60_s": [0.2, 0.5]}


def asr_params(root: Path, **corpus: object) -> Params:
    settings = tiny_settings(root)
    settings["synthesis"]["domains"]["office_uk"] = OFFICE
    settings["track"] = "asr"
    settings["asr"]["corpus"] |= {"domains": DOMAINS, "speakers_per_domain": SPEAKERS,
                                  "utterances_per_speaker": UTTERANCES} | corpus
    settings["asr"]["domains"] = {d: str(root / "data/synth/asr" / d) for d in DOMAINS}
    return Params.model_validate(settings)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, dict[str, Path]]:
    params = asr_params(tmp_path_factory.mktemp("asr"))
    return params, synthesize_asr_corpus(params, progress=False, workers=2)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_is_librispeech_with_each_speaker_in_one_subset(corpus: tuple[Params, dict[str, Path]]) -> None:
    params, roots = corpus
    subsets = params.asr.subsets
    assert roots == {d: params.synth_root / d for d in DOMAINS}
    all_speakers: list[str] = []
    for root in roots.values():
        where: dict[str, str] = {}
        for subset in (subsets.training, subsets.validation, subsets.testing):
            utterances = index_librispeech(root / subset)
            for u in utterances:
                assert where.setdefault(u.speaker, subset) == subset, f"{u.speaker} is in two subsets"
                assert u.path == root / subset / u.speaker / u.chapter / f"{u.id}.flac"
            per_speaker = {s: [u for u in utterances if u.speaker == s] for s in {u.speaker for u in utterances}}
            assert all(len(us) == UTTERANCES and len({u.chapter for u in us}) == 1 for us in per_speaker.values())
        assert sorted(where.values()) == sorted(["train", "train", "dev", "test"])
        assert all(s.isdigit() for s in where)
        with (root / "speakers.csv").open() as f:
            assert {row["speaker"]: row["subset"] for row in csv.DictReader(f)} == where
        all_speakers += where
    assert len(all_speakers) == len(set(all_speakers)) == SPEAKERS * len(DOMAINS)


def test_audio_is_16_bit_flac_at_the_track_rate_and_level(corpus: tuple[Params, dict[str, Path]]) -> None:
    params, roots = corpus
    for root in roots.values():
        for path in root.rglob("*.flac"):
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.subtype) == (params.asr.sample_rate, 1, "PCM_16")
            peak_db = 20 * np.log10(np.abs(sf.read(path, dtype="float32")[0]).max())
            assert PEAK_DBFS[0] - 0.1 <= peak_db <= PEAK_DBFS[1] + 0.1
            assert 0.5 < info.duration < 6.0


def test_transcripts_are_grammar_sentences(corpus: tuple[Params, dict[str, Path]]) -> None:
    params, roots = corpus
    texts = [u.text for root in roots.values() for s in ("train", "dev", "test") for u in index_librispeech(root / s)]
    assert set(texts) <= set(all_sentences())
    assert {w for t in texts for w in t.split()} <= set(vocabulary())
    assert len(set(texts)) > len(texts) // 2


def test_same_params_give_the_same_bytes_with_any_worker_count(
    corpus: tuple[Params, dict[str, Path]], tmp_path: Path
) -> None:
    params, roots = corpus
    again = asr_params(tmp_path, domains=["office_uk"])
    synthesize_asr_corpus(again, progress=False, workers=1)
    assert _tree_bytes(again.synth_root / "office_uk") == _tree_bytes(roots["office_uk"])


def test_rendered_speech_span_holds_the_energy(tmp_path: Path) -> None:
    params = asr_params(tmp_path)
    speaker = Speaker("en-us", "f2", 170, 40)
    text = "set a timer for twenty five minutes"
    first = render_utterance(params, "studio_us", text, speaker, np.random.default_rng(1))
    start, end = first.speech
    rate = params.asr.sample_rate
    assert first.audio.dtype == np.float32
    assert PAD_S[0] * rate - 1 <= start <= PAD_S[1] * rate
    assert PAD_S[0] * rate - 1 <= first.audio.size - end <= PAD_S[1] * rate
    inside, outside = first.audio[start:end], np.concatenate([first.audio[:start], first.audio[end:]])
    assert np.mean(outside**2) < 1e-3 * np.mean(inside**2)
    # The 20 ms at each edge of the span are already speech: the span is tight, not merely padded.
    edge = rate // 50
    assert min(np.mean(first.audio[start : start + edge] ** 2), np.mean(first.audio[end - edge : end] ** 2)) > 10 * (
        np.mean(outside**2)
    )
    # What was rendered before does not change a rendering: the same call gives the same audio.
    render_utterance(params, "office_uk", "call mom", speaker, np.random.default_rng(2))
    again = render_utterance(params, "studio_us", text, speaker, np.random.default_rng(1))
    assert np.array_equal(again.audio, first.audio) and again.speech == first.speech


def test_subsets_get_exact_shares_and_ids_are_unique(tmp_path: Path) -> None:
    params = asr_params(tmp_path, speakers_per_domain=40, validation_percentage=10.0, testing_percentage=10.0)
    plans = {d: plan_speakers(params, d) for d in DOMAINS}
    for domain_plans in plans.values():
        subsets = [p.subset for p in domain_plans]
        assert (subsets.count("train"), subsets.count("dev"), subsets.count("test")) == (32, 4, 4)
    ids = [p.id for ps in plans.values() for p in ps]
    assert len(set(ids)) == len(ids)
    assert plans == {d: plan_speakers(params, d) for d in DOMAINS}


def test_unusable_settings_fail_before_rendering(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="speakers_per_domain"):
        plan_speakers(asr_params(tmp_path, speakers_per_domain=2), "studio_us")
    settings = asr_params(tmp_path).model_dump(mode="json")
    settings["synthesis"]["domains"]["studio_us"]["voices"] = ["en-klingon"]
    with pytest.raises(ConfigError, match="en-klingon"):
        synthesize_asr_corpus(Params.model_validate(settings), progress=False)

"""The featurize stage keeps one shard per domain and rebuilds only what changed."""

import json

import pytest
import soundfile as sf
import torch

from components.config import Features, Params
from components.dataset import KwsData
from components.features import LOG_FLOOR, LogMel, frame_count
from components.tracks.kws.track import featurize
from tests.conftest import tiny_settings, tone, write_tree

WORDS = {"yes": 300.0, "no": 500.0, "up": 700.0, "bed": 900.0}
SPEAKERS = [f"{i:08x}" for i in range(0x3000, 0x3000 + 30)]


def params_for(tmp_path, domains: dict) -> Params:
    settings = tiny_settings(tmp_path)
    settings["dataset"] |= {"domains": {k: str(v) for k, v in domains.items()}, "words": ["yes", "no", "up"]}
    return Params.model_validate(settings)


def test_only_the_changed_domain_is_rebuilt_and_removed_domains_are_dropped(tmp_path):
    a = write_tree(tmp_path / "a", WORDS, SPEAKERS)
    b = write_tree(tmp_path / "b", WORDS, SPEAKERS)
    params = params_for(tmp_path, {"a": a, "b": b})
    first = featurize(params)
    shards = params.out.features
    stamps = {d: (shards / f"{d}.pt").stat().st_mtime_ns for d in ("a", "b")}
    assert featurize(params) == first  # nothing changed, nothing rebuilt
    assert {d: (shards / f"{d}.pt").stat().st_mtime_ns for d in ("a", "b")} == stamps

    sf.write(a / "yes" / f"{SPEAKERS[0]}_nohash_0.wav", tone(1500.0), 16000, subtype="PCM_16")
    second = featurize(params)
    assert second["a"] != first["a"] and second["b"] == first["b"]
    assert (shards / "b.pt").stat().st_mtime_ns == stamps["b"]
    assert (shards / "a.pt").stat().st_mtime_ns != stamps["a"]

    joined = KwsData.load(shards)
    assert joined.domain_names == ["a", "b"] and len(joined.mels) == len(joined.labels) == len(joined.waves)
    assert set(joined.domains.tolist()) == {0, 1}

    featurize(params_for(tmp_path, {"a": a}))
    assert not (shards / "b.pt").exists() and list(json.loads((shards / "index.json").read_text())) == ["a"]


@pytest.mark.parametrize(("win_ms", "hop_ms", "samples"),
                         [(30.0, 20.0, 16000), (25.0, 10.0, 16000), (25.0, 10.0, 12345)])
def test_frame_count_matches_the_front_end(win_ms, hop_ms, samples):
    cfg = Features(win_ms=win_ms, hop_ms=hop_ms)
    assert LogMel(cfg, 16000)(torch.zeros(1, samples)).shape[2] == frame_count(cfg, 16000, samples)


@pytest.mark.parametrize(("win_ms", "hop_ms", "n_mels"), [(30.0, 20.0, 40), (25.0, 10.0, 64)])
def test_log_mel_is_the_log_of_torchaudios_mel_spectrogram(win_ms, hop_ms, n_mels):
    # LogMel computes the power spectrum itself, for speed; the models learned torchaudio's numbers.
    front_end = LogMel(Features(win_ms=win_ms, hop_ms=hop_ms, n_mels=n_mels), 16000)
    waves = 0.3 * torch.randn(3, 16000, generator=torch.Generator().manual_seed(0))
    waves[1, 4000:9000] = 0.0  # silence reaches the log floor
    expected = torch.log(front_end.mel(waves) + LOG_FLOOR)
    assert torch.allclose(front_end(waves), expected, atol=1e-4)
    assert torch.allclose(front_end(waves[2]), expected[2], atol=1e-4)  # one clip, no batch axis

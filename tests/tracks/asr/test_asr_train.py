import numpy as np
import pytest
import torch

from components.acoustics import resample
from components.asr_data import AsrData, build_asr_data
from components.asr_model import offline_log_probs
from components.config import Params
from components.ctc import greedy_decode
from components.errors import EarshotError
from components.features import LogMel
from components.librispeech import LibriSpeechError, write_chapter
from components.speech import SPEECH_RATE, Speaker, speak
from components.tracks.asr.train import length_batches, train_transcriber
from tests.conftest import tiny_settings

SENTENCES = ["call mom", "turn the lights off", "set a timer", "play some jazz"]
SPEAKERS = [Speaker("en-us", "m3", 170, 40), Speaker("en-us", "f2", 160, 60)]


def asr_params(root, **asr) -> Params:
    settings = tiny_settings(root) | {"track": "asr"}
    settings["asr"]["domains"] = {"studio_us": str(root / "studio_us"), "car_scottish": str(root / "car_scottish")}
    settings["asr"]["model"] = {"channels": 48, "blocks": 2, "kernel": 5, "lookahead": 1, "subsampling": 2,
                                "dropout": 0.0}
    settings["asr"]["train"] = {"epochs": 120, "batch_size": 4, "learning_rate": 0.01, "patience": 120,
                                "threads": 1}
    settings["augment"] |= {"masks": 0}
    for key, value in asr.items():
        settings["asr"][key] |= value
    return Params.model_validate(settings)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A LibriSpeech-layout domain: the same sentences in the training and dev subsets (so a model can overfit),
    one test utterance; speaker 1's files are 22 050 Hz stereo, which the loader must resample and downmix."""
    root = tmp_path_factory.mktemp("asr")
    voices = [[speak(text, speaker) for text in SENTENCES] for speaker in SPEAKERS]
    for subset in ("train", "dev"):
        mono = [(resample(v, SPEECH_RATE, 16000), t) for v, t in zip(voices[0], SENTENCES, strict=True)]
        write_chapter(root / "studio_us" / subset, "100", "7", mono, 16000)
        stereo = [(np.stack([v, 0.5 * v], axis=1), t) for v, t in zip(voices[1], SENTENCES, strict=True)]
        write_chapter(root / "studio_us" / subset, "101", "7", stereo, SPEECH_RATE)
    write_chapter(root / "studio_us" / "test", "300", "7", [(resample(voices[0][0], SPEECH_RATE, 16000), "call mom")],
                  16000)
    return root, voices


@pytest.fixture(scope="module")
def data(corpus):
    root, _ = corpus
    return build_asr_data(asr_params(root), "studio_us", [root / "studio_us"])


def test_loader_reads_every_subset_resampling_and_downmixing(corpus, data, tmp_path):
    root, voices = corpus
    params = asr_params(root)
    assert data.split("training").texts == SENTENCES * 2 and data.split("validation").texts == SENTENCES * 2
    assert data.split("testing").ids == ["300-7-0000"] and data.domain_names == ["studio_us"]
    assert all(m.dtype == torch.float16 and m.shape[0] == params.asr.features.n_mels for m in data.mels)
    # The stereo 22 050 Hz file reads as its mono mix at 16 kHz: 0.75 of the voice.
    stereo = data.split("training").mels[4].float()
    expected = LogMel(params.asr.features, 16000)(torch.from_numpy(resample(0.75 * voices[1][0], SPEECH_RATE, 16000)))
    assert stereo.shape == expected.shape
    # FLAC's 16 bits move the quietest bins a little; the left channel alone would be log(1/0.75) = 0.29 off.
    assert (stereo - expected).abs().mean() < 0.02
    data.save(tmp_path / "asr.pt")
    loaded = AsrData.load(tmp_path / "asr.pt")
    assert loaded.texts == data.texts and loaded.version == data.version and torch.equal(loaded.mels[3], data.mels[3])


def test_data_version_follows_the_transcripts_and_concat_renumbers_domains(corpus, data, tmp_path):
    root, _ = corpus
    other = tmp_path / "car_scottish"
    for subset in ("train", "dev", "test"):
        (other / subset / "1" / "1").mkdir(parents=True)
        flac = next((root / "studio_us" / subset).rglob("*-0000.flac"))
        (other / subset / "1" / "1" / "1-1-0000.flac").write_bytes(flac.read_bytes())
        (other / subset / "1" / "1" / "1-1.trans.txt").write_text("1-1-0000 CALL DAD\n")
    car = build_asr_data(asr_params(root), "car_scottish", [other])
    assert car.texts == ["call dad"] * 3 and car.version != data.version
    both = AsrData.concat([data, car])
    assert both.domain_names == ["studio_us", "car_scottish"] and both.domains.tolist() == [0] * 17 + [1] * 3
    assert both.split("testing").ids == ["300-7-0000", "1-1-0000"]
    (other / "test" / "1" / "1" / "1-1.trans.txt").write_text("1-1-0000 CALL 911\n")
    with pytest.raises(LibriSpeechError, match="1-1.trans.txt"):
        build_asr_data(asr_params(root), "car_scottish", [other])


def test_batches_hold_clips_of_similar_length_in_a_seeded_order():
    mels = [torch.zeros(1, n) for n in torch.randperm(64, generator=torch.Generator().manual_seed(1)).tolist()]
    first = length_batches(mels, 8, torch.Generator().manual_seed(0))
    assert sorted(i for b in first for i in b) == list(range(64))
    # Lengths are 0..63 jittered by 10 %: a batch spans far less than the whole range.
    assert max(max(mels[i].shape[1] for i in b) - min(mels[i].shape[1] for i in b) for b in first) < 20
    assert first == length_batches(mels, 8, torch.Generator().manual_seed(0))
    assert first != length_batches(mels, 8, torch.Generator().manual_seed(1))


def test_the_transcriber_learns_to_transcribe_what_it_hears(corpus, data):
    root, _ = corpus
    seen = []
    result = train_transcriber(data, asr_params(root), on_epoch=seen.append)
    assert [m["epoch"] for m in seen] == list(range(len(result.history)))
    assert seen[0]["val_wer"] >= 0.9 and result.best_val_wer <= 0.25
    assert result.best_val_wer == min(m["val_wer"] for m in result.history)
    test = data.split("testing")
    assert greedy_decode(offline_log_probs(result.model, test.mels[0].float())) == "call mom"


def test_interrupted_training_resumes_to_the_same_result(corpus, data, tmp_path):
    root, _ = corpus
    params = asr_params(root, train={"epochs": 4}, model={"dropout": 0.1})
    straight = train_transcriber(data, params)

    class Crash(Exception):
        pass

    def crash_after_two(metrics):
        if metrics["epoch"] == 1:
            raise Crash

    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(Crash):
        train_transcriber(data, params, checkpoint=checkpoint, on_epoch=crash_after_two)
    assert checkpoint.is_file()
    resumed_epochs = []
    resumed = train_transcriber(data, params, checkpoint=checkpoint, on_epoch=resumed_epochs.append)
    assert resumed.resumed_from_epoch == 1
    assert [m["epoch"] for m in resumed_epochs] == [1, 2, 3]
    assert resumed.history == straight.history
    assert not checkpoint.exists()


def test_training_without_validation_utterances_is_refused(corpus, data):
    root, _ = corpus
    only_training = data.split("training")
    with pytest.raises(EarshotError, match="studio_us: no validation utterances"):
        train_transcriber(only_training, asr_params(root))

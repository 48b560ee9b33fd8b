"""Export of the speech-to-text model: FP32 and static INT8 ONNX with a dynamic time axis, judged by WER and speed.

A transcriber's INT8 error is not a flipped label but misspelt words, so parity here is the WER gap to FP32.
"""

from __future__ import annotations

import copy
import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from components.asr_data import AsrData
from components.asr_model import Transcriber, output_frames, pad_batch
from components.ctc import BeamDecoder
from components.errors import EarshotError
from components.export import FP32_FILE, INPUT, INT8_FILE, LOG_PROBS, export_fp32, quantize_int8, single_thread_session
from components.wer import WerReport, score_transcripts

LogProbs = Callable[[torch.Tensor], torch.Tensor]  # padded (1, n_mels, frames) -> (out_frames, vocab)


@dataclass(frozen=True)
class TranscriberVariant:
    """One runnable form of the model: its file, size, WER on the test set and model-only real-time factor.

    `rtf` is model time over audio time, one utterance at a time on one thread; PyTorch eager has no file.
    """

    name: str
    path: Path | None
    size_bytes: int
    wer: float
    cer: float
    per_domain: dict[str, float]
    rtf: float


@dataclass(frozen=True)
class TranscriberExport:
    variants: tuple[TranscriberVariant, ...]
    test_utterances: int
    audio_seconds: float
    calibration_utterances: int

    def variant(self, name: str) -> TranscriberVariant:
        return next(v for v in self.variants if v.name == name)

    @property
    def int8_wer_gap_points(self) -> float:
        """INT8 WER minus FP32 WER, in points: what quantization costs in words."""
        return (self.variant("onnx_int8").wer - self.variant("onnx_fp32").wer) * 100

    def to_dict(self) -> dict[str, object]:
        rows = [asdict(v) | {"path": None if v.path is None else str(v.path)} for v in self.variants]
        return {"variants": rows, "int8_wer_gap_points": self.int8_wer_gap_points,
                "test_utterances": self.test_utterances, "audio_seconds": self.audio_seconds,
                "calibration_utterances": self.calibration_utterances}


def onnx_log_probs(path: Path) -> LogProbs:
    """An exported transcriber as a function, run by ONNX Runtime on one thread."""
    session = single_thread_session(path)
    return lambda padded: torch.from_numpy(session.run([LOG_PROBS], {INPUT: padded.numpy()})[0][0])


def torch_log_probs(model: Transcriber) -> LogProbs:
    def run(padded: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(padded)[0]

    return run


def transcribe(run: LogProbs, model: Transcriber, test: AsrData, decoder: BeamDecoder) -> tuple[list[str], float]:
    """Beam-decoded transcripts of every test utterance, one at a time, and the seconds spent in the model."""
    hypotheses, spent = [], 0.0
    for mels in test.mels:
        padded = pad_batch(model, [mels.float()])
        start = time.perf_counter()
        log_probs = run(padded)
        spent += time.perf_counter() - start
        hypotheses.append(decoder.decode(log_probs[: output_frames(model, mels.shape[1])]))
    return hypotheses, spent


def score_variant(run: LogProbs, model: Transcriber, test: AsrData, decoder: BeamDecoder) -> tuple[WerReport, float]:
    """WER of one form of the model on the test split, per domain, and its model seconds; the gate scores the
    champion this same way."""
    hypotheses, spent = transcribe(run, model, test, decoder)
    return score_transcripts(test.ids, test.texts, hypotheses, [test.domain_names[d] for d in test.domains]), spent


def export_transcriber(model: Transcriber, calibration: list[torch.Tensor], test: AsrData, decoder: BeamDecoder,
                       hop_seconds: float, out_dir: Path) -> TranscriberExport:
    """Write out_dir/model.onnx and out_dir/model.int8.onnx and measure both beside PyTorch on the test split."""
    if not calibration or not test.mels:
        raise EarshotError(f"export needs calibration and test utterances, got {len(calibration)} and "
                           f"{len(test.mels)}")
    model = copy.deepcopy(model).eval()
    fp32_path, int8_path = out_dir / FP32_FILE, out_dir / INT8_FILE
    # Batch 2 and the longest utterances: torch.export must not specialise either axis to the example's size.
    example = pad_batch(model, sorted((m.float() for m in calibration), key=lambda m: -m.shape[1])[:2])
    frames = torch.export.Dim("frames", min=model.receptive_field, max=1 << 16)
    export_fp32(model, example, fp32_path, output=LOG_PROBS, dynamic={0: torch.export.Dim("batch"), 2: frames})
    quantize_int8(fp32_path, [pad_batch(model, [m.float()]) for m in calibration], int8_path, symbolic_shapes=False)

    audio_seconds = sum(m.shape[1] for m in test.mels) * hop_seconds
    weights = io.BytesIO()
    torch.save(model.state_dict(), weights)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        variants = tuple(
            _measure(name, path, size, run, model, test, decoder, audio_seconds)
            for name, path, size, run in (
                ("pytorch", None, weights.tell(), torch_log_probs(model)),
                ("onnx_fp32", fp32_path, fp32_path.stat().st_size, onnx_log_probs(fp32_path)),
                ("onnx_int8", int8_path, int8_path.stat().st_size, onnx_log_probs(int8_path)),
            )
        )
    finally:
        torch.set_num_threads(threads)
    return TranscriberExport(variants, len(test.mels), audio_seconds, len(calibration))


def _measure(name: str, path: Path | None, size: int, run: LogProbs, model: Transcriber, test: AsrData,
             decoder: BeamDecoder, audio_seconds: float) -> TranscriberVariant:
    report, spent = score_variant(run, model, test, decoder)
    return TranscriberVariant(name, path, size, report.wer, report.cer,
                              {d: w.wer for d, w in report.per_domain.items()}, spent / audio_seconds)

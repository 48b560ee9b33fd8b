"""Benchmark: streaming speech-to-text on one thread, end-of-speech to final transcript latency, RTF and WER.

Long test streams (test-subset voices of each domain saying grammar sentences, 0.5-2 s of the domain's noise
between them) are replayed chunk by chunk through StreamingTranscriber. A virtual clock makes the figures those of
real time without waiting for it: chunk i arrives when its last sample has been spoken, is processed from
max(arrival, previous finish) for its measured wall time, and its events are known when that processing ends
(`--realtime` sleeps instead). Targets: p95 latency < 500 ms (goal < 200), RTF < 0.3 (goal < 0.1).
Run: `.venv/bin/python benchmarks/asr_latency.py [--model-dir models/asr | --checkpoint model.pt]`.
"""

from __future__ import annotations

import argparse
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from featurize_drop import PROJECT, save_results
from rich.console import Console
from rich.table import Table

from components.acoustics import noise, rms
from components.asr_export import LogProbs, onnx_log_probs, torch_log_probs
from components.asr_model import load_transcriber
from components.config import Features, Params, load_params
from components.corpus import domain_rng, jitter
from components.errors import EarshotError
from components.export import FP32_FILE, INT8_FILE
from components.features import LogMel
from components.grammar import sample_sentences
from components.streaming import Context, StreamingTranscriber, TranscriptEvent, transcribe_offline
from components.tracks.asr.corpus import plan_speakers, render_utterance
from components.tracks.asr.track import decoder_for
from components.wer import WerReport, score_transcripts

GAP_S = (0.5, 2.0)
P95_TARGET_MS, P95_GOAL_MS = 500.0, 200.0
RTF_TARGET, RTF_GOAL = 0.3, 0.1
# Keeps the benchmark's draws apart from the corpus's streams of the same (seed, domain).
_BENCH = zlib.crc32(b"asr_latency")


@dataclass(frozen=True)
class Spoken:
    """One utterance of a test stream: what was said and the [start, end) samples of its speech in the stream."""

    text: str
    span: tuple[int, int]


@dataclass(frozen=True)
class TestStream:
    domain: str
    audio: np.ndarray
    utterances: list[Spoken]


def build_stream(params: Params, domain: str, index: int, min_seconds: float) -> TestStream:
    """Test-subset speakers of `domain` saying grammar sentences, each rendered as the corpus renders it, with
    0.5-2 s of the domain's noise between them (levelled to the next utterance's own noise), until min_seconds."""
    rate, recipe = params.asr.sample_rate, params.synthesis.recipe(domain)
    speakers = [p.speaker for p in plan_speakers(params, domain) if p.subset == params.asr.subsets.testing]
    rng = domain_rng(params, domain, _BENCH, index)
    pieces, rendered, utterances, length = [], [], [], 0
    while length < min_seconds * rate:
        text = sample_sentences(rng, 1)[0]
        take = render_utterance(params, domain, text, jitter(speakers[int(rng.integers(len(speakers)))], rng), rng)
        gap = round(rng.uniform(*GAP_S) * rate)
        # Babble is made of what the stream's talkers said so far (its first gap has only this utterance).
        rendered.append(take.audio)
        floor = rms(take.audio[: take.speech[0]])
        pieces += [noise(recipe.noise, gap, rate, rng, rendered) * floor, take.audio]
        utterances.append(Spoken(text, (length + gap + take.speech[0], length + gap + take.speech[1])))
        length += gap + take.audio.size
    return TestStream(domain, np.concatenate(pieces).astype(np.float32), utterances)


@dataclass(frozen=True)
class Replay:
    """The final transcripts of one stream with the (virtual or real) time each was known, and the time spent."""

    finals: list[tuple[float, TranscriptEvent]]
    busy_s: float
    lags_s: list[float]  # per chunk: finish minus arrival, how far processing runs behind the audio


def replay(stream: TestStream, transcriber: StreamingTranscriber, chunk: int, rate: int, realtime: bool) -> Replay:
    """Push the stream chunk by chunk, timing each push; events are stamped with when their push finished."""
    finals, lags, busy, clock = [], [], 0.0, 0.0
    began = time.perf_counter()
    size = stream.audio.size
    for first in range(0, size + chunk, chunk):
        arrival = min(first + chunk, size) / rate
        if realtime:
            time.sleep(max(arrival - (time.perf_counter() - began), 0.0))
        start = time.perf_counter()
        events = transcriber.push(stream.audio[first : first + chunk]) if first < size else transcriber.flush()
        spent = time.perf_counter() - start
        clock = time.perf_counter() - began if realtime else max(arrival, clock) + spent
        busy += spent
        lags.append(clock - arrival)
        finals += [(clock, e) for e in events if e.final]
    return Replay(finals, busy, lags)


def latencies(finals: list[tuple[float, TranscriptEvent]], utterances: list[Spoken], rate: int
              ) -> tuple[list[tuple[float, float] | None], int]:
    """Per utterance, from its end of speech to the last final overlapping it and to that final's VAD end (None if
    no final overlaps it); and how many finals overlap no utterance (false alarms).

    An utterance the VAD merged with the next one is final only when the merged final is, so it waits that long.
    """
    last: list[tuple[float, TranscriptEvent] | None] = [None] * len(utterances)
    false_alarms = 0
    for clock, event in finals:
        hits = [i for i, u in enumerate(utterances)
                if event.start_s < u.span[1] / rate and u.span[0] / rate < event.end_s]
        false_alarms += not hits
        for i in hits:
            last[i] = clock, event
    waits = [None if hit is None else (hit[0] - u.span[1] / rate, hit[1].end_s - u.span[1] / rate)
             for hit, u in zip(last, utterances, strict=True)]
    return waits, false_alarms


@dataclass(frozen=True)
class VariantResult:
    name: str
    utterances: int
    missed: int
    false_alarms: int
    latency_ms_p50: float
    latency_ms_p95: float
    vad_end_ms_p50: float
    rtf: float
    lag_ms_p95: float
    domain_latency_ms_p95: dict[str, float]
    streaming: WerReport
    offline: WerReport

    def to_dict(self) -> dict[str, object]:
        return {"utterances": self.utterances, "missed": self.missed, "false_alarms": self.false_alarms,
                "latency_ms_p50": self.latency_ms_p50, "latency_ms_p95": self.latency_ms_p95,
                "vad_end_ms_p50": self.vad_end_ms_p50, "rtf": self.rtf,
                "lag_ms_p95": self.lag_ms_p95, "domain_latency_ms_p95": self.domain_latency_ms_p95,
                "streaming_wer": self.streaming.metrics(),
                "offline_wer": self.offline.metrics()}


def bench_variant(name: str, acoustic: LogProbs, context: Context, streams: list[TestStream], params: Params,
                  features: Features, decode: Callable[[torch.Tensor], str], realtime: bool) -> VariantResult:
    """Replay every stream through one form of the model and score it against the offline pass on true spans.

    WER is scored per stream (all its finals against all it said), so a VAD that merges or splits utterances costs
    only the words it garbles; the offline pass is joined the same way.
    """
    rate, cfg = params.asr.sample_rate, params.asr.stream
    front_end = LogMel(features, rate)
    chunk = round(cfg.chunk_ms * rate / 1000)
    pad = round(cfg.speech_pad_ms * rate / 1000)
    acoustic(torch.full((1, features.n_mels, context.receptive_field), 0.0))  # one-off session set-up out of the way
    streamed, offline, lags = [], [], []
    heard: dict[str, list[tuple[float, float]]] = {s.domain: [] for s in streams}
    busy = false_alarms = missed = 0
    for stream in streams:
        run = replay(stream, StreamingTranscriber(acoustic, context, front_end, decode, cfg, rate), chunk, rate,
                     realtime)
        waits, alarms = latencies(run.finals, stream.utterances, rate)
        heard[stream.domain] += [w for w in waits if w is not None]
        busy, lags = busy + run.busy_s, lags + run.lags_s
        false_alarms, missed = false_alarms + alarms, missed + waits.count(None)
        streamed.append(" ".join(event.text for _, event in run.finals))
        # The offline reference hears the true speech with the pad a perfect VAD would add.
        offline.append(" ".join(
            transcribe_offline(stream.audio[max(a - pad, 0) : b + pad], acoustic, context, front_end, decode, rate).text
            for a, b in (u.span for u in stream.utterances)))
    ids = [f"{s.domain}-{i}" for i, s in enumerate(streams)]
    refs = [" ".join(u.text for u in s.utterances) for s in streams]
    domains = [s.domain for s in streams]
    ms = np.concatenate([np.reshape(w, (-1, 2)) for w in heard.values()]) * 1000  # columns: final, VAD end
    return VariantResult(
        name, sum(len(s.utterances) for s in streams), missed, false_alarms, float(np.percentile(ms[:, 0], 50)),
        float(np.percentile(ms[:, 0], 95)), float(np.percentile(ms[:, 1], 50)),
        busy / (sum(s.audio.size for s in streams) / rate), float(np.percentile(lags, 95)) * 1000,
        {d: float(np.percentile(np.reshape(w, (-1, 2))[:, 0], 95)) * 1000 for d, w in heard.items()},
        score_transcripts(ids, refs, streamed, domains), score_transcripts(ids, refs, offline, domains))


def variants(model_dir: Path, checkpoint: Path | None) -> tuple[list[tuple[str, LogProbs]], Context, dict]:
    """The forms of the model to race: a checkpoint in PyTorch, or the ONNX files beside model.pt in model_dir."""
    model, card = load_transcriber(checkpoint or model_dir / "model.pt")
    if checkpoint:
        return [("pytorch", torch_log_probs(model))], Context.of(model), card
    found = [(name, model_dir / file) for name, file in (("onnx_fp32", FP32_FILE), ("onnx_int8", INT8_FILE))
             if (model_dir / file).is_file()]
    if not found:
        raise EarshotError(f"{model_dir}: no {FP32_FILE} or {INT8_FILE}; run the export stage first")
    return [(name, onnx_log_probs(path)) for name, path in found], Context.of(model), card


def verdict(value: float, target: float, goal: float) -> str:
    return "meets goal" if value < goal else "meets target" if value < target else "misses"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=PROJECT / "models" / "asr",
                        help=f"holds model.pt (context, card) and {FP32_FILE} / {INT8_FILE}")
    parser.add_argument("--checkpoint", type=Path, help="a saved Transcriber, raced in PyTorch instead")
    parser.add_argument("--params", type=Path, default=PROJECT / "params.yaml")
    parser.add_argument("--streams", type=int, default=4, help="streams per domain")
    parser.add_argument("--seconds", type=float, default=30.0, help="minimum length of each stream")
    parser.add_argument("--realtime", action="store_true", help="wait for each chunk instead of a virtual clock")
    parser.add_argument("--out", type=Path, default=PROJECT / "benchmarks" / "results.json")
    args = parser.parse_args()
    started = time.perf_counter()
    console = Console(width=150)
    params = load_params(args.params)
    torch.set_num_threads(1)  # ONNX Runtime sessions of asr_export run on one thread too
    runs, context, card = variants(args.model_dir, args.checkpoint)
    features = Features(**card["features"])
    streams = [build_stream(params, domain, i, args.seconds)
               for domain in params.asr.corpus.domains for i in range(args.streams)]
    audio_s = sum(s.audio.size for s in streams) / params.asr.sample_rate
    decode = decoder_for(card, params).decode
    results = [bench_variant(name, acoustic, context, streams, params, features, decode, args.realtime)
               for name, acoustic in runs]

    cfg = params.asr.stream
    out = Table(title=f"streaming ASR, 1 thread, {cfg.vad} VAD, {cfg.chunk_ms:g} ms chunks, min silence "
                      f"{cfg.min_silence_ms:g} ms: {len(streams)} streams, {audio_s:.0f} s, "
                      f"{results[0].utterances} utterances ({'real' if args.realtime else 'virtual'} clock)")
    for i, column in enumerate(("variant", "p50 ms", "p95 ms", "p95 verdict", "VAD end p50 ms", "RTF", "RTF verdict",
                                "lag p95 ms",
                                "missed", "false alarms", "streaming WER", "offline WER")):
        out.add_column(column, justify="left" if i == 0 else "right")
    for r in results:
        out.add_row(r.name, f"{r.latency_ms_p50:.0f}", f"{r.latency_ms_p95:.0f}",
                    verdict(r.latency_ms_p95, P95_TARGET_MS, P95_GOAL_MS), f"{r.vad_end_ms_p50:.0f}", f"{r.rtf:.3f}",
                    verdict(r.rtf, RTF_TARGET, RTF_GOAL), f"{r.lag_ms_p95:.0f}", str(r.missed), str(r.false_alarms),
                    f"{r.streaming.wer:.2%}", f"{r.offline.wer:.2%}")
    console.print(out)
    console.print("latency: true end of speech -> final transcript; VAD end: the final's end (speech pad included) "
                  "after the true end; lag: chunk arrival -> its processing done; targets "
                  f"p95 < {P95_TARGET_MS:g} ms (goal {P95_GOAL_MS:g}), RTF < {RTF_TARGET:g} (goal {RTF_GOAL:g})")
    per_domain = Table(title="per domain: WER streaming (VAD cuts) / offline (true spans), beam search; latency p95")
    per_domain.add_column("domain")
    for r in results:
        per_domain.add_column(r.name, justify="right")
    for domain in params.asr.corpus.domains:
        cells = [(r.streaming.per_domain[domain].wer, r.offline.per_domain[domain].wer, r.domain_latency_ms_p95[domain])
                 for r in results]
        per_domain.add_row(domain, *(f"{s:.2%} / {o:.2%}, {ms:.0f} ms" for s, o, ms in cells))
    console.print(per_domain)
    wall = time.perf_counter() - started
    console.print(f"asr latency benchmark wall time: {wall:.0f} s")
    save_results(args.out, "asr_latency", {
        "model": str(args.checkpoint or args.model_dir), "streams": len(streams), "audio_s": audio_s,
        "stream": cfg.model_dump(), "realtime_clock": args.realtime,
        "targets": {"latency_ms_p95": P95_TARGET_MS, "latency_ms_p95_goal": P95_GOAL_MS, "rtf": RTF_TARGET,
                    "rtf_goal": RTF_GOAL},
        "variants": {r.name: r.to_dict() for r in results}, "wall_s": wall})


if __name__ == "__main__":
    main()

"""The synthesized speech-to-text corpus: command-grammar sentences per acoustic domain, in the LibriSpeech layout.

Domains are the recipes of params.synthesis (voices, noise, rooms), so both tracks hear the same acoustic worlds;
every speaker belongs to exactly one subset (train/dev/test), so no voice is both learned and tested.
"""

from __future__ import annotations

import math
import multiprocessing
import shutil
import zlib
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import scipy.fft
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from components.acoustics import (
    mix_at_snr,
    noise,
    peak_normalize,
    resample,
    reverberate,
    room_impulse_response,
    trim_silence,
)
from components.config import ConfigError, Params
from components.corpus import CROWD_SIZE, PEAK_DBFS, domain_rng, draw_speaker, jitter
from components.files import write_csv
from components.grammar import sample_sentences
from components.librispeech import write_chapter
from components.speech import SPEECH_RATE, Speaker, reset_engine, speak, voices

# Silence before and after the speech of each file, drawn per file, so utterance edges do not line up.
PAD_S = (0.1, 0.3)
# Speaker ids are (1 + the recipe's place among all recipe names, sorted) * SPEAKER_ID_BLOCK + speaker index:
# unique across the domains of a run, and a domain keeps its ids whichever domains are synthesized with it.
SPEAKER_ID_BLOCK = 10_000
CROWD_SENTENCES = 4
WORKERS = 2

# Keeps these streams apart from the keyword corpus's streams of the same (seed, domain).
_ASR = zlib.crc32(b"asr")
_SUBSETS, _VOICES, _SENTENCES, _RENDER, _CROWD = range(5)


@dataclass(frozen=True)
class AsrSpeaker:
    """One corpus speaker of a domain: its LibriSpeech speaker and chapter ids, subset folder and espeak settings."""

    index: int
    id: str
    chapter: str
    subset: str
    speaker: Speaker


@dataclass(frozen=True)
class RenderedUtterance:
    """One rendered file: float32 audio at asr.sample_rate, and the [start, end) samples its speech fills."""

    audio: np.ndarray
    speech: tuple[int, int]


def _rng(params: Params, domain: str, *stream: int) -> np.random.Generator:
    return domain_rng(params, domain, _ASR, *stream)


def _subset_quotas(params: Params, domain: str) -> list[str]:
    """The subset folder of each speaker index: exact shares of the domain's speakers, each subset at least one."""
    corpus, subsets = params.asr.corpus, params.asr.subsets
    n = corpus.speakers_per_domain
    if n < 3:
        raise ConfigError(f"asr.corpus.speakers_per_domain: {n} speakers cannot fill training, validation and testing")
    n_val = max(round(n * corpus.validation_percentage / 100), 1)
    n_test = max(round(n * (corpus.validation_percentage + corpus.testing_percentage) / 100) - n_val, 1)
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ConfigError(f"asr.corpus: validation and testing percentages leave no training speaker of {n}")
    folders = np.array([subsets.validation] * n_val + [subsets.testing] * n_test + [subsets.training] * n_train)
    return [str(folder) for folder in _rng(params, domain, _SUBSETS).permutation(folders)]


def plan_speakers(params: Params, domain: str) -> list[AsrSpeaker]:
    """The speakers of one domain, drawn from (seed, domain) alone: ids, subsets and voices."""
    recipe = params.synthesis.recipe(domain)
    recipes = sorted(params.synthesis.domains | params.synthesis.drop_domains)
    if params.asr.corpus.speakers_per_domain >= SPEAKER_ID_BLOCK:
        raise ConfigError(f"asr.corpus.speakers_per_domain: at most {SPEAKER_ID_BLOCK - 1} speakers per domain")
    base = (recipes.index(domain) + 1) * SPEAKER_ID_BLOCK
    rng = _rng(params, domain, _VOICES)
    # One chapter per speaker, numbered after it: LibriSpeech chapter ids are unique corpus-wide.
    return [
        AsrSpeaker(index, str(base + index), str((base + index) * 10), subset, draw_speaker(recipe, rng))
        for index, subset in enumerate(_subset_quotas(params, domain))
    ]


def _say_all(items: list[tuple[str, Speaker]], sample_rate: int) -> list[np.ndarray]:
    """Each (text, speaker) said, silence trimmed, brought to `sample_rate` in one batched resample.

    espeak restarts before each text, so a text's audio depends on its call alone, not on what was said before it.
    """
    said = []
    for text, speaker in items:
        reset_engine()
        audio = trim_silence(speak(text, speaker), SPEECH_RATE)
        if audio.size == 0:
            raise ValueError(f"espeak-ng produced no sound for {text!r}")
        said.append(audio)
    batch = np.zeros((len(said), max(a.size for a in said)), np.float32)
    for row, audio in zip(batch, said, strict=True):
        row[: audio.size] = audio
    out = resample(batch, SPEECH_RATE, sample_rate)
    return [row[: math.ceil(a.size * sample_rate / SPEECH_RATE)] for row, a in zip(out, said, strict=True)]


@cache
def _crowd(params_json: str, domain: str) -> tuple[np.ndarray, ...]:
    """Babble material of a domain: CROWD_SIZE extra talkers (never corpus speakers) saying grammar sentences.

    Cached per process (keyed by the params as JSON, since Params holds unhashable lists).
    """
    params = Params.model_validate_json(params_json)
    rng = _rng(params, domain, _CROWD)
    talkers = [draw_speaker(params.synthesis.recipe(domain), rng) for _ in range(CROWD_SIZE)]
    lines = [(text, talker) for talker in talkers for text in sample_sentences(rng, CROWD_SENTENCES)]
    return tuple(_say_all(lines, params.asr.sample_rate))


def render_utterance(
    params: Params, domain: str, text: str, speaker: Speaker, rng: np.random.Generator
) -> RenderedUtterance:
    """`text` said by `speaker` in the domain's room and noise, padded with 0.1-0.3 s each side; the corpus's path.

    The speech span is exact before reverb and noise, so a stream built from these files knows where speech is.
    """
    recipe = params.synthesis.recipe(domain)
    rate = params.asr.sample_rate
    [speech] = _say_all([(text, speaker)], rate)
    lead, trail = (rng.uniform(*PAD_S, size=2) * rate).astype(int)
    audio = np.zeros(lead + speech.size + trail, np.float32)
    audio[lead : lead + speech.size] = speech
    if recipe.rt60_s is not None:
        audio = reverberate(audio, room_impulse_response(float(rng.uniform(*recipe.rt60_s)), rate, rng))
    material = _crowd(params.model_dump_json(), domain) if recipe.noise == "babble" else ()
    # Drawn at an FFT-friendly length: coloured and car noise are shaped by FFT, slow at prime lengths.
    background = noise(recipe.noise, scipy.fft.next_fast_len(audio.size), rate, rng, material)[: audio.size]
    mixed = mix_at_snr(audio, background, float(rng.uniform(*recipe.snr_db)))
    level = 10.0 ** (float(rng.uniform(*PEAK_DBFS)) / 20.0)
    return RenderedUtterance(peak_normalize(mixed, level), (int(lead), int(lead + speech.size)))


def _record_speaker(params: Params, domain: str, plan: AsrSpeaker) -> None:
    """Render and write one speaker's chapter; all randomness from (seed, domain, speaker index)."""
    corpus = params.asr.corpus
    texts = sample_sentences(_rng(params, domain, _SENTENCES, plan.index), corpus.utterances_per_speaker)
    rng = _rng(params, domain, _RENDER, plan.index)
    items = [(render_utterance(params, domain, text, jitter(plan.speaker, rng), rng).audio, text) for text in texts]
    write_chapter(params.synth_root / domain / plan.subset, plan.id, plan.chapter, items, params.asr.sample_rate)


def _write_speakers(params: Params, domain: str, plans: list[AsrSpeaker]) -> None:
    """speakers.csv beside the subsets: who each speaker is, as LibriSpeech's SPEAKERS.TXT does."""
    rows = [
        {"speaker": p.id, "subset": p.subset, "voice": p.speaker.voice, "variant": p.speaker.variant,
         "rate": p.speaker.rate, "pitch": p.speaker.pitch}
        for p in plans
    ]
    write_csv(params.synth_root / domain / "speakers.csv", rows, list(rows[0]))


def _check_voices(params: Params) -> None:
    """Refuse unknown voices up front, naming the recipe, instead of failing in a worker mid-run."""
    known = set(voices())
    for domain in params.asr.corpus.domains:
        for voice in params.synthesis.recipe(domain).voices:
            if voice.lower() not in known:
                raise ConfigError(f"synthesis recipe {domain}: espeak-ng has no voice {voice!r}")


def _init_worker() -> None:
    # One thread per worker: the workers already fill the cores, and torch kernels then reduce in a fixed order.
    torch.set_num_threads(1)


def synthesize_asr_corpus(params: Params, progress: bool = True, workers: int = WORKERS) -> dict[str, Path]:
    """Write every domain of asr.corpus as LibriSpeech subsets under synth_root/<domain>; returns domain -> folder.

    Each domain folder is deleted and rebuilt; the same params give byte-identical files for any `workers`.
    """
    if params.asr is None:
        raise ConfigError("params: the speech-to-text corpus needs an `asr` section")
    _check_voices(params)
    plans = {domain: plan_speakers(params, domain) for domain in params.asr.corpus.domains}
    roots = {domain: params.synth_root / domain for domain in plans}
    for root in roots.values():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
    per_speaker = params.asr.corpus.utterances_per_speaker
    columns = [TextColumn("synthesizing speech corpus"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    # spawn, not fork: the caller may run threads, and forking a threaded process can deadlock the child.
    context = multiprocessing.get_context("spawn")
    with (
        ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool,
        Progress(*columns, disable=not progress) as bar,
    ):
        jobs: list[Future[None]] = [
            pool.submit(_record_speaker, params, domain, plan) for domain, ps in plans.items() for plan in ps
        ]
        task = bar.add_task("utterances", total=len(jobs) * per_speaker)
        try:
            for future in as_completed(jobs):
                future.result()
                bar.advance(task, per_speaker)
        except BaseException:
            # Fail fast: without this the pool would finish every queued speaker before re-raising.
            for future in jobs:
                future.cancel()
            raise
    for domain, domain_plans in plans.items():
        _write_speakers(params, domain, domain_plans)
    return roots

"""The synthesized keyword corpus: one Google Speech Commands v2 tree per acoustic domain of params.synthesis.

Each domain is talkers of several synthesizers (espeak-ng, Piper, Kokoro) in synthetic rooms over procedural noise,
so domain shift can be staged offline; the tree layout and split lists match the real dataset, so one loader reads
both. speakers.csv names each speaker's engine, and PocketSphinx must hear each clip as its word before it is kept.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import multiprocessing
import shutil
import zlib
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
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
from components.config import ConfigError, DomainRecipe, Engine, NoiseKind, Params
from components.dataset import BACKGROUND_DIR, REJECTED_DIR, SPEAKERS_FILE, SPLIT_FILES, which_set
from components.speech import NATURAL_VARIANTS, Speaker, Talker, reset_engine, voices

if TYPE_CHECKING:
    from components.sphinx import WordRecognizer

SPEAKER_RATE_WPM = (130, 210)
TAKE_RATE_JITTER = 0.08
PEAK_DBFS = (-18.0, -3.0)
BACKGROUND_PEAK = 0.5
# The word may fill at most this share of the clip, so its position in the window still varies.
MAX_WORD_SHARE = 0.9
# Babble comes from a crowd of extra talkers, never from corpus speakers, so no voice leaks across splits.
CROWD_SIZE = 12
BACKGROUND_FILES = 3
WORKERS = 2

# Independent random streams of one domain, so adding speakers never changes the crowd or the background.
_PLAN, _CROWD, _TAKES, _BACKGROUND, _SPLITS = range(5)


CLIP_CHECK_FILE = "clip_check.json"


@dataclass(frozen=True)
class SpeakerPlan:
    """One corpus speaker: its Speech Commands-style id, its talker (engine and settings) and room (None: no reverb)."""

    index: int
    id: str
    speaker: Talker
    rt60_s: float | None


@dataclass(frozen=True)
class Rejected:
    """A take the clip check did not hear as its word: where it went and why."""

    word: str
    name: str
    reason: str


def clip_name(speaker_id: str, take: int) -> str:
    """The Speech Commands file name of one take of a speaker."""
    return f"{speaker_id}_nohash_{take}.wav"


def corpus_words(params: Params) -> list[str]:
    """Words recorded in every domain: the core words, then the unknown-word fillers, without repeats."""
    return list(dict.fromkeys([*params.dataset.words, *params.synthesis.unknown_words]))


def domain_rng(params: Params, domain: str, *stream: int) -> np.random.Generator:
    # crc32, not hash(): Python salts str hashes per process, which would break reproducibility.
    return np.random.default_rng([params.seed % 2**64, zlib.crc32(domain.encode()), *stream])


def draw_speaker(recipe: DomainRecipe, rng: np.random.Generator) -> Speaker:
    return Speaker(
        voice=recipe.voices[int(rng.integers(len(recipe.voices)))],
        variant=NATURAL_VARIANTS[int(rng.integers(len(NATURAL_VARIANTS)))],
        rate=int(rng.integers(SPEAKER_RATE_WPM[0], SPEAKER_RATE_WPM[1] + 1)),
        pitch=int(rng.integers(0, 100)),
    )


def draw_talker(recipe: DomainRecipe, engine: Engine, rng: np.random.Generator) -> Talker:
    """A speaker of one engine, every setting drawn from `rng`."""
    # Imported on use: onnx and the voice packages add ~2 s to every corpus worker that speaks espeak-ng only.
    if engine == "piper":
        from components.piper_speech import draw_piper_talker
        return draw_piper_talker(rng)
    if engine == "kokoro":
        from components.kokoro_speech import draw_kokoro_talker
        return draw_kokoro_talker(rng)
    return draw_speaker(recipe, rng)


def _engine_quotas(recipe: DomainRecipe, splits: list[str]) -> list[Engine]:
    """The engine of each speaker index: the recipe's engines in turn over the speakers grouped by split, so the
    domain holds equal shares and every split is within one speaker of its share (a test split with no Piper
    talker could not score Piper)."""
    engines: list[Engine] = [recipe.engines[0]] * len(splits)
    for turn, index in enumerate(sorted(range(len(splits)), key=lambda i: (splits[i], i))):
        engines[index] = recipe.engines[turn % len(recipe.engines)]
    return engines


def _split_quotas(params: Params, domain: str) -> list[str]:
    """The split each speaker index must land in: exact shares of the domain's speakers, in shuffled order.

    Plain hashing leaves a 48-speaker domain without any test speaker about once in 150 seeds.
    """
    syn = params.synthesis
    n = syn.speakers_per_domain
    n_val = round(n * syn.validation_percentage / 100)
    n_test = round(n * (syn.validation_percentage + syn.testing_percentage) / 100) - n_val
    splits = np.array(["validation"] * n_val + ["testing"] * n_test + ["training"] * (n - n_val - n_test))
    return [str(split) for split in domain_rng(params, domain, _SPLITS).permutation(splits)]


def plan_speakers(params: Params, domain: str) -> list[SpeakerPlan]:
    """The speakers of one domain, drawn from (seed, domain) alone, with stable unique 8-hex-digit ids.

    Each id is the first hash of (seed, domain, index, attempt) that which_set puts in the speaker's quota
    split, so the lists still follow Speech Commands' rule while every split gets its exact share of speakers.
    """
    syn = params.synthesis
    recipe = syn.domains[domain]
    rng = domain_rng(params, domain, _PLAN)
    plans: list[SpeakerPlan] = []
    splits = _split_quotas(params, domain)
    for index, (split, engine) in enumerate(zip(splits, _engine_quotas(recipe, splits), strict=True)):
        speaker = draw_talker(recipe, engine, rng)
        rt60 = round(float(rng.uniform(*recipe.rt60_s)), 3) if recipe.rt60_s else None
        taken = {p.id for p in plans}
        for attempt in itertools.count():
            ident = hashlib.sha1(f"{params.seed}/{domain}/{index}/{attempt}".encode()).hexdigest()[:8]
            name = clip_name(ident, 0)
            if ident not in taken and which_set(name, syn.validation_percentage, syn.testing_percentage) == split:
                break
        plans.append(SpeakerPlan(index, ident, speaker, rt60))
    return plans


def _say(word: str, speaker: Talker, max_seconds: float) -> np.ndarray:
    """The word as `speaker` says it at its engine's rate, silence trimmed, sped up until it fits."""
    max_samples = int(max_seconds * speaker.sample_rate)
    while True:
        audio = trim_silence(speaker.say(word), speaker.sample_rate)
        if audio.size == 0:
            raise ValueError(f"{speaker.source} produced no sound for {word!r}")
        if audio.size <= max_samples:
            return audio
        faster = speaker.faster(audio.size / max_samples * 1.05)
        if faster == speaker:
            raise ValueError(f"{word!r} does not fit in {max_seconds} s even as {speaker.describe()}")
        speaker = faster


def _say_all(items: list[tuple[str, Talker]], params: Params) -> list[np.ndarray]:
    """Synthesize (word, speaker) pairs of one engine and bring them to the corpus rate in one batched resample.

    Starts from a fresh espeak, so a batch sounds the same whichever worker renders it after whatever else.
    """
    rate = items[0][1].sample_rate
    reset_engine()
    said = [_say(word, speaker, MAX_WORD_SHARE * params.dataset.clip_seconds) for word, speaker in items]
    batch = np.zeros((len(said), max(a.size for a in said)), np.float32)
    for row, audio in zip(batch, said, strict=True):
        row[: audio.size] = audio
    out = resample(batch, rate, params.dataset.sample_rate)
    sizes = [math.ceil(a.size * params.dataset.sample_rate / rate) for a in said]
    return [row[:size] for row, size in zip(out, sizes, strict=True)]


@cache
def _recognizer(words: tuple[str, ...], sample_rate: int) -> WordRecognizer:
    """One PocketSphinx decoder per worker process, built on first use (~0.3 s)."""
    from components.sphinx import WordRecognizer  # on use, as the engines: most corpora check no clip
    return WordRecognizer(words, sample_rate)


def check_takes(params: Params, takes: list[tuple[str, int]], words: list[np.ndarray], speaker_id: str,
                ) -> list[Rejected]:
    """The takes PocketSphinx does not hear as their word, heard on the clean speech before room and noise.

    A synthesizer sometimes says another word (Kokoro adds vowels, espeak clips a stop); such a clip would teach
    the model a wrong label.
    """
    if not params.synthesis.check_clips:
        return []
    recognizer = _recognizer(tuple(corpus_words(params)), params.dataset.sample_rate)
    rejected = []
    for (word, take), audio in zip(takes, words, strict=True):
        heard = recognizer.hear(audio)
        if heard != word:
            reason = f"heard {heard!r}, not {word!r}" if heard else f"heard nothing, not {word!r}"
            rejected.append(Rejected(word, clip_name(speaker_id, take), reason))
    return rejected


@cache
def _crowd(params_json: str, domain: str) -> tuple[np.ndarray, ...]:
    """Babble material of a domain: CROWD_SIZE extra talkers each saying every corpus word.

    Cached per worker process (keyed by the params as JSON, since Params holds unhashable lists).
    """
    params = Params.model_validate_json(params_json)
    rng = domain_rng(params, domain, _CROWD)
    talkers = [draw_speaker(params.synthesis.domains[domain], rng) for _ in range(CROWD_SIZE)]
    return tuple(_say_all([(w, t) for t in talkers for w in corpus_words(params)], params))


def _noise_material(params: Params, domain: str) -> tuple[np.ndarray, ...]:
    """The utterances the domain's noise is made of: the crowd for babble, nothing otherwise."""
    if params.synthesis.domains[domain].noise == "babble":
        return _crowd(params.model_dump_json(), domain)
    return ()


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    # Encoded in memory: soundfile's close() fsyncs, which costs more than rendering the clip.
    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, subtype="PCM_16", format="WAV")
    path.write_bytes(buffer.getvalue())


def jitter(speaker: Talker, rng: np.random.Generator) -> Talker:
    """The speaker on one take: the same voice, a slightly different speaking rate."""
    return speaker.faster(rng.uniform(1 - TAKE_RATE_JITTER, 1 + TAKE_RATE_JITTER))


def _record_speaker(params: Params, domain: str, plan: SpeakerPlan) -> list[Rejected]:
    """Render and write every take of every word of one speaker; returns the takes the clip check rejected.

    All randomness comes from (seed, domain, speaker index), so the result does not depend on scheduling.
    The takes are rendered as one batch; each gets its own segment of one long noise recording, i.e. the
    speaker's car or office, and the speaker's room. Rejected takes are written to _rejected_/, not the tree.
    """
    recipe = params.synthesis.domains[domain]
    sample_rate, clip = params.dataset.sample_rate, params.dataset.clip_samples
    rng = domain_rng(params, domain, _TAKES, plan.index)
    takes = [(w, t) for w in corpus_words(params) for t in range(params.synthesis.takes_per_word)]
    words = _say_all([(w, jitter(plan.speaker, rng)) for w, _ in takes], params)
    rejected = check_takes(params, takes, words, plan.id)
    speech = np.zeros((len(takes), clip), np.float32)
    for row, audio in zip(speech, words, strict=True):
        offset = int(rng.integers(0, clip - audio.size + 1))
        row[offset : offset + audio.size] = audio
    if plan.rt60_s is not None:
        speech = reverberate(speech, room_impulse_response(plan.rt60_s, sample_rate, rng))
    background = noise(recipe.noise, speech.size, sample_rate, rng, _noise_material(params, domain))
    mixed = mix_at_snr(speech, background.reshape(speech.shape), rng.uniform(*recipe.snr_db, size=len(takes)))
    levels = 10.0 ** (rng.uniform(*PEAK_DBFS, size=(len(takes), 1)) / 20.0)
    root = params.synth_root / domain
    refused = {(r.word, r.name) for r in rejected}
    for (word, take), audio in zip(takes, peak_normalize(mixed, levels), strict=True):
        name = clip_name(plan.id, take)
        folder = root / REJECTED_DIR / word if (word, name) in refused else root / word
        folder.mkdir(parents=True, exist_ok=True)
        _write_wav(folder / name, audio, sample_rate)
    return rejected


def _background_kinds(recipe: DomainRecipe) -> list[tuple[str, NoiseKind]]:
    """(file stem, noise kind) of the background files; a noiseless domain ships white and pink, like the real one."""
    if recipe.noise == "none":
        return [("white_noise", "white"), ("pink_noise", "pink")]
    return [(f"{recipe.noise}_noise_{i + 1}", recipe.noise) for i in range(BACKGROUND_FILES)]


def _record_background(params: Params, domain: str) -> None:
    """Write _background_noise_/ : the domain's noise, background_seconds long in total over a few files."""
    recipe = params.synthesis.domains[domain]
    sample_rate = params.dataset.sample_rate
    rng = domain_rng(params, domain, _BACKGROUND)
    material = _noise_material(params, domain)
    kinds = _background_kinds(recipe)
    bounds = np.linspace(0, params.synthesis.background_seconds * sample_rate, len(kinds) + 1).round().astype(int)
    for (stem, kind), length in zip(kinds, np.diff(bounds), strict=True):
        audio = noise(kind, int(length), sample_rate, rng, material)
        _write_wav(
            params.synth_root / domain / BACKGROUND_DIR / f"{stem}.wav",
            peak_normalize(audio, BACKGROUND_PEAK),
            sample_rate,
        )


def _check_voices(params: Params) -> None:
    """Refuse unknown voices up front, naming the domain, instead of failing in a worker mid-run."""
    known = set(voices())
    for domain, recipe in params.synthesis.domains.items():
        for voice in recipe.voices:
            if voice.lower() not in known:
                raise ConfigError(f"synthesis.domains.{domain}.voices: espeak-ng has no voice {voice!r}")


def _write_index(params: Params, domain: str, plans: list[SpeakerPlan], rejected: list[Rejected]) -> None:
    """speakers.csv, the validation/testing lists and the clip check's report of one domain tree.

    A rejected take is in no list: it lives under _rejected_/, which no loader reads.
    """
    root = params.synth_root / domain
    with (root / SPEAKERS_FILE).open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["speaker", "engine", "settings", "rt60"])
        for p in plans:
            settings = json.dumps(p.speaker.describe(), sort_keys=True)
            writer.writerow([p.id, p.speaker.source, settings, "" if p.rt60_s is None else p.rt60_s])
    syn = params.synthesis
    refused = {f"{r.word}/{r.name}" for r in rejected}
    lines: dict[str, list[str]] = {split: [] for split in SPLIT_FILES}
    for word in corpus_words(params):
        for p in plans:
            for take in range(syn.takes_per_word):
                name = clip_name(p.id, take)
                split = which_set(name, syn.validation_percentage, syn.testing_percentage)
                if split in lines and f"{word}/{name}" not in refused:
                    lines[split].append(f"{word}/{name}")
    for split, filename in SPLIT_FILES.items():
        (root / filename).write_text("".join(f"{line}\n" for line in sorted(lines[split])))
    (root / CLIP_CHECK_FILE).write_text(json.dumps(clip_check_report(params, plans, rejected), indent=2) + "\n")


def clip_check_report(params: Params, plans: list[SpeakerPlan], rejected: list[Rejected]) -> dict[str, object]:
    """Per engine: clips checked and dropped; and each dropped clip with its reason, for the corpus report."""
    engine_of = {p.id: p.speaker.source for p in plans}
    takes = len(corpus_words(params)) * params.synthesis.takes_per_word
    per_engine: dict[str, dict[str, int]] = {}
    for p in plans:
        counts = per_engine.setdefault(p.speaker.source, {"checked": 0, "dropped": 0})
        counts["checked"] += takes if params.synthesis.check_clips else 0
    for r in rejected:
        per_engine[engine_of[r.name.split("_nohash_")[0]]]["dropped"] += 1
    dropped = [{"clip": f"{REJECTED_DIR}/{r.word}/{r.name}", "reason": r.reason} for r in sorted(rejected, key=str)]
    return {"per_engine": per_engine, "dropped": dropped}


def _init_worker() -> None:
    # One thread per worker: the workers already fill the cores, and torch kernels then reduce in a fixed order.
    torch.set_num_threads(1)


def _submit_all(
    pool: ProcessPoolExecutor, params: Params, plans: dict[str, list[SpeakerPlan]]
) -> dict[Future[list[Rejected]], tuple[str, int]]:
    """Queue every domain's background and speakers, one task each; maps each task to its domain and clip count.

    Per-speaker tasks keep both workers busy to the end, where one task per domain would idle one of them.
    """
    per_speaker = len(corpus_words(params)) * params.synthesis.takes_per_word
    jobs: dict[Future[list[Rejected]], tuple[str, int]] = {}
    for domain, domain_plans in plans.items():
        jobs[pool.submit(_record_background, params, domain)] = (domain, 0)
        for plan in domain_plans:
            jobs[pool.submit(_record_speaker, params, domain, plan)] = (domain, per_speaker)
    return jobs


def _fresh_tree(params: Params, domain: str) -> Path:
    """The domain's folder, emptied: its word folders, background and rejected folders ready to write into."""
    root = params.synth_root / domain
    shutil.rmtree(root, ignore_errors=True)
    for folder in [*corpus_words(params), BACKGROUND_DIR, REJECTED_DIR]:
        (root / folder).mkdir(parents=True)
    return root


def synthesize_corpus(params: Params, progress: bool = True, workers: int = WORKERS) -> dict[str, Path]:
    """Write every domain of params.synthesis as a Speech Commands v2 tree; returns domain -> its folder.

    Each domain folder is deleted and rebuilt; the same params give byte-identical files for any `workers`.
    """
    _check_voices(params)
    plans = {domain: plan_speakers(params, domain) for domain in params.synthesis.domains}
    roots = {domain: _fresh_tree(params, domain) for domain in plans}
    rejected: dict[str, list[Rejected]] = {domain: [] for domain in plans}
    columns = [TextColumn("synthesizing corpus"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    # spawn, not fork: the caller may run threads (torch's pool, a flow runner), and forking a threaded process
    # can deadlock the child. The price is the usual `if __name__ == "__main__":` guard in the caller's script.
    context = multiprocessing.get_context("spawn")
    with (
        ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool,
        Progress(*columns, disable=not progress) as bar,
    ):
        jobs = _submit_all(pool, params, plans)
        task = bar.add_task("clips", total=sum(clips for _, clips in jobs.values()))
        try:
            for future in as_completed(jobs):
                domain, clips = jobs[future]
                rejected[domain] += future.result() or []
                bar.advance(task, clips)
        except BaseException:
            # Fail fast: without this the pool would finish every queued speaker before re-raising.
            for future in jobs:
                future.cancel()
            raise
    for domain, domain_plans in plans.items():
        _write_index(params, domain, domain_plans, rejected[domain])
    return roots


def render_domain(params: Params, domain: str, progress: bool = True) -> Path:
    """Write one domain of params.synthesis as synthesize_corpus does, byte for byte, but in this process.

    For small jobs such as a drop of a few speakers, where starting worker processes costs more than the rendering.
    """
    _check_voices(params)
    plans = plan_speakers(params, domain)
    root = _fresh_tree(params, domain)
    rejected: list[Rejected] = []
    threads = torch.get_num_threads()
    # One thread, as in the workers, so torch reduces in the same order and the bytes match.
    torch.set_num_threads(1)
    try:
        _record_background(params, domain)
        columns = [TextColumn(f"rendering {domain}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, disable=not progress) as bar:
            for plan in bar.track(plans):
                rejected += _record_speaker(params, domain, plan)
    finally:
        torch.set_num_threads(threads)
    _write_index(params, domain, plans, rejected)
    return root

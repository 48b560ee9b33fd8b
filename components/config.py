"""The typed model of params.yaml: every stage reads its settings from one `Params` object.

Unknown keys, wrong types and out-of-range values are refused with one line that names the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components.errors import EarshotError

PositiveInt = Annotated[int, Field(gt=0)]
Percentage = Annotated[float, Field(ge=0.0, le=100.0)]
Range = tuple[float, float]


class ConfigError(EarshotError):
    """A params file that cannot be used, with a message fit for one line."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tracking(Strict):
    """Where runs and models are recorded; `{track}` in a name becomes the active track (earshot-kws, earshot-asr)."""

    uri: str = "sqlite:///mlflow.db"
    experiment: str = "earshot-{track}"
    registered_model: str = "earshot-{track}"


NoiseKind = Literal["none", "white", "pink", "brown", "babble", "car"]


Engine = Literal["espeak", "piper", "kokoro"]


class DomainRecipe(Strict):
    """How one acoustic domain sounds: who speaks, over which noise, at which SNR, in which room.

    `engines` are the synthesizers its speakers are drawn from, in equal shares of every split; `voices` are the
    espeak-ng voices of its espeak speakers (Piper and Kokoro speakers vary by their own settings).
    """

    voices: list[str] = Field(min_length=1)
    engines: list[Engine] = Field(default_factory=lambda: ["espeak"], min_length=1)
    noise: NoiseKind = "none"
    snr_db: Range = (30.0, 40.0)
    rt60_s: Range | None = None


class Synthesis(Strict):
    out_dir: Path = Path("data/synth")
    speakers_per_domain: PositiveInt = 48
    takes_per_word: PositiveInt = 2
    background_seconds: PositiveInt = 60
    unknown_words: list[str] = Field(default_factory=list)
    validation_percentage: Percentage = 10.0
    testing_percentage: Percentage = 10.0
    domains: dict[str, DomainRecipe] = Field(min_length=1)
    # An independent recognizer (PocketSphinx) hears every synthesized clip; one it does not hear as its word goes to
    # the domain's _rejected_/ folder with its reason, not into training. Off by default until the generalization
    # benchmark shows it helps: PocketSphinx hears 88 % of espeak-ng's clips as their word, so it drops good with bad.
    check_clips: bool = False
    # Recipes that reach the pipeline only as new-data drops (`earshot drop`), never in the base corpus.
    drop_domains: dict[str, DomainRecipe] = Field(default_factory=dict)

    def recipe(self, domain: str) -> DomainRecipe:
        return (self.domains | self.drop_domains)[domain]


class Dataset(Strict):
    domains: dict[str, Path] = Field(min_length=1)
    words: list[str] = Field(min_length=1)
    sample_rate: PositiveInt = 16000
    clip_seconds: Annotated[float, Field(gt=0.0)] = 1.0
    silence_percentage: Percentage = 10.0
    unknown_percentage: Percentage = 10.0

    @property
    def labels(self) -> list[str]:
        """The class list of the Speech Commands 12-class protocol: core words, then silence and unknown."""
        return [*self.words, "_silence_", "_unknown_"]

    @property
    def clip_samples(self) -> int:
        return round(self.sample_rate * self.clip_seconds)


FrontEndKind = Literal["log_mel", "speech_embedding"]


class Features(Strict):
    # log_mel: the log-mel spectrogram below, augmented afresh every batch. speech_embedding: openWakeWord's frozen
    # embedding of real speech (96 values per 80 ms; 16 kHz keyword clips only), computed once by the featurize stage
    # and masked per batch; the mel settings below do not apply to it.
    kind: FrontEndKind = "log_mel"
    n_mels: PositiveInt = 40
    win_ms: Annotated[float, Field(gt=0.0)] = 30.0
    hop_ms: Annotated[float, Field(gt=0.0)] = 20.0
    f_min: Annotated[float, Field(ge=0.0)] = 20.0
    f_max: Annotated[float, Field(gt=0.0)] = 7600.0


class Augment(Strict):
    noise_probability: Annotated[float, Field(ge=0.0, le=1.0)] = 0.8
    snr_db: Range = (5.0, 25.0)
    time_shift_ms: Annotated[float, Field(ge=0.0)] = 100.0
    freq_mask: Annotated[int, Field(ge=0)] = 6
    time_mask: Annotated[int, Field(ge=0)] = 8
    masks: Annotated[int, Field(ge=0)] = 2
    # Vocal-tract-length perturbation of the log-mels: this share of clips gets its mel axis warped by an alpha
    # drawn from vtlp_range (>1 moves formants up, as a shorter vocal tract does).
    vtlp_probability: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    vtlp_range: Range = (0.9, 1.1)
    # Pitch shift of the waveform, tempo kept: this share of clips moves by up to ±pitch_semitones (uniform).
    pitch_probability: Annotated[float, Field(ge=0.0, le=1.0)] = 0.3
    pitch_semitones: Annotated[float, Field(ge=0.0, le=12.0)] = 2.0
    # Tempo of the waveform, pitch kept: this share of clips is sped up (>1) or slowed down by a factor drawn from
    # tempo_range; the clip keeps its length (centred, cropped or padded with silence).
    tempo_probability: Annotated[float, Field(ge=0.0, le=1.0)] = 0.3
    tempo_range: Range = (0.85, 1.15)

    @model_validator(mode="after")
    def _factors_are_positive_and_ordered(self) -> Augment:
        for key in ("vtlp_range", "tempo_range"):
            low, high = getattr(self, key)
            if not 0.5 <= low <= high <= 2.0:
                raise ValueError(f"{key}: needs 0.5 <= low <= high <= 2, got [{low}, {high}]")
        return self


class Model(Strict):
    channels: PositiveInt = 96
    blocks: PositiveInt = 3
    kernel: PositiveInt = 9  # frames each temporal convolution sees
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1


class Distill(Strict):
    """Knowledge distillation: a larger teacher, trained first on the same data, whose softened outputs the deployed
    model learns from besides the labels; the smallest model that keeps accuracy is the fastest one."""

    teacher: Model | None = None  # None: no teacher, the model learns from the labels alone
    weight: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5  # share of the teacher's soft targets in the loss
    temperature: Annotated[float, Field(gt=0.0)] = 4.0


class Train(Strict):
    epochs: PositiveInt = 20
    batch_size: PositiveInt = 128
    learning_rate: Annotated[float, Field(gt=0.0)] = 3e-3
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.01
    patience: PositiveInt = 5
    threads: PositiveInt = 2
    # Retraining starts from the champion's weights when its architecture and labels match: it keeps what the
    # champion knows about old domains while it learns the new one.
    warm_start: bool = True
    distill: Distill = Distill()


class Distributed(Strict):
    """How the keyword model's training runs, not what it learns: data-parallel processes on this machine
    (torch.distributed, gloo on CPU, NCCL on GPUs), each on its share of every batch (docs/scaling.md)."""

    nproc: PositiveInt = 1


class Export(Strict):
    calibration_clips: PositiveInt = 256
    min_parity: Annotated[float, Field(ge=0.0, le=1.0)] = 0.99
    latency_runs: PositiveInt = 200


class Ingest(Strict):
    """Where accepted and rejected drop files go, and the thresholds Great Expectations checks them against."""

    root: Path = Path("data/domains")
    quarantine: Path = Path("data/quarantine")
    min_seconds: Annotated[float, Field(gt=0.0)] = 0.3
    max_seconds: Annotated[float, Field(gt=0.0)] = 2.0
    # Below it the upper band is gone already; resampling up cannot bring it back.
    min_sample_rate: PositiveInt = 8000
    min_rms_dbfs: float = -55.0
    max_clipping_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01
    # Drop level: a drop whose label mix is this far from uniform over the task's labels is rejected whole.
    max_label_share: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    min_files: PositiveInt = 1


class AsrIngest(Ingest):
    """Drops of transcribed speech: the audio checks of every drop, plus checks of each transcript against the audio
    and the track's lexicon."""

    root: Path = Path("data/asr/domains")
    quarantine: Path = Path("data/asr/quarantine")
    max_seconds: Annotated[float, Field(gt=0.0)] = 20.0
    # Share of an utterance's words outside the lexicon the model can spell; above it the transcript is suspect.
    max_oov_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    # Characters (letters, apostrophes, spaces) per second of audio; read speech is ~12-18, a wrong pairing is not.
    min_chars_per_second: Annotated[float, Field(ge=0.0)] = 4.0
    max_chars_per_second: Annotated[float, Field(gt=0.0)] = 30.0


class Gate(Strict):
    """What a challenger must show before it may replace the champion; accuracies are fractions, drops in points."""

    max_domain_regression_points: Annotated[float, Field(ge=0.0)] = 1.0
    min_new_domain_accuracy: Annotated[float, Field(ge=0.0, le=1.0)] = 0.90
    min_int8_parity: Annotated[float, Field(ge=0.0, le=1.0)] = 0.99
    max_int8_latency_ms: Annotated[float, Field(gt=0.0)] = 2.0
    max_int8_size_kib: Annotated[float, Field(gt=0.0)] = 512.0
    # Test clips of the configured domains, drawn by seed among those the champion gets right, that must keep
    # their label: a cheap guard against a challenger that trades well-known cases for the average.
    golden_clips: Annotated[int, Field(ge=0)] = 24
    max_golden_changed: Annotated[int, Field(ge=0)] = 0  # golden clips the challenger may label differently


class Continuous(Strict):
    """The retraining loop: where drops land, how often they are looked for, when the nightly run starts."""

    # A finished drop is moved (renamed) into incoming/<track>/<domain>/<drop>/; the watcher of a params file starts
    # one retraining per drop of its track.
    incoming: Path = Path("data/incoming")
    watch_every_s: Annotated[float, Field(gt=0.0)] = 60.0
    nightly_cron: str = "0 3 * * *"
    # Held while a retraining runs; a second one fails at once instead of racing the first for the same files.
    lock: Path = Path(".earshot/retrain.lock")


class SoundDemo(Strict):
    """The story `earshot demo --track esc` tells on esc.corpus, cut to run in minutes: a smaller corpus, and
    cross-validation over `cv_folds` only (the gate scores the holdout fold as always). The holdout fold (10) costs
    no training: the deployed model is its round."""

    good_drop: str = "kitchen"  # recipes of esc.corpus.drop_domains
    bad_drop: str = "tunnel"
    clips_per_class: PositiveInt = 24
    drop_clips_per_class: PositiveInt = 32
    cv_folds: list[PositiveInt] = Field(default_factory=lambda: [10], min_length=1)
    epochs: PositiveInt = 20
    # Its holdout fold holds ~8 clips of each baseline domain, where one flipped clip is 12.5 points: thresholds
    # that size of sample can decide (in the README's run a mislabeled drop scored 0 % on its domain, a good one 100 %).
    gate: Gate = Gate(min_new_domain_accuracy=0.7, max_domain_regression_points=15.0, min_int8_parity=0.95,
                      max_int8_latency_ms=10.0, max_int8_size_kib=1024.0, golden_clips=10, max_golden_changed=1)


class Demo(Strict):
    """The story `make demo` tells: a baseline, a good new-domain drop that is promoted, a bad one that is refused."""

    workspace: Path = Path(".earshot/demo")
    baseline_domains: list[str] = Field(default_factory=lambda: ["studio_us"], min_length=1)
    good_drop: str = "car_scottish"
    bad_drop: str = "office_uk"
    drop_speakers: PositiveInt = 96
    esc: SoundDemo = SoundDemo()
    asr: SpeechDemo = Field(default_factory=lambda: SpeechDemo())


class Paths(Strict):
    """Where stages put their outputs, each under a folder named after the track (dvc.yaml appends `${track}`)."""

    features: Path = Path("data/features")  # one shard per domain
    model_dir: Path = Path("models")
    reports: Path = Path("reports")
    # Decoded clips and log-mels by content hash; outside DVC's outputs so it survives a stage re-run.
    clip_cache: Path = Path(".earshot/clips")


class KeywordGate(Strict):
    """What a custom keyword model must show: recall at the false-accept budget, held-out accuracy, INT8 figures."""

    max_false_accepts_per_hour: Annotated[float, Field(ge=0.0)] = 1.0
    min_recall: Annotated[float, Field(ge=0.0, le=1.0)] = 0.90
    min_accuracy: Annotated[float, Field(ge=0.0, le=1.0)] = 0.85
    min_int8_parity: Annotated[float, Field(ge=0.0, le=1.0)] = 0.98
    max_int8_size_kib: Annotated[float, Field(gt=0.0)] = 1024.0


class Keywords(Strict):
    """Custom wake phrases (`earshot keywords add`): small heads on a speech encoder trained here once.

    `encoder` and `head` override fields of components.encoder.EncoderSettings and
    components.keywords.KeywordSettings, whose defaults are what benchmarks/transfer.py measured.
    """

    phrases: list[str] = Field(default_factory=lambda: ["hey device", "next", "stop"], min_length=1)
    # "last_block" fine-tunes the encoder's last block with the head; "frozen" trains the head alone.
    encoder_training: Literal["frozen", "last_block"] = "last_block"
    # Keyword-free speech and noise the false accepts per hour are counted on.
    negative_seconds: Annotated[float, Field(gt=0.0)] = 3600.0
    encoder: dict[str, Any] = Field(default_factory=dict)
    head: dict[str, Any] = Field(default_factory=dict)
    gate: KeywordGate = KeywordGate()


Track = Literal["kws", "asr", "esc"]
# The tracks with a section of their own in params.yaml (the keyword track reads the top-level sections).
TRACK_SECTIONS = ("asr", "esc")


class AsrCorpus(Strict):
    """The synthesized speech-to-text corpus: command-grammar sentences per domain, in the LibriSpeech layout.

    Domains name recipes of `synthesis` (voices, noise, rooms), so both tracks hear the same acoustic worlds.
    """

    domains: list[str] = Field(default_factory=lambda: ["studio_us"], min_length=1)
    speakers_per_domain: PositiveInt = 40
    utterances_per_speaker: PositiveInt = 20
    validation_percentage: Percentage = 10.0
    testing_percentage: Percentage = 10.0


class Subsets(Strict):
    """The LibriSpeech subset folder each split is read from, e.g. train-clean-100 / dev-clean / test-clean."""

    training: str = "train"
    validation: str = "dev"
    testing: str = "test"


class AsrModel(Strict):
    """A CTC acoustic model of 1-D convolutions with a bounded receptive field, so it streams exactly."""

    channels: PositiveInt = 192
    blocks: PositiveInt = 6
    kernel: PositiveInt = 9
    # Frames of right context each block may see (after subsampling): the model's look-ahead, hence its latency.
    lookahead: Annotated[int, Field(ge=0)] = 1
    subsampling: PositiveInt = 2
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1


class Decode(Strict):
    beam_size: PositiveInt = 16
    # Beam search may only spell words of the corpus vocabulary (torchaudio's CTC decoder with a lexicon).
    lexicon: bool = True


class Stream(Strict):
    """Streaming inference: audio in chunks, a voice-activity detector in front."""

    chunk_ms: Annotated[float, Field(gt=0.0)] = 100.0
    vad: Literal["silero", "webrtc"] = "silero"
    # 0.5 lets babble 10-20 dB under the talker count as speech and merge neighbouring utterances; 0.7 does not.
    vad_threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.7
    # Silence that ends an utterance; the floor under end-of-speech-to-final latency.
    min_silence_ms: Annotated[float, Field(ge=0.0)] = 150.0
    # Audio kept past the last speech frame: the model spells a word's last letters just after it ends.
    speech_pad_ms: Annotated[float, Field(ge=0.0)] = 150.0
    # Ends an utterance once the model has heard no letter for this long after its last one, though the VAD still
    # hears sound: in babble the VAD's silence may be seconds away. 0 leaves ends to the VAD alone.
    endpoint_blank_ms: Annotated[float, Field(ge=0.0)] = 250.0
    # For that endpoint, letters heard this far below the utterance's loudest frame are other people talking.
    foreground_db: Annotated[float, Field(gt=0.0)] = 20.0


class AsrGate(Strict):
    """The regression gate of the speech-to-text track; WER is a fraction, lower is better, changes in points."""

    max_domain_wer_increase_points: Annotated[float, Field(ge=0.0)] = 1.0
    max_new_domain_wer: Annotated[float, Field(ge=0.0)] = 0.15
    max_int8_wer_gap_points: Annotated[float, Field(ge=0.0)] = 1.0
    max_int8_rtf: Annotated[float, Field(gt=0.0)] = 0.3
    max_int8_size_kib: Annotated[float, Field(gt=0.0)] = 2048.0
    # Test utterances of the known domains the champion transcribes exactly, drawn by seed, that must keep their
    # transcript (as the classifiers' golden clips).
    golden_utterances: Annotated[int, Field(ge=0)] = 10
    max_golden_changed: Annotated[int, Field(ge=0)] = 1


class Asr(Strict):
    """The speech-to-text track: corpus, data, model, decoding, streaming and its gate."""

    corpus: AsrCorpus = AsrCorpus()
    # Domain name -> a folder holding LibriSpeech subsets (synthesized, or a real extracted LibriSpeech).
    domains: dict[str, Path] = Field(min_length=1)
    subsets: Subsets = Subsets()
    sample_rate: PositiveInt = 16000
    features: Features = Features(n_mels=64, win_ms=25.0, hop_ms=10.0)
    model: AsrModel = AsrModel()
    train: Train = Train(epochs=25, batch_size=8, learning_rate=5e-3, patience=6, warm_start=False)
    decode: Decode = Decode()
    stream: Stream = Stream()
    export: Export = Export(calibration_clips=64, latency_runs=20)
    gate: AsrGate = AsrGate()
    ingest: AsrIngest = AsrIngest()


class SpeechDemo(Strict):
    """The story `earshot demo --track asr` tells on the speech corpus, cut to run in minutes: one baseline domain,
    fewer speakers, a smaller model trained for fewer epochs; drops are new speakers of synthesis recipes."""

    baseline_domains: list[str] = Field(default_factory=lambda: ["studio_us"], min_length=1)
    good_drop: str = "car_scottish"
    bad_drop: str = "office_uk"
    speakers_per_domain: PositiveInt = 24
    utterances_per_speaker: PositiveInt = 10
    drop_speakers: PositiveInt = 24
    model: AsrModel = AsrModel(channels=96, blocks=4)
    epochs: PositiveInt = 25  # all of them: a training this short is not stopped early
    # A model trained for a minute on 240 sentences spells ~60-75 % of words wrong: the product's 15 % is out of
    # reach. Its bar sits between a domain it has learned (~58 % in the README's run) and a drop whose transcripts
    # are shifted (~96-99 % on its own references): the story shows the loop, not a usable transcriber.
    gate: AsrGate = AsrGate(max_new_domain_wer=0.7, max_domain_wer_increase_points=5.0, max_int8_wer_gap_points=2.0)


class SoundDomain(Strict):
    """Where and how a sound source was recorded: background noise, event-to-noise ratio, room and microphone band.

    snr_db is for foreground events; background ones (salience 2) sit lower still. None: no room, or a flat microphone.
    """

    noise: NoiseKind = "pink"
    snr_db: Range = (10.0, 25.0)
    rt60_s: Range | None = None
    band_hz: Range | None = None


class SoundCorpus(Strict):
    """The synthesized UrbanSound8K-layout corpus: the ten classes from procedural sound models, in 10 folds."""

    clips_per_class: PositiveInt = 40
    # A source recording yields 1..n slices, all in its fold: the grouping fold cross-validation must respect.
    max_slices_per_source: PositiveInt = 4
    sample_rate: Annotated[int, Field(ge=8000)] = 16000
    domains: dict[str, SoundDomain] = Field(min_length=1)
    # Recipes of domains that are never in the corpus and only arrive as drops (`earshot demo --track esc`).
    drop_domains: dict[str, SoundDomain] = {}


class SoundTraining(Strict):
    """How a sound-event model is built and trained, for every cross-validation fold and the deployed model alike."""

    channels: PositiveInt = 16
    blocks: PositiveInt = 4
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2
    epochs: PositiveInt = 30
    batch_size: PositiveInt = 32
    learning_rate: Annotated[float, Field(gt=0.0)] = 3e-3
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.01
    patience: PositiveInt = 8
    mixup: bool = True
    mixup_alpha: Annotated[float, Field(gt=0.0)] = 0.3
    freq_mask: Annotated[int, Field(ge=0)] = 6
    time_mask: Annotated[int, Field(ge=0)] = 10
    masks: Annotated[int, Field(ge=0)] = 2
    threads: PositiveInt = 2


class Esc(Strict):
    """The environmental sound classification track: an UrbanSound8K or ESC-50 folder, scored fold by fold."""

    layout: Literal["urbansound8k", "esc50"] = "urbansound8k"
    # The dataset folder: the synthesized corpus, or a real extracted UrbanSound8K / ESC-50 of `layout`.
    root: Path = Path("data/synth/esc")
    corpus: SoundCorpus
    sample_rate: PositiveInt = 16000  # clips are resampled to it
    features: Features = Features(n_mels=64, win_ms=40.0, hop_ms=20.0, f_max=7600.0)
    train: SoundTraining = SoundTraining()
    # The test folds of cross-validation; null: every fold, the datasets' protocol (10 for UrbanSound8K, 5 for ESC-50).
    cv_folds: list[PositiveInt] | None = None
    # The deployed model never trains on this fold (null: the last one): the gate scores it and the champion there.
    holdout_fold: PositiveInt | None = None
    export: Export = Export(calibration_clips=64, latency_runs=50)
    gate: Gate = Gate(min_new_domain_accuracy=0.85, max_int8_latency_ms=10.0, max_int8_size_kib=1024.0)
    # UrbanSound8K slices are at most 4 s (ESC-50 clips 5 s): set max_seconds to the protocol of `layout`.
    ingest: Ingest = Ingest(root=Path("data/esc/domains"), quarantine=Path("data/esc/quarantine"), min_seconds=0.25,
                            max_seconds=4.0)


class Params(Strict):
    seed: int = 0
    # Which model track the stages, the flows and the CLI build; every output lands under a folder of this name.
    track: Track = "kws"
    paths: Paths = Paths()
    tracking: Tracking = Tracking()
    synthesis: Synthesis
    dataset: Dataset
    features: Features = Features()
    augment: Augment = Augment()
    model: Model = Model()
    train: Train = Train()
    distributed: Distributed = Distributed()
    export: Export = Export()
    ingest: Ingest = Ingest()
    gate: Gate = Gate()
    continuous: Continuous = Continuous()
    demo: Demo = Demo()
    asr: Asr | None = None
    esc: Esc | None = None
    keywords: Keywords = Keywords()

    @property
    def out(self) -> Paths:
        """The active track's output folders: each of `paths` with the track's name appended, as dvc.yaml does."""
        return Paths(features=self.paths.features / self.track, model_dir=self.paths.model_dir / self.track,
                     reports=self.paths.reports / self.track, clip_cache=self.paths.clip_cache)

    @property
    def mlflow(self) -> Tracking:
        """The tracking settings of the active track, `{track}` filled in."""
        return self.mlflow_of(self.track)

    def mlflow_of(self, name: str) -> Tracking:
        """The store, experiment and registered model of the track (or custom-keyword kind) `name`: earshot-<name>."""
        return self.tracking.model_copy(update={"experiment": self.tracking.experiment.format(track=name),
                                                "registered_model": self.tracking.registered_model.format(track=name)})

    @property
    def incoming(self) -> Path:
        """Where the active track's drops land for the watcher: <continuous.incoming>/<track>/<domain>/<drop>/."""
        return self.continuous.incoming / self.track

    @property
    def synth_root(self) -> Path:
        """Where the synthesize stage writes the active track's corpus, one folder per domain."""
        return self.synthesis.out_dir / self.track

    @model_validator(mode="after")
    def _track_is_configured(self) -> Params:
        section = getattr(self, self.track) if self.track in TRACK_SECTIONS else None
        if self.track in TRACK_SECTIONS and section is None:
            raise ValueError(f"track {self.track} needs an `{self.track}` section")
        # Only the active track's corpus is synthesized: another track's section may name domains it lacks.
        if isinstance(section, Asr):
            unknown = set(self.asr.corpus.domains) - set(self.synthesis.domains) - set(self.synthesis.drop_domains)
            if unknown:
                raise ValueError(f"asr.corpus.domains: no synthesis recipe for {', '.join(sorted(unknown))}")
        if self.features.kind == "speech_embedding" and self.dataset.sample_rate != 16000:
            raise ValueError(f"features.kind speech_embedding reads 16 kHz audio, dataset.sample_rate is "
                             f"{self.dataset.sample_rate}")
        for section in TRACK_SECTIONS:
            config = getattr(self, section)
            if config is not None and config.features.kind != "log_mel":
                raise ValueError(f"{section}.features.kind: only the keyword track has other front ends than log_mel")
        return self

    @model_validator(mode="after")
    def _ranges_are_ordered(self) -> Params:
        ranges = {f"synthesis.domains.{n}.snr_db": r.snr_db for n, r in self.synthesis.domains.items()}
        ranges |= {f"synthesis.domains.{n}.rt60_s": r.rt60_s for n, r in self.synthesis.domains.items()}
        if self.esc is not None:
            for name, domain in (self.esc.corpus.domains | self.esc.corpus.drop_domains).items():
                ranges |= {f"esc.corpus.domains.{name}.{key}": getattr(domain, key)
                           for key in ("snr_db", "rt60_s", "band_hz")}
        ranges["augment.snr_db"] = self.augment.snr_db
        ranges["ingest.min_seconds..max_seconds"] = (self.ingest.min_seconds, self.ingest.max_seconds)
        for section in TRACK_SECTIONS:
            if (config := getattr(self, section)) is not None:
                ranges[f"{section}.ingest.min_seconds..max_seconds"] = (config.ingest.min_seconds,
                                                                        config.ingest.max_seconds)
        if self.asr is not None:
            ranges["asr.ingest.min_chars_per_second..max_chars_per_second"] = (self.asr.ingest.min_chars_per_second,
                                                                               self.asr.ingest.max_chars_per_second)
        for key, span in ranges.items():
            if span is not None and span[0] > span[1]:
                raise ValueError(f"{key}: low end {span[0]} is above high end {span[1]}")
        return self


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and check a params file; raise ConfigError with a one-line reason if it is unusable."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
        # YAML 1.1 reads unquoted yes/no/on/off as booleans, a trap for keyword lists.
        hint = " (quote it: YAML reads yes/no/on/off as booleans)" if isinstance(first["input"], bool) else ""
        raise ConfigError(f"{path}: {where}: {first['msg']}{hint}{more}") from None

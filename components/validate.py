"""Great Expectations checks for a drop of new recordings: per-file facts in one frame, validated by real suites.

Per-file expectations reject single files; drop-level ones (size, label mix) reject the whole drop. Each run
leaves a static Data Docs site, so the evidence for every decision can be logged next to the data version.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
from rich.progress import Progress

from components.config import Ingest
from components.dataset import UNKNOWN
from components.errors import EarshotError

SILENCE_FLOOR_DBFS = -120.0  # log10(0) is -inf, which GX cannot compare against a threshold
CLIP_LEVEL = 0.999
PROGRESS_MIN_FILES = 100  # below this a bar is only flicker
# Column -> pandas dtype, so even an empty drop gives GX typed columns.
FACT_COLUMNS: dict[str, str] = {
    "file": "object", "label": "object", "speaker": "object", "split": "object", "path_ok": "bool",
    "readable": "bool", "error": "object", "sample_rate": "int64", "channels": "int64", "duration_s": "float64",
    "rms_dbfs": "float64", "clipping_ratio": "float64", "finite": "bool", "sha256": "object",
    "duplicate": "bool", "speaker_conflict": "bool",
}
# The facts of a file that was never decoded: the floor values keep GX's numeric comparisons defined.
UNREAD: dict[str, object] = {"readable": False, "error": "", "sample_rate": 0, "channels": 0, "duration_s": 0.0,
                             "rms_dbfs": SILENCE_FLOOR_DBFS, "clipping_ratio": 0.0, "finite": True, "sha256": ""}
FILE_SUITE, DROP_SUITE, DOCS_SITE = "earshot_drop_files", "earshot_drop", "earshot"
TRAINING_SUITE = "earshot_training_data"
RESULT_FORMAT = {"result_format": "COMPLETE", "unexpected_index_column_names": ["file"]}
# An observed "False" alone says little; this fact of the same row says why.
DETAIL = {"path_ok": "error", "readable": "error", "duplicate": "sha256", "speaker_conflict": "speaker",
          "label_share": "task_label"}


class ValidationError(EarshotError):
    """An expectation that could not be evaluated at all, so no decision about the drop can be trusted."""


@dataclass(frozen=True)
class Rejection:
    file: str  # "*" for a drop-level failure
    expectation: str  # "<expectation type>(<column>)"
    observed: str


@dataclass(frozen=True)
class ValidationReport:
    """What GX decided about one drop: one primary reason per rejected file, drop failures, and the Data Docs."""

    rejections: list[Rejection]
    drop_failures: list[Rejection]
    accepted: list[str]
    docs_dir: Path

    @property
    def success(self) -> bool:
        return not self.drop_failures

    def to_rows(self) -> list[dict[str, str]]:
        """Rows for reasons.csv: drop failures first, then one per rejected file."""
        return [{"file": r.file, "expectation": r.expectation, "observed": r.observed}
                for r in [*self.drop_failures, *self.rejections]]


def probe_audio(path: Path) -> dict[str, object]:
    """The facts GX checks about one file; never raises, since a broken file is a fact to report, not a crash."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        return UNREAD | {"error": err.strerror or type(err).__name__}
    if not raw:
        return UNREAD | {"error": "empty file", "sha256": hashlib.sha256(raw).hexdigest()}
    try:
        audio, rate = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except Exception as err:  # noqa: BLE001 - any bytes may arrive: libsndfile, numpy and memory errors alike
        reason = err.error_string if isinstance(err, sf.LibsndfileError) else f"{type(err).__name__}: {err}"
        return UNREAD | {"error": reason.rstrip(".") or type(err).__name__, "sha256": hashlib.sha256(raw).hexdigest()}
    finite = bool(np.isfinite(audio).all())
    if not finite:
        audio = np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0)
    mono = audio[:, 0] if audio.shape[1] == 1 else audio.mean(axis=1)
    rms = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64)))) if mono.size else 0.0
    return UNREAD | {
        "readable": True,
        "sample_rate": int(rate),
        "channels": int(audio.shape[1]),
        "duration_s": len(audio) / rate,
        "rms_dbfs": max(SILENCE_FLOOR_DBFS, 20 * np.log10(rms)) if rms > 0 else SILENCE_FLOOR_DBFS,
        # Over every channel's samples, not the downmix, where one clipped channel would be averaged away.
        "clipping_ratio": np.count_nonzero(np.abs(audio) >= CLIP_LEVEL) / audio.size if audio.size else 0.0,
        "finite": finite,
        "sha256": hashlib.sha256(raw).hexdigest(),
    }


def facts_frame(
    entries: list[dict[str, Any]],
    held_hashes: set[str],
    held_speaker_splits: dict[str, str],
    progress: bool = True,
) -> pd.DataFrame:
    """One row of FACT_COLUMNS per drop entry: its audio facts plus the cross-file facts no single file shows.

    A duplicate repeats held bytes or an earlier row of the drop; a speaker conflict would leak a speaker held
    in one split (or placed there by an earlier row of the drop) into another split.
    """
    rows = []
    seen = set(held_hashes)
    speaker_splits = dict(held_speaker_splits)
    with Progress(disable=not progress or len(entries) < PROGRESS_MIN_FILES, transient=True) as bar:
        task = bar.add_task("probing audio", total=len(entries))
        for entry in entries:
            path, speaker, split = entry["path"], entry["speaker"], entry["split"]
            facts = probe_audio(path) if path is not None else UNREAD | {"error": entry.get("path_error", "")}
            held_split = speaker_splits.setdefault(speaker, split)
            rows.append({"file": entry["file"], "label": entry["label"], "speaker": speaker, "split": split,
                         "path_ok": path is not None, **facts,
                         "duplicate": bool(facts["sha256"]) and facts["sha256"] in seen,
                         "speaker_conflict": held_split is not None and held_split != split})
            seen.add(facts["sha256"])
            bar.advance(task)
    return pd.DataFrame(rows, columns=list(FACT_COLUMNS)).astype(FACT_COLUMNS)


def validate_drop(
    facts: pd.DataFrame, cfg: Ingest, vocabulary: set[str], labels: list[str], docs_dir: Path
) -> ValidationReport:
    """Run the per-file suite, then the drop suite on the files that passed, and build Data Docs into docs_dir.

    The label mix is judged over the task's classes (words outside `labels` count as the unknown class).
    """
    return validate_facts(facts, lambda: _file_expectations(cfg, vocabulary), lambda: _drop_expectations(cfg),
                          lambda passed: _label_shares(facts, passed, labels), docs_dir)


def validate_facts(
    facts: pd.DataFrame,
    file_expectations: Callable[[], list],
    drop_expectations: Callable[[], list],
    drop_table: Callable[[pd.Series], pd.DataFrame],
    docs_dir: Path,
    suite_names: tuple[str, str] = (FILE_SUITE, DROP_SUITE),
    details: dict[str, str] = DETAIL,
) -> ValidationReport:
    """Run a per-file suite, then a drop suite on drop_table(rows that passed), and build Data Docs into docs_dir.

    Every track's drop is decided this way: a file's primary reason is its first failure in suite order. The
    expectations are built by callables because GX may only be imported once _suites has configured it; `details`
    names, per checked column, the column of the same row that says why a value failed.
    """
    with _suites(docs_dir) as run:
        per_file = run(suite_names[0], file_expectations(), facts, details)
        primary: dict[str, Rejection] = {}
        for rejection in per_file:
            primary.setdefault(rejection.file, rejection)
        accepted = [file for file in facts["file"] if file not in primary]
        drop_failures = run(suite_names[1], drop_expectations(), drop_table(facts["file"].isin(accepted)), details)
    by_row = {file: i for i, file in enumerate(facts["file"])}
    rejections = sorted(primary.values(), key=lambda r: by_row[r.file])
    return ValidationReport(rejections, _merged(drop_failures), accepted, Path(docs_dir).resolve())


def training_facts(files: pd.DataFrame, progress: bool = True) -> pd.DataFrame:
    """The probed facts of every distinct file a training set was cut from, beside its label, domain and split.

    `files` has columns file, label, domain, split; a file cut into clips of several splits keeps its first row.
    """
    rows = files.drop_duplicates("file").reset_index(drop=True)
    with Progress(disable=not progress or len(rows) < PROGRESS_MIN_FILES, transient=True) as bar:
        task = bar.add_task("probing training audio", total=len(rows))
        facts = []
        for file in rows["file"]:
            facts.append(probe_audio(Path(file)))
            bar.advance(task)
    probed = pd.DataFrame(facts, columns=list(UNREAD)).astype({k: FACT_COLUMNS[k] for k in UNREAD})
    return pd.concat([rows[["file", "label", "domain", "split"]].astype("object"), probed], axis=1)


def document_training_data(facts: pd.DataFrame, cfg: Ingest, labels: list[str], quiet_labels: set[str],
                           docs_dir: Path) -> list[Rejection]:
    """Check the files a model trained on against the ingest thresholds and build their Data Docs into docs_dir.

    Nothing is refused here (the data is already versioned): the failures are evidence for the reviewer, and
    `quiet_labels` (silence) are exempt from the loudness floor.
    """
    with _suites(docs_dir) as run:
        return run(TRAINING_SUITE, _training_expectations(cfg, labels, sorted(set(facts["domain"])), quiet_labels),
                   facts)


@contextmanager
def _suites(docs_dir: Path) -> Iterator[Callable[..., list[Rejection]]]:
    """An ephemeral GX context whose suites run on data frames; its Data Docs site is built into docs_dir on exit."""
    # GX reads this on import, and its import costs seconds, so only validation pays for it.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    site = {"class_name": "SiteBuilder", "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(Path(docs_dir).resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}}
    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
                               data_docs_sites={DOCS_SITE: site}, analytics_enabled=False,
                               progress_bars=ProgressBarsConfig(globally=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        context = gx.get_context(mode="ephemeral", project_config=config)
        batch = (context.data_sources.add_pandas("earshot").add_dataframe_asset("facts")
                 .add_batch_definition_whole_dataframe("whole frame"))

        def run(name: str, expectations: list, frame: pd.DataFrame, details: dict[str, str] = DETAIL
                ) -> list[Rejection]:
            suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
            definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
            result = definition.run(batch_parameters={"dataframe": frame}, result_format=RESULT_FORMAT)
            # In suite order, which is most basic first, so a file's first failure is its primary reason.
            order = [expectation.id for expectation in suite.expectations]
            return _failures(sorted(result.results, key=lambda r: order.index(r.expectation_config.id)), frame,
                             details)

        yield run
        context.build_data_docs(site_names=[DOCS_SITE])


def _file_expectations(cfg: Ingest, vocabulary: set[str]) -> list:
    """A labelled clip's suite: its audio, then its label among the words the task knows, then the cross-file facts."""
    import great_expectations.expectations as gxe

    return [*audio_expectations(cfg), gxe.ExpectColumnValuesToBeInSet(column="label", value_set=sorted(vocabulary)),
            *cross_file_expectations()]


def audio_expectations(cfg: Ingest) -> list:
    """The checks of a drop file's audio, most basic first, which every track's per-file suite opens with.

    Signal checks skip files that could not be decoded, so those are reported once.
    """
    import great_expectations.expectations as gxe

    probed, decoded, clean = decoded_conditions()
    return [
        gxe.ExpectColumnValuesToBeInSet(column="path_ok", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="readable", value_set=[True], row_condition=probed),
        gxe.ExpectColumnValuesToBeInSet(column="finite", value_set=[True], row_condition=decoded),
        gxe.ExpectColumnValuesToBeBetween(column="sample_rate", min_value=cfg.min_sample_rate, row_condition=decoded),
        gxe.ExpectColumnValuesToBeBetween(column="duration_s", min_value=cfg.min_seconds, max_value=cfg.max_seconds,
                                          row_condition=clean),
        gxe.ExpectColumnValuesToBeBetween(column="rms_dbfs", min_value=cfg.min_rms_dbfs, row_condition=clean),
        gxe.ExpectColumnValuesToBeBetween(column="clipping_ratio", max_value=cfg.max_clipping_ratio,
                                          row_condition=clean),
    ]


def cross_file_expectations() -> list:
    """The checks no single file shows, which close every track's per-file suite: no speaker leak, no repeat."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToBeInSet(column="speaker_conflict", value_set=[False]),
        gxe.ExpectColumnValuesToBeInSet(column="duplicate", value_set=[False]),
    ]


def decoded_conditions() -> tuple[Any, Any, Any]:
    """GX row conditions for the rows whose path was usable, that decoded, and that decoded to finite samples."""
    from great_expectations.expectations.row_conditions import Column

    # These build GX row conditions, not Python booleans, hence `== True`.
    probed = Column("path_ok") == True  # noqa: E712
    decoded = Column("readable") == True  # noqa: E712
    return probed, decoded, decoded & (Column("finite") == True)  # noqa: E712


def _drop_expectations(cfg: Ingest) -> list:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_files),
        gxe.ExpectColumnValuesToBeBetween(column="label_share", min_value=0.0, max_value=cfg.max_label_share),
    ]


def _training_expectations(cfg: Ingest, labels: list[str], domains: list[str], quiet_labels: set[str]) -> list:
    """What training relied on: every file still decodes to finite samples, loud enough and unclipped, no file twice,
    every class and domain present."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    _, decoded, clean = decoded_conditions()
    heard = clean & Column("label").is_not_in(sorted(quiet_labels)) if quiet_labels else clean
    return [
        gxe.ExpectColumnValuesToBeInSet(column="readable", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="finite", value_set=[True], row_condition=decoded),
        gxe.ExpectColumnValuesToBeBetween(column="rms_dbfs", min_value=cfg.min_rms_dbfs, row_condition=heard),
        gxe.ExpectColumnValuesToBeBetween(column="clipping_ratio", max_value=cfg.max_clipping_ratio,
                                          row_condition=clean),
        gxe.ExpectColumnValuesToBeUnique(column="sha256", row_condition=decoded),
        gxe.ExpectColumnDistinctValuesToEqualSet(column="label", value_set=labels),
        gxe.ExpectColumnDistinctValuesToEqualSet(column="domain", value_set=domains),
    ]


def _label_shares(facts: pd.DataFrame, passed: pd.Series, labels: list[str]) -> pd.DataFrame:
    """Each passing row's task class and the share of passing rows in it; NaN (which GX skips) elsewhere."""
    task_label = facts["label"].where(facts["label"].isin(labels), UNKNOWN)
    share = task_label[passed].map(task_label[passed].value_counts(normalize=True))
    return pd.DataFrame({"file": facts["file"], "task_label": task_label,
                         "label_share": share.reindex(facts.index).astype("float64")})


def _failures(results: list, frame: pd.DataFrame, details: dict[str, str]) -> list[Rejection]:
    """One Rejection per failing row (or per table or whole-column expectation); ValidationError if an expectation
    could not run."""
    failures = []
    for result in results:
        config = result.expectation_config
        column = config.kwargs.get("column")
        name = f"{config.type}({column})" if column else config.type
        # GX files an expectation's own error flat, and errors of the metrics it needs under one key per metric.
        info = result.exception_info
        for error in [info, *(v for v in info.values() if isinstance(v, dict))]:
            if error.get("raised_exception"):
                raise ValidationError(f"{name} could not be evaluated: {error.get('exception_message')}")
        if result.success:
            continue
        if "unexpected_index_list" not in result.result:  # a table or whole-column expectation
            failures.append(Rejection("*", name, str(result.result.get("observed_value"))))
            continue
        detail = dict(zip(frame["file"], frame[details[column]], strict=True)) if column in details else {}
        for row in result.result["unexpected_index_list"]:
            failures.append(Rejection(row["file"], name, _observed(row[column], detail.get(row["file"]))))
    return failures


def _merged(failures: list[Rejection]) -> list[Rejection]:
    """Drop-level failures as one row per expectation: every row of an over-full label says the same thing."""
    merged: dict[str, set[str]] = {}
    for failure in failures:
        merged.setdefault(failure.expectation, set()).add(failure.observed)
    return [Rejection("*", name, "; ".join(sorted(observed))) for name, observed in merged.items()]


def _observed(value: object, detail: object) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f"{text} ({detail})" if detail else text

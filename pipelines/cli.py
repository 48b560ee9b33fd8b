"""`earshot`: the command line over the pipeline stages (what dvc.yaml runs), the Prefect flows and the registry.

Expected failures print one line naming the file and the problem and exit 1; `--debug` shows the traceback.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import click
import typer
from rich.console import Console
from rich.table import Table

from components.config import Distributed, Params, load_params
from components.errors import EarshotError
from components.tracking import reaching_store, tracking_uri

if TYPE_CHECKING:
    from components.serving import PackagedModel

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Continuous training for audio models.")
console = Console()
err_console = Console(stderr=True)
ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="The params file to read.")]
state = {"debug": False}


@app.callback()
def options(debug: Annotated[bool, typer.Option(help="Show full tracebacks.")] = False) -> None:
    state["debug"] = debug


def _run_stage(name: str, params_path: Path) -> None:
    from components.gate import GateReport
    from pipelines.stages import STAGES

    result = STAGES[name](load_params(params_path))
    if isinstance(result, GateReport):
        console.print(result.to_markdown(), highlight=False)


def _stage_command(name: str, doc: str) -> None:
    def command(params: ParamsOption = Path("params.yaml")) -> None:
        _run_stage(name, params)

    command.__doc__ = doc
    app.command(name)(command)


for _name, _doc in {
    "synthesize": "Synthesize the track's corpus (speech, or sound events in the UrbanSound8K layout).",
    "featurize": "Decode, label and featurize every clip once (keywords and speech: one shard per domain).",
    "evaluate": "Score per acoustic domain: test-split accuracy, WER and CER, or fold cross-validation.",
    "export": "Export ONNX FP32 and INT8, measure parity, size and speed.",
    "gate": "Hold the exported model to the regression gate against the registry's champion.",
}.items():
    _stage_command(_name, _doc)


@app.command()
def train(
    params: ParamsOption = Path("params.yaml"),
    nproc: Annotated[int | None, typer.Option(min=1, help="Keyword track: training processes on this machine, each "
                                              "on its share of every batch (default: distributed.nproc).")] = None,
) -> None:
    """Train the track's model and log the run to MLflow."""
    from pipelines.stages import STAGES

    settings = load_params(params)
    if nproc is not None:
        settings = settings.model_copy(update={"distributed": Distributed(nproc=nproc)})
    STAGES["train"](settings)


@app.command()
def ingest(
    drop: Annotated[Path, typer.Argument(help="Folder of new recordings: Speech Commands layout or manifest.csv.")],
    domain: Annotated[str, typer.Option(help="The acoustic domain the drop comes from.")],
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Validate a drop, quarantine bad files, add the rest to a domain as a new DVC data version."""
    from pipelines.stages import ingest as ingest_stage

    report = ingest_stage(load_params(params), drop, domain)
    if report.already_ingested:
        console.print(f"{drop}: already ingested into {report.domain} as data version {report.data_version} "
                      f"(drop {report.drop_id}); nothing changed", soft_wrap=True, highlight=False)
        return
    table = Table(title=f"earshot ingest · {drop}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("drop id", report.drop_id)
    table.add_row("domain", report.domain)
    table.add_row("accepted", str(report.accepted))
    table.add_row("rejected", str(report.rejected))
    for expectation, count in Counter(r.expectation for r in report.validation.rejections).most_common():
        table.add_row(f"  {expectation}", str(count))
    table.add_row("quarantine", str(report.quarantine or "-"))
    table.add_row("data version", report.data_version)
    table.add_row("Data Docs", str(report.docs_dir / "index.html"))
    console.print(table)


@app.command()
def drop(
    domain: Annotated[str, typer.Argument(help="A recipe from synthesis.domains or synthesis.drop_domains.")],
    out: Annotated[Path, typer.Argument(help="Folder to write the drop to (new or empty).")],
    speakers: Annotated[int, typer.Option(help="New speakers in the drop.")] = 8,
    layout: Annotated[str, typer.Option(help="manifest or speech_commands.")] = "manifest",
    faults: Annotated[bool, typer.Option(help="Plant one bad file of each kind (answer key: faults.csv).")] = False,
    held_root: Annotated[Path | None, typer.Option(help="A held tree to draw conflicts and duplicates from.")] = None,
    drop_seed: Annotated[int, typer.Option(help="Mixed with params' seed: another drop of the same recipe.")] = 1,
    shuffled_labels: Annotated[bool, typer.Option(
        help="Give clips each other's labels: a drop that validates but teaches the model wrong.")] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Synthesize a drop of new recordings for a domain recipe, optionally with planted faults."""
    from components.drops import write_drop

    written = write_drop(load_params(params), domain, out, speakers=speakers, layout=layout, faults=faults,
                         held_root=held_root, drop_seed=drop_seed, shuffled_labels=shuffled_labels)
    console.print(f"wrote drop {written}", soft_wrap=True, highlight=False)


keywords_app = typer.Typer(no_args_is_help=True, help="Custom wake phrases: small heads on the earshot encoder.")
app.add_typer(keywords_app, name="keywords")


@app.command()
def encoder(params: ParamsOption = Path("params.yaml")) -> None:
    """Train the speech encoder custom keywords build on (synthesized words) and make it earshot-encoder@champion."""
    from components.tracks.phrases.track import train_encoder_stage

    train_encoder_stage(load_params(params))


@keywords_app.command("add")
def keywords_add(
    phrases: Annotated[list[str] | None, typer.Argument(help="Phrases (default: keywords.phrases).")] = None,
    drop: Annotated[Path | None, typer.Option(help="Real recordings to train on too: DROP/<phrase>/*.wav.")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Train a keyword model for the phrases on the champion encoder; export, gate and promote it like any model."""
    from components.tracks.phrases.track import add_keywords

    decision = add_keywords(load_params(params), phrases, drop)
    console.print(f"{'promoted' if decision.promoted else 'refused'}: earshot-keywords version {decision.version}",
                  highlight=False)


@app.command()
def retrain(
    drop: Annotated[Path | None, typer.Option(help="A drop folder to ingest first (needs --domain).")] = None,
    domain: Annotated[str | None, typer.Option(help="The acoustic domain the drop comes from.")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Run the continuous-training flow: ingest, featurize, train, evaluate, export, gate, promote or refuse."""
    from pipelines.flows import continuous_training

    outcome = continuous_training(str(params), str(drop) if drop else None, domain)
    console.print(f"{outcome['outcome']}: model version {outcome['version']}", highlight=False)


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="A registered version that passed the gate.")],
    reason: Annotated[str, typer.Option(help="Why, for the promotion log.")] = "promoted by hand",
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Make a gated version champion; the old champion becomes `previous`."""
    from components.registry import promote as promote_version
    from components.registry import registry_client

    cfg = load_params(params).mlflow
    event = promote_version(registry_client(cfg), cfg.registered_model, version, reason)
    console.print(f"champion: version {event.version} (previous: {event.replaced or 'none'})", highlight=False)


@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="Why, for the promotion log.")] = "rolled back by hand",
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Move `champion` back to the `previous` version."""
    from components.registry import registry_client
    from components.registry import rollback as rollback_champion

    cfg = load_params(params).mlflow
    event = rollback_champion(registry_client(cfg), cfg.registered_model, reason)
    console.print(f"champion: version {event.version} (was {event.replaced})", highlight=False)


@app.command()
def promotions(params: ParamsOption = Path("params.yaml")) -> None:
    """Print the promotion log: every promotion, refusal and rollback, oldest first."""
    from components.registry import promotion_log, registry_client

    cfg = load_params(params).mlflow
    table = Table(title=f"earshot · {cfg.registered_model} promotion log", title_justify="left")
    for column in ("at (UTC)", "action", "version", "replaced", "reason"):
        table.add_column(column)
    for event in promotion_log(registry_client(cfg), cfg.registered_model):
        table.add_row(event.at, event.action, event.version, event.replaced or "-", event.reason)
    console.print(table)


@app.command()
def serve(params: ParamsOption = Path("params.yaml")) -> None:
    """Serve the Prefect deployments (new-data watcher, nightly, manual) until interrupted."""
    from prefect import serve as serve_deployments

    from pipelines.flows import deployments

    serve_deployments(*deployments(str(params)), pause_on_shutdown=False)


@app.command()
def worker(
    pool: Annotated[str, typer.Option(help="The work pool prefect.yaml's deployments name.")] = "earshot",
) -> None:
    """Run the flow runs of prefect.yaml's deployments here, each in a subprocess, until interrupted.

    `prefect deploy --all` registers the deployments first; this is `prefect worker start --pool POOL --type process`.
    """
    prefect_bin = Path(sys.executable).with_name("prefect")
    # exec: Ctrl-C and signals reach the worker itself, which lets the flow runs it started finish or cancel.
    os.execv(prefect_bin, [str(prefect_bin), "worker", "start", "--pool", pool, "--type", "process"])


@app.command()
def demo(
    params: ParamsOption = Path("params.yaml"),
    track: Annotated[str, typer.Option(help="Whose story: kws (keywords), esc (sound events), asr (speech "
                                            "to text).")] = "kws",
) -> None:
    """The continuous-training story in a workspace of its own: baseline, a good drop promoted, a bad one refused."""
    from pipelines.demo import run_demo, stage_table, story_table

    settings = load_params(params)
    steps = run_demo(settings, track)
    console.print(story_table(steps))
    console.print(stage_table(steps))
    console.print("Runs, gate reports and the registry: earshot ui --demo  → http://127.0.0.1:5000",
                  soft_wrap=True, highlight=False)


@app.command()
def ui(
    params: ParamsOption = Path("params.yaml"),
    host: Annotated[str, typer.Option(help="Interface to listen on: loopback unless you mean to share it.")] = (
        "127.0.0.1"),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5000,
    demo: Annotated[bool, typer.Option("--demo", help="The demo workspace's store instead of the project's.")] = False,
) -> None:
    """Start the MLflow UI on the project's store: runs, curves, gate reports, the registry and its champion."""
    settings = load_params(params)
    store = f"sqlite:///{settings.demo.workspace}/mlflow.db" if demo else tracking_uri(settings.mlflow)
    console.print(f"MLflow UI for {store} on http://{host}:{port} (Ctrl-C stops it)", highlight=False)
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    # exec: Ctrl-C and signals reach the server itself, and no earshot process lingers around it.
    os.execv(mlflow_bin, [str(mlflow_bin), "ui", "--backend-store-uri", store, "--host", host, "--port", str(port)])


ModelOption = Annotated[str | None, typer.Option(
    "--model", "-m", help="A packaged model: models:/NAME@ALIAS, runs:/RUN/export or a folder "
                          "(default: models:/<registered model>@champion in the project's store).")]


def _packaged(model: str | None, params: Path) -> PackagedModel:
    from components.serving import open_package

    settings = load_params(params)
    return open_package(model or f"models:/{settings.mlflow.registered_model}@champion", tracking_uri(settings.mlflow))


@app.command()
def predict(
    files: Annotated[list[Path], typer.Argument(help="Audio files (any rate or channel count libsndfile reads).")],
    model: ModelOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per file instead of a table.")] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Label (with confidence) or transcribe audio files with a packaged model, front end included."""
    from components.dataset import read_audio

    packaged = _packaged(model, params)
    schema = packaged.served.schema
    rows = [{"file": str(file)} | packaged.predict(read_audio(file, packaged.sample_rate)[0]).row(schema)
            for file in files]
    if as_json:
        for row in rows:
            print(json.dumps(row), flush=True)
        return
    table = Table(title=f"earshot predict · {model or 'champion'}", title_justify="left")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(table)


@app.command()
def stream(
    source: Annotated[str, typer.Argument(help="An audio file, or - for raw 16-bit little-endian mono PCM on stdin.")],
    model: ModelOption = None,
    rate: Annotated[int | None, typer.Option(help="Sample rate of the PCM on stdin (default: the model's).")] = None,
    chunk_ms: Annotated[float, typer.Option(help="Audio handed over at a time, as a live source would.")] = 100.0,
    hop_ms: Annotated[float, typer.Option(help="Keywords, sound events: how often the window moves.")] = 100.0,
    threshold: Annotated[float | None, typer.Option(
        help="Keywords, sound events: confidence an event needs (default: the model's gated operating point, "
             "else 0.8).")] = None,
    window_s: Annotated[float | None, typer.Option(help="Sound events: window length (keywords: the model's).")] = None,
    partials: Annotated[bool, typer.Option(help="Speech: also print running transcripts.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per event.")] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Listen to a long file or a live stream: timestamped keywords, sound events or transcripts as they happen."""
    from dataclasses import asdict

    from components.dataset import read_audio
    from components.live import Listening, chunks, listener, pcm_chunks

    packaged = _packaged(model, params)
    listening = listener(packaged, Listening(hop_ms / 1000, threshold, window_s, partials))
    size = max(round(chunk_ms / 1000 * (rate or packaged.sample_rate)), 1)
    audio = (pcm_chunks(sys.stdin.buffer, size, rate or packaged.sample_rate, packaged.sample_rate) if source == "-"
             else chunks(read_audio(Path(source), packaged.sample_rate)[0], size))
    for chunk in audio:
        for event in listening.push(chunk):
            _print_event(asdict(event), as_json)
    for event in listening.flush():
        _print_event(asdict(event), as_json)


def _print_event(event: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(event), flush=True)
        return
    confidence = "" if event["confidence"] is None else f"  {event['confidence']:.2f}"
    kind = "" if event["final"] else "  (partial)"
    console.print(f"{event['start_s']:8.2f} – {event['end_s']:8.2f} s  {event['text']}{confidence}{kind}",
                  highlight=False, soft_wrap=True)


@app.command()
def summary(params: ParamsOption = Path("params.yaml")) -> None:
    """Print what the last run produced: accuracy per domain, model sizes and latencies, where to look next."""
    console.print(summary_table(load_params(params)))


def summary_table(params: Params) -> Table:
    from components.runs import read_json
    from components.tracks import track_of

    track, reports = track_of(params), params.out.reports
    table = Table(title=f"earshot · {track.title}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for row in track.summary_rows(read_json(reports / "metrics.json"), read_json(reports / "export.json")):
        table.add_row(*row)
    table.add_row("MLflow run", read_json(params.out.model_dir / "run.json")["run_id"])
    table.add_row("MLflow UI", "earshot ui  → http://127.0.0.1:5000")
    return table


def main() -> None:
    """Entry point: run the app, turning expected failures into one line and exit code 1."""
    # The local Prefect server's telemetry would phone home (there is no network here) and races its own database
    # at start-up, printing a traceback; users can still turn it on.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # MLflow draws a progress bar for every champion download (a few KiB); the stage lines say enough.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Ctrl-C stops every command, even one started with SIGINT ignored, as a non-interactive shell starts a background
    # job (`earshot serve &`) and CI runners pass on: Python then installs no KeyboardInterrupt handler, so Prefect's
    # runner, which shuts down on KeyboardInterrupt, outlived Ctrl-C. `earshot worker` execs with it restored too.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        # An MLflow server that is down would otherwise surface as a many-line MlflowException.
        with reaching_store():
            app(standalone_mode=False)
    except EarshotError as err:
        if state["debug"]:
            raise
        err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except click.ClickException as usage:
        usage.show()
        sys.exit(usage.exit_code)
    except click.exceptions.Exit as stop:
        sys.exit(stop.exit_code)
    except (click.Abort, KeyboardInterrupt):  # click turns a Ctrl-C outside a prompt into Abort too
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - a user sees one line; --debug shows the traceback
        if state["debug"]:
            raise
        err_console.print(f"[red]error:[/red] {type(err).__name__}: {err} (rerun with --debug for the traceback)",
                          highlight=False, soft_wrap=True)
        sys.exit(1)

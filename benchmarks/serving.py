"""Benchmark: one 1 s clip through the packaged model, in process, through MLflow's pyfunc, and over HTTP from
`mlflow models serve --env-manager local` on loopback, measured in one run.

Issue 11 asks for the p95 latency of one 1 s clip through the local server. Run after `dvc repro` (or `make demo`):
`.venv/bin/python benchmarks/serving.py [--model models/kws/package] [--requests 200]`.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import soundfile as sf
from featurize_drop import PROJECT, save_results
from rich.console import Console
from speed import table

from components.acoustics import resample
from components.dataset import fit_length
from components.export import latency_ms
from components.serving import ARTIFACTS, PackagedModel
from components.speech import SPEECH_RATE, Speaker, speak

BIN = Path(sys.executable).parent


def spoken_clip(rate: int) -> np.ndarray:
    """One second of real (synthesized) speech at `rate`: what a keyword or speech model is sent."""
    return fit_length(resample(speak("turn on the light", Speaker("en-us")), SPEECH_RATE, rate), rate)


def http_latency_ms(url: str, payload: dict, runs: int) -> tuple[float, float]:
    body = json.dumps({"dataframe_split": payload}).encode()

    def post() -> None:
        request = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            answer.read()

    return latency_ms(post, runs)


def serve(model: Path, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with log.open("ab") as out:
        server = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", str(model), "--env-manager", "local",
                                   "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                  env=os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})  # uvicorn
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=5):
                return server, url
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                ending = log.read_text()[-2000:]
                raise SystemExit(f"mlflow models serve did not start; its log ends:\n{ending}") from None
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=PROJECT / "models/kws/package", help="a packaged model folder")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    if not (args.model / "MLmodel").is_file():
        raise SystemExit(f"{args.model}: no packaged model; run `dvc repro` (the export stage writes it) first")
    packaged = PackagedModel(args.model / ARTIFACTS)
    wave = spoken_clip(packaged.sample_rate)
    wav = io.BytesIO()
    sf.write(wav, wave, packaged.sample_rate, format="WAV", subtype="PCM_16")
    pyfunc = mlflow.pyfunc.load_model(str(args.model))
    frame = pd.DataFrame({"samples": [wave.tolist()]})
    figures = {"in process": latency_ms(lambda: packaged.predict(wave), args.requests),
               "MLflow pyfunc": latency_ms(lambda: pyfunc.predict(frame), args.requests)}
    with tempfile.TemporaryDirectory() as scratch:
        server, url = serve(args.model, Path(scratch) / "serve.log")
        try:
            figures["HTTP, samples as JSON"] = http_latency_ms(
                url, {"columns": ["samples"], "data": [[wave.tolist()]]}, args.requests)
            figures["HTTP, WAV file (base64)"] = http_latency_ms(
                url, {"columns": ["audio"], "data": [[base64.b64encode(wav.getvalue()).decode()]]}, args.requests)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    base = figures["in process"][0]
    Console().print(table(f"one 1 s clip, {packaged.track} model {args.model}, {args.requests} requests each",
                          ("path", "p50 ms", "p95 ms", "p50 / in process"),
                          [(name, f"{p50:.2f}", f"{p95:.2f}", f"{p50 / base:.1f}x")
                           for name, (p50, p95) in figures.items()]))
    save_results(PROJECT / "benchmarks/results.json", "serving", {
        "track": packaged.track, "requests": args.requests,
        **{name: {"p50_ms": p50, "p95_ms": p95} for name, (p50, p95) in figures.items()}})


if __name__ == "__main__":
    main()

"""`earshot serve` under a real Prefect API: it registers the three deployments and stops on Ctrl-C or SIGTERM by
itself, also when started as a background job, which inherits SIGINT ignored (how CI runners started it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
import yaml

from tests.conftest import read_api, tiny_settings

BIN = os.path.dirname(sys.executable)
WANTED = {"manual", "nightly", "new-data"}


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `cmd &` in a non-interactive shell does to the job


@pytest.mark.parametrize(("stop", "background"),
                         [(signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["ctrl-c", "ctrl-c-background-job", "sigterm"])
def test_earshot_serve_registers_the_deployments_and_stops_on_a_signal_by_itself(prefect_api, tmp_path, stop,
                                                                                  background):
    """Stopping is a clean shutdown (exit 0): the runner finishes and leaves the deployments as they are."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_settings(tmp_path)))
    start = datetime.now(UTC)
    server = subprocess.Popen([os.path.join(BIN, "earshot"), "serve", "--params", str(tmp_path / "params.yaml")],
                              cwd=tmp_path, env=os.environ | {"PREFECT_API_URL": prefect_api},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              preexec_fn=ignore_sigint if background else None)
    try:
        deadline = time.monotonic() + 120
        # Other tests may have registered the same names; only ones updated by this server count.
        while not WANTED <= {d.name for d in read_api("read_deployments") if d.updated and d.updated >= start}:
            assert server.poll() is None, server.stderr.read().decode()
            assert time.monotonic() < deadline, "earshot serve registered no deployments"
            time.sleep(1)
        server.send_signal(stop)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"earshot serve outlived {stop.name} by 60 s")
        assert server.returncode == 0, server.stderr.read().decode()[-2000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    served = {d.name: d for d in read_api("read_deployments") if d.name in WANTED}
    assert not any(d.paused for d in served.values())  # pause_on_shutdown=False: the nightly run still fires
    assert [s.schedule.cron for s in served["nightly"].schedules] == ["0 3 * * *"]

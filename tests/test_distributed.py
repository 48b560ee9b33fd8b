"""Data-parallel training with torch.distributed on CPU (gloo): two processes train like one, and only rank 0 reports.

Every rank augments the whole batch with the shared generator and keeps its share, so augmentation, initial weights
and batch order are those of one process. What still differs: BatchNorm normalises each rank's share by its own
statistics (SyncBatchNorm needs GPUs), dropout draws its masks per share, and sums run in another order. Those
perturb training like another seed would, so the two are compared where accuracy has settled: on a tone task where
it has not (pitches 20 % apart), two seeds of one process differ by up to 20 points.
"""

from __future__ import annotations

import json
import math
from functools import partial
from itertools import zip_longest

import mlflow
import pytest
import torch
import yaml
from typer.testing import CliRunner

from components import distributed
from components.config import Params
from components.dataset import KwsData, build_dataset
from components.distributed import World
from components.evaluate import evaluate_predictions, predict
from components.features import LogMel, featurize
from components.tracks.kws import track as kws
from components.train import train_model
from pipelines.cli import app
from tests.conftest import tiny_settings, write_tree
from tests.test_continuous import World as ToneWorld
from tests.test_continuous import speakers

WORDS = {"yes": 300.0, "no": 600.0, "up": 1200.0, "bed": 2400.0}


@pytest.mark.parametrize(("rows", "size"), [(7, 1), (7, 2), (8, 3), (1, 2)])
def test_the_ranks_shares_of_a_batch_are_the_batch_in_order(rows, size):
    batch = torch.arange(rows)
    shares = [World(rank, size).share(batch) for rank in range(size)]
    assert torch.equal(torch.cat(shares), batch)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


@pytest.fixture(scope="module")
def tone_task(tmp_path_factory):
    """Three tone words and `bed` as unknown, with speakers picked so the test split holds over 250 clips: one clip
    is 0.4 points of accuracy."""
    held_out = [*speakers("d", 20, "validation"), *speakers("d", 55, "testing")]
    # write_tree raises each speaker's pitch by its place in the list: every held-out speaker sits between two
    # training speakers, so the test asks the model to interpolate, never to extrapolate.
    order = [name for pair in zip_longest(speakers("d", 80, "training"), held_out) for name in pair if name]
    root = write_tree(tmp_path_factory.mktemp("tones"), WORDS, order)
    settings = tiny_settings(root.parent)
    settings["dataset"] = {"domains": {"lab": str(root)}, "words": ["yes", "no", "up"], "silence_percentage": 30.0,
                           "unknown_percentage": 30.0}
    settings["train"] |= {"epochs": 8, "batch_size": 32, "patience": 8, "threads": 1}
    params = Params.model_validate(settings)
    data = build_dataset(params.dataset, params.seed, 20, 20, progress=False)
    data.mels = featurize(data.float_waves(), LogMel(params.features, params.dataset.sample_rate))
    return params, data


def test_two_processes_reach_the_accuracy_of_one(tone_task):
    params, data = tone_task
    single = train_model(data, params)
    rank0, rank1 = distributed.launch(partial(train_model, data, params), 2)
    # Gradients averaged every step, BatchNorm's statistics handed round before every score: one model on both ranks.
    for mine, theirs in zip(rank0.model.state_dict().values(), rank1.model.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)
    test = data.split("testing")
    assert len(test.labels) > 250
    one, two = (evaluate_predictions(predict(r.model, test.mels), test).accuracy for r in (single, rank0))
    assert abs(two - one) <= 0.01, f"test accuracy: one process {one:.2%}, two processes {two:.2%}"
    # The curves are the whole batch's (summed over the ranks), not rank 0's share of it.
    assert rank0.history[0]["train_loss"] == pytest.approx(single.history[0]["train_loss"], rel=0.1)
    assert [m["epoch"] for m in rank0.history] == [m["epoch"] for m in single.history]


def test_earshot_train_nproc_2_logs_one_run_from_rank_0(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)  # a sqlite store keeps its artifacts under the working directory
    world = ToneWorld(tmp_path)
    kws.featurize(world.params)
    clips = len(KwsData.load(world.params.out.features).split("training").labels)
    # The last batch is one clip: rank 1's share of it is empty, and its gradient must count for nothing.
    epochs = 3
    world.settings["train"] |= {"epochs": epochs, "batch_size": clips - 1}
    world.params_path.write_text(yaml.safe_dump(world.settings))
    done = CliRunner().invoke(app, ["train", "--nproc", "2", "--params", str(world.params_path)])
    assert done.exit_code == 0, done.output
    # The processes write to the terminal (file descriptor 1) themselves: rank 0's lines alone are there.
    assert len([line for line in capfd.readouterr().out.splitlines() if line.startswith("epoch")]) == epochs
    client = mlflow.MlflowClient(world.params.mlflow.uri)
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.run_id == json.loads((world.params.out.model_dir / "run.json").read_text())["run_id"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == list(range(epochs))
    assert all(math.isfinite(m.value) for m in client.get_metric_history(run.info.run_id, "train_loss"))
    assert (world.params.out.model_dir / "model.pt").is_file()
    assert not (world.params.out.model_dir / "checkpoint.pt").exists()

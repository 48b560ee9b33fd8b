from dataclasses import replace

import pytest
import torch

from components.config import Dataset, Model, Params
from components.dataset import SPLITS, build_dataset
from components.evaluate import evaluate_predictions, predict
from components.features import LogMel, featurize, frame_count
from components.model import KeywordSpotter, count_parameters, load_model, save_model
from components.train import distillation_loss, teacher_params, train_model
from tests.conftest import tiny_settings, write_tree

WORDS = {"yes": 300.0, "no": 600.0, "up": 1200.0, "bed": 2400.0}
SPEAKERS = [f"{i:08x}" for i in range(0x2000, 0x2000 + 30)]


@pytest.fixture(scope="module")
def tone_task(tmp_path_factory):
    root = write_tree(tmp_path_factory.mktemp("sc"), WORDS, SPEAKERS)
    settings = tiny_settings(root.parent)
    settings["dataset"] = {"domains": {"lab": str(root)}, "words": ["yes", "no", "up"]}
    settings["train"] |= {"epochs": 6, "batch_size": 16, "patience": 6}
    params = Params.model_validate(settings)
    data = build_dataset(params.dataset, params.seed, 20, 20, progress=False)
    data.mels = featurize(data.float_waves(), LogMel(params.features, 16000))
    return params, data


def test_default_model_is_a_small_keyword_spotter():
    params = Params.model_validate(tiny_settings(None) | {"model": {}})
    model = KeywordSpotter(40, 12, params.model)
    assert count_parameters(model) < 400_000  # under the gate's 512 KiB once INT8
    frames = frame_count(params.features, 16000, 16000)
    assert LogMel(params.features, 16000)(torch.zeros(2, 16000)).shape == (2, 40, frames)
    assert model(torch.randn(3, 40, frames)).shape == (3, 12)


def test_training_learns_a_separable_task_and_reports_each_epoch(tone_task):
    params, data = tone_task
    seen = []
    result = train_model(data, params, on_epoch=seen.append)
    assert [m["epoch"] for m in seen] == list(range(len(result.history)))
    assert result.best_val_accuracy == max(m["val_accuracy"] for m in result.history)
    test = data.split("testing")
    evaluation = evaluate_predictions(predict(result.model, test.mels), test)
    assert evaluation.accuracy > 0.8  # chance is 1/5
    assert sum(map(sum, evaluation.confusion)) == evaluation.clips == len(test.labels)


def test_interrupted_training_resumes_to_the_same_result(tone_task, tmp_path):
    params, data = tone_task
    straight = train_model(data, params)

    class Crash(Exception):
        pass

    def crash_after_two(metrics):
        if metrics["epoch"] == 1:
            raise Crash

    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(Crash):
        train_model(data, params, checkpoint=checkpoint, on_epoch=crash_after_two)
    assert checkpoint.is_file()
    resumed_epochs = []
    resumed = train_model(data, params, checkpoint=checkpoint, on_epoch=resumed_epochs.append)
    # The crash came after epoch 1 was reported but before it was checkpointed: it runs again, nothing is skipped.
    assert [m["epoch"] for m in resumed_epochs] == list(range(1, len(straight.history)))
    assert resumed.history == straight.history
    assert not checkpoint.exists()  # a finished run leaves nothing to resume


def test_saved_model_rebuilds_with_its_card(tone_task, tmp_path):
    params, data = tone_task
    model = KeywordSpotter(params.features.n_mels, len(data.label_names), params.model).eval()
    card = {"label_names": data.label_names, "features": params.features.model_dump(),
            "model": params.model.model_dump()}
    save_model(model, tmp_path / "m.pt", card)
    loaded, loaded_card = load_model(tmp_path / "m.pt")
    mels = data.mels[:4]
    assert torch.allclose(loaded(mels), model(mels)) and loaded_card == card
    assert Dataset  # the card's labels follow the Dataset protocol order


def test_distillation_loss_is_zero_only_when_the_student_matches_the_teacher():
    teacher = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    assert distillation_loss(teacher, teacher, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(teacher.flip(1), teacher, 4.0).item() > 0.1


def test_a_distilled_student_learns_from_its_teacher_not_the_labels(tone_task):
    params, data = tone_task
    teacher = train_model(data, params).model
    # Training labels drawn at random: what a student learns of the task it can only have learnt from the teacher.
    training = data.splits == SPLITS.index("training")
    noise = torch.randint(len(data.label_names), (int(training.sum()),), generator=torch.Generator().manual_seed(0))
    scrambled = replace(data, labels=data.labels.masked_scatter(training, noise))

    def with_weight(weight: float) -> Params:
        distill = params.train.distill.model_copy(update={"weight": weight})
        return params.model_copy(update={"train": params.train.model_copy(update={"distill": distill})})

    test = data.split("testing")
    taught = predict(train_model(scrambled, with_weight(1.0), teacher=teacher).model, test.mels)
    untaught = predict(train_model(scrambled, with_weight(0.0), teacher=teacher).model, test.mels)
    taught_accuracy, untaught_accuracy = ((p == test.labels).float().mean() for p in (taught, untaught))
    assert taught_accuracy > 0.7 and untaught_accuracy < taught_accuracy - 0.3  # chance is 1/5


def test_teacher_params_swap_in_the_teacher_architecture(tone_task):
    params, _ = tone_task
    distill = params.train.distill.model_copy(update={"teacher": Model(channels=8, blocks=1)})
    with_teacher = params.model_copy(update={"train": params.train.model_copy(update={"distill": distill})})
    taught = teacher_params(with_teacher)
    assert taught.model == Model(channels=8, blocks=1) and taught.train.distill.teacher is None
    assert taught.train.epochs == params.train.epochs and taught.features == params.features

from pathlib import Path

import pytest
import yaml

from components.config import ConfigError, load_params
from tests.conftest import PROJECT


def write(tmp_path: Path, settings: object) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(settings) if not isinstance(settings, str) else settings)
    return path


def test_shipped_params_load_with_three_domains_and_the_12_class_protocol():
    params = load_params(PROJECT / "params.yaml")
    assert len(params.synthesis.domains) >= 3
    assert params.dataset.labels[-2:] == ["_silence_", "_unknown_"]
    assert len(params.dataset.labels) == 12
    assert set(params.dataset.domains) == set(params.synthesis.domains)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s["train"].update(epochs="many"), "train.epochs"),
        (lambda s: s["train"].update(epochz=3), "train.epochz"),
        (lambda s: s["augment"].update(noise_probability=1.5), "augment.noise_probability"),
        (lambda s: s["synthesis"]["domains"]["studio_us"].update(snr_db=[40, 30]), "snr_db: low end"),
        (lambda s: s["dataset"].update(words=[True, "up"]), "quote it"),
        (lambda s: (s.update(track="esc"), s.pop("esc")), "track esc needs an `esc` section"),
        (lambda s: s["esc"].update(layout="fsd50k"), "esc.layout"),
        (lambda s: s["esc"]["corpus"].update(sample_rate=4000), "esc.corpus.sample_rate"),
        (lambda s: s["esc"]["corpus"]["domains"]["car_phone"].update(band_hz=[3400, 300]), "band_hz: low end"),
    ],
)
def test_bad_params_give_one_line_naming_file_and_key(tmp_path, change, expected):
    settings = yaml.safe_load((PROJECT / "params.yaml").read_text())
    change(settings)
    path = write(tmp_path, settings)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    assert expected in message


def test_unparseable_and_missing_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(write(tmp_path, "seed: [1, 2\n"))
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "nope.yaml")

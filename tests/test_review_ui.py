"""The MLflow UI as a reviewer sees it: a real `mlflow server` on a store the continuous-training loop filled, driven
by headless Chromium through Selenium.

The champion's training run must draw its curves and preview its review artifacts, and the registered model must show
which version is champion and which previous. Every page is saved under test-artifacts/, which CI uploads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from components.registry import CHAMPION, PREVIOUS
from components.tracking import tracking_uri
from tests.conftest import PROJECT, free_port, healthy, start_mlflow_server, stop_server, wait_until
from tests.test_continuous import World

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# The closed network refuses Chromium's background calls (updates, sync, QUIC probes); without these flags they stall
# page loads. Chromium refuses to run as root (as in CI containers) with its sandbox on.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1600,1000")
SCREENSHOTS = PROJECT / "test-artifacts"
# MLflow's own UI tests address the run page's chart cards by this test id.
CHART_CARD = '[data-testid="experiment-view-compare-runs-card"]'
# The UI is a large single-page app and the machine runs other test files beside this one.
PATIENCE = 60

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason=f"headless Chromium needs {CHROMIUM} and {CHROMEDRIVER} (Debian: apt-get install chromium chromium-driver;"
           " .ci/run installs them)")


@dataclass(frozen=True)
class Store:
    """The MLflow store after a baseline and a promoted drop, and the ids the UI's pages are addressed by."""

    root: Path
    uri: str
    client: MlflowClient
    model: str
    aliases: dict[str, str]
    experiment_id: str
    run_id: str


@pytest.fixture(scope="module")
def store(prefect_api, tmp_path_factory) -> Store:
    """The real loop, twice: version 1 trained on lab_a, then version 2 with lab_b's drop takes over as champion,
    so the gate has a champion to compare the challenger with and the registry has both aliases."""
    root = tmp_path_factory.mktemp("review_ui")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # MLflow puts a sqlite store's artifacts under the working directory
        # An earlier module on this worker may have left its store there (mlflow.set_tracking_uri exports it), and
        # the loop would take that store's champion for this one's.
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        # One torch thread: beside another test file a second one spins more than it trains (this takes half the
        # time). That model ends near 82% on lab_b, close to the gate's 80% bar, so the bar drops to 60% here: this
        # file shows verdicts, test_continuous checks them.
        world = World(root, min_new_domain_accuracy=0.6)
        world.settings["train"]["threads"] = 1
        world.params_path.write_text(yaml.safe_dump(world.settings, sort_keys=False))
        world.retrain()
        promoted = world.retrain(world.drop("lab_b", 1600.0), "lab_b")
        uri = tracking_uri(world.params.mlflow)
    assert promoted["outcome"] == "promoted", promoted["gate"]
    run = world.client.get_run(promoted["run_id"])
    return Store(root=root, uri=uri, client=world.client, model=world.name, aliases=world.aliases(),
                 experiment_id=run.info.experiment_id, run_id=run.info.run_id)


@pytest.fixture(scope="module")
def server(store) -> Iterator[str]:
    """`mlflow server` on loopback over the store; yields its base URL once /health answers."""
    port = free_port()
    url, log = f"http://127.0.0.1:{port}", store.root / "mlflow-server.log"
    process = start_mlflow_server(store.uri, port, store.root, log,
                                  "--default-artifact-root", str(store.root / "mlruns"))
    try:
        wait_until(lambda: healthy(url), process, "mlflow server", log)
        yield url
    finally:
        stop_server(process)


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[WebDriver]:
    """Debian's Chromium and chromedriver with a fresh profile, 1600x1000."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    # With the driver's path given Selenium Manager is not consulted; offline, it could not download one anyway.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SE_OFFLINE", "true")
        driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def patiently(browser: WebDriver) -> WebDriverWait:
    # React re-renders replace the elements a check holds; the next poll finds the new ones.
    return WebDriverWait(browser, PATIENCE, ignored_exceptions=(StaleElementReferenceException,))


def load(browser: WebDriver, url: str) -> None:
    """A full page load: the UI, moved between pages by their hash route alone, can end on "Something went wrong"."""
    browser.get("about:blank")
    browser.get(url)


def screenshot(browser: WebDriver, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def chart_points(browser: WebDriver, metric: str) -> int:
    """Markers plotly drew in the chart card titled `metric`: one per logged step."""
    cards = [card for card in browser.find_elements(By.CSS_SELECTOR, CHART_CARD)
             if card.find_elements(By.CSS_SELECTOR, f'[title="{metric}"]')]
    return sum(len(card.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .scatterlayer path.point")) for card in cards)


def test_run_page_draws_the_training_curves(store, server, browser):
    load(browser, f"{server}/#/experiments/{store.experiment_id}/runs/{store.run_id}/model-metrics")
    # Charts draw only once scrolled into view; the filter (a regular expression) brings the curves to the top. Typed
    # before the first chart card is there, the text can be lost when the page re-renders with the run's metrics.
    patiently(browser).until(lambda b: b.find_element(By.CSS_SELECTOR, CHART_CARD))
    search = browser.find_element(By.CSS_SELECTOR, 'input[role="searchbox"]')
    search.send_keys("train_loss|val_accuracy")
    try:
        for metric in ("train_loss", "val_accuracy"):
            drawn = patiently(browser).until(lambda b, metric=metric: chart_points(b, metric))
            assert drawn == len(store.client.get_metric_history(store.run_id, metric)), metric
    finally:
        screenshot(browser, "mlflow-run-charts")


def image_shown(browser: WebDriver, path: str) -> bool:
    """The preview decoded as a picture: the server found the file and served its bytes to the page."""
    return browser.execute_script(
        "const img = document.querySelector(`.mlflow-artifact-view img[alt='${arguments[0]}']`);"
        "return img !== null && img.complete && img.naturalWidth > 0;", path)


def gate_report_shown(browser: WebDriver, path: str) -> bool:
    """The gate report rendered as markdown (its title a heading, not `## ...` text), saying the champion passed."""
    return bool(browser.find_elements(
        By.XPATH, '//*[contains(@class, "mlflow-artifact-view")]//*[self::h1 or self::h2 or self::h3]'
                  '[contains(., "Gate PASSED")]'))


def data_docs_shown(browser: WebDriver, path: str) -> bool:
    """Great Expectations' data docs inside the preview's sandboxed frame."""
    frames = browser.find_elements(By.CSS_SELECTOR, ".mlflow-artifact-view iframe")
    if not frames:
        return False
    browser.switch_to.frame(frames[0])
    try:
        # WebDriver's title is the top-level page's; the script runs in the frame's document.
        return "Data Docs" in browser.execute_script("return document.title")
    finally:
        browser.switch_to.default_content()


@pytest.mark.parametrize(("path", "shown"), [
    pytest.param("gate/gate.md", gate_report_shown, id="gate-report"),
    pytest.param("evaluation/evaluation.png", image_shown, id="confusion-matrix"),
    pytest.param("gate/domains.png", image_shown, id="per-domain-chart"),
    pytest.param("data_docs/index.html", data_docs_shown, id="data-docs"),
])
def test_run_page_previews_the_review_artifacts(store, server, browser, path: str,
                                                 shown: Callable[[WebDriver, str], bool]):
    # The artifact route opens the file: its folder unfolds in the tree and the preview pane shows it.
    load(browser, f"{server}/#/experiments/{store.experiment_id}/runs/{store.run_id}/artifacts/{path}")
    try:
        patiently(browser).until(lambda b: b.find_elements(
            By.CSS_SELECTOR, f'[data-testid="artifact-tree-node"][artifact-name="{Path(path).name}"]'),
            f"{path} not listed among the run's artifacts")
        assert patiently(browser).until(lambda b: shown(b, path), f"{path} listed but its preview not shown")
    finally:
        screenshot(browser, f"mlflow-run-{Path(path).with_suffix('').as_posix().replace('/', '-')}")


def aliases_shown(browser: WebDriver) -> dict[str, str]:
    """Alias -> version as the versions table shows them, cells matched to the `Aliases` and `Version` headers."""
    return browser.execute_script("""
        const headers = [...document.querySelectorAll('[role="columnheader"]')].map(h => h.textContent.trim());
        const [aliases, version] = [headers.indexOf('Aliases'), headers.indexOf('Version')];
        const shown = {};
        for (const row of document.querySelectorAll('[role="row"]')) {
            const cells = row.querySelectorAll(':scope > [role="cell"]');
            if (aliases < 0 || version < 0 || cells.length !== headers.length) continue;
            for (const tag of cells[aliases].querySelectorAll('[title]')) {
                shown[tag.title] = cells[version].textContent.trim().replace(/^Version /, '');
            }
        }
        return shown;""")


def test_model_page_shows_the_champion_and_previous_versions(store, server, browser):
    assert set(store.aliases) == {CHAMPION, PREVIOUS} and store.aliases[CHAMPION] != store.aliases[PREVIOUS]
    assert store.client.get_model_version(store.model, store.aliases[CHAMPION]).run_id == store.run_id
    load(browser, f"{server}/#/models/{store.model}")
    try:
        shown = patiently(browser).until(aliases_shown, "no version of the model shows an alias")
        assert shown == store.aliases
    finally:
        screenshot(browser, "mlflow-model")

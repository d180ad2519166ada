"""The web page in a real browser: headless Debian Chromium, driven by selenium through
chromium-driver, against a real server subprocess. A scientist's path: upload the bundled
sample image on the submit page, watch the job complete on its page, see the preview, and
download the VOTable, which must parse.

With ``OTF_SCREENSHOTS=<folder>`` set, the test also saves the screenshots of the README
(job list, job page, submit page, a model page) into that folder.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from astropy.io.votable import parse_single_table

from tests.conftest import ServerProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SAMPLE = Path(__file__).resolve().parents[2] / "src" / "astro_otf" / "data" / "sample.fits"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file() or not CHROMEDRIVER.is_file(),
    reason="needs Debian's chromium and chromium-driver (make deb-test installs them)",
)


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("otf-browser") / "data", None)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("browser-downloads")


@pytest.fixture(scope="module")
def browser(downloads: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests may run as root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1366,900",
        "--lang=en",
    ):
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        },
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except Exception:  # an element not there yet, a page being replaced
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        time.sleep(0.1)


def screenshot(driver: Any, name: str, height: int | None = None) -> None:
    folder = os.environ.get("OTF_SCREENSHOTS")
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    if height is not None:
        driver.set_window_size(1366, height)
        time.sleep(0.3)
    driver.save_screenshot(str(Path(folder) / f"web-{name}.png"))
    if height is not None:
        driver.set_window_size(1366, 900)


def script_errors(driver: Any) -> list[str]:
    """The page's JavaScript errors and CSP violations (not failed resource loads)."""
    out = []
    for entry in driver.get_log("browser"):
        text = entry.get("message", "")
        if entry.get("level") == "SEVERE" and "Failed to load resource" not in text:
            out.append(text)
    return out


def test_submit_watch_preview_and_download(
    web_server: ServerProcess, browser: Any, downloads: Path
) -> None:
    from selenium.webdriver.common.by import By

    url = web_server.url
    # The submit page: the parameter form is built from /models/{id}.
    browser.get(f"{url}/ui/submit")
    wait_for(
        lambda: "Loading" not in browser.find_element(By.ID, "params-status").text,
        what="the model's parameters",
    )
    assert browser.find_element(By.ID, "model").get_attribute("value") == "sep"
    # sep declares its own parameters; each gets a labelled input.
    inputs = browser.find_elements(By.CSS_SELECTOR, "#params input, #params select")
    assert inputs, "no parameter inputs were built"
    for element in inputs:
        label = browser.find_elements(
            By.CSS_SELECTOR, f'label[for="{element.get_attribute("id")}"]'
        )
        assert label, element.get_attribute("id")
    # The native region parameters are offered.
    assert browser.find_element(By.ID, "p-ra").get_attribute("type") == "number"
    browser.find_element(By.ID, "image").send_keys(str(SAMPLE))
    browser.find_element(By.ID, "runid").send_keys("browser-e2e")
    screenshot(browser, "submit", height=1300)
    browser.find_element(By.ID, "submit-button").click()

    # The job page: it follows the job to COMPLETED (the page reloads on its own).
    wait_for(lambda: "/ui/jobs/" in browser.current_url, what="the job page")
    job_id = browser.current_url.rstrip("/").rsplit("/", 1)[1]
    wait_for(
        lambda: browser.find_element(By.ID, "phase").text == "COMPLETED",
        timeout=60,
        what="COMPLETED on the job page",
    )
    doc = httpx.get(
        f"{url}/jobs/{job_id}", headers={"Accept": "application/json"}, timeout=10
    ).json()
    assert doc["phase"] == "COMPLETED"
    assert doc["runId"] == "browser-e2e"
    uploads = httpx.get(f"{url}/uploads", headers={"Accept": "application/json"}, timeout=10)
    if uploads.status_code == 200:  # the page stored the image once, then named it
        stored = [u for u in uploads.json()["uploads"] if u["filename"] == "sample.fits"]
        assert stored, uploads.text
        assert doc["jobInfo"]["input"]["upload_id"] == stored[0]["upload_id"]

    # The preview at full size: the PNG was drawn and loaded.
    preview = browser.find_element(By.ID, "preview")
    width = wait_for(
        lambda: browser.execute_script(
            "var i = arguments[0]; return i.complete && i.naturalWidth;", preview
        ),
        what="the preview image",
    )
    assert width > 100
    # The log tail and the provenance graph are shown.
    wait_for(lambda: "Loading" not in browser.find_element(By.ID, "log").text, what="the log")
    provenance = browser.find_element(By.ID, "provenance")
    wait_for(
        lambda: browser.execute_script(
            "var i = arguments[0]; return i.complete && i.naturalWidth;", provenance
        ),
        what="the provenance graph",
    )
    screenshot(browser, "job", height=2400)

    # Download the VOTable through its link; it parses and holds the sources.
    link = browser.find_element(By.CSS_SELECTOR, 'a[data-result="result"]')
    browser.execute_script("arguments[0].scrollIntoView();", link)
    link.click()
    saved = wait_for(
        lambda: [
            p
            for p in downloads.iterdir()
            if p.name.startswith(job_id) and not p.name.endswith(".crdownload")
        ],
        what="the downloaded VOTable",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = parse_single_table(str(saved[0]))
    assert len(table.array) > 0
    served = httpx.get(f"{url}/jobs/{job_id}/results/result", timeout=10)
    assert saved[0].read_bytes() == served.content
    assert script_errors(browser) == []

    # Run it again with another threshold: only the changed parameter is sent.
    thresh = browser.find_element(By.ID, "rr-thresh")
    browser.execute_script("arguments[0].scrollIntoView();", thresh)
    thresh.clear()
    thresh.send_keys("6")
    browser.find_element(By.CSS_SELECTOR, "#rerun button[type=submit]").click()
    wait_for(
        lambda: "/ui/jobs/" in browser.current_url and job_id not in browser.current_url,
        what="the new job's page",
    )
    again = browser.current_url.rstrip("/").rsplit("/", 1)[1]
    wait_for(
        lambda: browser.find_element(By.ID, "phase").text == "COMPLETED",
        timeout=60,
        what="the rerun to complete",
    )
    redo = httpx.get(
        f"{url}/jobs/{again}", headers={"Accept": "application/json"}, timeout=10
    ).json()
    assert redo["parameters"]["thresh"] == "6"
    assert redo["parameters"]["model"] == "sep"
    assert redo["runId"] == "browser-e2e"
    assert "csrf_token" not in redo["parameters"]

    # For the screenshot: jobs in other phases beside it (an error, an abort, one running).
    running = stage_other_phases(url) if os.environ.get("OTF_SCREENSHOTS") else None

    # The job list shows it, completed, with its thumbnail and its image's name.
    browser.get(f"{url}/")
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{job_id}"]')
    assert "COMPLETED" in row.text
    assert "browser-e2e" in row.text
    assert "sample.fits" in row.text
    thumb = row.find_element(By.CSS_SELECTOR, "td.thumb img")
    wait_for(
        lambda: browser.execute_script(
            "var i = arguments[0]; return i.complete && i.naturalWidth;", thumb
        ),
        what="the thumbnail",
    )
    wait_for(
        lambda: (
            browser.find_element(By.CSS_SELECTOR, "[data-live-state]").text == "Live updates: on."
        ),
        what="the event stream",
    )
    if running is not None:
        wait_for(
            lambda: browser.find_elements(
                By.CSS_SELECTOR, f'tr[data-job="{running}"] [data-progress] progress'
            ),
            what="the running job's progress",
        )
    screenshot(browser, "jobs")
    if running is not None:
        httpx.post(f"{url}/jobs/{running}/phase", data={"PHASE": "ABORT"}, timeout=10)
    assert script_errors(browser) == []


def stage_other_phases(url: str) -> str:
    """Jobs in ERROR, ABORTED and EXECUTING (returned: abort it when done)."""
    nan = SAMPLE.parents[3] / "tests" / "data" / "all_nan.fits"
    failed = httpx.post(
        f"{url}/jobs",
        data={"PHASE": "RUN", "RUNID": "blank-field"},
        files={"IMAGE": ("all_nan.fits", nan.read_bytes(), "application/fits")},
        timeout=30,
    )
    stopped = httpx.post(
        f"{url}/jobs", data={"MODEL": "sleep", "DURATION": "60", "RUNID": "stopped"}, timeout=10
    )
    stopped_id = stopped.headers["location"].rsplit("/", 1)[1]
    httpx.post(f"{url}/jobs/{stopped_id}/phase", data={"PHASE": "ABORT"}, timeout=10)
    busy = httpx.post(
        f"{url}/jobs",
        data={"MODEL": "sleep", "DURATION": "60", "PHASE": "RUN", "RUNID": "long-run"},
        timeout=10,
    )
    busy_id = busy.headers["location"].rsplit("/", 1)[1]
    for job in (failed.headers["location"], f"{url}/jobs/{busy_id}"):
        httpx.get(job, params={"WAIT": "10", "PHASE": "QUEUED"}, timeout=30)
    time.sleep(1.5)  # some progress to show
    return str(busy_id)


def test_job_list_updates_live(web_server: ServerProcess, browser: Any) -> None:
    """A job created by another client appears in an open list, and its phase changes
    there, through the event stream (no reload by the test)."""
    from selenium.webdriver.common.by import By

    url = web_server.url
    browser.get(f"{url}/")
    wait_for(
        lambda: (
            browser.find_element(By.CSS_SELECTOR, "[data-live-state]").text == "Live updates: on."
        ),
        what="the event stream",
    )
    created = httpx.post(
        f"{url}/jobs",
        data={"MODEL": "sleep", "DURATION": "1", "PHASE": "RUN", "RUNID": "live-one"},
        timeout=10,
    )
    assert created.status_code == 303
    job_id = created.headers["location"].rsplit("/", 1)[1]
    # Faster than the 10 s polling the page falls back to without the stream.
    wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, f'tr[data-job="{job_id}"]'),
        timeout=8,
        what="the new job's row",
    )
    wait_for(
        lambda: (
            browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{job_id}"]').get_attribute(
                "data-phase"
            )
            == "COMPLETED"
        ),
        timeout=30,
        what="the row to show COMPLETED",
    )


def test_model_page_and_keyboard(web_server: ServerProcess, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{web_server.url}/ui/models/radio-detector")
    card = browser.find_element(By.CSS_SELECTOR, ".model-card .markdown")
    assert "Model card" in card.text
    assert card.find_elements(By.TAG_NAME, "table"), "the card's tables are rendered"
    params = browser.find_element(By.CSS_SELECTOR, "section[aria-labelledby=h-own] table")
    assert "THRESHOLD" in params.text
    screenshot(browser, "model")
    # The first Tab reaches the skip link, which is shown when focused.
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    active = browser.switch_to.active_element
    assert active.get_attribute("class") == "skip"
    assert script_errors(browser) == []


def test_docs_render_offline(web_server: ServerProcess, browser: Any) -> None:
    """Swagger UI starts from the service's own files and lists the UWS operations."""
    from selenium.webdriver.common.by import By

    browser.get(f"{web_server.url}/docs")
    title = wait_for(
        lambda: browser.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text,
        what="Swagger UI",
    )
    assert "astro-otf" in title
    wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path[data-path='/jobs']"),
        what="the /jobs operations",
    )
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(function (e) { return e.name; });"
    )
    assert loaded and all(name.startswith(web_server.url) for name in loaded), loaded
    assert script_errors(browser) == []

"""The paper build and the HTML reports, looked at in a real headless Chromium."""

import html
import json
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CELLS, snakemake_cmd
from tunnelscope.figures.captions import FIGURES, item_caption

pytestmark = pytest.mark.integration

# A sentence of a figure caption (captions.FIGURES): the report and the page both show it.
SHARED_CAPTION = FIGURES["curves_by_variable"].rsplit(". ", 1)[1]


@pytest.fixture(scope="module")
def chromium():
    """Debian's chromium and chromium-driver, installed with apt-get when absent."""
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        if os.geteuid() != 0:
            pytest.fail("chromium / chromium-driver are missing and this user cannot apt-get install them")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]):
            result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            assert result.returncode == 0, result.stderr[-2000:]
    return shutil.which("chromium")


def _browse(chromium, page, tmp_path, *mode):
    profile = tmp_path / f"chrome-{mode[0].strip('-').split('=')[0]}"
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,2400",
        "--allow-file-access-from-files",
        "--virtual-time-budget=5000",
        *mode,
        f"file://{page}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


IMAGE_CHECK = """
<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 0).length;
  document.body.setAttribute('data-images', imgs.length + '/' + ok);
});
</script>
"""


def test_paper_outputs_exist(study):
    paper = study / "out/paper"
    for name in ("curves_by_variable", "shap_slopes", "strength_histogram", "layer_stats"):
        assert (paper / f"{name}.png").stat().st_size > 5000 and (paper / f"{name}.pdf").stat().st_size > 1000
    for name in ("id_accuracy", "ood_accuracy", "ood_retained", "pearson", "alignment", "level_means", "effect_sizes"):
        assert "\\begin{tabular}" in (paper / "tables" / f"{name}.tex").read_text()
        assert f"tables/{name}.csv" in (paper / "index.html").read_text()
    provenance = json.loads((paper / "provenance.json").read_text())
    assert "vggm11" in {cell["arch"] for cell in provenance["cells"]}
    source = provenance["source"]  # this checkout's commit (a wheel: "not a git checkout")
    assert source == "not a git checkout" or re.fullmatch(r"[0-9a-f]{40}", source["commit"]), source
    assert sum(len(d["cells"]) for d in provenance["devices"]) == len(provenance["cells"])
    assert {d["device"] for d in provenance["devices"]} == {"cpu"}
    assert any(line.startswith("tunnelscope==") for line in provenance["installed"])
    assert SHARED_CAPTION in (paper / "index.html").read_text()


def test_paper_page_renders_every_figure(study, chromium, tmp_path):
    page = study / "out/paper/index.html"
    probe = page.with_name("index_probe.html")
    probe.write_text(page.read_text().replace("</body>", IMAGE_CHECK + "</body>"))
    dom = _browse(chromium, probe, tmp_path, "--dump-dom")
    total, loaded = map(int, dom.split('data-images="')[1].split('"')[0].split("/"))
    # overview, variables, SHAP, strength, layer statistics, best layers, 2 cell figures, 2 t-SNE
    # figures, zero-shot (toy-blur is a shifted copy of the ID set)
    assert total == 11 and loaded == total
    shot = tmp_path / "page.png"
    _browse(chromium, page, tmp_path, f"--screenshot={shot}")
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10  # not blank


def _report_images(report, chromium):
    """Open every figure of a Snakemake report through its UI; (category, natural, shown) widths."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    options.binary_location = chromium
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.implicitly_wait(5)
    images = (
        "return Array.from(document.images).filter(i => !i.src.startsWith('data:image/svg'))"
        ".map(i => [i.complete ? i.naturalWidth : 0, i.getBoundingClientRect().width])"
    )
    seen = []
    try:
        for category in ("Overview", "Cells", "Variables", "Analysis", "Representations"):
            driver.get(f"file://{report}")
            driver.find_element(By.LINK_TEXT, category).click()
            # The category's list renders after the click; wait for it rather than a fixed pause.
            WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "a[iconname=eye]"))
            for i in range(len(driver.find_elements(By.CSS_SELECTOR, "a[iconname=eye]"))):
                driver.find_elements(By.CSS_SELECTOR, "a[iconname=eye]")[i].click()
                shown = WebDriverWait(driver, 20).until(
                    lambda d: [s for s in d.execute_script(images) if s[0] > 0] or None
                )
                seen += [(category, natural, width) for natural, width in shown]
        driver.save_screenshot(str(report.with_suffix(".png")))
    finally:
        driver.quit()
    return seen


@pytest.fixture(scope="module")
def report(study, tmp_path_factory):
    """The study's Snakemake report, built once for the tests below."""
    report = tmp_path_factory.mktemp("report") / "report.html"
    result = subprocess.run(snakemake_cmd(study, "--report", str(report)), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return report


def test_the_page_shows_everything_the_report_shows(study, report):
    """The static page is kept: it shows every file the report embeds (figures and tables), with
    the same captions where the report's are shared (captions.ITEMS)."""
    page = (study / "out/paper/index.html").read_text()
    outputs = {path.name for path in (study / "out").rglob("*")}  # not the report's own logo
    embedded = sorted(name for name in re.findall(r"filename=([^;\"]+);base64,", report.read_text()) if name in outputs)
    shown = Counter(Path(link).name for link in re.findall(r"(?:src|href)='([^']+)'", page))
    # the page may show more (the SHAP slopes table beside its figure), never less
    assert len(embedded) == 21 and not Counter(embedded) - shown, (embedded, shown)
    for cell in CELLS:  # the captions the report's caption files render, escaped as the page writes them
        for item in (f"cells/{cell}/figure.png", f"cells/{cell}/tsne.png"):
            assert html.escape(item_caption(item)) in page, item


def test_snakemake_report_renders_every_figure(report, chromium):
    text = report.read_text()
    assert "SHAP slopes per variable" in text
    assert "Laid out like the paper" in text and "Table 11" in text  # the paper tables, with their captions
    assert SHARED_CAPTION in text
    seen = _report_images(report, chromium)
    # overview + 2 cell figures + 2 t-SNE figures + variables + SHAP + strength + layer statistics + best layers
    assert len(seen) == 10, seen
    assert all(natural > 0 and width > 0 for _, natural, width in seen), seen
    pixels = np.asarray(Image.open(report.with_suffix(".png")).convert("L"), dtype=float)
    assert pixels.std() > 10  # not blank

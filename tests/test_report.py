"""The paper build and the HTML reports, looked at in a real headless Chromium."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO


pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def chromium():
    path = shutil.which("chromium")
    if path is None:
        if os.geteuid() != 0:
            pytest.fail("chromium is missing and this user cannot apt-get install it")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            assert result.returncode == 0, result.stderr[-2000:]
        path = shutil.which("chromium")
    return path


def _browse(chromium, page, tmp_path, *mode):
    profile = tmp_path / f"chrome-{mode[0].strip('-').split('=')[0]}"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--window-size=1280,2400",
           "--allow-file-access-from-files", "--virtual-time-budget=5000", *mode, f"file://{page}"]
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
    assert "\\begin{tabular}" in (paper / "level_means.tex").read_text()
    assert "vggm11" in (paper / "provenance.json").read_text()


def test_paper_page_renders_every_figure(study, chromium, tmp_path):
    page = study / "out/paper/index.html"
    probe = page.with_name("index_probe.html")
    probe.write_text(page.read_text().replace("</body>", IMAGE_CHECK + "</body>"))
    dom = _browse(chromium, probe, tmp_path, "--dump-dom")
    total, loaded = map(int, dom.split('data-images="')[1].split('"')[0].split("/"))
    assert total == 5 and loaded == total
    shot = tmp_path / "page.png"
    _browse(chromium, page, tmp_path, f"--screenshot={shot}")
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10  # not blank


def test_snakemake_report_builds_and_renders(study, chromium, tmp_path):
    report = tmp_path / "report.html"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(study), "--configfile", str(study / "tiny.yaml"), "--report", str(report)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    text = report.read_text()
    assert "SHAP slopes per variable" in text and "data:image/png;base64" in text or "image/png" in text
    shot = tmp_path / "report.png"
    _browse(chromium, report, tmp_path, f"--screenshot={shot}")
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10

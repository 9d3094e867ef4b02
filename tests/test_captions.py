"""One source of captions: the report's caption files and the static page show captions.FIGURES."""

import html
import json
import re
from types import SimpleNamespace

import pandas as pd
from jinja2 import Environment

from conftest import REPO
from tunnelscope.figures import captions
from tunnelscope.figures.captions import FIGURES, TABLES, best_layers_caption, figure_caption
from tunnelscope.figures.paper import html_page


def test_every_figure_caption_file_renders_its_rules_caption():
    """Each caption file renders the rule's params.caption (as Snakemake's report does), and the
    rule making that figure passes the caption of the same name."""
    rules = "\n".join(p.read_text() for p in (REPO / "workflow/rules").glob("*.smk"))
    for name in FIGURES:
        template = (REPO / "workflow/report" / f"{name}.rst").read_text()
        fake = SimpleNamespace(params=SimpleNamespace(caption=figure_caption(name, 0.9)))
        assert figure_caption(name, 0.9) in Environment().from_string(template).render(snakemake=fake)
        assert f'caption="../report/{name}.rst"' in rules and re.search(rf'figure_caption\(\s*"{name}"', rules), name


def test_confidence_fills_the_captions_that_name_it():
    assert "90% t-interval" in figure_caption("layer_stats", 0.9) and "{" not in figure_caption("layer_stats")
    assert figure_caption("strength_histogram", 0.9) == FIGURES["strength_histogram"]


def test_the_page_links_its_inputs_and_shows_the_same_captions(tmp_path):
    out = tmp_path / "out"
    (out / "paper/tables").mkdir(parents=True)
    (out / "analysis").mkdir()
    tables = []
    for name in TABLES:
        tables.append(str(out / "paper/tables" / f"{name}.csv"))
        pd.DataFrame({"backbone": ["a"], "value": [0.5]}).to_csv(tables[-1], index=False)
    slopes = out / "analysis/shap_slopes.csv"
    pd.DataFrame({"target": ["t"], "variable": ["v"], "slope": [0.1]}).to_csv(slopes, index=False)
    prov = out / "paper/provenance.json"
    prov.write_text(
        json.dumps({"cells": [{}, {}], "config": {}, "software": {"torch": "1"}, "python": "3.11", "platform": "x"})
    )
    figures = [str(out / "paper" / f"{name}.png") for name in FIGURES if name != "tunnel_curves"]
    page = out / "paper/index.html"
    best = out / "paper/tables/best_layers.csv"
    pd.DataFrame({"backbone": ["a"], "best layer": ["3 (features.7)"]}).to_csv(best, index=False)
    html_page(
        str(page),
        str(out / "figures/tunnel_curves.png"),
        figures,
        tables,
        str(slopes),
        str(prov),
        0.9,
        best_layers=(str(best), 0.01),
    )
    text = page.read_text()
    assert html.escape(best_layers_caption(0.01)) in text and "99% Wilson interval" in text
    assert "href='tables/best_layers.csv'" in text and "3 (features.7)" in text
    for name in FIGURES:
        assert html.escape(figure_caption(name, 0.9)) in text, name
    assert "src='../figures/tunnel_curves.png'" in text and "src='layer_stats.png'" in text
    assert "href='tables/effect_sizes.csv'" in text and "href='../analysis/shap_slopes.csv'" in text
    assert "2 cells; full config in provenance.json." in text


def test_every_caption_file_names_where_its_text_lives():
    """Each report caption file's first line names the captions.py object its text comes from."""
    for path in sorted((REPO / "workflow/report").glob("*.rst")):
        first = path.read_text().splitlines()[0]
        found = re.fullmatch(r'\.\. The text is tunnelscope\.figures\.captions\.(\w+)(?:\["(\w+)"\])?[,;.].*', first)
        assert found, f"{path.name}: {first}"
        source = getattr(captions, found[1])  # an AttributeError names a caption that moved
        assert found[2] is None or found[2] in source, path.name

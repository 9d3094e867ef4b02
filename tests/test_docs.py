"""The docs match the checkout: every repository path README.md and docs/*.md name exists, every
link reaches its file and heading, every `tunnelscope` and `snakemake` command line in them parses with the options it uses, every `make`
target exists, the config reference is what the schema generates, the paper's comparisons shipped
with the package are config/paper.yaml's, and the preset and dry-run job counts the docs quote hold."""

import contextlib
import io
import itertools
import re
import subprocess

import pytest
import yaml

from conftest import REPO, snakemake_cmd
from tunnelscope.cli import main
from tunnelscope.study.config import Study
from tunnelscope.study.reference import config_reference
from tunnelscope.study.schema import load_schema

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Repository paths are named relative to its root; outputs (results/...) and placeholders are not.
ROOTS = ("config/", "docs/", "src/", "benchmarks/", "workflow/", "tests/", "profiles/", "envs/")
TOP_FILES = {"Makefile", "Snakefile", "config.yaml", "constraints.txt", "pyproject.toml", "README.md"}
PLACEHOLDER = re.compile(r"[A-Z]{3,}|\*|…|\.\.\.|<|\bNNN\b")


def _text(path) -> str:
    return path.read_text()


def _expand(path: str) -> list[str]:
    """`a/{b,c}/d` -> a/b/d, a/c/d (the brace lists the docs use)."""
    match = re.search(r"\{([^{}]*)\}", path)
    if not match:
        return [path]
    return [
        p for option in match.group(1).split(",") for p in _expand(path[: match.start()] + option + path[match.end() :])
    ]


def named_paths(text: str) -> set[str]:
    """Repository paths in backticks or Markdown links, without placeholders, anchors or line numbers."""
    found = set(re.findall(r"`([^`\s]+)`", text)) | set(re.findall(r"\]\(([^)\s#]+)", text))
    paths = set()
    for token in found:
        token = token.split("#")[0].split(":")[0].rstrip(".,;")
        if PLACEHOLDER.search(token) or not (token.startswith(ROOTS) or token in TOP_FILES):
            continue
        paths.update(_expand(token))
    return paths


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_repository_path_the_docs_name_exists(doc):
    paths = named_paths(_text(doc))
    relative = REPO if doc.name == "README.md" else doc.parent  # docs/*.md link relative to docs/
    missing = sorted(p for p in paths if not (REPO / p).exists() and not (relative / p).exists())
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings (code blocks skipped): lower case,
    punctuation dropped, spaces as hyphens, a repeated heading numbered."""
    found, seen = set(), {}
    for block, code in zip(re.split(r"^```.*$", text, flags=re.M), itertools.cycle([False, True])):
        for title in [] if code else re.findall(r"^#{1,6} (.+)$", block, re.M):
            slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
            found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return found


def markdown_links(text: str) -> list[str]:
    """The targets of a Markdown file's links and images that point inside the repository."""
    targets = re.findall(r"\]\(([^)\s]+)\)", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_link_of_the_docs_reaches_its_file_and_heading(doc):
    """A link is relative to its own file, as GitHub renders it; `x.md#anchor` needs that heading."""
    broken = []
    for target in markdown_links(_text(doc)):
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target} (no file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(f"{target} (no heading)")
    assert not broken, f"{doc.name} has broken links: {broken}"


def test_the_link_check_sees_what_it_should():
    text = "# A title\n## Seeds (2, `x`)\n```\n# not a heading\n```\n## Seeds (2, `x`)\n[a](docs/x.md#b) [c](https://e.org) ![i](f.png)"
    assert anchors(text) == {"a-title", "seeds-2-x", "seeds-2-x-1"}
    assert markdown_links(text) == ["docs/x.md#b", "f.png"]


def test_the_path_check_sees_what_it_should():
    text = "`workflow/{rules,schemas}` and [x](docs/protocol.md#seeds) `results/cells/CELL/figure.png` `config/*.yaml`"
    assert named_paths(text) == {"workflow/rules", "workflow/schemas", "docs/protocol.md"}


def command_lines(text: str, program: str) -> list[str]:
    """Lines of the docs' bash blocks that run ``program``, without their comments."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            if line.startswith(program + " "):
                lines.append(line)
    return lines


def _help(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(argv)
    return out.getvalue()


def test_every_tunnelscope_command_in_the_docs_names_a_subcommand_and_its_options():
    lines = [line for doc in DOCS for line in command_lines(_text(doc), "tunnelscope")]
    assert len(lines) >= 10
    for line in lines:
        words = line.split()[1:]
        command = words[:2] if words[0] == "profile" else words[:1]
        help_text = _help([*command, "--help"])
        for option in (w.split("=")[0] for w in words if w.startswith("--")):
            assert option in help_text, f"{line}: tunnelscope {' '.join(command)} has no option {option}"


def test_every_snakemake_option_and_make_target_in_the_docs_exists():
    from snakemake.cli import get_argument_parser

    options = get_argument_parser()._option_string_actions
    texts = [_text(doc) for doc in DOCS]
    lines = [line for text in texts for line in command_lines(text, "snakemake")]
    assert len(lines) >= 10
    parser = get_argument_parser()
    for line in lines:
        for option in re.findall(r"(?<!\S)(--?[a-zA-Z][\w-]*)", line):
            assert option in options, f"{line}: snakemake has no option {option}"
        # --configfile takes every word up to the next option: a target written after it is read
        # as a config file (`--configfile config/x.yaml cells` fails)
        words = [w for w in line.split()[1:] if "$" not in w]
        configs = parser.parse_known_args(words)[0].configfile or []
        assert all(str(c).endswith(".yaml") for c in configs), f"{line}: --configfile reads {configs}"
    targets = set(re.findall(r"^([\w-]+):", _text(REPO / "Makefile"), re.M))
    named = {t for text in texts for t in re.findall(r"`make (\w[\w-]*)`", text)}
    named |= {t for text in texts for line in command_lines(text, "make") for t in line.split()[1:2]}
    assert {"run", "test"} <= named and named <= targets, named - targets


def test_the_config_reference_is_what_the_schema_generates():
    assert _text(REPO / "docs/config.md") == config_reference(), (
        "docs/config.md is out of step with the schema: run python -m tunnelscope.study.reference docs/config.md"
    )


def test_the_config_reference_lists_every_schema_key():
    text = _text(REPO / "docs/config.md")
    schema = load_schema()
    for key in schema["properties"]:
        assert f"| `{key}` |" in text
    for key in ("training.epochs", "probe.solver", "metrics.health.chance_margin", "datasets.NAME.root"):
        assert f"| `{key}` |" in text


def test_the_shipped_paper_comparisons_are_config_paper_yaml_s():
    from importlib import resources

    from tunnelscope.analysis.release import PAPER_ANALYSIS, paper_analysis

    preset = yaml.safe_load(_text(REPO / "config/paper.yaml"))
    shipped = yaml.safe_load(resources.files("tunnelscope").joinpath(PAPER_ANALYSIS).read_text())
    assert shipped == {"analysis": preset["analysis"]}
    assert paper_analysis() == Study(preset, load_schema()).config["analysis"]


def _study(preset: str) -> Study:
    return Study(yaml.safe_load(_text(REPO / preset)), load_schema())


def _flat(doc: str) -> str:
    return " ".join(_text(REPO / doc).split())


def test_the_preset_counts_the_docs_quote():
    """README's presets table names every preset with its cell count; the docs' other counts."""
    rows = re.findall(
        r"^\| `(config(?:/\w+)?\.yaml)` \|.*\| (\d+)( runs)? \| [^|]* \|$", _text(REPO / "README.md"), re.M
    )
    assert {name for name, *_ in rows} == {
        "config.yaml",
        *(f"config/{p.name}" for p in (REPO / "config").glob("*.yaml")),
    }
    for name, count, runs in rows:
        study = _study(name)
        assert int(count) == len(study.runs if runs else study.cells), f"README's presets table: {name}"
    paper = _study("config/paper.yaml")
    assert f"({sum(len(paper.eval_sets(c)) for c in paper.cells)} probe curves)" in _flat("README.md")
    default_time = re.search(r"^\| `config.yaml` \|.*\| ([^|]+) on 2 CPU cores \|$", _text(REPO / "README.md"), re.M)
    assert f"**{default_time.group(1)}** of Snakemake time for `make run`" in _flat("README.md")  # one measurement
    claims, masarczyk, continual = (_study(f"config/{n}.yaml") for n in ("claims", "masarczyk", "continual"))
    assert f"each of the {claims.backbones()} backbones is trained once (seed 0)" in _flat("docs/evidence.md")
    assert len(claims.cells) == claims.backbones() and {c.seed for c in claims.cells.values()} == {0}
    assert f"three seeds ({len(masarczyk.cells)} cells)" in _flat("docs/masarczyk.md")
    assert f"# {len(continual.runs)} runs, 6 configurations each" in _text(REPO / "docs/continual.md")


def quoted_dry_runs(text: str) -> list[tuple[str, int]]:
    """(config, job count) of every `snakemake -n --configfile CONFIG  # N jobs` line of the docs."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        found += [(c, int(n)) for c, n in re.findall(r"^snakemake -n --configfile (\S+) .*# (\d+) jobs", block, re.M)]
    return found


def test_the_job_counts_the_docs_quote_for_dry_runs(tmp_path):
    quoted = [pair for doc in DOCS for pair in quoted_dry_runs(_text(doc))]
    assert quoted, "no dry run with a job count found in the docs"
    for config, count in quoted:
        cmd = snakemake_cmd(tmp_path, "-n", "--quiet", "rules", configfile=REPO / config)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        total = int(re.search(r"^total\s+(\d+)", result.stdout + result.stderr, re.M).group(1))
        assert total == count, f"the docs quote {count} jobs for {config}; a dry run plans {total}"

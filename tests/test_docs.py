"""The tutorials run: every ```python block of docs/tutorial-*.md is executed.

A chapter's blocks run in order in one namespace (as a reader typing them into one session would),
in a temporary working directory with an empty `figures/` folder. A block that raises fails the
chapter's test with the chapter's file name, the block's number and its first line in the file.
Every figure a chapter shows (`![...](figures/NAME.png)`) must be written by the chapter's own
code, and the copy in docs/figures/ is the one that code wrote:

    python tests/test_docs.py --write-figures                 # run every chapter in docs/
    python tests/test_docs.py --write-figures docs/tutorial-3-pooling.md

runs the chapters with docs/ as the working directory, so their figures land in docs/figures/.
"""
import argparse
import contextlib
import os
import pathlib
import re
import sys
import traceback

import pytest

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent
DOCS = REPOSITORY / "docs"
CHAPTERS = sorted(DOCS.glob("tutorial-*.md"), key=lambda path: int(path.name.split("-")[1]))

# A block opens with a line that is exactly ```python and closes with a line that is exactly ```.
PYTHON_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
FIGURE = re.compile(r"!\[[^\]]*\]\((figures/[^)\s]+)\)")


class ChapterError(AssertionError):
    """A block of a chapter raised; the message names the chapter, the block and the line."""


def python_blocks(text):
    """[(line, source)]: each ```python block's source and the file's line of its first line."""
    blocks = []
    for match in PYTHON_BLOCK.finditer(text):
        line = text.count("\n", 0, match.start(1)) + 1
        blocks.append((line, match.group(1)))
    return blocks


def figures_shown(text):
    """The figure paths (relative to docs/) that the chapter's markdown displays."""
    return FIGURE.findall(text)


@contextlib.contextmanager
def chapter_environment(workdir):
    """Run in `workdir` with matplotlib drawing to files, and restore the working directory,
    tinycnn's global switches and its random state afterwards (a chapter seeds tinycnn, and may
    set tinycnn.config.kernels), so the tests that run after a chapter see what they would without it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tinycnn

    # The chapters leave the data directory to the environment (CI exports TINYCNN_DATA, relative
    # to the repository root); the working directory changes below, so make it absolute first.
    data = os.environ.get("TINYCNN_DATA")
    if data:
        os.environ["TINYCNN_DATA"] = os.path.abspath(data)
    saved_config = {name: getattr(tinycnn.config, name)
                    for name in ("enable_backprop", "check_nan", "shape_only", "kernels")}
    saved_rng_state = tinycnn.get_rng_state()
    previous = os.getcwd()
    (pathlib.Path(workdir) / "figures").mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    try:
        yield
    finally:
        os.chdir(previous)
        plt.close("all")
        for name, value in saved_config.items():
            setattr(tinycnn.config, name, value)
        tinycnn.set_rng_state(saved_rng_state)
        if data is not None:
            os.environ["TINYCNN_DATA"] = data


def run_chapter(path, workdir):
    """Execute the ```python blocks of the markdown file `path` in order, in one namespace, with
    `workdir` as the working directory. Raises ChapterError naming the chapter and block."""
    path = pathlib.Path(path)
    blocks = python_blocks(path.read_text())
    if not blocks:
        raise ChapterError(f"{path.name}: no ```python block to run")
    namespace = {"__name__": "__main__"}
    with chapter_environment(workdir):
        for number, (line, source) in enumerate(blocks, start=1):
            where = f"{path.name}, block {number} (line {line})"
            try:
                # Padded with blank lines so that a traceback's line numbers are the markdown file's.
                code = compile("\n" * (line - 1) + source, str(path), "exec")
                exec(code, namespace)
            except Exception:
                raise ChapterError(f"{where} failed:\n{traceback.format_exc()}") from None
    return len(blocks)


def test_every_chapter_is_found():
    numbers = [int(path.name.split("-")[1]) for path in CHAPTERS]
    assert numbers == list(range(1, len(numbers) + 1)), f"chapters are not numbered 1..n: {numbers}"
    assert len(numbers) >= 1


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[path.stem for path in CHAPTERS])
def test_chapter_runs_and_makes_its_figures(chapter, tmp_path):
    run_chapter(chapter, tmp_path)
    for figure in figures_shown(chapter.read_text()):
        made = tmp_path / figure
        assert made.is_file(), f"{chapter.name} shows {figure}, but its code did not write it"
        assert (DOCS / figure).is_file(), (
            f"{chapter.name} shows {figure}, which is not in docs/; run "
            f"python tests/test_docs.py --write-figures {chapter.relative_to(REPOSITORY)}")


def test_a_failing_block_is_named(tmp_path):
    chapter = tmp_path / "tutorial-9-broken.md"
    chapter.write_text("# Broken\n\n```python\nx = 1\n```\n\ntext\n\n```python\ny = x +\n```\n\n"
                       "```python\nassert y == 2, 'y is wrong'\n```\n")
    with pytest.raises(ChapterError, match=r"tutorial-9-broken\.md, block 2 \(line 10\)"):
        run_chapter(chapter, tmp_path)
    chapter.write_text("```python\nx = 1\n```\n\n```python\ny = x + 2\n```\n\n"
                       "```python\nassert y == 2, 'y is wrong'\n```\n")
    with pytest.raises(ChapterError, match=r"(?s)tutorial-9-broken\.md, block 3 \(line 10\).*"
                                           r"tutorial-9-broken\.md\", line 10.*y is wrong"):
        run_chapter(chapter, tmp_path)


def test_readme_links_the_chapters_in_order():
    readme = (REPOSITORY / "README.md").read_text()
    section = re.search(r"^## Tutorials\n(.*?)(?=^## |^<!-- section|\Z)", readme, re.MULTILINE | re.DOTALL)
    assert section, "README.md has no '## Tutorials' section"
    linked = re.findall(r"\]\((docs/tutorial-[^)#\s]+\.md)\)", section.group(1))
    expected = [str(path.relative_to(REPOSITORY)) for path in CHAPTERS]
    assert linked == expected, f"README's tutorial links {linked} are not the chapters in order {expected}"


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run the tutorials in docs/ and rewrite their figures.")
    parser.add_argument("--write-figures", action="store_true", required=True,
                        help="run the chapters with docs/ as the working directory")
    parser.add_argument("chapters", nargs="*", type=pathlib.Path,
                        help="chapter files (default: every docs/tutorial-*.md)")
    args = parser.parse_args(argv)
    for chapter in args.chapters or CHAPTERS:
        count = run_chapter(chapter.resolve(), DOCS)
        print(f"{chapter.name}: {count} blocks ran; figures: {', '.join(figures_shown(chapter.read_text())) or 'none'}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPOSITORY))
    main()

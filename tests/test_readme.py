"""The README's promises: its ```python blocks run as written, and the behaviour its snippets show.

The blocks run in order in one namespace (as a reader pasting them into one session would), in a
temporary working directory, with TINYCNN_DATA set (../shared/data next to the repository unless
the environment says otherwise). Snippets that train are written with small sizes and say how to
get the full run, so this stays quick.
"""
import os
import pathlib
import re
import warnings

import numpy as np
import pytest

import tinycnn
import tinycnn.models as models
from tinycnn import cli

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent
DATA = os.path.abspath(os.environ.get("TINYCNN_DATA") or REPOSITORY.parent / "shared" / "data")  # before any chdir
# A block opens with a line that is exactly ```python and closes with a line that is exactly ```.
PYTHON_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def readme_blocks():
    text = (REPOSITORY / "README.md").read_text()
    return [(text[:match.start()].count("\n") + 1, match.group(1)) for match in PYTHON_BLOCK.finditer(text)]


def test_the_readme_has_its_snippets():
    sources = "\n".join(code for _, code in readme_blocks())
    for expected in ("fit(", "models.create(", "load_weights(", "strict=False", "tinycnn.summary("):
        assert expected in sources, expected


def test_readme_python_blocks_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TINYCNN_DATA", DATA)
    namespace = {"__name__": "__readme__"}
    for line, code in readme_blocks():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                exec(compile(code, f"README.md, block at line {line}", "exec"), namespace)
            except Exception as error:
                pytest.fail(f"README.md block at line {line} raised {type(error).__name__}: {error}")
        # The transfer-learning block promises a warning naming the skipped head.
        if "strict=False" in code:
            messages = [str(w.message) for w in caught if "load_weights" in str(w.message)]
            assert len(messages) == 1 and "fc.weight" in messages[0] and "fc.bias" in messages[0], messages
            transferred = namespace["net"]  # later sections may reuse the name
    capsys.readouterr()

    # The "From Python" run directory is one the command line accepts, as the README says.
    assert os.path.exists("runs/api/last.ckpt")
    assert cli.main(["eval", "runs/api/last.ckpt", "--limit-test", "200", "--no-progress"]) == 0
    assert "lenet after 1 epoch on 200 mnist test images" in capsys.readouterr().out
    # The transfer-learning block: the body loaded from the file, the new head trainable, alone.
    net, saved = transferred, np.load("resnet18.npz")
    np.testing.assert_array_equal(net.conv1.weight.data, saved["conv1.weight"])
    trainable = [name for name, p in net.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]


def test_load_weights_strict_false_skips_a_head_of_another_size_with_a_warning(tmp_path):
    tinycnn.manual_seed(0)
    source = models.create("lenet")  # a 10-class head
    path = tmp_path / "lenet.npz"
    models.save_weights(source, path)
    target = models.create("lenet", num_classes=5)
    head_before = target.classifier[2].weight.data.copy()
    with pytest.warns(UserWarning, match=r"skipped classifier\.2\.weight \(\(10, 500\) in the file, \(5, 500\) in "
                                         r"the model\), classifier\.2\.bias"):
        missing, unexpected = models.load_weights(target, path, strict=False)
    assert missing == ["classifier.2.weight", "classifier.2.bias"] and unexpected == []
    np.testing.assert_array_equal(target.classifier[2].weight.data, head_before)  # kept its initial values
    for key, value in source.state_dict().items():
        if not key.startswith("classifier.2."):
            np.testing.assert_array_equal(target.state_dict()[key], value, err_msg=key)
    with pytest.raises(ValueError, match=r"classifier\.2\.weight expected shape \(5, 500\), got \(10, 500\)"):
        models.load_weights(target, path)  # strict: a different head is an error
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a file that fits loads without a word
        assert models.load_weights(models.create("lenet"), path, strict=False) == ([], [])


def test_model_docstrings_cite_papers_not_unseen_source_documents():
    import tinycnn.models
    package = pathlib.Path(tinycnn.models.__file__).parent
    for path in sorted(package.glob("*.py")):
        assert "source document" not in path.read_text().lower(), path.name

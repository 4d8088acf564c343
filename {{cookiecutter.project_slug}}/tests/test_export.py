"""export.py: ONNX and torch.export .pt2 files of a checkpoint's model that match the model on any
batch size, with the JSON a runtime needs; an export that fails or differs is one line, status 2,
and nothing written."""

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import Echo, call_main, edited_checkpoint, files_under

import export
import model.model as module_arch
from data_loader import MnistDataLoader
from inference import exporting
from model.model import MnistModel


@pytest.fixture
def workspace(mnist_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding a copy of the trained checkpoint, `model.pth`, as the working folder."""
    (tmp_path / "model.pth").write_bytes(mnist_checkpoint.read_bytes())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def eager_and_inputs(checkpoint: Path, data_dir: Path) -> tuple[MnistModel, torch.Tensor]:
    """The checkpoint's model, and 8 test inputs that the export was not checked on in this order."""
    model = MnistModel()
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    loader = MnistDataLoader(str(data_dir), batch_size=8, shuffle=False, training=False)
    return model.eval(), loader.dataset.tensors[0][-8:]  # type: ignore[attr-defined]


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_an_export_matches_the_model_on_any_batch_size_and_says_what_a_runtime_needs(
    fmt: str, workspace: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = call_main(export.main, ["-r", "model.pth", "--format", fmt], capsys)
    assert (status, err) == (0, "")
    model_file, description_file = workspace / f"model.{fmt}", workspace / f"model.{fmt}.json"
    assert sorted(path.name for path in workspace.iterdir()) == sorted(["model.pth", model_file.name,
                                                                        description_file.name])
    first, second = out.splitlines()
    assert first.startswith(f"exported {workspace / 'model.pth'} to model.{fmt} (")
    assert second.startswith("verified with ") and "on batches of 1 and 8 inputs of the test split" in second

    model, inputs = eager_and_inputs(workspace / "model.pth", mnist_dir)
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])

        def run(batch: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {"input": batch.numpy()})[0])
    else:
        run = torch.export.load(str(model_file)).module()
    with torch.no_grad():
        for batch in (inputs[:3], inputs[3:]):  # 3 and 5: neither the size traced (2) nor those checked (1, 8)
            assert torch.allclose(run(batch), model(batch), rtol=1e-4, atol=1e-4)

    described = json.loads(description_file.read_text())
    saved = torch.load(workspace / "model.pth", weights_only=True)
    assert described["format"] == fmt and described["file"] == model_file.name
    assert described["checkpoint"] == str((workspace / "model.pth").resolve()) and described["arch"] == "MnistModel"
    assert described["input"]["shape"] == ["batch", 1, 28, 28] and described["input"]["layout"] == "NCHW"
    assert described["input"]["dtype"] == described["output"]["dtype"] == "float32"
    assert described["output"]["shape"] == ["batch", 10] and described["classes"] == [str(d) for d in range(10)]
    assert described["preprocessing"] == saved["preprocessing"] and described["torch"] == torch.__version__
    assert described["verified"]["batch_sizes"] == [1, 8] and described["verified"]["max_difference"] <= 1e-4
    if fmt == "onnx":
        assert described["input"]["name"] == "input" and isinstance(described["opset"], int)
    else:
        assert "opset" not in described


def test_without_the_test_data_an_export_is_checked_on_random_inputs(
    mnist_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = torch.load(mnist_checkpoint, weights_only=True)
    saved["config"]["data_loader"]["args"]["data_dir"] = str(tmp_path / "gone")
    torch.save(saved, tmp_path / "model.pth")
    status, out, _ = call_main(export.main, ["-r", str(tmp_path / "model.pth"), "--format", "pt2"], capsys)
    assert status == 0 and "on batches of 1 and 8 random inputs (no test data: MNIST not found in" in out
    assert not (tmp_path / "gone").exists()  # nothing downloaded
    assert json.loads((tmp_path / "model.pt2.json").read_text())["verified"]["inputs"].startswith("random inputs")


class CumulativeMax(torch.nn.Module):
    """Scores through torch.cummax, which torch.export traces and the ONNX exporter cannot translate."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cummax(self.fc(x.flatten(1)), dim=1).values


class Branchy(torch.nn.Module):
    """A forward that branches on the values of a tensor: neither exporter can trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.fc(x.flatten(1))
        if scores.sum() > 0:
            return scores
        return -scores


def checkpoint_of(model: torch.nn.Module, mnist_checkpoint: Path, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = type(model).__name__
    monkeypatch.setattr(module_arch, name, type(model), raising=False)
    edited_checkpoint(mnist_checkpoint, path, arch=name, state_dict=model.state_dict())


@pytest.mark.parametrize(("model", "fmt", "message"), [
    (CumulativeMax(), "onnx", "model 'CumulativeMax' cannot be exported to ONNX: the exporter has no ONNX translation "
                              "of the operator aten.cummax; replace it in the model, or export with --format pt2"),
    (Branchy(), "pt2", "model 'Branchy' cannot be exported to torch.export's .pt2: its forward branches on the values "
                       "of a tensor, which torch.export cannot trace (at tests/test_export.py:"),
], ids=["onnx-operator-missing", "pt2-data-dependent-branch"])
def test_a_model_the_exporter_cannot_take_is_one_line_naming_what(
    model: torch.nn.Module, fmt: str, message: str, mnist_checkpoint: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    checkpoint_of(model, mnist_checkpoint, tmp_path / "model.pth", monkeypatch)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the line of code is named relative to the project
    status, out, err = call_main(export.main, ["-r", str(tmp_path / "model.pth"), "--format", fmt], capsys)
    assert (status, out) == (2, "") and err.count("\n") == 1 and message in err, err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.pth"]
    if isinstance(model, Branchy):
        assert err.rstrip().endswith(": if scores.sum() > 0:)")


def test_an_export_that_differs_from_the_model_is_refused_and_not_written(
    workspace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    load = exporting.pt2_runner

    def off_by_a_little(data: bytes) -> tuple[exporting.Runner, str]:
        run, runtime = load(data)
        return (lambda batch: run(batch) + 1e-3), runtime

    monkeypatch.setattr(exporting, "pt2_runner", off_by_a_little)
    status, out, err = call_main(export.main, ["-r", "model.pth", "--format", "pt2"], capsys)
    assert (status, out) == (2, "")
    assert err.startswith("error: the torch.export's .pt2 export differs from the model by up to 1.0e-03 on a batch "
                          "of 1 (tolerance 0.0001, relative above 1); nothing written")
    assert sorted(path.name for path in workspace.iterdir()) == ["model.pth"]
    assert call_main(export.main, ["-r", "model.pth", "--format", "pt2", "--tolerance", "0.01"], capsys)[0] == 0


BAD_INPUTS = [
    ("format-unknown", ["-r", "model.pth", "--format", "tflite"], "argument --format: invalid choice: 'tflite'"),
    ("out-suffix-of-the-other-format", ["-r", "model.pth", "--format", "pt2", "--out", "model.onnx"],
     "--out 'model.onnx': a .onnx file for --format pt2; name it model.pt2"),
    ("out-folder-missing", ["-r", "model.pth", "--out", "exports/model.onnx"],
     "--out 'exports/model.onnx': cannot write in the folder 'exports' (missing or not writable)"),
    ("out-given-with-o", ["-r", "model.pth", "-o", "model.onnx"],
     "-o model.onnx: -o sets a config key as in train.py (KEY=VALUE); the output file is given with --out"),
    ("tolerance-negative", ["-r", "model.pth", "--tolerance", "-1"], "'-1' is not a number of 0 or more"),
    ("checkpoint-missing", ["-r", "nope.pth"], "checkpoint 'nope.pth': no such file"),
    ("checkpoint-without-preprocessing", ["-r", "no_preprocessing.pth", "--format", "pt2"],
     "checkpoint 'no_preprocessing.pth': records no preprocessing of its inputs"),
    ("not-a-classifier", ["-r", "echo.pth", "--format", "pt2"],
     "model 'Echo' is not a classifier export.py can use: for 8 inputs it returns shape (8, 1, 28, 28)"),
    ("onnxruntime-missing", ["-r", "model.pth"],
     "--format onnx needs the packages onnx, onnxscript, onnxruntime, and onnxruntime is not installed: pip install "
     "-r requirements-export.txt"),
]


@pytest.mark.parametrize(("args", "message"), [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_a_bad_input_is_one_line_status_2_and_writes_nothing(
    args: list[str], message: str, workspace: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    edited_checkpoint(workspace / "model.pth", workspace / "no_preprocessing.pth", preprocessing=None)
    edited_checkpoint(workspace / "model.pth", workspace / "echo.pth", arch="Echo", state_dict={})
    monkeypatch.setattr(module_arch, "Echo", Echo, raising=False)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed (only the last case needs it)
    before = files_under(workspace)
    status, out, err = call_main(export.main, args, capsys)
    assert (status, out) == (2, "")
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert files_under(workspace) == before

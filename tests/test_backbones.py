"""The photo recipe of an image_folder project, as a user runs it: `config_finetune.json` (a
pretrained resnet18, its head alone for the first epoch, then all of it) on JPEG photos of mixed
sizes, the weights read from torchvision's cache in a TORCH_HOME of the test's own (never
downloaded), a SIGTERM to the process group inside the epoch where the backbone unfreezes, and
a resume bitwise equal to the uninterrupted run."""

import json
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import render_into
from test_preemption import Job, assert_bitwise, load

# torchvision 0.29 warns on every image it encodes or decodes (its codecs are to move to TorchCodec)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning"),
]

NAME = "ImageFolder_ResNet18"
COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}
SIZES = [(40, 30), (24, 48), (64, 64), (33, 20)]  # (height, width): mixed, none square but one


def write_photos(root: Path) -> None:
    """12 training and 3 validation JPEGs per class of COLOURS, noisy, of the mixed SIZES."""
    from torchvision.io import encode_jpeg

    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 12), ("val", 3)):
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                height, width = SIZES[i % len(SIZES)]
                noise = torch.randint(-40, 40, (3, height, width), generator=generator)
                pixels = (torch.tensor(colour)[:, None, None] + noise).clamp(0, 255).to(torch.uint8)
                (folder / f"{i}.jpg").write_bytes(encode_jpeg(pixels).numpy().tobytes())


def place_resnet18_weights(torch_home: Path) -> dict[str, torch.Tensor]:
    """A randomly initialised resnet18's weights where torchvision looks for its ImageNet ones."""
    from torchvision.models import ResNet18_Weights, resnet18

    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(3)
    state_dict = resnet18().state_dict()
    torch.save(state_dict, folder / ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[1])
    return state_dict


@dataclass(frozen=True)
class PhotoProject:
    """An image_folder project with photos, resnet18 weights in a TORCH_HOME of its own and a
    small config_finetune.json (3 epochs, the first frozen, 32-pixel images)."""

    project: Path
    config: Path
    weights: dict[str, torch.Tensor]
    env: dict[str, str]
    save_dir: Path

    def command(self, launcher: list[str], *args: str) -> Job:
        return Job(self.project, [sys.executable, *launcher, "train.py", *args], env=self.env)


@pytest.fixture(scope="module")
def photo_project(tmp_path_factory: pytest.TempPathFactory) -> PhotoProject:
    root = tmp_path_factory.mktemp("photo-project")
    project = render_into(root / "rendered", {"dataset": "image_folder"})
    write_photos(root / "photos")
    weights = place_resnet18_weights(root / "torch_home")
    config = json.loads((project / "config_finetune.json").read_text())
    config["n_gpu"] = 0
    config["arch"]["args"]["num_classes"] = 3
    config["data_loader"]["args"].update(
        data_dir=str(root / "photos"), batch_size=4, image_size=32, cache_dir=str(root / "cache")
    )
    config["trainer"].update(
        epochs=3, freeze_backbone_epochs=1, save_dir=str(root / "saved"), save_period=1, keep_last=0, verbosity=1
    )
    (root / "config.json").write_text(json.dumps(config))
    env = {"TORCH_HOME": str(root / "torch_home")}
    return PhotoProject(project, root / "config.json", weights, env, root / "saved" / NAME)


@pytest.mark.xdist_group("photo-project")
def test_a_pretrained_resnet18_fine_tunes_on_photos_stops_on_sigterm_and_resumes_bitwise(
    photo_project: PhotoProject,
) -> None:
    runs = photo_project.save_dir
    straight = photo_project.command([], "-c", str(photo_project.config), "--run-id", "straight")
    assert straight.finish() == 0, straight.text()[-3000:]
    assert (
        "Starting from the pretrained weights ResNet18_Weights.IMAGENET1K_V1"
        in (runs / "straight" / "train.log").read_text()
    )
    after_frozen = load(runs / "straight" / "checkpoint-epoch1.pth")["state_dict"]
    for key, tensor in photo_project.weights.items():  # the frozen epoch trained the new head alone
        if not key.startswith("fc."):
            assert torch.equal(after_frozen[f"network.{key}"], tensor), key
    assert after_frozen["network.fc.weight"].shape == (3, 512)
    assert not torch.equal(
        load(runs / "straight" / "checkpoint-epoch2.pth")["state_dict"]["network.conv1.weight"],
        photo_project.weights["conv1.weight"],
    )  # then the backbone trained

    stopped = photo_project.command([], "-c", str(photo_project.config), "--run-id", "stopped")
    stopped.wait_for("epoch 2/3 train")  # the epoch in which the backbone unfreezes: 9 batches, then validation
    stopped.signal_group(signal.SIGTERM)
    assert stopped.finish() == 128 + signal.SIGTERM, stopped.text()[-3000:]
    saved = load(runs / "stopped" / "latest.pth")
    assert saved["epoch"] == 1 and saved["batches_done"] > 0, (saved["epoch"], saved["batches_done"])
    resumed = photo_project.command([], "-r", str(runs / "stopped" / "latest.pth"))
    assert resumed.finish() == 0, resumed.text()[-3000:]
    assert_bitwise(runs / "straight", runs / "stopped")


@pytest.mark.xdist_group("photo-project")
def test_two_processes_fine_tune_across_the_unfreezing(photo_project: PhotoProject) -> None:
    """DDP reduces the gradients of the parameters that needed them when it was built: it is
    built again when the backbone unfreezes, and both processes train on."""
    launcher = ["launch.py", "--standalone", "--nproc_per_node=2"]
    job = photo_project.command(launcher, "-c", str(photo_project.config), "--run-id", "ddp", "-o", "trainer.epochs=2")
    assert job.finish() == 0, job.text()[-3000:]
    rows = (photo_project.save_dir / "ddp" / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2"]

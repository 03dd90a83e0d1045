from dataclasses import replace
from pathlib import Path

import pytest

from model_store.add_request import AddRequest
from model_store.ingest import add
from model_store.manifest import Preprocessing
from model_store.store import Store

torch = pytest.importorskip("torch", reason="the export extra is installed by make setup")


def export_tiny(
    path: Path, *, resolution: int = 32, classes: int = 1000, channels: int = 3, dynamic: bool = False
) -> Path:
    """A small real CNN exported to ONNX, as a user would bring one in (``dynamic``: any H and W)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(channels, 8, 3, stride=2, padding=1),
        torch.nn.ReLU6(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, classes),
    ).eval()
    torch.onnx.export(
        model,
        (torch.zeros(1, channels, resolution, resolution),),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "n", 2: "h", 3: "w"} if dynamic else {0: "n"}, "output": {0: "n"}},
    )
    return path


@pytest.fixture
def tiny_onnx(tmp_path: Path) -> Path:
    return export_tiny(tmp_path / "tiny.onnx")


PRE32 = Preprocessing(resize_shorter=36, crop=32, mean=(127, 127, 127), std=(128, 128, 128))


def add_tiny(store_dir: Path, source: Path, prefix: str = "tiny", **fields: object) -> Store:
    """``store add`` of a tiny model at 32 px, fp32 unless ``fields`` ask otherwise."""
    request = AddRequest(prefix=prefix, family="tinynet", resolutions=(32,))
    return add(store_dir, source, replace(request, **fields))  # type: ignore[arg-type]

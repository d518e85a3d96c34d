"""How the code is put together: the runtime stands alone, calibration and inference decode alike."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
RUNTIME = REPO / "runtime"


def _absolute_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``tree``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.lineno, node.module or ""))
    return found


def test_runtime_imports_only_itself():
    files = sorted(RUNTIME.rglob("*.py"))
    assert len(files) > 10
    offending = []
    for path in files:
        for line, module in _absolute_imports(ast.parse(path.read_text(), str(path))):
            parts = module.split(".")
            outside = parts[0] == "qfsdk" and parts[1:2] != ["runtime"]
            if outside or parts[0] == "torch":
                offending.append(f"{path.relative_to(REPO)}:{line}: {module}")
    assert not offending, "runtime/ must import only itself and no torch:\n" + "\n".join(offending)


# The installed packages and their folders (pyproject's package-dir).
PACKAGE_DIRS = {"qfsdk": REPO / "qfsdk", "qfsdk.calib": REPO / "calib", "qfsdk.converters": REPO / "converters",
                "qfsdk.runtime": RUNTIME}


def _modules() -> dict[str, Path]:
    """Every module of the installed packages by its dotted name (the C ABI's Python wrapper excluded)."""
    found = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if "native" in parts or (package == "qfsdk" and parts[0] in ("calib", "converters", "runtime")):
                continue
            found[".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)])] = path
    return found


def _type_checking_only(tree: ast.AST) -> set[ast.AST]:
    """The import nodes inside ``if TYPE_CHECKING:`` blocks (never run)."""
    return {node for block in ast.walk(tree)
            if isinstance(block, ast.If) and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
            for statement in block.body for node in ast.walk(statement)}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that module ``name`` imports anywhere (lazy imports in functions included):
    ``from P import m`` counts as importing the module P.m where it is one, else P."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skipped, found = _type_checking_only(tree), set()
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    return {m for m in found if m in modules and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, edges = work[-1]
            step = next((w for w in edges if w not in index or w in stack), None)
            if step is not None and step not in index:
                index[step] = low[step] = len(index)
                stack.append(step)
                work.append((step, iter(sorted(graph[step]))))
                continue
            if step is not None:
                low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles():
    """No module imports one that (through others) imports it back, lazy imports in functions included."""
    modules = _modules()
    assert len(modules) > 50
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    cycles = _cycles(graph)
    shown = ["  " + " <-> ".join(cycle) + ": " + "; ".join(f"{a} -> {b}" for a in cycle for b in sorted(graph[a] & set(cycle)))
             for cycle in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(shown)


def _package(name: str, modules: dict[str, Path]) -> str:
    """A module's part of the SDK: its package under qfsdk (qfsdk.runtime, qfsdk.quant...), or itself for
    qfsdk's own modules (qfsdk.errors, qfsdk.demo...)."""
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or modules[name].name == "__init__.py" else name


def test_no_import_cycles_between_packages():
    """The packages form layers (runtime, then calib/models, quant, eval, converters, cli): none imports
    one that imports it back, so a model file never pulls in the quantization code, nor quant eval."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph.setdefault(_package(name, modules), set()).update(
            _package(m, modules) for m in _imports(name, path, modules) if _package(m, modules) != _package(name, modules))
    graph = {node: edges - {"qfsdk"} for node, edges in graph.items() if node != "qfsdk"}  # the package's front door
    assert not _cycles(graph), _cycles(graph)


def _exif_rotated_jpeg(path: Path) -> Path:
    """A 90x60 JPEG stored sideways with EXIF Orientation 6 (shown as 60 wide, 90 high)."""
    rng = np.random.default_rng(0)
    pixels = np.kron(rng.integers(0, 256, (6, 9, 3)), np.ones((10, 10, 1))).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(path, format="JPEG", quality=95, exif=exif)
    return path


def test_calibration_and_embed_see_the_same_pixels(tmp_path, monkeypatch):
    from qfsdk.calib.folder import ImageFolderSource
    from qfsdk.runtime.backends.base import Backend, TensorInfo
    from qfsdk.runtime.batch_embed import embed_files
    from qfsdk.runtime.contract import FaceContract
    from qfsdk.runtime.embedder import Embedder
    from qfsdk.runtime.images import collect_images

    contract = FaceContract(input_size=(32, 24), embedding_size=4, mean=(10.0, 20.0, 30.0), std=(50.0, 60.0, 70.0))
    folder = tmp_path / "faces"
    folder.mkdir()
    _exif_rotated_jpeg(folder / "sideways.jpg")
    with Image.open(folder / "sideways.jpg") as image:
        assert image.size == (90, 60) and image.getexif()[0x0112] == 6

    fed: list[np.ndarray] = []

    class Recorder(Backend):
        name = "recorder"
        inputs = (TensorInfo("input", (None, 3, 32, 24), "float32"),)
        outputs = (TensorInfo("embedding", (None, 4), "float32"),)

        def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            fed.append(feeds["input"].copy())
            return {"embedding": np.ones((len(feeds["input"]), 4), np.float32)}

        def close(self) -> None:
            pass

    monkeypatch.setattr("qfsdk.runtime.embedder.read_contract", lambda path: contract)
    monkeypatch.setattr("qfsdk.runtime.embedder.open_backend", lambda *args, **kwargs: Recorder())
    with Embedder(tmp_path / "model.onnx") as embedder:  # what `qfsdk embed FOLDER` runs
        result = embed_files(embedder, collect_images([folder]))
    assert result.resized == [folder / "sideways.jpg"] and len(fed) == 1

    calibration = np.concatenate([batch.numpy() for batch in ImageFolderSource(folder, contract)])
    assert calibration.shape == (1, 3, 32, 24) and calibration.dtype == np.float32
    np.testing.assert_array_equal(calibration, fed[0])
    with Image.open(folder / "sideways.jpg") as image:  # as embed decoded it before: stored orientation, stretched
        stretched = contract.preprocess(np.asarray(image.convert("RGB").resize((24, 32), Image.Resampling.BILINEAR)))
    assert not np.allclose(stretched, fed[0], atol=0.1)

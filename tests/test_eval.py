"""`qfsdk eval` on verification sets: insightface .bin files, metrics, IJB templates, the CLI."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from face_photos import face_chips
from qfsdk.cli import main
from qfsdk.errors import QfsdkError
from qfsdk.eval import read_bin
from qfsdk.eval.align import align_face, template_for
from qfsdk.eval.ijb import evaluate_ijb, face_features, pair_scores, read_ijb, template_features
from qfsdk.eval.metrics import fold_slices, kfold_accuracy, roc
from qfsdk.runtime.contract import FaceContract

# Identity of each chip of face_chips(), in order (tests/face_photos.py PHOTOS).
IDENTITIES = ["obama"] * 5 + ["biden", "breakingbad_a", "breakingbad_b", "einstein", "kanade", "einstein", "collins"]


def encode(image: np.ndarray, size: int = 112, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC).save(buffer, format=fmt)
    return buffer.getvalue()


def python2_pickle(images: list[bytes], issame: list[bool]) -> bytes:
    """(images, issame) as Python 2's cPickle protocol 2 writes it: byte strings are BINSTRING opcodes."""
    out = [b"\x80\x02]q\x00("]
    for data in images:
        out.append(b"T" + struct.pack("<i", len(data)) + data)
    out.append(b"e]q\x01(")
    out.extend(b"\x88" if same else b"\x89" for same in issame)
    out.append(b"e\x86q\x02.")
    return b"".join(out)


def labelled_pairs() -> tuple[list[tuple[int, int]], list[bool]]:
    """11 genuine pairs (every Obama pair, the two Einsteins) and 11 impostor pairs of the 12 chips."""
    genuine = [(i, j) for i in range(12) for j in range(i + 1, 12) if IDENTITIES[i] == IDENTITIES[j]]
    impostor = [(i, j) for i in range(12) for j in range(i + 1, 12) if IDENTITIES[i] != IDENTITIES[j]][::5][:11]
    pairs = [pair for both in zip(genuine, impostor) for pair in both]
    return pairs, [IDENTITIES[i] == IDENTITIES[j] for i, j in pairs]


@pytest.fixture(scope="module")
def chips() -> list[np.ndarray]:
    return face_chips()


@pytest.fixture(scope="module")
def lfw_like(tmp_path_factory, chips) -> Path:
    """A 22-pair set in the exact insightface format: Python-2 pickle of 112x112 JPEG bytes and bools."""
    pairs, issame = labelled_pairs()
    images = [encode(chips[k]) for pair in pairs for k in pair]
    path = tmp_path_factory.mktemp("bins") / "lfw_like.bin"
    path.write_bytes(python2_pickle(images, issame))
    return path


@pytest.fixture(scope="module")
def dlib_w6a6(tmp_path_factory, chips) -> Path:
    """A W6A6 dlib_resnet checkpoint, calibrated (min/max) on a few chips."""
    import copy

    import torch

    import qfsdk
    from qfsdk.models import create

    model = create("dlib_resnet")
    data = torch.from_numpy(model.contract.preprocess(np.stack(chips[:6])))
    quantized = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(model), "w6a6"), data, method="minmax")
    return qfsdk.save_quantized(quantized, tmp_path_factory.mktemp("ckpt") / "dlib_w6a6.safetensors")


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# --- .bin reading ---------------------------------------------------------------------------------------------


def test_python2_bin_reads_with_pairs_and_labels(lfw_like):
    binset = read_bin(lfw_like)
    assert len(binset) == 22 and binset.issame.dtype == bool and binset.issame.sum() == 11
    decoded = binset.decode(0, 4, (150, 150))
    assert decoded.shape == (4, 150, 150, 3) and decoded.dtype == np.uint8


def test_bin_referencing_a_global_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([b"x", b"y"], [Payload()])))
    with pytest.raises(QfsdkError, match=r"evil\.bin: refused: .*system"):
        read_bin(path)
    assert not marker.exists()


def test_bin_with_numpy_labels_is_refused(tmp_path):
    path = tmp_path / "numpy.bin"
    path.write_bytes(pickle.dumps(([b"x", b"y"], np.array([True]))))
    with pytest.raises(QfsdkError, match="refused: .*numpy"):
        read_bin(path)


def test_truncated_bin_names_the_file(tmp_path, lfw_like):
    path = tmp_path / "cut.bin"
    path.write_bytes(lfw_like.read_bytes()[: lfw_like.stat().st_size // 2])
    with pytest.raises(QfsdkError, match=r"cut\.bin: truncated or corrupt"):
        read_bin(path)


@pytest.mark.parametrize(
    "data, message",
    [
        ([b"a", b"b"], "expected a pickled \\(images, issame\\) tuple"),
        (([b"a", "b"], [True]), "list of encoded image byte strings"),
        (([b"a", b"b"], [1]), "list of booleans"),
        (([b"a", b"b", b"c"], [True]), "3 images for 1 pairs"),
    ],
)
def test_malformed_bin_says_what_is_wrong(tmp_path, data, message):
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(data, protocol=4))
    with pytest.raises(QfsdkError, match=message):
        read_bin(path)


# --- metrics --------------------------------------------------------------------------------------------------


def naive_kfold(distances: np.ndarray, same: np.ndarray) -> list[float]:
    """The protocol written out with loops: folds like sklearn KFold(10), thresholds 0..4 step 0.01."""
    n = len(same)
    sizes = [n // 10 + (1 if k < n % 10 else 0) for k in range(10)]
    starts = [sum(sizes[:k]) for k in range(10)]
    thresholds = [i / 100 for i in range(400)]
    result = []
    for start, size in zip(starts, sizes):
        test = set(range(start, start + size))
        train = [i for i in range(n) if i not in test]
        best, best_acc = None, -1.0
        for t in thresholds:
            acc = sum((distances[i] < t) == same[i] for i in train) / len(train)
            if acc > best_acc:
                best, best_acc = t, acc
        result.append(sum((distances[i] < best) == same[i] for i in test) / size)
    return result


def test_kfold_accuracy_matches_a_direct_computation():
    rng = np.random.default_rng(1)
    same = rng.random(53) < 0.5
    distances = np.where(same, rng.normal(0.9, 0.4, 53), rng.normal(1.6, 0.4, 53)).clip(0, 4)
    result = kfold_accuracy(distances, same)
    assert result.fold_accuracies == pytest.approx(naive_kfold(distances, same))
    assert [s.stop - s.start for s in fold_slices(53)] == [6, 6, 6, 5, 5, 5, 5, 5, 5, 5]


def test_roc_and_tar_at_far():
    scores = np.array([0.9, 0.8, 0.7, 0.7, 0.6, 0.5, 0.4, 0.3])
    labels = np.array([1, 1, 1, 0, 0, 1, 0, 0], bool)
    curve = roc(scores, labels)
    assert curve.tar_at(0.0) == 0.5  # 0.7 ties a genuine and an impostor: accepting it costs FAR 1/4
    assert curve.tar_at(0.25) == 0.75 and curve.tar_at(0.5) == 1.0
    assert curve.far[-1] == 1.0 and curve.tar[-1] == 1.0


# --- IJB --------------------------------------------------------------------------------------------------------

A, B, C = (200, 0, 0), (0, 200, 0), (0, 0, 200)
# template -> media -> [(identity colour, detector score)]; with IJB_PAIRS, the expected scores are worked out by hand.
IJB_TEMPLATES = {
    1: {10: [(A, 1.0), (A, 1.0), (A, 1.0)], 11: [(B, 0.5)]},  # media mean, then sum: A + 0.5 B
    2: {20: [(A, 0.9)]},
    3: {30: [(B, 1.0)]},
    4: {40: [(C, 1.0)]},
    5: {50: [(A, 1.0)], 51: [(C, 1.0)]},
}
IJB_PAIRS = [  # (t1, t2, genuine, expected cosine)
    (1, 2, 1, 1 / np.sqrt(1.25)),
    (5, 2, 1, 1 / np.sqrt(2)),
    (1, 5, 1, 1 / np.sqrt(2.5)),
    (3, 4, 0, 0.0),
    (1, 3, 0, 0.5 / np.sqrt(1.25)),
    (2, 3, 0, 0.0),
    (5, 4, 0, 1 / np.sqrt(2)),
    (2, 4, 0, 0.0),
]


class CentrePixelEmbedder:
    """A toy face model: the embedding is the colour of the crop's centre pixel."""

    contract = FaceContract(input_size=(112, 112), embedding_size=3, template=tuple(map(tuple, template_for((112, 112)))))

    def embed(self, crops: np.ndarray) -> np.ndarray:
        return crops[:, 56, 56, :].astype(np.float32)


def write_ijb(root: Path) -> Path:
    """An IJB-B folder in insightface's layout: solid-colour loose crops with 5-point landmarks."""
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    faces, points = [], []
    rng = np.random.default_rng(0)
    for template, medias in IJB_TEMPLATES.items():
        for media, members in medias.items():
            for colour, score in members:
                name = f"{len(faces) + 1}.png"
                Image.new("RGB", (160, 200), colour).save(root / "loose_crop" / name)
                landmarks = template_for((112, 112)) * 1.3 + rng.uniform(0, 15, 2)
                faces.append(f"{name} {template} {media}")
                points.append(" ".join([name, *(f"{v:.3f}" for v in landmarks.ravel()), str(score)]))
    (root / "meta" / "ijbb_face_tid_mid.txt").write_text("\n".join(faces) + "\n")
    (root / "meta" / "ijbb_name_5pts_score.txt").write_text("\n".join(points) + "\n")
    pairs = "\n".join(f"{a} {b} {label}" for a, b, label, _ in IJB_PAIRS)
    (root / "meta" / "ijbb_template_pair_label.txt").write_text(pairs + "\n")
    return root


def test_ijb_template_pooling_gives_the_hand_computed_scores(tmp_path):
    protocol = read_ijb(write_ijb(tmp_path / "IJBB"))
    assert protocol.name == "IJBB" and len(protocol.images) == 9
    features = face_features(CentrePixelEmbedder(), protocol, batch_size=3)
    template_ids, pooled = template_features(features, protocol.templates, protocol.medias)
    scores = pair_scores(template_ids, pooled, np.array([(a, b) for a, b, _, _ in IJB_PAIRS]))
    assert scores == pytest.approx([s for *_, s in IJB_PAIRS], abs=1e-9)


def test_ijb_tar_at_far(tmp_path):
    result = evaluate_ijb(CentrePixelEmbedder(), read_ijb(write_ijb(tmp_path / "IJBB")))
    # genuine 0.894, 0.707, 0.632; impostors 0.707, 0.447, 0, 0, 0: at FAR 0 only the first is accepted,
    # at FAR 1/5 every genuine pair (summing faces instead of averaging media would leave 0.632 -> 0.697 < 0.707).
    assert result["tar_at_far"] == {"1e-05": pytest.approx(1 / 3), "0.0001": pytest.approx(1 / 3)}
    assert result["far_resolution"] == 0.2 and result["templates"] == 5 and result["pairs"] == 8
    points = dict(zip(result["roc"]["far"], result["roc"]["tar"]))
    assert points[0.2] == 1.0


@pytest.mark.parametrize("size, template", [((112, 112), None), ((112, 112), "arcface"), ((150, 150), None)])
def test_alignment_puts_landmarks_on_the_template(size, template):
    target = template_for(size)
    contract = FaceContract(input_size=size, embedding_size=2, template=tuple(map(tuple, target)) if template else None)
    angle, scale, shift = np.deg2rad(25), 1.5, np.array([60.0, 20.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = target @ rotation.T * scale + shift
    yy, xx = np.mgrid[0:300, 0:300]
    image = np.zeros((300, 300, 3), np.uint8)
    for x, y in landmarks:
        image[..., 0] = np.maximum(image[..., 0], (255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 18)).astype(np.uint8))
    aligned = align_face(image, landmarks, contract)[..., 0].astype(float)
    for x, y in target:
        window = np.s_[int(y) - 5 : int(y) + 6, int(x) - 5 : int(x) + 6]
        weights = aligned[window]
        wy, wx = np.mgrid[window]
        assert (weights * wx).sum() / weights.sum() == pytest.approx(x, abs=0.3)
        assert (weights * wy).sum() / weights.sum() == pytest.approx(y, abs=0.3)


# --- the CLI --------------------------------------------------------------------------------------------------


def test_cli_compares_float_and_quantized_with_json_and_report(tmp_path, lfw_like, dlib_w6a6, chips):
    import torch

    from qfsdk.models import create

    report = tmp_path / "report"
    result = run_cli("eval", "dlib_resnet", dlib_w6a6, "--bin", lfw_like, "--json", "--report", report, "--batch-size", 16)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    metrics = data["results"]["lfw_like"]
    assert set(metrics) == {"dlib_resnet", "dlib_w6a6.safetensors"}
    assert {"eval.json", "eval.md", "roc.png"} <= {p.name for p in report.iterdir()}
    assert json.loads((report / "eval.json").read_text())["results"]["lfw_like"].keys() == metrics.keys()
    assert "| dlib_resnet |" in (report / "eval.md").read_text()

    # The same numbers computed directly: decode, flip-sum with the model, normalise, squared L2, 10 folds.
    model = create("dlib_resnet")
    binset = read_bin(lfw_like)
    crops = binset.decode(0, 44, (150, 150))
    with torch.no_grad():
        embed = lambda x: model(torch.from_numpy(model.contract.preprocess(np.ascontiguousarray(x)))).double().numpy()
        emb = embed(crops) + embed(crops[:, :, ::-1])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    distances = np.sum((emb[0::2] - emb[1::2]) ** 2, axis=1)
    expected = naive_kfold(distances, binset.issame)
    assert metrics["dlib_resnet"]["fold_accuracies"] == pytest.approx(expected)
    assert metrics["dlib_resnet"]["accuracy"] == pytest.approx(np.mean(expected)) and np.mean(expected) > 0.9


def test_cli_onnx_models_match_their_torch_models(tmp_path, lfw_like, dlib_w6a6, dlib_fp32_onnx):
    import qfsdk
    from qfsdk.converters.qdq_export import export_quantized

    w6a6_onnx = export_quantized(qfsdk.load(dlib_w6a6), tmp_path / "dlib_w6a6.onnx", target="onnxruntime")
    result = run_cli("eval", "dlib_resnet", dlib_fp32_onnx, dlib_w6a6, w6a6_onnx, "--bin", lfw_like, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["results"]["lfw_like"]
    assert [m["kind"] for m in json.loads(result.stdout)["models"]] == ["float", "runtime", "quantized", "runtime"]
    assert metrics["dlib_resnet_fp32.onnx"]["fold_accuracies"] == metrics["dlib_resnet"]["fold_accuracies"]
    assert metrics["dlib_w6a6.onnx"]["accuracy"] == pytest.approx(metrics["dlib_w6a6.safetensors"]["accuracy"], abs=0.05)


def test_cli_float_checkpoint_on_ijb_prints_a_table(tmp_path):
    import torch

    from qfsdk.models import create

    weights = tmp_path / "mfn.pth"
    torch.save(create("mobilefacenet").state_dict(), weights)
    result = run_cli("eval", f"mobilefacenet={weights}", "--ijb", write_ijb(tmp_path / "IJBB"))
    assert result.exit_code == 0, result.output
    assert "| mobilefacenet=mfn.pth |" in result.stdout and "| Model | IJBB |" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["iresnet5O", "--bin", "{bin}"], "did you mean iresnet50"),
        (["dlib_resnet", "--bin", "{cut}"], "cut.bin: truncated or corrupt"),
        (["{plain}", "--bin", "{bin}"], "plain.safetensors is a text file, not a model.*NAME="),
    ],
)
def test_cli_user_errors_are_one_line(tmp_path, lfw_like, args, message):
    cut = tmp_path / "cut.bin"
    cut.write_bytes(lfw_like.read_bytes()[:1000])
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(b"not safetensors")
    result = run_cli("eval", *(a.format(bin=lfw_like, cut=cut, plain=plain) for a in args))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert re.search(message, result.output)


def test_cli_usage_errors():
    no_benchmark = run_cli("eval", "dlib_resnet")
    assert no_benchmark.exit_code == 2 and "give MODEL... with --bin FILE or --ijb DIR" in no_benchmark.output
    no_images = run_cli("eval", "--fidelity", "a", "b")
    assert no_images.exit_code == 2 and "--fidelity FLOAT QUANT needs --images DIR" in no_images.output

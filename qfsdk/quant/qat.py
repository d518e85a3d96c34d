"""Quantization-aware training with knowledge distillation (the QuantFace recipe).

Teacher: the full-precision model, frozen, eval mode. Student: its quantized copy in train
mode (BatchNorm uses batch statistics). Loss: MSE between L2-normalised embeddings for models
compared by cosine (the paper's), MSE between the raw embeddings for models compared by Euclidean
distance (dlib), whose decisions also depend on the norms; no labels.
SGD with Nesterov momentum 0.9, weight decay 5e-4, lr 0.1 at global batch 512 scaled linearly,
gradient-norm clip 5, lr x0.1 for the last 1/11 of the steps (the paper's last epoch),
horizontal flips. ``validation_images``: the last N images are held out, and every
``validate_every`` steps the student is scored on them (minimum cosine to the teacher); the run
ends on the best-scoring student, the PTQ start included, because a long run on a few hundred
synthetic images drifts away from the teacher on other faces. ``freeze_bn`` keeps the student's BatchNorm on its running statistics
(useful for small CPU batches). Every random choice is a function of (seed, step), so a resumed run repeats
the uninterrupted one exactly on CPU. Runs unchanged under ``torchrun`` (DDP: gloo on CPU,
nccl on GPU); rank 0 writes the checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from qfsdk.errors import CheckpointError, ConfigError
from qfsdk.file_kinds import QAT_STATE_FORMAT as STATE_FORMAT
from qfsdk.models.card import card_of
from qfsdk.progress import progress_bar
from qfsdk.runtime.files import atomic_output

from .api import act_quantizers, quant_config_of, set_range_tracking
from .config import KD_LOSS_CHOICES

log = logging.getLogger(__name__)
REFERENCE_BATCH, REFERENCE_LR = 512, 0.1


@dataclass(frozen=True)
class QATSettings:
    """Training hyper-parameters; defaults are the paper's."""

    steps: int
    batch_size: int = 32
    lr: float | None = None
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    grad_clip: float = 5.0
    range_warmup_steps: int | None = None
    lr_drop_fraction: float = 1 / 11
    flip: bool = True
    freeze_bn: bool = False
    kd_loss: str = "auto"
    seed: int = 0
    checkpoint_every: int = 100
    validation_images: int = 0
    validate_every: int = 100

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1 or self.validate_every < 1:
            raise ConfigError("steps, batch_size, checkpoint_every and validate_every must be positive")
        if self.validation_images < 0:
            raise ConfigError(f"validation_images must be 0 or more, got {self.validation_images}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.kd_loss not in KD_LOSS_CHOICES:
            raise ConfigError(f"kd_loss must be one of {', '.join(KD_LOSS_CHOICES)}, got {self.kd_loss!r}")

    def learning_rate(self, world_size: int) -> float:
        """The paper's lr scaled linearly with the global batch, unless set explicitly."""
        return self.lr if self.lr is not None else REFERENCE_LR * self.batch_size * world_size / REFERENCE_BATCH

    def lr_at(self, step: int, base_lr: float) -> float:
        drop_at = int(round(self.steps * (1 - self.lr_drop_fraction)))
        return base_lr * (0.1 if step >= drop_at else 1.0)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "normalized") -> tuple[torch.Tensor, torch.Tensor]:
    """(KD loss, mean cosine). ``normalized``: MSE between L2-normalised embeddings, QuantFace's loss
    (right for cosine-distance models); ``raw``: MSE between the embeddings themselves, which also
    keeps their norms, so Euclidean distances (dlib's contract) are distilled as they are compared."""
    s, t = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
    cosine = (s * t).sum(1).mean().detach()
    return KD_LOSSES[kind](student, teacher, s, t), cosine


KD_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "normalized": lambda student, teacher, s, t: F.mse_loss(s, t),
    "raw": lambda student, teacher, s, t: F.mse_loss(student, teacher),
}
# ``auto``: the loss that distils what the model's contract compares.
KD_LOSS_FOR_DISTANCE = {"cosine": "normalized", "euclidean": "raw"}


def resolve_kd_loss(kind: str, model: nn.Module) -> str:
    """``kind``, or for ``auto`` the loss matching the distance in ``model``'s contract (a model without
    a card is an error: guessing would pick the wrong loss for a Euclidean model)."""
    if kind != "auto":
        return kind
    contract = card_of(model).contract
    if contract is None:
        raise ConfigError("kd_loss 'auto' reads the distance from the model's contract, and it has none: "
                          "describe the model with a FaceContract or choose the loss ('normalized' or 'raw')")
    return KD_LOSS_FOR_DISTANCE[contract.distance]


@lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def batch_plan(step: int, global_batch: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(image indices, flip mask) of the global batch at ``step``: a pure function of its arguments."""
    positions = range(step * global_batch, (step + 1) * global_batch)
    indices = torch.stack([_epoch_order(n, seed, p // n)[p % n] for p in positions])
    flips = torch.rand(global_batch, generator=torch.Generator().manual_seed(seed * 7_919 + step)) < 0.5
    return indices, flips


def default_device() -> torch.device:
    """This process's GPU (``LOCAL_RANK`` under torchrun) when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init_distributed() -> tuple[int, int]:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1: nccl on GPUs, else gloo), once,
    at start-up; returns (rank, world size). Without torchrun it starts nothing: (0, 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return distributed_context()


def distributed_context() -> tuple[int, int]:
    """(rank, world size) of the started process group, (0, 1) without one; it starts nothing."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("running under torchrun without a process group: call qfsdk.quant.qat.init_distributed() first")
    return 0, 1


def barrier() -> None:
    """Wait for every process of the group (nothing to wait for in a single process)."""
    if distributed_context()[1] > 1:
        dist.barrier()


class TrainingImages(Protocol):
    """Preprocessed training images: a (N, 3, H, W) tensor, or anything indexed like one (a
    :class:`qfsdk.calib.face_stream.FaceStream` makes its faces on demand): ``len``, a 1-d index tensor
    gives a float tensor, a slice gives the same kind of object."""

    def __len__(self) -> int: ...

    def __getitem__(self, key: Any) -> Any: ...


class QATRun:
    """One distillation run: student, teacher, images, optimiser and its resumable state."""

    def __init__(self, student: nn.Module, teacher: nn.Module, images: TrainingImages, settings: QATSettings, state_path: Path,
                 device: torch.device | str | None = None):
        quant_config_of(student)
        first = images[torch.zeros(1, dtype=torch.long)] if len(images) else None
        if first is None or first.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else len(images)
            raise ConfigError(f"QAT needs preprocessed images shaped (N, 3, H, W), got {shape}")
        self.device = torch.device(device) if device is not None else default_device()
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.rank, self.world = distributed_context()
        held_out = settings.validation_images
        if held_out >= len(images):
            raise ConfigError(f"validation_images ({held_out}) must leave training images (of {len(images)})")
        self.images = images[:-held_out] if held_out else images
        self.validation = images[-held_out:][torch.arange(held_out)] if held_out else None
        self.student, self.teacher = student.to(self.device), teacher.eval().to(self.device)
        self.best: dict[str, object] | None = None  # {"score", "step", "state"} of the best validated student
        self._validation_set: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # (batch, teacher's embeddings), made once
        self.settings, self.state_path = settings, Path(state_path)
        calibrated = all(bool(q.has_range) for _, q in act_quantizers(student))
        self.range_warmup = settings.range_warmup_steps if settings.range_warmup_steps is not None else (0 if calibrated else 299)
        self.base_lr = settings.learning_rate(self.world)
        self.kd_loss = resolve_kd_loss(settings.kd_loss, teacher)
        log.info("QAT distillation loss: %s", self.kd_loss)
        self.params = [p for p in student.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            self.params, lr=self.base_lr, momentum=settings.momentum, nesterov=settings.nesterov, weight_decay=settings.weight_decay
        )
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.model = student
        if self.world > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(student, device_ids=device_ids)

    # -- state ---------------------------------------------------------------------------
    def save_state(self) -> None:
        """Atomically write student, optimiser buffers and progress (rank 0 only)."""
        if self.rank != 0:
            return
        from safetensors.torch import save_file

        tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in self.student.state_dict().items()}
        for index, param in enumerate(self.params):
            buffer = self.optimizer.state.get(param, {}).get("momentum_buffer")
            if buffer is not None:
                tensors[f"optim.{index}.momentum_buffer"] = buffer.cpu().contiguous().clone()
        if self.best is not None:
            tensors.update({f"best.{k}": v.contiguous().clone() for k, v in self.best["state"].items()})
        metadata = {
            "format": STATE_FORMAT,
            "step": str(self.step),
            "settings": json.dumps(asdict(self.settings)),
            "quant_config": quant_config_of(self.student).to_json(),
            "world_size": str(self.world),
            "range_warmup": str(self.range_warmup),
            "history": json.dumps(self.history),
            "best": json.dumps({k: v for k, v in (self.best or {}).items() if k != "state"}),
        }
        with atomic_output(self.state_path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)

    def load_state(self) -> None:
        """Continue from ``state_path``; the settings must be those of the saved run."""
        from safetensors import safe_open

        path = self.state_path
        if not path.is_file():
            raise CheckpointError(f"{path}: no QAT state to resume from; run without --resume first")
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        if metadata.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{path}: not a qfsdk QAT state file")
        saved = json.loads(metadata["settings"])
        current = asdict(self.settings)
        changed = sorted(k for k in current if k != "steps" and saved.get(k) != current[k])
        if changed:
            raise ConfigError(f"{path}: was trained with different settings ({', '.join(changed)}); resume with the same ones")
        self._check_quant_config(path, metadata.get("quant_config"))
        self.student.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        for index, param in enumerate(self.params):
            buffer = tensors.get(f"optim.{index}.momentum_buffer")
            if buffer is not None:
                self.optimizer.state[param]["momentum_buffer"] = buffer.to(self.device).clone()
        self.step = int(metadata["step"])
        self.range_warmup = int(metadata["range_warmup"])
        self.history = json.loads(metadata["history"])
        best = json.loads(metadata.get("best", "{}"))
        if best:
            self.best = {**best, "state": {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}}
        log.info("resumed QAT from %s at step %d", path, self.step)

    def _check_quant_config(self, path: Path, saved_json: str | None) -> None:
        """A state resumes only into the quantization it was trained with (bits, scheme, overrides...)."""
        if saved_json is None:
            raise ConfigError(f"{path}: this QAT state does not record its quantization settings (an older qfsdk wrote it), "
                              "so resuming could mix two configurations; run without --resume")
        saved = json.loads(saved_json)
        current = json.loads(quant_config_of(self.student).to_json())
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        if changed:
            details = ", ".join(f"{k} {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
            raise ConfigError(f"{path}: was trained with other quantization settings ({details}); "
                              "resume with the same --bits/--scheme/--keep-8bit/--config, or run without --resume")

    # -- validation ----------------------------------------------------------------------
    def validate(self) -> float | None:
        """Score the student on the held-out images (minimum cosine to the teacher); keep it if best."""
        if self.validation is None:
            return None
        was_training = self.student.training
        self.student.eval()
        with torch.no_grad():
            if self._validation_set is None:
                batches = [b.to(self.device) for b in self.validation.split(self.settings.batch_size)]
                self._validation_set = [(b, self.teacher(b)) for b in batches]
            cosines = torch.cat([F.cosine_similarity(self.student(b), t) for b, t in self._validation_set])
        self.student.train(was_training)
        score = float(cosines.min())
        if self.best is None or score > self.best["score"]:
            state = {k: v.detach().cpu().clone() for k, v in self.student.state_dict().items()}
            self.best = {"score": score, "step": self.step, "state": state}
        return score

    def finish(self) -> nn.Module:
        """End the run: ranges frozen, the best validated student restored (if validating), eval mode, CPU."""
        set_range_tracking(self.student, False)
        if self.validation is not None:
            if self.best is None or self.best["step"] != self.step:
                self.validate()
            self.student.load_state_dict(self.best["state"])
            log.info("QAT keeps step %d (validation min cosine %.5f)", self.best["step"], self.best["score"])
        return self.student.eval().cpu()

    # -- training ------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        settings = self.settings
        if self.best is None and self.validation is not None:
            self.validate()  # the starting point (PTQ) competes too
        global_batch = settings.batch_size * self.world
        indices, flips = batch_plan(self.step, global_batch, len(self.images), settings.seed)
        mine = slice(self.rank * settings.batch_size, (self.rank + 1) * settings.batch_size)
        batch = self.images[indices[mine]].clone()
        if settings.flip:
            batch[flips[mine]] = batch[flips[mine]].flip(-1)
        batch = batch.to(self.device, non_blocking=True)
        with torch.no_grad():
            target = self.teacher(batch)
        set_range_tracking(self.student, self.step < self.range_warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = settings.lr_at(self.step, self.base_lr)
        self.student.train()
        if settings.freeze_bn:
            for module in self.student.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        loss, cosine = distillation_loss(self.model(batch), target, self.kd_loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.params, settings.grad_clip)
        self.optimizer.step()
        self.step += 1
        record = {"step": self.step, "loss": float(loss.detach()), "cosine": float(cosine)}
        if self.validation is not None and self.step % settings.validate_every == 0:
            record["validation_min_cosine"] = self.validate()
        self.history.append(record)
        return record

    def run(self, progress: bool = True, on_step: Callable[[dict], None] | None = None) -> nn.Module:
        """Train up to ``settings.steps``, checkpointing every ``checkpoint_every`` steps."""
        settings = self.settings
        bar = progress_bar(total=settings.steps, initial=self.step, desc="qat", disable=not progress or self.rank != 0)
        while self.step < settings.steps:
            record = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.2e}", cos=f"{record['cosine']:.4f}")
            if on_step is not None:
                on_step(record)
            if self.step % settings.checkpoint_every == 0 or self.step == settings.steps:
                self.save_state()
                if self.world > 1:
                    dist.barrier()
        bar.close()
        return self.finish()


def train_qat(
    student: nn.Module,
    teacher: nn.Module,
    images: TrainingImages,
    settings: QATSettings,
    state_path: str | Path,
    resume: bool = False,
    progress: bool = True,
) -> QATRun:
    """Distil ``teacher`` into the quantized ``student``; returns the finished run."""
    run = QATRun(student, teacher, images, settings, Path(state_path))
    if resume:
        run.load_state()
    run.run(progress=progress)
    return run

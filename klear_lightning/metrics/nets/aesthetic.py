"""The aesthetic predictors' networks and loaders: the LAION head (`sac+logos+ava1-l14-linearMSE.pth`,
improved-aesthetic-predictor's MLP `layers.0/2/4/6/7`) on CLIP ViT-L/14 embeddings, the v2.5 head on
SigLIP embeddings, and the CLIP / SigLIP vision towers (local transformers directories).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from klear_lightning.safe_pickle import load_torch_file


class AestheticHead(nn.Module):
    """improved-aesthetic-predictor MLP: embedding (B, D) -> score (B,). Dropouts keep the indices."""

    def __init__(self, dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embedding: Tensor) -> Tensor:
        return self.layers(embedding)[:, 0]


def _load_head(path: str | Path, head: type[nn.Module], first: str, what: str) -> nn.Module:
    """A head's plain state dict, strictly, through the allow-list reader; its input width is read from
    the weights of its first layer (`first`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    state = load_torch_file(path)
    if not isinstance(state, dict) or first not in state:
        raise ValueError(f"{path}: not an {what} state dict (no {first})")
    model = head(state[first].shape[1])
    model.load_state_dict(state, strict=True)
    return model.eval()


def _load_vision(model_class: str, directory: str | Path, what: str, **kwargs) -> nn.Module:
    """A transformers vision tower from a saved local directory (no download)."""
    import transformers

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory}: no config.json (expected a saved {what} model directory)")
    return getattr(transformers, model_class).from_pretrained(directory, local_files_only=True, **kwargs).eval()


def load_aesthetic_head(path: str | Path) -> AestheticHead:
    """`sac+logos+ava1-l14-linearMSE.pth` (improved-aesthetic-predictor)."""
    return _load_head(path, AestheticHead, "layers.0.weight", "improved-aesthetic-predictor head")


def load_clip_vision(directory: str | Path) -> nn.Module:
    """CLIP vision tower with projection from a local Hugging Face directory."""
    return _load_vision("CLIPVisionModelWithProjection", directory, "CLIP")


class AestheticV25Head(nn.Module):
    """aesthetic-predictor-v2.5's MLP: normalised SigLIP embedding (B, D) -> score (B,)."""

    def __init__(self, dim: int = 1152) -> None:
        super().__init__()
        self.scoring_head = nn.Sequential(
            nn.Linear(dim, 1024),
            nn.Dropout(0.5),
            nn.Linear(1024, 128),
            nn.Dropout(0.5),
            nn.Linear(128, 64),
            nn.Dropout(0.5),
            nn.Linear(64, 16),
            nn.Dropout(0.2),
            nn.Linear(16, 1),
        )

    def forward(self, embedding: Tensor) -> Tensor:
        return self.scoring_head(embedding)[:, 0]


def load_aesthetic_v25_head(path: str | Path) -> AestheticV25Head:
    """`aesthetic_predictor_v2_5.pth` (aesthetic-predictor-v2.5)."""
    return _load_head(path, AestheticV25Head, "scoring_head.0.weight", "aesthetic-predictor-v2.5 head")


def load_siglip_vision(directory: str | Path) -> nn.Module:
    """SigLIP vision tower from a local Hugging Face directory (e.g. google/siglip-so400m-patch14-384)."""
    return _load_vision("SiglipVisionModel", directory, "SigLIP", use_safetensors=True)

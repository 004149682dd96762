"""LAION CLAP (HTS-AT tiny + RoBERTa), fusion and non-fusion, vs Verse-Bench's own CLAP code.

The official code (LAION's `laion_clap` as Verse-Bench ships it under `fd/`) needs numpy < 2 and
torchaudio / torchvision, which do not install here against torch 2.13 CPU; it was run once outside
the project on seeded weights (`references/clap_htsat_tiny.json`, with the seed and the input recipe).
Here the same weights are rebuilt key by key in LAION's layout, written as a LAION `.pt` training
checkpoint and read through the project's `metrics.checkpoints.clap` path (with a tokenizer directory
of the same 261-symbol byte-level vocabulary); the text and audio embeddings of the same inputs are
compared with the official ones.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from benchmarks.parity import ParityResult, compare, load_reference, skipped
from benchmarks.parity.seeded import seeded_state_dict
from klear_lightning.media import MediaClip
from klear_lightning.metrics.base import BuildContext
from klear_lightning.metrics.clap import CHECKPOINT_FORMATS, clap_extractor
from klear_lightning.metrics.nets.cnn14 import slaney_mel_filters

EXTRACTOR = "clap_htsat"
REFERENCE = "clap_htsat_tiny"
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def waves(seed: int) -> list[np.ndarray]:
    rng = np.random.Generator(np.random.PCG64(seed + 2))
    out = []
    for seconds in (4.0, 10.0):
        t = np.arange(int(seconds * 48000)) / 48000
        x = 0.4 * np.sin(2 * np.pi * (300 + 200 * t) * t) * (
            0.5 + 0.5 * np.sin(2 * np.pi * 1.5 * t)
        ) + 0.05 * rng.standard_normal(t.shape)
        out.append(x.astype(np.float32))
    return out


def write_tokenizer(directory: Path) -> None:
    from tokenizers.pre_tokenizers import ByteLevel

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(ByteLevel.alphabet()))}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "RobertaTokenizer", "model_max_length": 512})
    )


def transformers_to_laion(hf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of `klear_lightning.metrics.clap.laion_to_transformers` (keys and qkv), for
    building LAION-layout files from a transformers model's shapes."""
    out: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    for key, value in hf_state.items():
        if key.endswith(("token_type_ids", "position_ids")):
            continue
        if key.startswith("text_model."):
            out["text_branch." + key.removeprefix("text_model.")] = value
        elif key.startswith(("text_projection.", "audio_projection.")):
            out[key.replace(".linear1.", ".0.").replace(".linear2.", ".2.")] = value
        elif key.startswith("audio_model.audio_encoder."):
            k = "audio_branch." + key.removeprefix("audio_model.audio_encoder.")
            k = (
                k.replace("batch_norm.", "bn0.")
                .replace("layernorm_before", "norm1")
                .replace("layernorm_after", "norm2")
            )
            k = k.replace("attention.output.dense", "attn.proj").replace(
                "attention.self.relative_position", "attn.relative_position"
            )
            k = k.replace("intermediate.dense", "mlp.fc1").replace(".output.dense", ".mlp.fc2")
            for part in ("query", "key", "value"):
                if f"attention.self.{part}." in k:
                    qkv.setdefault(k.replace(f"attention.self.{part}.", "attn.qkv."), {})[part] = value
                    break
            else:
                out[k] = value
        else:
            out[key] = value
    for k, parts in qkv.items():
        out[k] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def laion_template(fusion: bool) -> dict[str, Tensor]:
    """LAION-layout keys and shapes of the reference model (HTSAT-tiny audio tower; RoBERTa text tower
    of 2 layers x 768, vocabulary 261), with LAION's mel filters (the only front-end tensor loaded)."""
    from transformers import ClapConfig, ClapModel

    config = ClapConfig(
        text_config=dict(
            vocab_size=len(SPECIALS) + 256,
            hidden_size=768,
            num_hidden_layers=2,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=514,
            type_vocab_size=1,
            layer_norm_eps=1e-5,
        ),
        audio_config=dict(enable_fusion=fusion),
        projection_dim=512,
    )
    with torch.device("meta"):
        shapes = ClapModel(config).state_dict()
    template = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in transformers_to_laion(shapes).items()}
    for k in template:
        if k.endswith("relative_position_index"):  # integer buffer: rebuilt, never seeded
            template[k] = _relative_position_index(template[k].shape[0])
    template["audio_branch.logmel_extractor.melW"] = slaney_mel_filters(48000, 1024, 64, 50.0, 14000.0)
    return template


def _relative_position_index(window_area: int) -> Tensor:
    w = int(round(window_area**0.5))
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)
    return rel[:, :, 0] * (2 * w - 1) + rel[:, :, 1]


def _transformers_dir(laion_file: Path, tokenizer_dir: Path, out: Path) -> Path:
    """The LAION file as a transformers CLAP directory (weights + tokenizer), as users may hold one."""
    from transformers import AutoTokenizer

    from klear_lightning.metrics.clap import load_laion_checkpoint

    load_laion_checkpoint(laion_file).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


def check(kinds: tuple[str, ...] = ("nonfusion", "fusion", "fusion_transformers_dir")) -> ParityResult:
    """Both models from LAION files, and the fusion model from a transformers directory (the weights
    converted by the project's own converter and saved with `save_pretrained`); the test runs the
    fusion model from a LAION file (Verse-Bench's) alone."""
    try:
        ref = load_reference(REFERENCE)
    except FileNotFoundError:
        return skipped(
            EXTRACTOR, "Verse-Bench fd/ (laion_clap)", CHECKPOINT_FORMATS, f"references/{REFERENCE}.json missing"
        )
    import transformers  # noqa: F401

    w = waves(ref["seed"])
    if [hashlib.sha256(x.tobytes()).hexdigest() for x in w] != ref["wave_sha256"]:
        return skipped(
            EXTRACTOR, ref["official"], CHECKPOINT_FORMATS, "input recipe does not reproduce the reference waves"
        )
    clips = [
        MediaClip(video=None, fps=25.0, audio=torch.from_numpy(x), sample_rate=48000, meta={"key": f"parity{i}"})
        for i, x in enumerate(w)
    ]
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_dir = Path(tmp) / "roberta-base"
        write_tokenizer(tokenizer_dir)
        for kind in kinds:
            fusion = kind.startswith("fusion")
            expected = ref["models"]["fusion" if fusion else "nonfusion"]
            state = seeded_state_dict(laion_template(fusion), ref["seed"], keep=lambda k: "logmel_extractor" in k)
            path = Path(tmp) / f"630k-audioset{'-fusion' if fusion else ''}-best.pt"
            torch.save(
                {
                    "epoch": 45,
                    "name": "parity",
                    "state_dict": {"module." + k: v for k, v in state.items()},
                    "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
                },
                path,
            )
            if kind == "fusion_transformers_dir":
                path = _transformers_dir(path, tokenizer_dir, Path(tmp) / "clap-htsat-fused")
            extractor = clap_extractor(BuildContext.create({"clap": str(path), "clap_tokenizer": str(tokenizer_dir)}))
            ids = extractor.tokenizer(ref["texts"], padding="max_length", max_length=77, return_tensors="pt")[
                "input_ids"
            ][:, :12]
            if ids.tolist() != expected["text_ids"]:
                return skipped(
                    EXTRACTOR,
                    ref["official"],
                    CHECKPOINT_FORMATS,
                    "tokenizer recipe does not reproduce the reference ids",
                )
            pairs.append(
                (f"{kind}/text", extractor.text_embeddings(ref["texts"]), np.array(expected["text_embedding"]))
            )
            pairs.append((f"{kind}/audio", extractor.audio_embeddings(clips), np.array(expected["audio_embedding"])))
    worst, per = compare(pairs)
    return ParityResult(
        EXTRACTOR,
        f"reference numbers: {ref['official']}, seed {ref['seed']}",
        worst,
        CHECKPOINT_FORMATS,
        details={"per_output": per, "input": ref["input_recipe"], "weights": ref["weights_recipe"]},
    )

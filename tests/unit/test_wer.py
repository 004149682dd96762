import importlib.util
import shutil

import jiwer
import pytest
import torch

from klear_lightning.data.syncworld.speech import synthesise
from klear_lightning.media import MediaClip
from klear_lightning.metrics.base import BuildContext, MetricUndefined
from klear_lightning.metrics.suite import load_registry
from klear_lightning.metrics.wer import (
    normalize_english,
    sensevoice_wer,
    spoken_reference,
    utterance_wer,
    versebench_wer,
    whisper_wer,
)


def test_seed_tts_normalisation_keeps_apostrophes_only():
    assert normalize_english("Hello, World!  It's   a DOG's life...") == "hello world it's a dog's life"
    assert normalize_english("“Quoted” — dash; colon: (paren)") == "quoted dash colon paren"
    assert normalize_english("well-known") == "wellknown"  # Seed-TTS deletes hyphens, it does not split


def test_utterance_wer_matches_jiwer_examples():
    assert utterance_wer("the cat sat on the mat", "the cat sat on the mat") == 0.0
    assert utterance_wer("The cat sat.", "the cat sit") == pytest.approx(1 / 3)  # one substitution
    assert utterance_wer("a b c d", "a c d") == pytest.approx(1 / 4)  # one deletion
    assert utterance_wer("a b", "a x b y") == pytest.approx(2 / 2)  # two insertions
    assert utterance_wer("Hello world", "HELLO, WORLD!") == 0.0
    assert utterance_wer("one two three", "one too three") == jiwer.wer("one two three", "one too three")
    with pytest.raises(ValueError, match="empty reference"):
        utterance_wer("?!", "anything")


def test_versebench_normalisation_lowercases_and_keeps_punctuation():
    # Verse-Bench strips and lowercases, and keeps punctuation: ITN output "Hello, world." costs one word
    assert versebench_wer("Hello world", "hello world") == 0.0
    assert versebench_wer("hello world", "Hello, world.") == pytest.approx(1.0)
    assert versebench_wer("hello world", " ?! ") == pytest.approx(1.0)  # punctuation only -> empty -> 2 deletions
    assert versebench_wer("it's fine", "It's fine") == 0.0
    with pytest.raises(ValueError, match="empty reference"):
        versebench_wer("   ", "x")


def test_sensevoice_wer_scores_with_versebench_normalisation():
    metric = sensevoice_wer(FakeTranscriber(["Hello, world.", "a b"]))
    metric.update([_clip("hello world"), _clip("a b")])
    result = metric.results()["wer_sensevoice_versebench"]
    assert result.n == 2 and result.value == pytest.approx(0.5)  # 1.0 (punctuation kept) and 0.0


def test_sensevoice_needs_its_directories_then_funasr(tmp_path):
    from klear_lightning.metrics.base import MetricUnavailable

    build = load_registry()["wer_sensevoice_versebench"].build
    with pytest.raises(MetricUnavailable, match=r"metrics\.checkpoints\.sensevoice "):
        build(BuildContext.create({}))
    (tmp_path / "SenseVoiceSmall").mkdir()
    (tmp_path / "fsmn-vad").mkdir()
    if importlib.util.find_spec("funasr") is not None:
        pytest.skip("funasr is installed: the missing-package message cannot show")
    with pytest.raises(MetricUnavailable, match="pip install funasr"):
        build(
            BuildContext.create(
                {"sensevoice": str(tmp_path / "SenseVoiceSmall"), "sensevoice_vad": str(tmp_path / "fsmn-vad")}
            )
        )


def _clip(transcript: str | None, audio: torch.Tensor | None = None, sr: int = 16000) -> MediaClip:
    meta = {"key": "k"} if transcript is None else {"key": "k", "transcript": transcript}
    return MediaClip(
        video=None, fps=8.0, audio=torch.zeros(1600) if audio is None else audio, sample_rate=sr, meta=meta
    )


class FakeTranscriber:
    def __init__(self, texts):
        self.texts = list(texts)

    def __call__(self, clips):
        out, self.texts = self.texts[: len(clips)], self.texts[len(clips) :]
        return out


def test_wer_is_the_mean_of_per_utterance_rates_and_skips_untranscribed_clips():
    metric = whisper_wer(FakeTranscriber(["a b c d", "x"]), "fake")
    metric.update([_clip("a b c d"), _clip(None), _clip("y z")])
    result = metric.results()["wer_whisper_fake_seedtts"]
    # per utterance: 0 and 1 -> mean 0.5 (a corpus WER would be 2 / 6)
    assert result.n == 2 and result.value == pytest.approx(0.5)


def test_wer_refuses_when_nothing_had_a_transcript():
    metric = whisper_wer(FakeTranscriber([]), "fake")
    metric.update([_clip(None), _clip("  ")])
    with pytest.raises(MetricUndefined, match="transcript"):
        metric.compute()


def test_reference_is_what_is_spoken_not_speaker_tags_or_sung_vowels():
    """The WER reference is annotation.spoken when the sample records it (SyncWorld), else the
    transcript: speaker tags never count as words, sung vowel names are not scored as speech."""
    multi = {"transcript": "left: how are you. right: very well.", "annotation": {"spoken": "how are you very well"}}
    sung = {"transcript": "ee ah oo", "annotation": {"spoken": ""}}
    real = {"transcript": "A plain transcript.", "annotation": {}}
    assert spoken_reference(multi) == "how are you very well"
    assert spoken_reference(real) == "A plain transcript."
    metric = whisper_wer(FakeTranscriber(["How are you? Very well."]), "fake")
    metric.update([MediaClip(None, 8.0, torch.zeros(1600), 16000, meta) for meta in (multi, sung)])
    result = metric.results()["wer_whisper_fake_seedtts"]
    assert result.n == 1 and result.value == 0.0  # the tags would make it 2 / 7; the vowels 1.0 more


SENTENCES = [
    "please open the door",
    "the weather is cold",
    "my brother plays guitar",
    "where is the station",
]
VOICES = [  # SyncWorld's four corners: both genders, both pitches, both paces
    {"gender": "female", "pitch": "low", "pace": "slow"},
    {"gender": "male", "pitch": "high", "pace": "fast"},
    {"gender": "male", "pitch": "low", "pace": "slow"},
    {"gender": "female", "pitch": "high", "pace": "fast"},
]


@pytest.mark.flite
@pytest.mark.skipif(shutil.which("flite") is None, reason="flite not on PATH")
def test_shipped_tiny_en_transcribes_syncworld_speech():
    """The default (offline) Whisper tiny.en transcribes SyncWorld's speech (flite voices).

    Measured 0.0 on these four (the test partition of SyncWorld scores about 0.05); espeak-ng's
    formant speech, SyncWorld's speech before, scored 0.5 - 0.6. Matched transcripts must stay
    under 0.15; transcripts swapped between clips share almost no words and must score over 0.8.
    """
    metric = load_registry()["wer_whisper_seedtts"].build(BuildContext.create({}))
    assert metric.name == "wer_whisper_tiny_en_seedtts"
    speech = [torch.from_numpy(synthesise(s, v, 16000)).float() for s, v in zip(SENTENCES, VOICES)]
    metric.update([_clip(t, a) for t, a in zip(SENTENCES, speech)])
    matched = metric.results()["wer_whisper_tiny_en_seedtts"]
    assert matched.n == 4 and matched.value < 0.15
    metric.reset()
    metric.update([_clip(SENTENCES[(i + 1) % 4], a) for i, a in enumerate(speech)])
    assert metric.results()["wer_whisper_tiny_en_seedtts"].value > 0.8


def test_sensevoice_directories_with_a_malicious_pickle_are_refused_before_funasr_reads_them(tmp_path):
    import os

    from klear_lightning.metrics.base import MetricUnavailable

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    (tmp_path / "SenseVoiceSmall").mkdir()
    (tmp_path / "fsmn-vad").mkdir()
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "fsmn-vad" / "model.pt")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "cfg": Exploit()}, tmp_path / "SenseVoiceSmall" / "model.pt")
    build = load_registry()["wer_sensevoice_versebench"].build
    with pytest.raises(
        MetricUnavailable, match=r"metrics\.checkpoints\.sensevoice: .*SenseVoiceSmall/model\.pt: refused"
    ):
        build(
            BuildContext.create(
                {"sensevoice": str(tmp_path / "SenseVoiceSmall"), "sensevoice_vad": str(tmp_path / "fsmn-vad")}
            )
        )
    assert not (tmp_path / "pwned").exists()

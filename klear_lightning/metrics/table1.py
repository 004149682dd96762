"""The paper's Table 1 (plus MOS and IB of Tables 2 and 3): which result key fills each column, under
which protocol, and on which Verse-Bench items it is computed.

A column is filled from the first result key present among `paper` (the paper's protocol: Verse-Bench's
code) and, failing that, among `other` (another protocol, e.g. av-benchmark's): the report then marks the
column as computed under another protocol than the paper's. A key ending in "*" matches by prefix.

`route` says which Verse-Bench items a column's metric scores (`calculate_metrics.py`): "all" items;
"audio_prompt": items of set1 and set2 with an audio prompt (CLAP, AV-A); "set2": set2 items with an
audio prompt, against the set's reference audio (FD, KL); "speech": items with a speech transcript, in
any set (WER, LSE).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Route = Literal["all", "audio_prompt", "set2", "speech"]


@dataclass(frozen=True)
class Table1Column:
    label: str
    paper: tuple[str, ...]
    other: tuple[str, ...]
    route: Route
    paper_protocol: str


TABLE1: tuple[Table1Column, ...] = (
    Table1Column(
        "MS",
        ("motion_raft_versebench",),
        ("motion_hs256",),
        "all",
        "RAFT optical-flow magnitude between consecutive frames, mean",
    ),
    Table1Column(
        "AS",
        ("aesthetic_versebench",),
        ("aesthetic_v25_versebench", "aesthetic_laion"),
        "all",
        "mean of aesthetic-predictor-v2.5 / 10, MUSIQ / 100 and MANIQA over all frames",
    ),
    Table1Column(
        "ID",
        ("id_dinov3_versebench",),
        ("id_dino_cls",),
        "all",
        "DINOv3 cosine of every frame to the item's first-frame image",
    ),
    Table1Column(
        "FD",
        ("fd_clap_versebench",),
        ("fd_panns_avbench",),
        "set2",
        "LAION CLAP (fusion) audio embeddings, per-pair Fréchet distance (our reading, metrics/fd.py)",
    ),
    Table1Column(
        "KL",
        ("kl_passt_versebench",),
        ("kl_panns_avbench",),
        "set2",
        "PaSST 10 s windows (hop 5 s), mean logits, softmax, KL(reference || generated)",
    ),
    Table1Column(
        "CLAP", ("clap_score_versebench",), (), "audio_prompt", "LAION CLAP (fusion) cosine of audio and audio prompt"
    ),
    Table1Column(
        "WER",
        ("wer_sensevoice_versebench",),
        ("wer_whisper_*",),
        "speech",
        "SenseVoiceSmall (FunASR), Verse-Bench normalisation",
    ),
    Table1Column(
        "AV-A",
        ("desync_versebench",),
        ("desync_avbench_signed", "desync_avbench"),
        "audio_prompt",
        "Synchformer signed offset, first 4 s, 11 segments from frame 2",
    ),
    Table1Column(
        "SNC",
        ("lse_c_versebench",),
        ("lse_c_syncnet",),
        "speech",
        "SyncNet LSE-C on face tracks, clips with |offset| >= 14 frames dropped",
    ),
    Table1Column("MOS", ("mos_*",), (), "all", "MOS predictor of Tables 2 and 3"),
    Table1Column("IB", ("ib_score_avbench",), (), "all", "ImageBind video-audio cosine (av-benchmark)"),
)


def _matches(pattern: str, key: str) -> bool:
    return key.startswith(pattern[:-1]) if pattern.endswith("*") else key == pattern


def find_key(column: Table1Column, keys: Iterable[str]) -> tuple[str, bool] | None:
    """(key, is the paper's protocol) of the key filling `column`, or None."""
    keys = list(keys)
    for patterns, paper in ((column.paper, True), (column.other, False)):
        for pattern in patterns:
            for key in keys:
                if _matches(pattern, key):
                    return key, paper
    return None


def column_of(key: str) -> Table1Column | None:
    """The Table-1 column a result key belongs to (under any protocol), or None."""
    for column in TABLE1:
        if any(_matches(p, key) for p in column.paper + column.other):
            return column
    return None

"""Cost of the audio metrics: PANNs Cnn14 feature extraction and the 2048-d Fréchet distance.

Cnn14 gets randomly initialised weights saved in the official layout and loaded through the
same path a user configures (`metrics.checkpoints.panns`); speed does not depend on the values.
Reported per device (CPU, and CUDA when present): Cnn14 clips/s on 8 s clips at 16 kHz, the
seconds of one `fd_panns_avbench` compute (two 2048 x 2048 float64 eigendecompositions), and on CUDA the
largest |CUDA - CPU| difference of the fc1 embeddings (relative to their largest value) and of the FD value (parity check).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import timed, write_result
from klear_lightning.media import MediaClip
from klear_lightning.metrics.base import BuildContext
from klear_lightning.metrics.fd import build_fd_panns_avbench
from klear_lightning.metrics.nets.cnn14 import Cnn14

CLIPS = 16
SECONDS = 8.0


def clips() -> list[MediaClip]:
    g = torch.Generator().manual_seed(0)
    n = int(SECONDS * 16000)
    return [MediaClip(None, 8.0, torch.randn(n, generator=g) * 0.1, 16000, {"key": f"b{i}"}) for i in range(CLIPS)]


def run_device(path: Path, device: str, gen: list[MediaClip], ref: list[MediaClip]) -> dict[str, float | torch.Tensor]:
    metric = build_fd_panns_avbench(BuildContext.create({"panns": str(path)}, device)).to(device)
    extractor = metric.features
    fresh = lambda: [MediaClip(None, c.fps, c.audio.clone(), c.sample_rate) for c in gen]  # noqa: E731 (no memo hit)
    rate = CLIPS / timed(lambda: extractor(fresh()), warmup=1, repeats=3)
    metric.update(gen, ref)
    start = time.perf_counter()
    value = float(metric.compute())
    fd_seconds = time.perf_counter() - start
    return {"clips_per_s": rate, "fd_compute_s": fd_seconds, "fd": value, "embedding": extractor(gen).clone()}


def main() -> None:
    torch.manual_seed(0)
    gen, ref = clips(), clips()[::-1]
    for c in ref:
        c.audio = c.audio * 0.5
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "Cnn14_16k_mAP=0.438.pth"
        torch.save({"model": Cnn14().state_dict()}, path)
        results = {"cpu": run_device(path, "cpu", gen, ref)}
        if torch.cuda.is_available():
            results["cuda"] = run_device(path, "cuda", gen, ref)
    out: dict[str, object] = {"clips": CLIPS, "clip_seconds": SECONDS}
    for device, r in results.items():
        out[device] = {k: v for k, v in r.items() if k != "embedding"}
    summary = (
        f"cpu Cnn14 {results['cpu']['clips_per_s']:.1f} clips/s, FD compute {results['cpu']['fd_compute_s']:.2f} s"
    )
    if "cuda" in results:
        cpu_emb = results["cpu"]["embedding"]
        emb_diff = float((results["cuda"]["embedding"] - cpu_emb).abs().max() / cpu_emb.abs().max())
        fd_diff = abs(results["cuda"]["fd"] - results["cpu"]["fd"])
        out["cuda_vs_cpu"] = {
            "embedding_max_rel_diff": emb_diff,
            "fd_abs_diff": fd_diff,
            "fd_rel_diff": fd_diff / abs(results["cpu"]["fd"]),
        }
        summary += (
            f"; cuda Cnn14 {results['cuda']['clips_per_s']:.1f} clips/s, FD compute {results['cuda']['fd_compute_s']:.2f} s,"
            f" |cuda-cpu|/max embedding {emb_diff:.2e}, FD rel {fd_diff / abs(results['cpu']['fd']):.2e}"
        )
    write_result("metrics", out, summary)


if __name__ == "__main__":
    main()

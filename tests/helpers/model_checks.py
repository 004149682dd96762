"""Shared model-test check: the packed attention backend matches the reference one."""

import torch

from klear_lightning.models.attention import make_backend
from klear_lightning.streams import ModelInputs


def assert_packed_matches_reference(model: torch.nn.Module, x: ModelInputs, isolate: bool) -> None:
    """Outputs and every parameter gradient of `model` on `x` agree between the reference and the
    packed backends (the loss is the mean square of both outputs)."""
    results = []
    for name in ("reference", "packed"):
        model.backend = make_backend(name)
        model.zero_grad()
        out = model(x, isolate_modalities=isolate)
        (out.video.square().mean() + out.audio.square().mean()).backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (ref, ref_grads), (packed, packed_grads) = results
    torch.testing.assert_close(packed.video, ref.video, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed.audio, ref.audio, atol=1e-5, rtol=1e-4)
    assert ref_grads.keys() == packed_grads.keys()
    for n, g in ref_grads.items():
        torch.testing.assert_close(packed_grads[n], g, atol=1e-5, rtol=1e-4, msg=n)

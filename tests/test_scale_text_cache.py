"""The text-embedding cache is bounded (least recently used evicted) and returns what encoding returns."""

from __future__ import annotations

import pytest
import torch

from dimo.models.threedimo import WanTextEncoder


def test_text_cache_is_bounded_lru_and_exact(monkeypatch):
    torch.manual_seed(0)
    enc = WanTextEncoder(cache_size=2)
    plain = WanTextEncoder(cache=False)
    plain.load_state_dict(enc.state_dict())
    calls: list[list[str]] = []
    real = enc._encode
    monkeypatch.setattr(
        enc, "_encode", lambda prompts, device: calls.append(list(prompts)) or real(prompts, device)
    )

    prompts = ["front. The camera orbits.", "side. The camera is static.", "back. The camera pans."]
    out = enc(prompts)  # three new prompts at once: all returned, only two kept
    torch.testing.assert_close(out, plain(prompts), rtol=0, atol=0)
    assert list(enc._cache) == prompts[1:] and len(calls) == 1
    enc([prompts[1]])  # a hit: no encoding, and prompts[1] becomes the most recently used
    assert len(calls) == 1 and list(enc._cache) == [prompts[2], prompts[1]]
    again = enc([prompts[0], prompts[1]])  # prompts[0] was evicted: encoded again, evicting prompts[2]
    assert calls[-1] == [prompts[0]] and list(enc._cache) == [prompts[0], prompts[1]]
    torch.testing.assert_close(again, plain([prompts[0], prompts[1]]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="cache_size must be >= 1"):
        WanTextEncoder(cache_size=0)

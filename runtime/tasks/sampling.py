"""Next-token choice from logits: greedy, or seeded temperature / top-k / top-p sampling (numpy)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Sampler:
    """Picks the next token from (B, V) logits: argmax at temperature 0, else top-k/top-p sampling."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self):
        if not isinstance(self.temperature, (int, float, np.floating, np.integer)) or isinstance(self.temperature, bool) \
                or not math.isfinite(self.temperature):
            raise ConfigError(f"temperature={self.temperature!r} must be a finite number: 0 (greedy) or positive.")
        if self.temperature < 0:
            raise ConfigError(f"temperature={self.temperature} must be 0 (greedy) or positive.")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k={self.top_k} must be at least 1.")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p} must be in (0, 1].")
        object.__setattr__(self, "_rng", np.random.default_rng(self.seed))

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        if self.temperature == 0:
            return np.argmax(logits, axis=-1).astype(np.int64)  # (B,) first index on ties, as torch
        probs = self._probs(logits.astype(np.float64) / self.temperature)  # (B, V)
        return np.array([self._rng.choice(len(p), p=p) for p in probs], dtype=np.int64)

    def _probs(self, scaled: np.ndarray) -> np.ndarray:
        if self.top_k is not None and self.top_k < scaled.shape[-1]:
            kth = np.sort(scaled, axis=-1)[:, -self.top_k][:, None]  # (B, 1)
            scaled = np.where(scaled < kth, -np.inf, scaled)
        probs = np.exp(scaled - scaled.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)  # (B, V)
        if self.top_p is not None and self.top_p < 1:
            order = np.argsort(-probs, axis=-1, kind="stable")  # (B, V) most likely first
            sorted_p = np.take_along_axis(probs, order, -1)
            keep_sorted = np.cumsum(sorted_p, -1) - sorted_p < self.top_p  # the smallest set reaching top_p
            keep = np.zeros_like(keep_sorted)
            np.put_along_axis(keep, order, keep_sorted, -1)
            probs = np.where(keep, probs, 0.0)
            probs /= probs.sum(-1, keepdims=True)
        return probs

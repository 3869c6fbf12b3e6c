"""Where one reply's time went, read from its TokenEvents as they stream (the engine times its own
parts; a caller such as the UI adds the time it spends between events).

Per step of the loop: the cloud's forward (or HTTP round trip) is one for all streams of the step,
the device's passes belong to the steered stream, steering and choosing happen per stream.
With the closed form, T costs nothing at decode time: it only changes the scalar C.
"""
from __future__ import annotations

import time


class Latency:
    def __init__(self):
        self.start = time.perf_counter()
        self.first_token_s: float | None = None
        self.end_s: float | None = None
        self.cloud_ms: dict[int, float] = {}
        self.device_ms = self.steer_ms = self.ui_ms = 0.0
        self.tokens: dict[str, int] = {}

    def add(self, ev):  # a decoding.TokenEvent
        now = time.perf_counter() - self.start
        if self.first_token_s is None:
            self.first_token_s = now
        self.cloud_ms[ev.step] = max(self.cloud_ms.get(ev.step, 0.0), ev.cloud_ms)
        self.device_ms += ev.device_ms
        self.steer_ms += ev.steer_ms
        self.tokens[ev.stream] = self.tokens.get(ev.stream, 0) + 1

    def add_ui(self, seconds: float):
        """Time the caller spent outside the engine (rendering, sending) during this reply."""
        self.ui_ms += seconds * 1000

    def done(self):
        self.end_s = time.perf_counter() - self.start

    def summary(self) -> dict:
        wall = self.end_s if self.end_s is not None else time.perf_counter() - self.start
        steps = max(1, len(self.cloud_ms))
        cloud = sum(self.cloud_ms.values())
        shown = max(self.tokens.values(), default=0)
        out = {"time_to_first_token_ms": round(1000 * (self.first_token_s or wall), 1),
               "total_ms": round(1000 * wall, 1), "steps": len(self.cloud_ms), "tokens": dict(self.tokens),
               "tokens_per_s": round(shown / wall, 2) if wall > 0 else 0.0,
               "ms_per_step": round(1000 * wall / steps, 2)}
        parts = {"cloud": cloud, "device": self.device_ms, "steering": self.steer_ms, "ui": self.ui_ms}
        out["per_step_ms"] = {k: round(v / steps, 2) for k, v in parts.items()}
        out["per_step_ms"]["other"] = round(max(0.0, 1000 * wall - sum(parts.values())) / steps, 2)
        return out

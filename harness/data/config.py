"""Which text the run calibrates on (importance scores) and how it is sampled."""

from __future__ import annotations

from dataclasses import dataclass

from harness.data.text import check_source
from harness.keys import Keyed


@dataclass
class DataConfig(Keyed):
    """Calibration spec; defaults are the protocol's (10 x 128 tokens of c4_calib, seed 1234)."""

    DETERMINING = ("calib_source", "calib_samples", "calib_seq_len", "calib_seed")
    NOT_DETERMINING = ()

    calib_source: str = "c4_calib"
    calib_samples: int = 10
    calib_seq_len: int = 128
    calib_seed: int = 1234

    def validate(self) -> None:
        check_source(self.calib_source, role="calibration")
        if self.calib_samples < 1 or self.calib_seq_len < 2:
            raise ValueError("data.calib_samples must be >= 1 and data.calib_seq_len >= 2")

    def spec(self) -> dict:
        return {
            "source": self.calib_source, "num_samples": self.calib_samples,
            "seq_len": self.calib_seq_len, "seed": self.calib_seed,
        }

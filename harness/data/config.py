"""Which text the run calibrates on (importance scores) and how it is sampled (`data` group)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.data import protocol
from harness.data.text import check_source, source_identity
from harness.keys import Keyed


@dataclass
class DataConfig(Keyed):
    """Calibration spec; the defaults are the protocol's (data/protocol.py)."""

    DETERMINING = ("calib_source", "calib_samples", "calib_seq_len", "calib_seed")
    NOT_DETERMINING = ()

    calib_source: str = protocol.CALIB_SOURCE
    calib_samples: int = protocol.CALIB_SAMPLES
    calib_seq_len: int = protocol.CALIB_SEQ_LEN
    calib_seed: int = protocol.CALIB_SEED

    def key_fields(self) -> dict:
        """The calibration text by what it holds (see data.text.source_identity)."""
        return {**super().key_fields(), "calib_source": source_identity(self.calib_source)}

    def validate(self) -> None:
        check_source(self.calib_source, role="calibration")
        if self.calib_samples < 1 or self.calib_seq_len < 2:
            raise ValueError("data.calib_samples must be >= 1 and data.calib_seq_len >= 2")

"""Facts every layer shares, each declared once here."""
from __future__ import annotations

SAMPLE_RATE = 16_000  # Hz; every speech backbone sertool supports was pre-trained at 16 kHz.

"""CPU inference in reduced precision: int8 dynamic quantization, a bf16 front end, threads."""

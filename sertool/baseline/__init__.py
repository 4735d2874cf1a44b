"""The linear floor: ridge regression on utterance-level acoustic statistics (`sertool baseline`)."""

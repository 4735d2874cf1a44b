"""sertool: speech emotion recognition of dimensional attributes (arousal, valence, dominance).

    import sertool
    model = sertool.load("runs/wavlm")        # a run folder, checkpoint, model folder, ensemble JSON or hub id
    model.predict("talk.wav")                 # {"arousal": ..., "valence": ..., "dominance": ...} on 1-7

``load`` and ``Model`` live in ``sertool.api`` and are imported on first use, so that ``import sertool``
(and the command line's start-up) does not load torch.
"""

from sertool.core.version import __version__

__all__ = ["Model", "__version__", "load"]
_API = ("Model", "load")


def __getattr__(name: str):
    if name in _API:
        from sertool import api

        return getattr(api, name)
    raise AttributeError(f"module 'sertool' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])

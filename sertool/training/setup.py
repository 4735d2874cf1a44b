"""From command-line flags and a --config file to the resolved ``Config`` of a training run."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sertool.core.config import Config, apply_recipe, apply_value, config_keys, config_options, read_config_file
from sertool.core.errors import SertoolError
from sertool.training.run_folder import CONFIG_NAME


def resolve_train_config(config_file: str | None, flags: dict[str, Any], *, out: str | None,
                         resume: str | None) -> tuple[Config, Path, dict[str, Any]]:
    """Defaults, then ``config_file``, then every flag that was given, then the recipe's values for the
    fields neither set (``config.apply_recipe``: the backbone's recipe unless ``--recipe``); the run
    folder; what ``--resume`` points elsewhere.

    With ``init_from`` (a flag or a key of the file), the model section, and the attributes it predicts
    (``train.attributes``), start from that model's instead of the defaults: defaults, then the initial model's
    architecture, then the file, then the flags.

    Args:
        config_file: a YAML file, or None.
        flags: ``{"<section>__<field>": value}`` (``"seed"`` for top-level fields); None or an empty tuple
            means the flag was not given.
        out: ``--out RUN_DIR``.
        resume: ``--resume RUN_DIR``: the run's own config is used, so only the ``resumable`` options (where
            the data is, how it is read) may be given.

    Returns:
        The config (the defaults when resuming), the run folder, and with ``resume`` the resumable options
        given, as ``{"data.corpus": value}``.

    Raises:
        SertoolError: a missing or conflicting ``--out`` / ``--resume``, or a bad config value.
    """
    for flag, value in (("--out", out), ("--resume", resume)):
        if value is not None and not value.strip():  # Path("") would be the current folder
            raise SertoolError(f"{flag}: an empty path; give the run folder")
    given = _given(flags)
    if resume is not None:
        if out is not None and Path(out) != Path(resume):
            raise SertoolError(f"--resume {resume} continues that run folder; drop --out {out}")
        resumable = {option.key.replace(".", "__"): option for option in config_options() if option.resumable}
        fixed = [name for name in given if name not in resumable]
        if fixed or config_file:
            names = ", ".join("--" + name.split("__")[-1].replace("_", "-") for name in fixed)
            allowed = ", ".join(option.flag for option in resumable.values())
            raise SertoolError(f"--resume uses the run's own config; drop {names or '--config'} (only {allowed} may "
                               f"point elsewhere; start a new run with --config RUN_DIR/{CONFIG_NAME} to change "
                               "settings)")
        return Config(), Path(resume), {resumable[name].key: value for name, value in given.items()}
    if out is None:
        raise SertoolError("no run folder given: pass --out RUN_DIR")
    return resolve_new_config(config_file, flags), Path(out), {}


def resolve_new_config(config_file: str | None, flags: dict[str, Any]) -> Config:
    """The config of a new run (``resolve_train_config`` without a run folder: what ``train --plan`` plans).

    Args:
        config_file: a YAML file, or None.
        flags: as ``resolve_train_config``'s.

    Raises:
        SertoolError: a bad config value.
    """
    given = _given(flags)
    config, user_set = _resolve(config_file, given, base=Config())
    if config.train.init_from:
        from sertool.store.checkpoints import payload_attributes
        from sertool.store.model_folder import load_model

        base, source = Config(), f"--init-from {config.train.init_from}"
        initial = load_model(config.train.init_from, weights=False)
        base.model = Config.from_dict(initial["config"], source=source).model
        base.train.attributes = payload_attributes(initial, source=source)
        config, user_set = _resolve(config_file, given, base=base)
        # The initial model's weights fix its architecture: no recipe may change the model section.
        user_set |= {(option.section, option.name) for option in config_options() if option.section == "model"}
    apply_recipe(config, given=user_set)
    return config


def checked_new_run(config: Config) -> Config:
    """``config`` with absolute paths, once checked as every new run's is before its set-up.

    Raises:
        SertoolError: a config-level conflict (``Config.check``), no corpus, or no end of training.
    """
    config = config.with_absolute_paths()
    config.check()
    if config.data.corpus is None:
        raise SertoolError("no corpus given: pass --corpus ROOT")
    if not (config.train.epochs or config.train.max_steps):
        raise SertoolError("--epochs 0 and --max-steps 0: no end of training; give --epochs N or --max-steps N")
    return config


def _given(flags: dict[str, Any]) -> dict[str, Any]:
    """The flags that were given (neither None nor an empty tuple); a repeatable option (--aux) given the single
    value "none" is reset to nothing."""
    given = {name: value for name, value in flags.items() if value is not None and value != ()}
    return {name: () if value == ("none",) else value for name, value in given.items()}


def _resolve(config_file: str | None, given: dict[str, Any], *,
             base: Config) -> tuple[Config, set[tuple[str | None, str]]]:
    """``base``, then the file, then the flags; and the ``(section, key)`` pairs the file and the flags set."""
    data = read_config_file(config_file) if config_file else {}
    source = f"--config {config_file}"
    config = Config.from_dict(data, source=source, base=base)
    user_set = config_keys(data, source=source)
    for name, value in given.items():
        section, _, key = name.rpartition("__")
        apply_value(config, section or None, key, value, source="command line")
        user_set.add((section or None, key))
    return config, user_set

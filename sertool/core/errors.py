"""The one exception type the CLI turns into a clear message instead of a traceback."""


class SertoolError(Exception):
    """A problem the user can fix: bad input, a bad flag, a missing file.

    The message must name the file, row or flag involved and say what to do. The CLI prints it as
    ``error: <message>`` and exits with status 2; anything else escaping a command is a bug.
    """


def missing_package(package: str, *, needed_for: str, extra: tuple[str, ...] = ()) -> SertoolError:
    """The error for an optional package that is not installed, naming the command that installs it.

    The PyPI name ``sertool`` belongs to an unrelated project, so the message never names sertool's
    extras as things to install from PyPI: it names the package itself, with the version bound sertool
    declares for it (setup.cfg's extras, read from the installed metadata) where that is known.

    Args:
        package: the distribution to install, e.g. ``"matplotlib"``.
        needed_for: what needs it, e.g. ``"--plot"`` or ``"the demo corpus"``.
        extra: the name of sertool's extra that holds ``package``, then every package of that extra, which the
            message installs together, e.g. ``("onnx", "onnx", "onnxruntime")``; empty: ``package`` alone.
    """
    if not extra:
        return SertoolError(f"{needed_for} needs {package}, which is not installed: pip install "
                            f"'{_requirement(package)}'")
    name, *packages = extra
    install = " ".join(f"'{_requirement(each)}'" for each in packages)
    return SertoolError(f"{needed_for} needs {package}, which is not installed (sertool's extra `{name}`: "
                        f"{', '.join(packages)}): pip install {install}")


def _requirement(package: str) -> str:
    """sertool's declared requirement for ``package`` (``matplotlib>=3.7``), or the bare name."""
    import re
    from importlib import metadata

    try:
        declared = metadata.requires("sertool") or []
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        declared = []
    for requirement in declared:
        spec = requirement.split(";")[0].strip()
        name = re.split(r"[\s<>=!~\[(]", spec, maxsplit=1)[0]
        if name.lower().replace("_", "-") == package.lower().replace("_", "-"):
            return spec.replace(" ", "")
    return package

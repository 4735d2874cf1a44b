"""The three places where sertool meets the outside, each guarded once for every command and the Python API.

- ``outputs``: every file a command writes. Its outputs are declared and checked before any work
  (distinct paths, names derived from data kept inside the folder the user named, names the file system
  can hold, parents that can be written), then each file is committed atomically, and exclusively unless
  ``--force``: two commands racing for one path cannot both succeed, and nothing is ever half-written.
- ``reads``: every file opened because a user named it (configs, labels, transcripts, CSVs, plans,
  checkpoints) is a regular file of bounded size, and a name that comes from data stays inside the folder
  it is relative to.
- ``surface``: every failure reaches the user as one line. Known kinds (a full disk, a name too long, no
  permission, no memory, no CUDA, a dead loader worker) name the file or flag and what to do; anything
  else is a bug, reported as one line that says where its traceback was saved.

Option values are checked against their declarations in ``sertool.core.config`` (``check_options``), the same
declaration the command-line flags are built from.

tests/test_guards_static.py checks that no module under ``sertool/`` writes a file, or opens one a user
named, except through these modules.
"""

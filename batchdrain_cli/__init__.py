"""The `batchdrain` command line: the user's tools around a deployed or local batchdrain (never deployed).

Installed as the `batchdrain` console script by `make setup` (`pip install -e .`, see
pyproject.toml); `batchdrain --help` lists every command. Each command is a module here
with `add_parser(commands)` and `run(args, parser)`; `cli` puts them together.
"""

"""Fix-ups for the artifacts users bring (base-LLM configs, images), one command per module.

Each module runs as ``python -m patches.<name> ...`` from the repository root, defaults to
``--dry-run`` (print what would change, touch nothing) and, under ``--apply``, writes a backup of
every file it rewrites before replacing it atomically. See ``patches/README.md`` for the table.
"""

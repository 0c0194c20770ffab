"""Opt-in "Beyond Semantics" add-ons, one small module per flag.

Each add-on is switched on by a config field (written only when its flag is on, so vanilla
configs stay byte-identical to upstream's) and read back from ``config.json`` at load time.
"""

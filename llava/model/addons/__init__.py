"""Opt-in "Beyond Semantics" add-ons: one module per add-on, registered in :mod:`.registry`.

Each add-on module declares its flags, its ``config.json`` keys (written only when its flag is
on, so vanilla configs stay byte-identical to upstream's), its validation, its modules and its
place in the vision pipeline (see :mod:`.base` for the contract and ``docs/adding_an_addon.md``).
Only :mod:`.registry` imports the individual add-ons.
"""

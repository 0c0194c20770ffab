"""Vision towers (frozen CLIP encoders) and their builder."""

"""Vision-to-language projectors and their builder."""

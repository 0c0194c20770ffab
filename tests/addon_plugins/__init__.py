"""Add-ons that live only under tests/: they stand for a researcher's own package."""

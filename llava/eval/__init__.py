"""Evaluation entry points (one-shot query, benchmark generators and scorers)."""

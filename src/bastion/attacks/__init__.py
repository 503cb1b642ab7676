"""Attacks as plain functions over tensors: evasion (white/black box), poisoning,
extraction, membership inference."""

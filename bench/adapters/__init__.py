"""Engines under measurement. Adding one is one file with a class implementing ``Engine``."""

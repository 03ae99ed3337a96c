"""Generation: diffusers pipelines and samplers, named data sources and their provenance, the
generation and index steps, and the toy GLIDE-style generator (``toy/``). Imports ``data`` only.
"""

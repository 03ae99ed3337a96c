"""Evaluation: frozen-feature probes (linear, few-shot, zero-shot), baselines, and the quality of a
generator judged by an independent attribute classifier. Imports the layers below.
"""

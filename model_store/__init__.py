"""The model store: variants of compact ImageNet classifiers, their manifest and their files.

Everything here runs without torch; only ``model_store.build`` imports it, lazily.
"""

"""The shipped registry: the trained baseline versions, installed as package data (`digitserve.baselines`).

This file only makes the folder installable; the registry itself is the model folders beside it.
"""

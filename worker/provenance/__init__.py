"""Provenance metadata read from an image's own bytes: C2PA, IPTC/XMP, generator tags.

Imaging-level: it reads the bytes the pipeline already fetched and knows nothing
of models; ``worker.classify`` decides what a validated claim does to a label.
"""

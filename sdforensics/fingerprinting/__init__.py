"""Sketches of each tensor (CountSketch, two-sided structure sketch, coordinate samples), the
Fingerprint value, its file format, and the similarity math between fingerprints. No I/O besides the
fingerprint file format. Imports core, readers (types), model.
"""

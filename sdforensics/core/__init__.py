"""Plumbing every layer may use: the error classes (one base, SdfError), thread limits, progress
callbacks, terminal/HTML-safe text, dtype tables. Imports nothing else from sdforensics.
"""

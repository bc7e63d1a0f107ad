"""Renderers of an Analysis: terminal text, the sdforensics.analysis/1 JSON document, the self-
contained HTML report, pandas frames and matplotlib figures, and AnalysisView (an Analysis with
those as methods). Imports everything below, never the CLI.
"""

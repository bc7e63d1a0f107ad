"""The recipe estimate from a target's fingerprint and its references: the affine fit, merge kinds,
element-wise (TIES/DARE) and low-rank (LoRA) detection, result types (RecipeEstimate) and the words
users read (recipe text, summary, JSON recipe object). Pure math on arrays: no I/O. Imports
core..library/lora.
"""

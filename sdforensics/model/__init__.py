"""What a checkpoint is: architecture tables (data/arch/*.json) and detection, key maps, block maps,
the one streaming pass over a file, hashes (file, AutoV2, per-component content), byte identity,
metadata and problems. Imports core and readers.
"""

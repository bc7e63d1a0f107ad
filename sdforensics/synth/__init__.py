"""Test and demo data: synthetic checkpoints with real key layouts (specs, diffusers folders), LoRAs
baked into them, estimator test layers. Never imported by production code (only `sdf demo` / `sdf
synth` and tests; an import-linter contract checks it).
"""

"""References on disk (store), the batched comparison of a target with all of them (search), manifests,
the known-hash registry and official-model lookup. Imports core..fingerprint; not lora.
"""

"""LoRA files: recognised, read, mapped to canonical keys, described, and fingerprinted as a change
(lora_fingerprint). Imports core..fingerprint; not library.
"""

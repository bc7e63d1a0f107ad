"""Collections: a models folder as the library (``sdf index``), and the engines that run per-file work."""

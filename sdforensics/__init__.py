"""sdforensics: what did the author mix in, and how much?"""

__version__ = "0.1.0"

"""Network definitions; each module exposes get_symbol(num_classes=..., ...)."""

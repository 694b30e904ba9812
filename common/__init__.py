"""Importable logic behind the entry scripts (prepare_data.sh, train_caltech.py, ...)."""

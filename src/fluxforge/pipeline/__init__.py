"""The DAG stages as library functions; stages/*.py are thin entry points to these."""

"""fluxforge.eval"""
